package check

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"
	"github.com/ledgerd/ledgerd/transport"
)

// The transfer flags the replay knows. A transfer with any other flag
// (linked, closing_*) is reported unsupported rather than passed unjudged.
const (
	resolveFlags   = transport.TransferPostPendingTransfer | transport.TransferVoidPendingTransfer
	balancingFlags = transport.TransferBalancingDebit | transport.TransferBalancingCredit
	supportedFlags = transport.TransferPending | resolveFlags | balancingFlags
)

// replay applies the final transfers, in timestamp order, to zero balances
// with the ledger's semantics (docs/protocol.md): a plain or balancing
// transfer posts its (clamped) amount; a pending one reserves it in
// debits_pending and credits_pending; a post releases the reservation and
// posts its own amount (stored resolved: a post sent with 0 is stored with
// the whole amount); a void releases it; a pending transfer left open
// whose state is expired releases it at the end. A post and its pending
// transfer are stamped by one shard, so timestamp order puts the pending
// one first. Each posting is also recorded as an effect for linearize.
func (c *checker) replay() {
	all := slices.Collect(maps.Values(c.final))
	slices.SortFunc(all, func(a, b *transport.Transfer) int {
		return cmp.Or(cmp.Compare(a.Timestamp, b.Timestamp), strings.Compare(a.ID, b.ID))
	})
	open := map[string]*transport.Transfer{}       // pending transfers not yet resolved
	resolvedBy := map[string]*transport.Transfer{} // pending id -> its post or void
	for _, t := range all {
		switch {
		case t.Flags&^supportedFlags != 0:
			c.violate(KindUnsupported, "transfer %s has flags %#x, which the checker does not replay (it knows pending, post, void and balancing)", t.ID, t.Flags)
		case t.Flags&resolveFlags != 0:
			c.resolve(t, open, resolvedBy)
		case t.Flags&transport.TransferPending != 0:
			if dr, cr := c.accountsOf(t, t); dr != nil {
				dr.DebitsPending += t.Amount
				cr.CreditsPending += t.Amount
				open[t.ID] = t
			}
		default:
			c.wantState(t, transport.StatePosted)
			c.post(t, t)
		}
	}
	for _, p := range all {
		if _, ok := open[p.ID]; !ok {
			continue
		}
		switch p.State {
		case transport.StateExpired:
			dr, cr := c.balances[p.DebitAccountID], c.balances[p.CreditAccountID]
			dr.DebitsPending -= p.Amount
			cr.CreditsPending -= p.Amount
		case transport.StatePending:
		default:
			c.violate(KindReplay, "pending transfer %s is %q in the final lookup, but the lookup holds no post or void of it", p.ID, p.State)
		}
	}
}

// resolve replays the post or void t of an open pending transfer.
func (c *checker) resolve(t *transport.Transfer, open, resolvedBy map[string]*transport.Transfer) {
	p := open[t.PendingID]
	if p == nil {
		f := c.final[t.PendingID]
		switch {
		case f == nil:
			c.violate(KindReplay, "transfer %s resolves pending transfer %s, which the final lookup does not hold", t.ID, t.PendingID)
		case resolvedBy[f.ID] != nil:
			c.violate(KindReplay, "transfers %s and %s both resolve pending transfer %s", resolvedBy[f.ID].ID, t.ID, f.ID)
		case f.Flags&transport.TransferPending == 0:
			c.violate(KindReplay, "transfer %s resolves %s, which is not a pending transfer", t.ID, f.ID)
		case f.Flags&^supportedFlags == 0 && f.Timestamp > t.Timestamp:
			c.violate(KindReplay, "transfer %s (timestamp %d) resolves pending transfer %s, created later (timestamp %d)", t.ID, t.Timestamp, f.ID, f.Timestamp)
		}
		return
	}
	delete(open, p.ID)
	resolvedBy[p.ID] = t
	dr, cr := c.balances[p.DebitAccountID], c.balances[p.CreditAccountID]
	dr.DebitsPending -= p.Amount
	cr.CreditsPending -= p.Amount
	if t.Flags&transport.TransferPostPendingTransfer != 0 {
		if t.Amount > p.Amount {
			c.violate(KindReplay, "post %s posts %d, more than pending transfer %s holds (%d)", t.ID, t.Amount, p.ID, p.Amount)
		}
		c.wantState(t, transport.StatePosted)
		c.wantState(p, transport.StatePosted)
		c.post(t, p)
		return
	}
	if t.Amount != p.Amount {
		c.violate(KindReplay, "void %s is stored with amount %d, not pending transfer %s's %d", t.ID, t.Amount, p.ID, p.Amount)
	}
	c.wantState(t, transport.StateVoided)
	c.wantState(p, transport.StateVoided)
}

