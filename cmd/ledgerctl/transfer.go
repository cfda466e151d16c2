package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

var transferFlagNames = []string{"linked", "pending", "post_pending_transfer", "void_pending_transfer",
	"balancing_debit", "balancing_credit", "closing_debit", "closing_credit"}

func newTransferCmd(a *app) *cobra.Command {
	cmd := group(&cobra.Command{Use: "transfer", Short: "Create and look up transfers"})
	cmd.AddCommand(newTransferCreateCmd(a), &cobra.Command{
		Use:   "get ID...",
		Short: "Look up transfers by id (exit 1 if one is not found)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				transfers, err := c.LookupTransfers(ctx, ids)
				if err != nil {
					return err
				}
				if err := a.printFound(transfers, func(w io.Writer) { transferTable(w, transfers) }); err != nil {
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
	file     string
}

func newTransferCreateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create one transfer, or a batch of them from --file, and print the result codes",
		Long: `Create the transfer the flags describe and print its result code.

With --file, create the transfers of a JSON array instead (fields named as in
'transfer get -o json', without timestamp and state; "-" reads standard input),
sent as one batch in order, and print each one's result. A transfer with flags 1 (linked) chains with the
next: a chain succeeds or fails as one, so this is how to send one.`,
		Args: cobra.NoArgs,
	}
	o := addTransferFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.file == "" {
			transfer, err := o.build(cmd.Flags())
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
		transfers, err := o.readFile(cmd.LocalNonPersistentFlags(), cmd.InOrStdin())
		if err != nil {
			return err
		}
		return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			results, err := c.CreateTransfers(ctx, transfers)
			if err != nil {
				return err
			}
			return a.printResults(results, transfers)
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
	f.StringVar(&o.file, "file", "", "create the transfers of this JSON array `file` as one batch (- for standard input), not one from the flags")
	return o
}

// build returns the one transfer the flags describe. Only the id is
// required: a post or void may leave accounts, ledger and code empty, and
// the cluster answers a specific code for what is missing.
func (o *transferOptions) build(fs *pflag.FlagSet) (transport.Transfer, error) {
	t := o.transfer
	if !fs.Changed("id") {
		return t, errors.New("--id or --file is required")
	}
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

// readFile reads the transfers of --file from its file, or from stdin for
// "-". The other flags of fs (those of `transfer create`) would describe a
// transfer of their own, so they are refused with it.
func (o *transferOptions) readFile(fs *pflag.FlagSet, stdin io.Reader) ([]transport.Transfer, error) {
	var others []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed && f.Name != "file" {
			others = append(others, "--"+f.Name)
		}
	})
	if len(others) > 0 {
		return nil, fmt.Errorf("--file excludes %v: give each transfer's fields in the file", others)
	}
	r := stdin
	if o.file != "-" {
		f, err := os.Open(o.file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var transfers []transport.Transfer
	if err := dec.Decode(&transfers); err != nil {
		return nil, fmt.Errorf("--file %s: want a JSON array of transfers: %w", o.file, err)
	}
	if len(transfers) == 0 {
		return nil, fmt.Errorf("--file %s: no transfers", o.file)
	}
	return transfers, nil
}

// printResults prints the result of each of transfers and fails the command
// unless every one is ok or exists.
func (a *app) printResults(results []transport.Result, transfers []transport.Transfer) error {
	if len(results) != len(transfers) {
		return fmt.Errorf("%d results for %d transfers", len(results), len(transfers))
	}
	err := a.print(results, func(w io.Writer) {
		fmt.Fprintln(w, "INDEX\tID\tCODE")
		for i, r := range results { // one per transfer, in order
			fmt.Fprintf(w, "%d\t%s\t%s\n", r.Index, transfers[i].ID, r.Code)
		}
	})
	if err != nil {
		return err
	}
	for _, r := range results {
		if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
			return errReported
		}
	}
	return nil
}

func transferTable(w io.Writer, transfers []transport.Transfer) {
	fmt.Fprintln(w, "ID\tDEBIT\tCREDIT\tAMOUNT\tLEDGER\tCODE\tFLAGS\tSTATE\tTIMESTAMP\tMETADATA")
	for _, t := range transfers {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", t.ID, t.DebitAccountID, t.CreditAccountID, t.Amount,
			t.Ledger, t.Code, flagString(t.Flags, transferFlagNames), t.State, timestamp(t.Timestamp), metadataString(t.Metadata))
	}
}
