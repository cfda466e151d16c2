package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

var accountFlagNames = []string{"linked", "debits_must_not_exceed_credits", "credits_must_not_exceed_debits", "history", "closed"}

func newAccountCmd(a *app) *cobra.Command {
	cmd := group(&cobra.Command{Use: "account", Short: "Create and look up accounts"})
	cmd.AddCommand(newAccountCreateCmd(a), newAccountHistoryCmd(a), newAccountTransfersCmd(a), &cobra.Command{
		Use:   "get ID...",
		Short: "Look up accounts by id (exit 1 if one is not found)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, ids []string) error {
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				accounts, err := c.LookupAccounts(ctx, ids)
				if err != nil {
					return err
				}
				if err := a.printFound(accounts, func(w io.Writer) { accountTable(w, accounts) }); err != nil {
					return err
				}
				return notFound(ids, accounts, func(a transport.Account) string { return a.ID })
			})
		},
	})
	return cmd
}

// printFound prints what a lookup found: in a table only if it found
// something (a header alone would read as an answer), in JSON always.
func (a *app) printFound(found any, table func(w io.Writer)) error {
	if a.output == "table" && reflect.ValueOf(found).Len() == 0 {
		return nil
	}
	return a.print(found, table)
}

// accountOptions are the flags of `account create`.
type accountOptions struct {
	account                                    transport.Account
	debitsLimit, creditsLimit, history, closed bool
	metadata                                   []string
}

func newAccountCreateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create one account and print its result code",
		Args:  cobra.NoArgs,
	}
	o := addAccountFlags(cmd.Flags())
	for _, name := range []string{"id", "ledger", "code"} {
		_ = cmd.MarkFlagRequired(name) // cannot fail: the flags exist
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		account, err := o.build(cmd.Flags())
		if err != nil {
			return err
		}
		return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
			results, err := c.CreateAccounts(ctx, []transport.Account{account})
			if err != nil {
				return err
			}
			return a.printResult(results)
		})
	}
	return cmd
}

func addAccountFlags(f *pflag.FlagSet) *accountOptions {
	o := &accountOptions{}
	f.StringVar(&o.account.ID, "id", "", "account id")
	f.Uint32Var(&o.account.Ledger, "ledger", 0, "ledger (currency or asset)")
	f.Uint16Var(&o.account.Code, "code", 0, "account code (its kind)")
	f.Uint32Var(&o.account.Flags, "flags", 0, "flag bits (1 linked, 2 debits_must_not_exceed_credits, 4 credits_must_not_exceed_debits, 8 history, 16 closed)")
	f.BoolVar(&o.debitsLimit, "debits-must-not-exceed-credits", false, "the account may not go below zero (a wallet)")
	f.BoolVar(&o.creditsLimit, "credits-must-not-exceed-debits", false, "the account may not go above zero")
	f.BoolVar(&o.history, "history", false, "keep the account's balance history")
	f.BoolVar(&o.closed, "closed", false, "create the account closed")
	f.StringArrayVar(&o.metadata, "metadata", nil, "metadata pair `key=value` (repeatable)")
	return o
}

// build checks the parsed flags and returns the account to create.
func (o *accountOptions) build(fs *pflag.FlagSet) (transport.Account, error) {
	acc := o.account
	named := map[uint32]bool{
		transport.AccountDebitsMustNotExceedCredits: o.debitsLimit,
		transport.AccountCreditsMustNotExceedDebits: o.creditsLimit,
		transport.AccountHistory:                    o.history,
		transport.AccountClosed:                     o.closed,
	}
	for bit, set := range named {
		if !set {
			continue
		}
		if fs.Changed("flags") {
			return acc, fmt.Errorf("give --flags or the named flags, not both")
		}
		acc.Flags |= bit
	}
	var err error
	acc.Metadata, err = parseMetadata(o.metadata)
	return acc, err
}

// parseMetadata turns repeated key=value flags into a map; nil for none,
// so the account is sent without a metadata field.
func parseMetadata(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--metadata %q: want key=value", p)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("--metadata: key %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// printResult prints the one result of a create and fails the command
// unless it is ok or exists (exists: applied before, so a rerun succeeds).
func (a *app) printResult(results []transport.Result) error {
	if len(results) != 1 {
		return fmt.Errorf("%d results for one event", len(results))
	}
	r := results[0]
	if err := a.print(r, func(w io.Writer) { fmt.Fprintln(w, r.Code) }); err != nil {
		return err
	}
	if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
		return errReported
	}
	return nil
}

// notFound fails the command when a lookup left out some of ids.
func notFound[T any](ids []string, found []T, id func(T) string) error {
	seen := make(map[string]bool, len(found))
	for _, f := range found {
		seen[id(f)] = true
	}
	var missing []string
	for _, i := range ids {
		if !seen[i] {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("not found: %s", strings.Join(missing, " "))
	}
	return nil
}

func accountTable(w io.Writer, accounts []transport.Account) {
	fmt.Fprintln(w, "ID\tLEDGER\tCODE\tFLAGS\tDEBITS_PENDING\tDEBITS_POSTED\tCREDITS_PENDING\tCREDITS_POSTED\tTIMESTAMP\tMETADATA")
	for _, a := range accounts {
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", a.ID, a.Ledger, a.Code, flagString(a.Flags, accountFlagNames),
			a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted, timestamp(a.Timestamp), metadataString(a.Metadata))
	}
}

// timestamp shows a cluster timestamp (nanoseconds since the Unix epoch)
// as RFC 3339 in UTC, to the nanosecond, so that it still tells events
// apart; JSON keeps the integer.
func timestamp(ns uint64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, int64(ns)).UTC().Format(time.RFC3339Nano)
}

// flagString names the set bits, bit i being names[i]; unknown bits show
// as numbers so nothing is hidden.
func flagString(flags uint32, names []string) string {
	var parts []string
	for i := range 32 {
		if flags&(1<<i) == 0 {
			continue
		}
		if i < len(names) {
			parts = append(parts, names[i])
		} else {
			parts = append(parts, fmt.Sprint(uint32(1)<<i))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "|")
}

func metadataString(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}