// post adds t's amount to the posted totals of accounts's accounts (t's own,
// or for a post, its pending transfer's), and records the effect on each
// for linearize, in the window in which t was applied.
func (c *checker) post(t, accounts *transport.Transfer) {
	dr, cr := c.accountsOf(t, accounts)
	if dr == nil {
		return
	}
	dr.DebitsPosted += t.Amount
	cr.CreditsPosted += t.Amount
	call, ret, client := int64(0), int64(never), 0 // never sent: already a violation
	if s := c.sent[t.ID]; s != nil {
		call, ret, client = s.call, s.ret, s.client
	}
	for _, e := range []struct {
		account string
		effect  effect
	}{{dr.ID, effect{id: t.ID, debits: t.Amount}}, {cr.ID, effect{id: t.ID, credits: t.Amount}}} {
		c.effects[e.account] = append(c.effects[e.account], porcupine.Operation{ClientId: client, Call: call, Return: ret, Input: e.effect})
	}
}

// accountsOf returns the replay's balances of accounts's two accounts, or
// nils if one was not created before the run.
func (c *checker) accountsOf(t, accounts *transport.Transfer) (dr, cr *transport.Account) {
	dr, cr = c.balances[accounts.DebitAccountID], c.balances[accounts.CreditAccountID]
	for _, id := range []string{accounts.DebitAccountID, accounts.CreditAccountID} {
		if c.balances[id] == nil {
			c.violate(KindReplay, "transfer %s is applied to account %q, which the history did not create", t.ID, id)
			return nil, nil
		}
	}
	return dr, cr
}

func (c *checker) wantState(t *transport.Transfer, state string) {
	if t.State != state {
		c.violate(KindReplay, "transfer %s is %q in the final lookup, but the replay makes it %q", t.ID, t.State, state)
	}
}

// compareFinal checks the final accounts against the replay (promise 4)
// and their limits (promise 5).
func (c *checker) compareFinal() {
	final := map[string]*transport.Account{}
	for k := range c.h.FinalAccounts {
		final[c.h.FinalAccounts[k].ID] = &c.h.FinalAccounts[k]
	}
	for _, a := range c.h.Accounts {
		f, want := final[a.ID], c.balances[a.ID]
		if f == nil {
			c.violate(KindMissing, "account %s, created before the run, is missing from the final lookup", a.ID)
			continue
		}
		var diffs []string
		for _, b := range []struct {
			name      string
			got, want uint64
		}{
			{"debits_pending", f.DebitsPending, want.DebitsPending},
			{"debits_posted", f.DebitsPosted, want.DebitsPosted},
			{"credits_pending", f.CreditsPending, want.CreditsPending},
			{"credits_posted", f.CreditsPosted, want.CreditsPosted},
		} {
			if b.got != b.want {
				diffs = append(diffs, fmt.Sprintf("%s is %d in the final lookup but %d by the replay of the applied transfers", b.name, b.got, b.want))
			}
		}
		if len(diffs) > 0 {
			c.violate(KindBalance, "account %s: %s", a.ID, strings.Join(diffs, "; "))
		}
		if broken := limitBroken(a.Flags, f); broken != "" {
			c.violate(KindLimit, "account %s in the final lookup: %s", a.ID, broken)
		}
	}
}
