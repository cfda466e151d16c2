package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

var transferFlagNames = []string{"linked", "pending", "post_pending_transfer", "void_pending_transfer",
	"balancing_debit", "balancing_credit", "closing_debit", "closing_credit"}

func newTransferCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "transfer", Short: "Create and look up transfers"}
	cmd.AddCommand(newTransferCreateCmd(a), &cobra.Command{
		Use:   "get ID...",
		Short: "Look up transfers by id",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				transfers, err := c.LookupTransfers(ctx, ids)
				if err != nil {
					return err
				}
				if err := a.print(transfers, func(w io.Writer) { transferTable(w, transfers) }); err != nil {
					return err
				}
				return notFound(ids, transfers, func(t transport.Transfer) string { return t.ID })
			})
		},
	})
	return cmd
}

// transferOptions are the flags of `transfer create`. The pending timeout
// is --pending-timeout: --timeout is the global request timeout.
type transferOptions struct {
	transfer transport.Transfer
	metadata []string
	pending  bool
	post     string
	void     string
}

func newTransferCreateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create one transfer and print its result code",
		Args:  cobra.NoArgs,
	}
	o := addTransferFlags(cmd.Flags())
	// Only the id is required: a post or void may leave accounts, ledger and
	// code empty, and the cluster answers a specific code for what is missing.
	_ = cmd.MarkFlagRequired("id")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		transfer, err := o.build()
		if err != nil {
			return err
		}
		return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			results, err := c.CreateTransfers(ctx, []transport.Transfer{transfer})
			if err != nil {
				return err
			}
			return a.printResult(results)
		})
	}
	return cmd
}

func addTransferFlags(f *pflag.FlagSet) *transferOptions {
	o := &transferOptions{}
	f.StringVar(&o.transfer.ID, "id", "", "transfer id (the idempotency key)")
	f.StringVar(&o.transfer.DebitAccountID, "debit", "", "debit account id")
	f.StringVar(&o.transfer.CreditAccountID, "credit", "", "credit account id")
	f.Uint64Var(&o.transfer.Amount, "amount", 0, "amount")
	f.Uint32Var(&o.transfer.Ledger, "ledger", 0, "ledger")
	f.Uint16Var(&o.transfer.Code, "code", 0, "transfer code (its reason)")
	f.Uint32Var(&o.transfer.Flags, "flags", 0, "flag bits (1 linked, 2 pending, 4 post, 8 void, 16/32 balancing debit/credit, 64/128 closing debit/credit)")
	f.StringArrayVar(&o.metadata, "metadata", nil, "metadata pair `key=value` (repeatable)")
	f.BoolVar(&o.pending, "pending", false, "reserve the amount on both accounts until posted, voided or expired")
	f.Uint32Var(&o.transfer.Timeout, "pending-timeout", 0, "`seconds` after which the cluster voids a pending transfer (0: never)")
	f.StringVar(&o.post, "post", "", "post the pending transfer with this `id` (--amount 0 or absent: the whole amount)")
	f.StringVar(&o.void, "void", "", "void the pending transfer with this `id`")
	return o
}

func (o *transferOptions) build() (transport.Transfer, error) {
	t := o.transfer
	var err error
	if t.Metadata, err = parseMetadata(o.metadata); err != nil {
		return t, err
	}
	set := 0
	for _, on := range []bool{o.pending, o.post != "", o.void != ""} {
		if on {
			set++
		}
	}
	if set > 1 {
		return t, fmt.Errorf("--pending, --post and --void exclude each other")
	}
	switch {
	case o.pending:
		t.Flags |= transport.TransferPending
	case o.post != "":
		t.Flags |= transport.TransferPostPendingTransfer
		t.PendingID = o.post
	case o.void != "":
		t.Flags |= transport.TransferVoidPendingTransfer
		t.PendingID = o.void
	}
	return t, nil
}

func transferTable(w io.Writer, transfers []transport.Transfer) {
	fmt.Fprintln(w, "ID\tDEBIT\tCREDIT\tAMOUNT\tLEDGER\tCODE\tFLAGS\tSTATE\tTIMESTAMP\tMETADATA")
	for _, t := range transfers {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%d\t%s\n", t.ID, t.DebitAccountID, t.CreditAccountID, t.Amount,
			t.Ledger, t.Code, flagString(t.Flags, transferFlagNames), t.State, t.Timestamp, metadataString(t.Metadata))
	}
}
