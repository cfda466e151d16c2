package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

// historyOptions are the filter flags of `account history` and
// `account transfers`.
type historyOptions struct {
	filter   transport.AccountFilter
	from, to timestampFlag
}

func (o *historyOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.Var(&o.from, "from", "first timestamp, inclusive: RFC 3339 (as tables show it) or nanoseconds (as JSON does); 0: the beginning")
	f.Var(&o.to, "to", "last timestamp, inclusive, like --from; 0: the end")
	f.Uint32Var(&o.filter.Limit, "limit", 100, fmt.Sprintf("most rows (1 to %d)", transport.HistoryLimitMax))
	f.BoolVar(&o.filter.Reverse, "reverse", false, "newest first")
}

// build checks the flags, in the flags' own names, and returns the filter
// for account id.
func (o *historyOptions) build(id string) (transport.AccountFilter, error) {
	f := o.filter
	f.AccountID, f.TimestampMin, f.TimestampMax = id, uint64(o.from), uint64(o.to)
	switch {
	case !transport.ValidID(id):
		return f, usagef("account id %q: want 1 to %d characters of A-Z a-z 0-9 _ . : @ -", id, transport.IDBytesMax)
	case f.Limit < 1 || f.Limit > transport.HistoryLimitMax:
		return f, usagef("--limit %d: want 1 to %d", f.Limit, transport.HistoryLimitMax)
	case f.TimestampMax != 0 && f.TimestampMin > f.TimestampMax:
		return f, usagef("--from %s is after --to %s", o.from.String(), o.to.String())
	}
	return f, nil
}

// timestampFlag is a cluster timestamp, given as RFC 3339 or as
// nanoseconds since the Unix epoch.
type timestampFlag uint64

func (t *timestampFlag) String() string { return strconv.FormatUint(uint64(*t), 10) }
func (t *timestampFlag) Type() string   { return "timestamp" }

func (t *timestampFlag) Set(s string) error {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		*t = timestampFlag(n)
		return nil
	}
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || at.UnixNano() < 0 {
		return fmt.Errorf("want RFC 3339 (2026-12-07T19:15:06.123456789Z) or nanoseconds since 1970")
	}
	*t = timestampFlag(at.UnixNano())
	return nil
}

// account looks up the account id, so that an unknown account fails the
// command rather than show no history.
func account(ctx context.Context, c *client.Client, id string) (transport.Account, error) {
	found, err := c.LookupAccounts(ctx, []string{id})
	if err != nil {
		return transport.Account{}, err
	}
	if err := notFound([]string{id}, found, func(a transport.Account) string { return a.ID }); err != nil {
		return transport.Account{}, err
	}
	return found[0], nil
}

func newAccountHistoryCmd(a *app) *cobra.Command {
	var o historyOptions
	cmd := &cobra.Command{
		Use:   "history ID",
		Short: "An account's balances after each of its events (accounts created with --history)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			filter, err := o.build(args[0])
			if err != nil {
				return err
			}
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				acc, err := account(ctx, c, filter.AccountID)
				if err != nil {
					return err
				}
				if acc.Flags&transport.AccountHistory == 0 {
					return fmt.Errorf("account %s keeps no balance history: it was created without --history (flag 8); 'account transfers %s' lists its transfers", acc.ID, acc.ID)
				}
				rows, err := c.AccountBalances(ctx, filter)
				if err != nil {
					return err
				}
				return a.print(rows, func(w io.Writer) {
					fmt.Fprintln(w, "TIMESTAMP\tDEBITS_PENDING\tDEBITS_POSTED\tCREDITS_PENDING\tCREDITS_POSTED")
					for _, b := range rows {
						fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\n", timestamp(b.Timestamp), b.DebitsPending, b.DebitsPosted, b.CreditsPending, b.CreditsPosted)
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
			filter, err := o.build(args[0])
			if err != nil {
				return err
			}
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				if _, err := account(ctx, c, filter.AccountID); err != nil {
					return err
				}
				transfers, err := c.AccountTransfers(ctx, filter)
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
