package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

// historyOptions are the filter flags of `account history` and
// `account transfers`.
type historyOptions struct{ filter transport.AccountFilter }

func (o *historyOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.Uint64Var(&o.filter.TimestampMin, "from", 0, "first timestamp (inclusive; 0: the beginning)")
	f.Uint64Var(&o.filter.TimestampMax, "to", 0, "last timestamp (inclusive; 0: the end)")
	f.Uint32Var(&o.filter.Limit, "limit", 100, fmt.Sprintf("most rows (1 to %d)", transport.HistoryLimitMax))
	f.BoolVar(&o.filter.Reverse, "reverse", false, "newest first")
}

func newAccountHistoryCmd(a *app) *cobra.Command {
	var o historyOptions
	cmd := &cobra.Command{
		Use:   "history ID",
		Short: "An account's balances after each of its events (accounts flagged history)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.filter.AccountID = args[0]
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				rows, err := c.AccountBalances(ctx, o.filter)
				if err != nil {
					return err
				}
				return a.print(rows, func(w io.Writer) {
					fmt.Fprintln(w, "TIMESTAMP\tDEBITS_PENDING\tDEBITS_POSTED\tCREDITS_PENDING\tCREDITS_POSTED")
					for _, b := range rows {
						fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%d\n", b.Timestamp, b.DebitsPending, b.DebitsPosted, b.CreditsPending, b.CreditsPosted)
					}
				})
			})
		},
	}
	o.flags(cmd)
	return cmd
}

func newAccountTransfersCmd(a *app) *cobra.Command {
	var o historyOptions
	cmd := &cobra.Command{
		Use:   "transfers ID",
		Short: "An account's transfers in timestamp order",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.filter.AccountID = args[0]
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				transfers, err := c.AccountTransfers(ctx, o.filter)
				if err != nil {
					return err
				}
				return a.print(transfers, func(w io.Writer) { transferTable(w, transfers) })
			})
		},
	}
	o.flags(cmd)
	return cmd
}
