package sim

import (
	"bytes"
	"fmt"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Checker holds the global view the checks need: every attempt of every
// cross-shard transfer (from the outputs of the real state machines), and
// each shard's balances after the last command it checked. A command is
// checked when it is first applied, on whichever replica; replicas that
// apply it later are compared by state hash.
type Checker struct {
	w    *World
	resv map[resvKey]*resv
	// open: unresolved attempts per debit shard.
	open map[uint32]map[resvKey]*resv
	// Per ledger: amounts credited on credit shards whose debit is not
	// posted yet, and amounts reserved and unresolved.
	creditedInFlight map[uint32]uint64
	reserved         map[uint32]uint64
	totals           []map[uint32]transport.LedgerTotals
	lastTS           []uint64
}

type resvKey struct {
	ds      uint32
	id      string
	attempt uint64
}

// resv is one attempt of a cross-shard transfer, as the checks saw it.
type resv struct {
	t        transport.Transfer
	cs       uint32
	credited bool
	resolved bool
	decision shard.Outcome // the credit shard's first decision
	code     transport.Code
}

func newChecker(w *World) *Checker {
	c := &Checker{w: w, resv: map[resvKey]*resv{}, open: map[uint32]map[resvKey]*resv{},
		creditedInFlight: map[uint32]uint64{}, reserved: map[uint32]uint64{}}
	for i := range w.p.Shards {
		c.totals = append(c.totals, map[uint32]transport.LedgerTotals{})
		c.open[uint32(i+1)] = map[resvKey]*resv{}
	}
	c.lastTS = make([]uint64, w.p.Shards)
	return c
}

type delta struct{ debitsPosted, creditsPosted, debitsPending int64 }

func (c *Checker) bad(check, format string, args ...any) { c.w.fail(check, format, args...) }

// command checks one command just applied for the first time on shard g:
// its outputs against the rules of the saga, the balance changes against
// the outputs, then global conservation, limits and timestamps.
func (c *Checker) command(g *Group, cmd *shard.Command, out *shard.Output, st *shard.State) {
	w := c.w
	if w.failure != nil {
		return
	}
	deltas := map[uint32]*delta{}
	d := func(ledger uint32) *delta {
		if deltas[ledger] == nil {
			deltas[ledger] = &delta{}
		}
		return deltas[ledger]
	}
	var touched []string
	var stamps []uint64
	what := func() string {
		var b bytes.Buffer
		describeCommand(&b, cmd)
		return fmt.Sprintf("%s index %d %s", g.name(), g.checked+1, b.String())
	}
	switch cmd.Kind {
	case shard.KindCreateAccounts:
		events := out.Events[0]
		if len(events) != len(cmd.Accounts) {
			c.bad("output", "%s: %d results for %d accounts", what(), len(events), len(cmd.Accounts))
			return
		}
		for _, e := range events {
			if e.Code == transport.CodeOK {
				stamps = append(stamps, e.Timestamp)
			}
		}
	case shard.KindCreateTransfers:
		events := out.Events[0]
		if len(events) != len(cmd.Transfers) {
			c.bad("output", "%s: %d results for %d transfers", what(), len(events), len(cmd.Transfers))
			return
		}
		reserved := 0
		w.stats.Transfers += uint64(len(events))
		for i, e := range events {
			t := &cmd.Transfers[i]
			cs := cmd.CreditShards[i]
			switch {
			case e.InFlight && !e.Retry:
				key := resvKey{g.id, t.ID, e.Attempt}
				if cs == g.id {
					c.bad("saga", "%s: %s reserved for a credit on its own shard", what(), t.ID)
				}
				if c.resv[key] != nil {
					c.bad("saga", "%s: attempt %d of %s reserved twice", what(), e.Attempt, t.ID)
					return
				}
				if reserved >= len(out.Reserved) || out.Reserved[reserved].Transfer.ID != t.ID ||
					out.Reserved[reserved].Transfer.Timestamp != e.Attempt || out.Reserved[reserved].CreditShard != cs ||
					!sameFields(&out.Reserved[reserved].Transfer, t) {
					c.bad("output", "%s: %s reserved without its outbox row in Output.Reserved", what(), t.ID)
					return
				}
				reserved++
				w.stats.CrossShard++
				rv := &resv{t: *t, cs: cs}
				rv.t.Timestamp = e.Attempt
				c.resv[key] = rv
				c.open[g.id][key] = rv
				c.reserved[t.Ledger] += t.Amount
				d(t.Ledger).debitsPending += int64(t.Amount)
				stamps = append(stamps, e.Attempt)
				touched = append(touched, t.DebitAccountID)
			case e.InFlight:
				rv := c.open[g.id][resvKey{g.id, t.ID, e.Attempt}]
				if rv == nil || !sameFields(&rv.t, t) {
					c.bad("saga", "%s: %s joined attempt %d, which is not in flight with these fields", what(), t.ID, e.Attempt)
					return
				}
			case e.Code == transport.CodeOK:
				w.stats.Posted++
				if cs != g.id {
					c.bad("saga", "%s: %s posted at once although its credit account is on shard %d", what(), t.ID, cs)
				}
				dl := d(t.Ledger)
				dl.debitsPosted += int64(t.Amount)
				dl.creditsPosted += int64(t.Amount)
				stamps = append(stamps, e.Timestamp)
				touched = append(touched, t.DebitAccountID, t.CreditAccountID)
			}
		}
		if reserved != len(out.Reserved) {
			c.bad("output", "%s: %d outbox rows reported, %d reservations", what(), len(out.Reserved), reserved)
			return
		}
	case shard.KindCredit, shard.KindAbort:
		answers := out.Answers[0]
		if len(answers) != len(cmd.Credits) {
			c.bad("output", "%s: %d answers for %d credits", what(), len(answers), len(cmd.Credits))
			return
		}
		abort := cmd.Kind == shard.KindAbort
		for i, a := range answers {
			cr := &cmd.Credits[i]
			key := resvKey{cr.DebitShard, cr.Transfer.ID, cr.Transfer.Timestamp}
			if a.ID != key.id || a.Attempt != key.attempt {
				c.bad("output", "%s: answer %d is for %s attempt %d", what(), i, a.ID, a.Attempt)
				return
			}
			rv := c.resv[key]
			if rv == nil || rv.cs != g.id || !sameFields(&rv.t, &cr.Transfer) {
				c.bad("saga", "%s: credit for %s attempt %d of shard %d, which was never reserved for this shard", what(), key.id, key.attempt, key.ds)
				return
			}
			if a.Outcome == shard.OutcomeStale {
				if !rv.resolved {
					c.bad("saga", "%s: %s attempt %d answered stale while unresolved at shard %d: it can never finish", what(), key.id, key.attempt, key.ds)
				}
				continue
			}
			if rv.decision != 0 {
				if a.Outcome != rv.decision || a.Code != rv.code {
					c.bad("saga", "%s: %s attempt %d answered %d/%s, decided %d/%s before (first writer wins)", what(), key.id, key.attempt, a.Outcome, a.Code, rv.decision, rv.code)
				}
				continue
			}
			rv.decision, rv.code = a.Outcome, a.Code
			switch a.Outcome {
			case shard.OutcomeCredited:
				if abort {
					c.bad("saga", "%s: an abort credited %s", what(), key.id)
				}
				if rv.resolved {
					c.bad("saga", "%s: %s attempt %d credited after its debit shard voided it: money created", what(), key.id, key.attempt)
				}
				rv.credited = true
				d(rv.t.Ledger).creditsPosted += int64(rv.t.Amount)
				if !rv.resolved {
					c.creditedInFlight[rv.t.Ledger] += rv.t.Amount
				}
				stamps = append(stamps, a.Timestamp)
				touched = append(touched, rv.t.CreditAccountID)
			case shard.OutcomeRefused:
				if abort || a.Code == transport.CodeOK {
					c.bad("saga", "%s: %s refused with %s by an abort=%v", what(), key.id, a.Code, abort)
				}
			case shard.OutcomeAborted:
				if !abort {
					c.bad("saga", "%s: a credit aborted %s", what(), key.id)
				}
			default:
				c.bad("output", "%s: outcome %d", what(), a.Outcome)
			}
		}
	case shard.KindResolve:
		for _, r := range out.Resolved {
			key := resvKey{g.id, r.ID, r.Attempt}
			rv := c.open[g.id][key]
			if rv == nil {
				c.bad("saga", "%s: resolved %s attempt %d, which is not in flight", what(), r.ID, r.Attempt)
				return
			}
			delete(c.open[g.id], key)
			rv.resolved = true
			c.reserved[rv.t.Ledger] -= rv.t.Amount
			dl := d(rv.t.Ledger)
			dl.debitsPending -= int64(rv.t.Amount)
			touched = append(touched, rv.t.DebitAccountID)
			posted := !r.Aborted && r.Code == transport.CodeOK
			switch {
			case posted && !rv.credited:
				c.bad("saga", "%s: %s attempt %d posted its debit without a credit: money destroyed", what(), r.ID, r.Attempt)
			case posted:
				w.stats.Posted++
				dl.debitsPosted += int64(rv.t.Amount)
				c.creditedInFlight[rv.t.Ledger] -= rv.t.Amount
			case rv.credited:
				c.bad("saga", "%s: %s attempt %d voided although its credit was applied: money created", what(), r.ID, r.Attempt)
			default:
				w.stats.Voided++
			}
			// The resolution must be the credit shard's decision.
			switch {
			case rv.decision == 0:
				c.bad("saga", "%s: %s attempt %d resolved (aborted=%v %s) before its credit shard decided", what(), r.ID, r.Attempt, r.Aborted, r.Code)
			case r.Aborted != (rv.decision == shard.OutcomeAborted),
				!r.Aborted && posted != (rv.decision == shard.OutcomeCredited),
				rv.decision == shard.OutcomeRefused && r.Code != rv.code:
				c.bad("saga", "%s: %s attempt %d resolved aborted=%v %s, its credit shard decided %d/%s", what(), r.ID, r.Attempt, r.Aborted, r.Code, rv.decision, rv.code)
			}
		}
	case shard.KindForget:
		f := cmd.Forget
		for key := range c.open[f.DebitShard] {
			if key.attempt < f.Below {
				c.bad("forget", "%s: watermark of shard %d at %d, above its unresolved attempt %d of %s", what(), f.DebitShard, f.Below, key.attempt, key.id)
				return
			}
		}
	}
	if w.failure != nil {
		return
	}
	c.balances(g, st, deltas, what)
	c.limits(g, st, touched, what)
	for _, ts := range stamps {
		if ts <= c.lastTS[g.id-1] {
			c.bad("timestamp", "%s: timestamp %d after %d", what(), ts, c.lastTS[g.id-1])
			return
		}
		c.lastTS[g.id-1] = ts
	}
}

// balances checks the shard's totals moved exactly as the outputs say, then
// conservation across shards: per ledger, credits posted = debits posted +
// credits applied whose debit is still in flight; pending debits = the
// amounts reserved and unresolved; no pending credits.
func (c *Checker) balances(g *Group, st *shard.State, deltas map[uint32]*delta, what func() string) {
	before := c.totals[g.id-1]
	after := make(map[uint32]transport.LedgerTotals, len(before))
	for _, t := range st.Totals() {
		after[t.Ledger] = t
	}
	for l, a := range after {
		b := before[l]
		dl := deltas[l]
		if dl == nil {
			dl = &delta{}
		}
		if int64(a.DebitsPosted-b.DebitsPosted) != dl.debitsPosted || int64(a.CreditsPosted-b.CreditsPosted) != dl.creditsPosted ||
			int64(a.DebitsPending-b.DebitsPending) != dl.debitsPending || a.CreditsPending != 0 {
			c.bad("balances", "%s: ledger %d moved debits posted %+d credits posted %+d debits pending %+d (credits pending %d); the outputs say %+d %+d %+d",
				what(), l, int64(a.DebitsPosted-b.DebitsPosted), int64(a.CreditsPosted-b.CreditsPosted), int64(a.DebitsPending-b.DebitsPending),
				a.CreditsPending, dl.debitsPosted, dl.creditsPosted, dl.debitsPending)
			return
		}
	}
	c.totals[g.id-1] = after
	sum := map[uint32]*transport.LedgerTotals{}
	for _, tm := range c.totals {
		for l, t := range tm {
			s := sum[l]
			if s == nil {
				s = &transport.LedgerTotals{}
				sum[l] = s
			}
			s.DebitsPosted += t.DebitsPosted
			s.CreditsPosted += t.CreditsPosted
			s.DebitsPending += t.DebitsPending
		}
	}
	for l, s := range sum {
		if s.CreditsPosted != s.DebitsPosted+c.creditedInFlight[l] || s.DebitsPending != c.reserved[l] {
			c.bad("conservation", "after %s: ledger %d has credits posted %d, debits posted %d + credited in flight %d; debits pending %d, reserved %d",
				what(), l, s.CreditsPosted, s.DebitsPosted, c.creditedInFlight[l], s.DebitsPending, c.reserved[l])
			return
		}
	}
}

// limits checks the accounts the command touched on this shard.
func (c *Checker) limits(g *Group, st *shard.State, ids []string, what func() string) {
	if len(ids) == 0 {
		return
	}
	for _, a := range st.LookupAccounts(ids) {
		if a.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && a.DebitsPending+a.DebitsPosted > a.CreditsPosted {
			c.bad("limits", "%s: %s has debits %d pending + %d posted > credits %d", what(), a.ID, a.DebitsPending, a.DebitsPosted, a.CreditsPosted)
			return
		}
		if a.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && a.CreditsPending+a.CreditsPosted > a.DebitsPosted {
			c.bad("limits", "%s: %s has credits %d > debits %d posted", what(), a.ID, a.CreditsPosted, a.DebitsPosted)
			return
		}
	}
}

// finalChecks run once the liveness phase is quiet.
func (w *World) finalChecks() {
	c := w.chk
	for _, g := range w.groups {
		if n := len(c.open[g.id]); n > 0 {
			w.fail("liveness", "%s: %d attempts unresolved at quiescence", g.name(), n)
			return
		}
		// Every replica at the same index, with the same state; and a
		// replay of the whole log from nothing gives it again.
		replay := shard.New(g.id, nil)
		for i := range g.log {
			e := &g.log[i]
			for j := range e.Commands {
				replay.Apply(&shard.Entry{Timestamp: e.Timestamp, Commands: e.Commands[j : j+1]})
			}
		}
		want := replay.Hash()
		for _, r := range g.reps {
			if h := r.st.Hash(); h != want {
				w.fail("replay", "%s at index %d: state hash %016x, a replay of the log gives %016x", r.name(), r.applied, h, want)
				return
			}
		}
		w.digest = w.digest*31 + want
	}
	for l, v := range c.creditedInFlight {
		if v != 0 || c.reserved[l] != 0 {
			w.fail("conservation", "ledger %d: %d credited in flight, %d reserved at quiescence", l, v, c.reserved[l])
			return
		}
	}
	sum := map[uint32][2]uint64{}
	for _, g := range w.groups {
		for _, t := range g.leader.r.st.Totals() {
			s := sum[t.Ledger]
			s[0] += t.DebitsPosted
			s[1] += t.CreditsPosted
			sum[t.Ledger] = s
			if t.DebitsPending != 0 || t.CreditsPending != 0 {
				w.fail("conservation", "%s ledger %d: pending debits %d credits %d at quiescence", g.name(), t.Ledger, t.DebitsPending, t.CreditsPending)
				return
			}
		}
	}
	for _, l := range sortedKeys(sum) {
		if s := sum[l]; s[0] != s[1] {
			w.fail("conservation", "ledger %d: debits posted %d, credits posted %d at quiescence", l, s[0], s[1])
			return
		}
	}
	w.ref.settle()
	for _, c := range w.clients {
		w.digest = w.digest*31 + uint64(c.seq)
	}
}
