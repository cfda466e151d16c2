package sim

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Checker holds the global view the checks need: every attempt of every
// cross-shard transfer and every pending transfer (from the outputs of the
// real state machines), and each shard's balances after the last command it
// checked. A command is checked when it is first applied, on whichever
// replica; replicas that apply it later are compared by state hash.
type Checker struct {
	w    *World
	resv map[resvKey]*resv
	// open: unresolved attempts per debit shard (reservations and the
	// settlements of pending transfers across shards).
	open map[uint32]map[resvKey]*resv
	// Per ledger: amounts credited on credit shards whose debit is not
	// posted yet, amounts reserved and unresolved, and amounts posted on
	// debit shards whose settlement has not reached the credit shard yet.
	creditedInFlight map[uint32]uint64
	reserved         map[uint32]uint64
	settling         map[uint32]uint64
	totals           []map[uint32]transport.LedgerTotals
	lastTS           []uint64
	// pending: per shard, every pending transfer applied there (opened,
	// for one across shards), by id; pendingOpen: per ledger, the amounts
	// of the open ones (their debit halves).
	pending     []map[string]*pendingRec
	pendingOpen map[uint32]uint64
	// held: the credit halves of pending transfers across shards, by
	// debit shard and id, from their credit to their settlement;
	// creditsHeld: per ledger, the amounts of the open pending transfers
	// on one shard and of the credit halves held.
	held        map[idKey]*heldCredit
	creditsHeld map[uint32]uint64
	// landed: transfers (by debit shard and id) whose credit half has been
	// applied on their credit shard: a credit, a pending credit, or the
	// settlement of a post or void. A client may hear ok only then.
	landed map[idKey]bool
	// settlements: the settlement of each post or void of a pending
	// transfer across shards, by debit shard and the post's id.
	settlements map[idKey]*resv
	// Bounds of each shard's log time (the shard's last timestamp): logLow
	// the largest timestamp its outputs showed, logHigh at least the
	// largest it can have given (outputs do not show every tick).
	logLow, logHigh []uint64
	// ch: linked chains across shards (chaincheck.go).
	ch chainState
}

// pendingRec is a pending transfer as the checks saw it applied.
type pendingRec struct {
	t        transport.Transfer // Timestamp: when it was applied
	deadline uint64             // 0: no timeout
	state    string
	by       string // the post or void that resolved it
	remote   uint32 // the credit shard of a pending transfer across shards (0: this one)
}

// heldCredit is the credit half of a pending transfer across shards on its
// credit shard, as the checks saw it credited.
type heldCredit struct {
	t         transport.Transfer // the pending transfer (Timestamp: the attempt)
	cs        uint32
	open      bool
	settledBy string // the settlement (post, void, or the expiry under the pending id)
}

type idKey struct {
	ds uint32
	id string
}

type resvKey struct {
	ds      uint32
	id      string
	attempt uint64
}

// resv is one attempt of a cross-shard transfer, or the settlement of a
// post, void or expiry of a pending transfer across shards (settle), as the
// checks saw it. A settlement's t is its outbox row: the post or void as
// stored, or the expiry's void under the pending id.
type resv struct {
	t        transport.Transfer
	ds, cs   uint32
	settle   bool
	credited bool
	resolved bool
	decision shard.Outcome // the credit shard's first decision
	code     transport.Code
	// answered: the amount the credit shard's first decision credited,
	// when a balancing_credit clamped it (0: as sent, t.Amount).
	answered uint64
}

// amount is what the attempt moves once credited.
func (rv *resv) amount() uint64 {
	if rv.answered != 0 {
		return rv.answered
	}
	return rv.t.Amount
}

func newChecker(w *World) *Checker {
	c := &Checker{w: w, resv: map[resvKey]*resv{}, open: map[uint32]map[resvKey]*resv{},
		creditedInFlight: map[uint32]uint64{}, reserved: map[uint32]uint64{}, settling: map[uint32]uint64{},
		pendingOpen: map[uint32]uint64{}, held: map[idKey]*heldCredit{}, creditsHeld: map[uint32]uint64{},
		landed: map[idKey]bool{}, settlements: map[idKey]*resv{}, ch: newChainState()}
	for i := range w.p.Shards {
		c.totals = append(c.totals, map[uint32]transport.LedgerTotals{})
		c.open[uint32(i+1)] = map[resvKey]*resv{}
		c.pending = append(c.pending, map[string]*pendingRec{})
	}
	c.lastTS = make([]uint64, w.p.Shards)
	c.logLow, c.logHigh = make([]uint64, w.p.Shards), make([]uint64, w.p.Shards)
	return c
}

type delta struct{ debitsPosted, creditsPosted, debitsPending, creditsPending int64 }

func (c *Checker) bad(check, format string, args ...any) { c.w.fail(check, format, args...) }

// command checks one command just applied for the first time on shard g,
// in an entry stamped ts: its outputs against the rules of the saga and of
// two-phase transfers, the balance changes against the outputs, then
// global conservation, limits and timestamps.
func (c *Checker) command(g *Group, ts uint64, cmd *shard.Command, out *shard.Output, st *shard.State) {
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
		for i, e := range events {
			if e.Code != transport.CodeOK {
				continue
			}
			if c.answeredAsFirst(g, e) {
				a := st.LookupAccounts([]string{cmd.Accounts[i].ID})
				if len(a) != 1 || a[0].Timestamp != e.Timestamp {
					c.bad("output", "%s: account %s answered ok at %d as its request's first application, but stored as %+v", what(), cmd.Accounts[i].ID, rel(e.Timestamp), a)
					return
				}
				continue
			}
			stamps = append(stamps, e.Timestamp)
		}
	case shard.KindCreateTransfers:
		events := out.Events[0]
		if len(events) != len(cmd.Transfers) {
			c.bad("output", "%s: %d results for %d transfers", what(), len(events), len(cmd.Transfers))
			return
		}
		reserved := 0
		w.stats.Transfers += uint64(len(events))
		remote := remoteChains(g, cmd)
		for i, e := range events {
			t := &cmd.Transfers[i]
			cs := cmd.CreditShards[i]
			if remote[i] >= 0 {
				// A chain across shards coordinated here: checked whole
				// at its first leg.
				if remote[i] == i {
					j := i + 1
					for j < len(events) && remote[j] == i {
						j++
					}
					if !c.chainBegun(g, cmd, events, i, j, out, &reserved, &stamps, what) {
						return
					}
				}
				continue
			}
			// A re-send by the same request joins its own attempt answered
			// as that attempt, without Retry (shard/requests.go): the
			// checks know the attempt.
			joined := e.InFlight && (e.Retry || c.w.reqIDs && c.resv[resvKey{g.id, t.ID, e.Attempt}] != nil)
			if c.answeredAsFirst(g, e) {
				if f := st.LookupTransfers([]string{t.ID}); len(f) != 1 || f[0].Timestamp != e.Timestamp {
					c.bad("output", "%s: %s answered ok at %d as its request's first application, but stored as %+v", what(), t.ID, rel(e.Timestamp), f)
					return
				}
				continue
			}
			switch {
			case e.InFlight && !joined && t.Flags&resolves != 0:
				// A post or void of a pending transfer across shards:
				// applied on the debit side now, its settlement in flight.
				if reserved >= len(out.Reserved) {
					c.bad("output", "%s: %s went in flight without its outbox row in Output.Reserved", what(), t.ID)
					return
				}
				p := c.resolution(g, t, e.Attempt, what)
				if p == nil {
					return
				}
				if !c.settlement(g, t, e.Attempt, p, &out.Reserved[reserved], what) {
					return
				}
				reserved++
				dl := d(p.t.Ledger)
				dl.debitsPending -= int64(p.t.Amount)
				if isPost(t) {
					dl.debitsPosted += int64(effAmount(t, &p.t))
				}
				stamps = append(stamps, e.Attempt)
				touched = append(touched, p.t.DebitAccountID)
			case e.InFlight && !joined:
				key := resvKey{g.id, t.ID, e.Attempt}
				if t.Flags&^(transport.TransferPending|balancing) != 0 {
					c.bad("two-phase", "%s: %s (flags %d) went in flight", what(), t.ID, t.Flags)
					return
				}
				if cs == g.id {
					c.bad("saga", "%s: %s reserved for a credit on its own shard", what(), t.ID)
				}
				if c.resv[key] != nil {
					c.bad("saga", "%s: attempt %d of %s reserved twice", what(), e.Attempt, t.ID)
					return
				}
				if reserved >= len(out.Reserved) || out.Reserved[reserved].Transfer.ID != t.ID ||
					out.Reserved[reserved].Transfer.Timestamp != e.Attempt || out.Reserved[reserved].CreditShard != cs ||
					!sameOrClamped(&out.Reserved[reserved].Transfer, t) {
					c.bad("output", "%s: %s reserved without its outbox row in Output.Reserved", what(), t.ID)
					return
				}
				// A balancing_debit is clamped before it is reserved: the
				// row carries the amount reserved.
				amount := out.Reserved[reserved].Transfer.Amount
				if isBalancing(t) && !c.balancingDebit(g, cmd, events, i, st, amount, what) {
					return
				}
				reserved++
				w.stats.CrossShard++
				rv := &resv{t: *t, ds: g.id, cs: cs}
				rv.t.Timestamp, rv.t.Amount = e.Attempt, amount
				c.resv[key] = rv
				c.open[g.id][key] = rv
				c.reserved[t.Ledger] += amount
				d(t.Ledger).debitsPending += int64(amount)
				stamps = append(stamps, e.Attempt)
				touched = append(touched, t.DebitAccountID)
			case e.InFlight:
				rv := c.open[g.id][resvKey{g.id, t.ID, e.Attempt}]
				if rv == nil || !sameOrClamped(&rv.t, t) && !c.repeatsSettlement(g, rv, t) {
					c.bad("saga", "%s: %s joined attempt %d, which is not in flight with these fields", what(), t.ID, e.Attempt)
					return
				}
				if rv.settle {
					w.reached["cross-shard "+resolutionKind(isPost(t))+" joined its settlement in flight"]++
				}
				if isBalancing(t) && rv.t.Amount < t.Amount {
					w.reached["balancing across shards joined its clamped reservation"]++
				}
			case e.Code == transport.CodeOK && isPending(t):
				if cs != g.id {
					c.bad("two-phase", "%s: pending %s applied at once although its credit account is on shard %d", what(), t.ID, cs)
					return
				}
				if c.pending[g.id-1][t.ID] != nil {
					c.bad("two-phase", "%s: pending %s applied twice", what(), t.ID)
					return
				}
				w.stats.Pending++
				p := &pendingRec{t: *t, state: transport.StatePending}
				p.t.Timestamp = e.Timestamp
				p.deadline = deadline(t, e.Timestamp)
				c.pending[g.id-1][t.ID] = p
				c.pendingOpen[t.Ledger] += t.Amount
				c.creditsHeld[t.Ledger] += t.Amount
				dl := d(t.Ledger)
				dl.debitsPending += int64(t.Amount)
				dl.creditsPending += int64(t.Amount)
				stamps = append(stamps, e.Timestamp)
				touched = append(touched, t.DebitAccountID, t.CreditAccountID)
			case e.Code == transport.CodeOK && t.Flags&resolves != 0:
				p := c.resolution(g, t, e.Timestamp, what)
				if p == nil {
					return
				}
				if p.remote != 0 {
					c.bad("two-phase", "%s: %s of %s answered ok at once, although its credit half is on shard %d", what(), t.ID, t.PendingID, p.remote)
					return
				}
				c.creditsHeld[p.t.Ledger] -= p.t.Amount
				dl := d(p.t.Ledger)
				dl.debitsPending -= int64(p.t.Amount)
				dl.creditsPending -= int64(p.t.Amount)
				if isPost(t) {
					dl.debitsPosted += int64(effAmount(t, &p.t))
					dl.creditsPosted += int64(effAmount(t, &p.t))
				}
				stamps = append(stamps, e.Timestamp)
				touched = append(touched, p.t.DebitAccountID, p.t.CreditAccountID)
			case e.Code == transport.CodeExceedsCredits && t.Flags&transport.TransferBalancingDebit != 0 && t.Flags&transport.TransferLinked == 0:
				// Refused only when it would move nothing.
				if !c.noRoom(g, cmd, events, i, st, t.DebitAccountID, what) {
					return
				}
			case e.Code == transport.CodePendingTransferExpired:
				if p := c.pending[g.id-1][t.PendingID]; p != nil && p.state == transport.StatePending {
					w.reached["refused expired before its expiry entry"]++
				}
			case e.Code == transport.CodeOK:
				w.stats.Posted++
				if cs != g.id {
					c.bad("saga", "%s: %s posted at once although its credit account is on shard %d", what(), t.ID, cs)
				}
				amount := t.Amount
				if isBalancing(t) {
					if amount = c.balancing(g, cmd, events, i, st, what); amount == 0 {
						return
					}
				}
				dl := d(t.Ledger)
				dl.debitsPosted += int64(amount)
				dl.creditsPosted += int64(amount)
				stamps = append(stamps, e.Timestamp)
				touched = append(touched, t.DebitAccountID, t.CreditAccountID)
			}
		}
		if reserved != len(out.Reserved) {
			c.bad("output", "%s: %d outbox rows reported, %d reservations", what(), len(out.Reserved), reserved)
			return
		}
		if !c.chains(cmd, events, remote, st, c.lastTS[g.id-1], what) {
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
			if cr.Part != nil {
				if !c.chainPart(g, cr, a, abort, st, d, &stamps, &touched, what) {
					return
				}
				continue
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
				if a.Outcome != rv.decision || a.Code != rv.code || a.Amount != rv.answered {
					c.bad("saga", "%s: %s attempt %d answered %d/%s amount %d, decided %d/%s amount %d before (first writer wins)",
						what(), key.id, key.attempt, a.Outcome, a.Code, a.Amount, rv.decision, rv.code, rv.answered)
				}
				continue
			}
			rv.decision, rv.code = a.Outcome, a.Code
			if a.Amount != 0 && (a.Outcome != shard.OutcomeCredited || rv.settle || rv.t.Flags&transport.TransferBalancingCredit == 0 || a.Amount >= rv.t.Amount) {
				c.bad("balancing", "%s: %s attempt %d (flags %d, amount %d) answered %d/%s with amount %d: only a balancing_credit clamped below the amount sent answers one",
					what(), key.id, key.attempt, rv.t.Flags, rv.t.Amount, a.Outcome, a.Code, a.Amount)
				return
			}
			rv.answered = a.Amount
			if rv.settle {
				// A post, void or expiry decided on the debit side: the
				// credit shard applies it, even as an abort.
				if a.Outcome != shard.OutcomeCredited {
					c.bad("two-phase", "%s: the settlement %s of %s (shard %d) answered %d/%s (abort=%v): a settlement cannot be refused", what(), key.id, rv.t.PendingID, key.ds, a.Outcome, a.Code, abort)
					return
				}
				rv.credited = true
				c.landed[idKey{key.ds, key.id}] = true
				if !c.settled(g, rv, abort, d, what) {
					return
				}
				stamps = append(stamps, a.Timestamp)
				touched = append(touched, rv.t.CreditAccountID)
				continue
			}
			switch a.Outcome {
			case shard.OutcomeCredited:
				if abort {
					c.bad("saga", "%s: an abort credited %s", what(), key.id)
				}
				if rv.resolved {
					c.bad("saga", "%s: %s attempt %d credited after its debit shard voided it: money created", what(), key.id, key.attempt)
				}
				rv.credited = true
				c.landed[idKey{key.ds, key.id}] = true
				amount := rv.amount()
				if rv.t.Flags&transport.TransferBalancingCredit != 0 {
					// Clamped on the credit shard to what its credit
					// account allows.
					if !c.balancingCredit(g, cmd, answers, i, st, rv, what) {
						return
					}
				}
				if holds(&rv.t) {
					// The credit half of a pending transfer across shards:
					// held pending until its settlement.
					hk := idKey{key.ds, key.id}
					if h := c.held[hk]; h != nil && h.open {
						c.bad("two-phase", "%s: pending %s of shard %d credited again (attempt %d) while attempt %d is held", what(), key.id, key.ds, key.attempt, rel(h.t.Timestamp))
						return
					}
					h := &heldCredit{t: rv.t, cs: g.id, open: true}
					h.t.Amount = amount
					c.held[hk] = h
					c.creditsHeld[rv.t.Ledger] += amount
					d(rv.t.Ledger).creditsPending += int64(amount)
				} else {
					d(rv.t.Ledger).creditsPosted += int64(amount)
					if !rv.resolved {
						c.creditedInFlight[rv.t.Ledger] += amount
					}
				}
				stamps = append(stamps, a.Timestamp)
				touched = append(touched, rv.t.CreditAccountID)
			case shard.OutcomeRefused:
				if abort || a.Code == transport.CodeOK {
					c.bad("saga", "%s: %s refused with %s by an abort=%v", what(), key.id, a.Code, abort)
				}
				if a.Code == transport.CodeExceedsDebits && rv.t.Flags&transport.TransferBalancingCredit != 0 {
					// Refused only when it would credit nothing.
					w.reached["balancing across shards refused exceeds_debits on the credit shard"]++
					if !c.creditNoRoom(g, cmd, answers, i, st, rv.t.CreditAccountID, what) {
						return
					}
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
		rows, results, ok := c.chainResolve(g, cmd.Answers, what)
		if !ok {
			return
		}
		if len(rows) != len(out.Reserved) {
			c.bad("chain", "%s: %d outbox rows written, the chains' next stages want %d", what(), len(out.Reserved), len(rows))
			return
		}
		for i := range rows {
			pr := rows[i].Part
			if !c.expectRow(c.ch.chains[resvKey{g.id, pr.Chain, rows[i].Transfer.Timestamp}], *pr, &out.Reserved[i], what) {
				return
			}
		}
		ended := map[attemptKey]shard.Resolved{}
		for _, r := range results {
			ended[attemptKey{r.ID, r.Attempt}] = r
		}
		for _, r := range out.Resolved {
			key := resvKey{g.id, r.ID, r.Attempt}
			if want, ok := ended[attemptKey{r.ID, r.Attempt}]; ok {
				// A leg of a chain across shards that just ended.
				delete(ended, attemptKey{r.ID, r.Attempt})
				if r != want {
					c.bad("chain", "%s: leg %s of a chain across shards resolved %+v, want %+v", what(), r.ID, r, want)
					return
				}
				continue
			}
			rv := c.open[g.id][key]
			if rv == nil {
				c.bad("saga", "%s: resolved %s attempt %d, which is not in flight", what(), r.ID, r.Attempt)
				return
			}
			delete(c.open[g.id], key)
			rv.resolved = true
			if rv.settle {
				// Nothing moves: the debit side moved when the post, void
				// or expiry applied, the credit side when it landed.
				switch {
				case rv.decision == 0:
					c.bad("two-phase", "%s: the settlement %s of %s resolved before its credit shard applied it", what(), r.ID, rv.t.PendingID)
				case r.Aborted || r.Code != transport.CodeOK || r.Timestamp != rv.t.Timestamp:
					c.bad("two-phase", "%s: the settlement %s of %s resolved aborted=%v %s at %d; stored at %d", what(), r.ID, rv.t.PendingID, r.Aborted, r.Code, rel(r.Timestamp), rel(rv.t.Timestamp))
				}
				continue
			}
			c.reserved[rv.t.Ledger] -= rv.t.Amount
			dl := d(rv.t.Ledger)
			dl.debitsPending -= int64(rv.t.Amount)
			touched = append(touched, rv.t.DebitAccountID)
			posted := !r.Aborted && r.Code == transport.CodeOK
			// What the credit shard credited (a balancing_credit may have
			// clamped it): the rest of the reservation is released.
			amount := rv.amount()
			if posted && isBalancing(&rv.t) && !c.balancingResolved(g, rv, r, st, what) {
				return
			}
			switch {
			case posted && !rv.credited:
				c.bad("saga", "%s: %s attempt %d posted its debit without a credit: money destroyed", what(), r.ID, r.Attempt)
			case posted && holds(&rv.t):
				// The pending transfer opens on the debit side: the
				// reservation stays as its debits_pending (what was
				// credited of it).
				if !c.openRemote(g, rv, r, what) {
					return
				}
				dl.debitsPending += int64(amount)
			case posted:
				w.stats.Posted++
				dl.debitsPosted += int64(amount)
				c.creditedInFlight[rv.t.Ledger] -= amount
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
		if len(ended) > 0 {
			c.bad("chain", "%s: %d legs of chains across shards that ended were not resolved (%d results)", what(), len(ended), len(out.Resolved))
			return
		}
	case shard.KindForget:
		f := cmd.Forget
		for key := range c.open[f.DebitShard] {
			if key.attempt < f.Below {
				c.bad("forget", "%s: watermark of shard %d at %d, above its unresolved attempt %d of %s", what(), f.DebitShard, f.Below, key.attempt, key.id)
				return
			}
		}
		for _, ch := range c.ch.inProgress {
			if ch.co == f.DebitShard && ch.attempt < f.Below {
				c.bad("forget", "%s: watermark of shard %d at %d, above the attempt %d of its chain %s in progress", what(), f.DebitShard, f.Below, ch.attempt, ch.legs[0].ID)
				return
			}
		}
		if f.DebitShard == g.id {
			w.reached["forget announced to itself"]++
		}
	case shard.KindExpire:
		touched = c.expire(g, ts, st, out, d, &stamps, what)
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
	// Every event may tick the shard's clock once, and so may every expiry
	// (touched lists its two accounts: a bound is all logHigh needs).
	i := g.id - 1
	ticks := uint64(len(cmd.Accounts) + len(cmd.Transfers) + len(cmd.Credits) + len(cmd.Answers) + len(touched))
	c.logLow[i] = c.lastTS[i]
	c.logHigh[i] = max(c.logHigh[i], ts, c.logLow[i]) + ticks
}

// answeredAsFirst: with request ids, event e is answered ok with a
// timestamp the shard had ticked before this command: not applied now, but
// found applied by the same request's earlier application and answered as
// that one (shard/requests.go).
func (c *Checker) answeredAsFirst(g *Group, e shard.EventResult) bool {
	return c.w.reqIDs && !e.InFlight && e.Code == transport.CodeOK && e.Timestamp <= c.lastTS[g.id-1]
}

// resolution checks a post or void applied ok at ts: it names a pending
// transfer of this shard still open, before its deadline, gives its fields
// if any, and moves at most its amount (a void all of it). It returns the
// pending transfer, now resolved, or nil after a failure.
func (c *Checker) resolution(g *Group, t *transport.Transfer, ts uint64, what func() string) *pendingRec {
	p := c.pending[g.id-1][t.PendingID]
	switch {
	case p == nil:
		c.bad("two-phase", "%s: %s resolved %s, which is no pending transfer of this shard", what(), t.ID, t.PendingID)
	case p.state != transport.StatePending:
		c.bad("two-phase", "%s: %s resolved %s, already %s (by %q)", what(), t.ID, t.PendingID, p.state, p.by)
	case p.deadline != 0 && ts >= p.deadline:
		c.bad("two-phase", "%s: %s resolved %s at %d, at or after its deadline %d", what(), t.ID, t.PendingID, rel(ts), rel(p.deadline))
	case !fieldsMatch(t, &p.t):
		c.bad("two-phase", "%s: %s resolved %s, whose fields differ: %+v", what(), t.ID, t.PendingID, p.t)
	case t.Amount > p.t.Amount:
		c.bad("two-phase", "%s: %s moved %d out of %s, which holds %d", what(), t.ID, t.Amount, t.PendingID, p.t.Amount)
	case !isPost(t) && t.Amount != 0 && t.Amount != p.t.Amount:
		c.bad("two-phase", "%s: %s voided %d of %s, which holds %d", what(), t.ID, t.Amount, t.PendingID, p.t.Amount)
	}
	if c.w.failure != nil {
		return nil
	}
	p.state, p.by = transport.StateVoided, t.ID
	c.w.stats.PendingVoided++
	if isPost(t) {
		p.state = transport.StatePosted
		c.w.stats.PendingVoided--
		c.w.stats.PendingPosted++
		if effAmount(t, &p.t) < p.t.Amount {
			c.w.reached["posted in part"]++
		}
	}
	if p.deadline != 0 && ts+second > p.deadline {
		c.w.reached["resolved in the last second before its deadline"]++
	}
	c.pendingOpen[p.t.Ledger] -= p.t.Amount
	return p
}

// settlement checks the outbox row of a post or void t of the pending
// transfer p across shards, applied on the debit side at ts: the post or
// void as stored (its pending transfer's accounts, ledger and code, the
// amount it moved), to p's credit shard. It records the settlement in
// flight, and false after a failure.
func (c *Checker) settlement(g *Group, t *transport.Transfer, ts uint64, p *pendingRec, row *shard.OutboxRow, what func() string) bool {
	want := *t
	want.DebitAccountID, want.CreditAccountID = p.t.DebitAccountID, p.t.CreditAccountID
	want.Ledger, want.Code, want.Amount = p.t.Ledger, p.t.Code, effAmount(t, &p.t)
	if p.remote == 0 {
		c.bad("two-phase", "%s: %s of %s went in flight, although %s is on one shard", what(), t.ID, t.PendingID, t.PendingID)
		return false
	}
	if row.Transfer.ID != t.ID || row.Transfer.Timestamp != ts || row.CreditShard != p.remote || !sameFields(&row.Transfer, &want) {
		c.bad("output", "%s: %s of %s went in flight with outbox row %+v to shard %d, want %+v to shard %d", what(), t.ID, t.PendingID, row.Transfer, row.CreditShard, want, p.remote)
		return false
	}
	key := resvKey{g.id, t.ID, ts}
	if c.resv[key] != nil {
		c.bad("saga", "%s: settlement %s attempt %d written twice", what(), t.ID, rel(ts))
		return false
	}
	rv := &resv{t: row.Transfer, ds: g.id, cs: p.remote, settle: true}
	c.resv[key] = rv
	c.open[g.id][key] = rv
	c.settlements[idKey{g.id, t.ID}] = rv
	if isPost(t) {
		c.settling[p.t.Ledger] += want.Amount
	}
	c.w.stats.Settlements++
	return true
}

// repeatsSettlement: t, joining the settlement rv in flight, repeats the
// post or void stored there (shard.sameResolution: the fields it omits
// resolved to the stored ones, amount 0 to the pending amount).
func (c *Checker) repeatsSettlement(g *Group, rv *resv, t *transport.Transfer) bool {
	p := c.pending[g.id-1][rv.t.PendingID]
	if !rv.settle || rv.t.ID == rv.t.PendingID || p == nil {
		return false
	}
	return equivalent(&rv.t, t, &p.t) && effAmount(t, &p.t) == rv.t.Amount
}

// settled applies, in the checks' view, the first landing of settlement rv
// on credit shard g: the credit half it settles must be held there and
// still open, and be settled by rv's pending transfer's end as the checks
// saw it on the debit side. False after a failure.
func (c *Checker) settled(g *Group, rv *resv, abort bool, d func(uint32) *delta, what func() string) bool {
	ds := rv.ds
	h := c.held[idKey{ds, rv.t.PendingID}]
	p := c.pending[ds-1][rv.t.PendingID]
	switch {
	case h == nil || h.cs != g.id:
		c.bad("two-phase", "%s: settlement %s of %s, whose credit half shard %d never held", what(), rv.t.ID, rv.t.PendingID, g.id)
	case !h.open:
		c.bad("two-phase", "%s: settlement %s of %s landed, but %s settled it already", what(), rv.t.ID, rv.t.PendingID, h.settledBy)
	case p == nil || p.state == transport.StatePending:
		c.bad("two-phase", "%s: settlement %s of %s landed while it is open on its debit shard", what(), rv.t.ID, rv.t.PendingID)
	case p.by != rv.t.ID && !(p.state == transport.StateExpired && rv.t.ID == rv.t.PendingID):
		c.bad("two-phase", "%s: settlement %s of %s landed, but the debit shard ended it %s by %q", what(), rv.t.ID, rv.t.PendingID, p.state, p.by)
	case rv.t.Amount > h.t.Amount:
		c.bad("two-phase", "%s: settlement %s moves %d out of %s, which holds %d", what(), rv.t.ID, rv.t.Amount, rv.t.PendingID, h.t.Amount)
	}
	if c.w.failure != nil {
		return false
	}
	h.open, h.settledBy = false, rv.t.ID
	c.creditsHeld[h.t.Ledger] -= h.t.Amount
	dl := d(h.t.Ledger)
	dl.creditsPending -= int64(h.t.Amount)
	if isPost(&rv.t) {
		dl.creditsPosted += int64(rv.t.Amount)
		c.settling[h.t.Ledger] -= rv.t.Amount
	}
	if abort {
		c.w.reached["cross-shard settlement landed by an abort"]++
	}
	return true
}

// openRemote: the debit shard resolved the credited attempt rv of a pending
// transfer across shards, which opens there, pending, with its deadline
// counted from the attempt. False after a failure.
func (c *Checker) openRemote(g *Group, rv *resv, r shard.Resolved, what func() string) bool {
	t := &rv.t
	if r.Timestamp != t.Timestamp {
		c.bad("two-phase", "%s: pending %s opened with timestamp %d, its attempt %d", what(), t.ID, rel(r.Timestamp), rel(t.Timestamp))
		return false
	}
	if c.pending[g.id-1][t.ID] != nil {
		c.bad("two-phase", "%s: pending %s applied twice", what(), t.ID)
		return false
	}
	if h := c.held[idKey{g.id, t.ID}]; h == nil || !h.open || h.t.Timestamp != t.Timestamp {
		c.bad("two-phase", "%s: pending %s opened, but its credit shard %d holds no credit for attempt %d", what(), t.ID, rv.cs, rel(t.Timestamp))
		return false
	}
	c.w.stats.Pending++
	p := &pendingRec{t: *t, state: transport.StatePending, remote: rv.cs}
	p.t.Amount = rv.amount()
	p.deadline = deadline(t, t.Timestamp)
	c.pending[g.id-1][t.ID] = p
	c.pendingOpen[t.Ledger] += p.t.Amount
	if p.deadline != 0 && p.deadline <= c.logHigh[g.id-1] {
		c.w.reached["cross-shard pending opened past its deadline"]++
	}
	return true
}

// expire checks a KindExpire stamped ts against the shard's records: every
// open pending transfer whose deadline has come in log time expired, and
// none before it; one across shards with its settlement in Output.Reserved.
// It returns the accounts whose balances moved.
func (c *Checker) expire(g *Group, ts uint64, st *shard.State, out *shard.Output, d func(uint32) *delta, stamps *[]uint64, what func() string) []string {
	i := g.id - 1
	nowLow, nowHigh := max(c.logLow[i]+1, ts), max(c.logHigh[i]+1, ts)
	var ids []string
	for id, p := range c.pending[i] {
		if p.state == transport.StatePending && p.deadline != 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	found := st.LookupTransfers(ids)
	if len(found) != len(ids) {
		c.bad("two-phase", "%s: %d of %d open pending transfers found", what(), len(found), len(ids))
		return nil
	}
	rows := map[string]*shard.OutboxRow{}
	for j := range out.Reserved {
		rows[out.Reserved[j].Transfer.ID] = &out.Reserved[j]
	}
	var touched []string
	for _, f := range found {
		p := c.pending[i][f.ID]
		switch {
		case f.State == transport.StateExpired && p.deadline > nowHigh:
			c.bad("two-phase", "%s: %s expired at log time %d, before its deadline %d", what(), f.ID, rel(nowHigh), rel(p.deadline))
			return nil
		case f.State == transport.StateExpired:
			p.state = transport.StateExpired
			c.w.stats.Expired++
			c.w.reached["expired"]++
			c.pendingOpen[p.t.Ledger] -= p.t.Amount
			dl := d(p.t.Ledger)
			dl.debitsPending -= int64(p.t.Amount)
			touched = append(touched, p.t.DebitAccountID)
			if p.remote == 0 {
				c.creditsHeld[p.t.Ledger] -= p.t.Amount
				dl.creditsPending -= int64(p.t.Amount)
				touched = append(touched, p.t.CreditAccountID)
				continue
			}
			// Its credit half is voided by a settlement under its own id.
			c.w.reached["cross-shard expired"]++
			row := rows[f.ID]
			delete(rows, f.ID)
			want := transport.Transfer{ID: f.ID, PendingID: f.ID, Flags: transport.TransferVoidPendingTransfer,
				DebitAccountID: p.t.DebitAccountID, CreditAccountID: p.t.CreditAccountID, Ledger: p.t.Ledger, Code: p.t.Code, Amount: p.t.Amount}
			if row == nil || row.CreditShard != p.remote || !sameFields(&row.Transfer, &want) || row.Transfer.Timestamp <= c.logLow[i] {
				c.bad("output", "%s: %s expired across shards with settlement row %+v, want %+v to shard %d", what(), f.ID, row, want, p.remote)
				return nil
			}
			key := resvKey{g.id, f.ID, row.Transfer.Timestamp}
			if c.resv[key] != nil {
				c.bad("saga", "%s: settlement of the expiry of %s written twice", what(), f.ID)
				return nil
			}
			rv := &resv{t: row.Transfer, ds: g.id, cs: p.remote, settle: true}
			c.resv[key] = rv
			c.open[g.id][key] = rv
			c.w.stats.Settlements++
			*stamps = append(*stamps, row.Transfer.Timestamp)
		case f.State != transport.StatePending:
			c.bad("two-phase", "%s: an expiry made %s %s", what(), f.ID, f.State)
			return nil
		case p.deadline <= nowLow:
			c.bad("two-phase", "%s: %s still pending at log time %d, past its deadline %d", what(), f.ID, rel(nowLow), rel(p.deadline))
			return nil
		}
	}
	if len(rows) > 0 {
		c.bad("output", "%s: %d outbox rows in Output.Reserved that no expiry across shards explains", what(), len(rows))
		return nil
	}
	slices.Sort(*stamps) // expiries tick in deadline order, not by id
	return touched
}

// balances checks the shard's totals moved exactly as the outputs say, then
// conservation across shards: per ledger, credits posted = debits posted +
// credits applied whose debit is still in flight - posts applied on their
// debit shard whose settlement has not landed; pending debits = the amounts
// reserved and unresolved + the open pending transfers; pending credits =
// the open pending transfers on one shard + the credit halves held for
// pending transfers across shards (open, or their settlement in flight).
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
			int64(a.DebitsPending-b.DebitsPending) != dl.debitsPending || int64(a.CreditsPending-b.CreditsPending) != dl.creditsPending {
			c.bad("balances", "%s: ledger %d moved debits posted %+d credits posted %+d debits pending %+d credits pending %+d; the outputs say %+d %+d %+d %+d",
				what(), l, int64(a.DebitsPosted-b.DebitsPosted), int64(a.CreditsPosted-b.CreditsPosted), int64(a.DebitsPending-b.DebitsPending),
				int64(a.CreditsPending-b.CreditsPending), dl.debitsPosted, dl.creditsPosted, dl.debitsPending, dl.creditsPending)
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
			s.CreditsPending += t.CreditsPending
		}
	}
	for l, s := range sum {
		if s.CreditsPosted+c.settling[l] != s.DebitsPosted+c.creditedInFlight[l] || s.DebitsPending != c.reserved[l]+c.pendingOpen[l] || s.CreditsPending != c.creditsHeld[l] {
			c.bad("conservation", "after %s: ledger %d has credits posted %d + posts settling %d, debits posted %d + credited in flight %d; debits pending %d, reserved %d + open pending %d; credits pending %d, held %d",
				what(), l, s.CreditsPosted, c.settling[l], s.DebitsPosted, c.creditedInFlight[l], s.DebitsPending, c.reserved[l], c.pendingOpen[l], s.CreditsPending, c.creditsHeld[l])
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
			c.bad("limits", "%s: %s has credits %d pending + %d posted > debits %d posted", what(), a.ID, a.CreditsPending, a.CreditsPosted, a.DebitsPosted)
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
	ledgers := map[uint32]bool{}
	for _, m := range []map[uint32]uint64{c.creditedInFlight, c.reserved, c.settling} {
		for l := range m {
			ledgers[l] = true
		}
	}
	for _, l := range sortedKeys(ledgers) {
		if v := c.creditedInFlight[l]; v != 0 || c.reserved[l] != 0 || c.settling[l] != 0 {
			w.fail("conservation", "ledger %d: %d credited in flight, %d reserved, %d posted and settling at quiescence", l, v, c.reserved[l], c.settling[l])
			return
		}
	}
	if !c.pendingsEnded() || !c.heldSettled() || !c.chainsQuiet() {
		return
	}
	sum := map[uint32]*transport.LedgerTotals{}
	for _, g := range w.groups {
		for _, t := range g.leader.r.st.Totals() {
			if sum[t.Ledger] == nil {
				sum[t.Ledger] = &transport.LedgerTotals{}
			}
			s := sum[t.Ledger]
			s.DebitsPosted += t.DebitsPosted
			s.CreditsPosted += t.CreditsPosted
			s.DebitsPending += t.DebitsPending
			s.CreditsPending += t.CreditsPending
		}
	}
	for _, l := range sortedKeys(sum) {
		if s := sum[l]; s.DebitsPosted != s.CreditsPosted || s.DebitsPending != c.pendingOpen[l] || s.CreditsPending != c.pendingOpen[l] || c.creditsHeld[l] != c.pendingOpen[l] {
			w.fail("conservation", "ledger %d at quiescence: debits posted %d, credits posted %d; debits pending %d, credits pending %d, open pending transfers %d",
				l, s.DebitsPosted, s.CreditsPosted, s.DebitsPending, s.CreditsPending, c.pendingOpen[l])
			return
		}
	}
	w.ref.settle()
	for _, c := range w.clients {
		w.digest = w.digest*31 + uint64(c.seq)
	}
}

// pendingsEnded: at quiescence every pending transfer with a timeout has
// ended (posted, voided or expired: the checks saw each end once), and
// the shards' records say what the checks saw.
func (c *Checker) pendingsEnded() bool {
	w := c.w
	for _, g := range w.groups {
		m := c.pending[g.id-1]
		ids := slices.Sorted(maps.Keys(m))
		found := g.leader.r.st.LookupTransfers(ids)
		if len(found) != len(ids) {
			w.fail("two-phase", "%s stores %d of its %d pending transfers", g.name(), len(found), len(ids))
			return false
		}
		for _, f := range found {
			p := m[f.ID]
			switch {
			case p.state == transport.StatePending && p.deadline != 0:
				w.fail("liveness", "%s: pending %s with a timeout of %ds (deadline %d) still pending at quiescence", g.name(), f.ID, p.t.Timeout, rel(p.deadline))
				return false
			case f.State != p.state:
				w.fail("two-phase", "%s: pending %s is stored %s, the checks saw it %s", g.name(), f.ID, f.State, p.state)
				return false
			}
		}
	}
	return true
}

// heldSettled: at quiescence the credit half of a pending transfer across
// shards is held exactly while its pending transfer is open (without a
// timeout), and every other was settled once, by the settlement of the
// post, void or expiry that ended it.
func (c *Checker) heldSettled() bool {
	w := c.w
	keys := slices.SortedFunc(maps.Keys(c.held), func(a, b idKey) int { return cmp.Or(cmp.Compare(a.ds, b.ds), cmp.Compare(a.id, b.id)) })
	for _, k := range keys {
		h := c.held[k]
		p := c.pending[k.ds-1][k.id]
		switch {
		case p == nil:
			w.fail("two-phase", "shard %d holds the credit half of %s (shard %d), which never opened on its debit shard", h.cs, k.id, k.ds)
			return false
		case h.open != (p.state == transport.StatePending):
			w.fail("liveness", "pending %s (shard %d) is %s, and its credit half on shard %d open=%v at quiescence", k.id, k.ds, p.state, h.cs, h.open)
			return false
		case !h.open && h.settledBy != p.by && !(p.state == transport.StateExpired && h.settledBy == k.id):
			w.fail("two-phase", "pending %s (shard %d) ended %s by %q, its credit half settled by %q", k.id, k.ds, p.state, p.by, h.settledBy)
			return false
		}
	}
	return true
}

// balancing checks the balancing transfer cmd.Transfers[i], just applied
// ok, and returns the amount it moved (0 after a failure): the one stored,
// more than 0 and at most the one sent. Unless a later event of the
// command touched them, its accounts are as it left them: a
// balancing_debit leaves the debit account's debits (pending included)
// within its posted credits, a balancing_credit the credit account's
// credits within its posted debits, and a clamped amount leaves no room.
func (c *Checker) balancing(g *Group, cmd *shard.Command, events []shard.EventResult, i int, st *shard.State, what func() string) uint64 {
	t := &cmd.Transfers[i]
	found := st.LookupTransfers([]string{t.ID})
	if len(found) != 1 || found[0].Timestamp != events[i].Timestamp {
		c.bad("balancing", "%s: %s answered ok but is not stored", what(), t.ID)
		return 0
	}
	f := &found[0]
	if f.Amount == 0 || f.Amount > t.Amount {
		c.bad("balancing", "%s: %s sent with amount %d, stored with %d", what(), t.ID, t.Amount, f.Amount)
		return 0
	}
	clamped := f.Amount < t.Amount
	if clamped {
		c.w.reached["balancing clamped"]++
	}
	if movedLater(cmd, events, i, t.DebitAccountID, t.CreditAccountID) {
		return f.Amount // its accounts moved since
	}
	as := st.LookupAccounts([]string{t.DebitAccountID, t.CreditAccountID})
	if len(as) != 2 {
		c.bad("balancing", "%s: %s applied without both its accounts", what(), t.ID)
		return 0
	}
	dr, cr := &as[0], &as[1]
	if dr.ID != t.DebitAccountID {
		dr, cr = cr, dr
	}
	debits, credits := dr.DebitsPending+dr.DebitsPosted, cr.CreditsPending+cr.CreditsPosted
	byDebit, byCredit := t.Flags&transport.TransferBalancingDebit != 0, t.Flags&transport.TransferBalancingCredit != 0
	switch {
	case byDebit && debits > dr.CreditsPosted:
		c.bad("balancing", "%s: %s moved %d of %d: its debit account has %d debits for %d credits posted", what(), t.ID, f.Amount, t.Amount, debits, dr.CreditsPosted)
		return 0
	case byCredit && credits > cr.DebitsPosted:
		c.bad("balancing", "%s: %s moved %d of %d: its credit account has %d credits for %d debits posted", what(), t.ID, f.Amount, t.Amount, credits, cr.DebitsPosted)
		return 0
	case clamped && !(byDebit && debits == dr.CreditsPosted || byCredit && credits == cr.DebitsPosted):
		c.bad("balancing", "%s: %s (flags %d) clamped to %d of %d with room left: debits %d for %d credits posted, credits %d for %d debits posted",
			what(), t.ID, t.Flags, f.Amount, t.Amount, debits, dr.CreditsPosted, credits, cr.DebitsPosted)
		return 0
	}
	return f.Amount
}

// chains checks every linked chain of a create_transfers command just
// applied: all or nothing, with the protocol's codes (ok on each event,
// exists on each, one failing event's code and linked_event_failed on the
// others, or linked_event_chain_open on each of a chain the batch left
// open), and every event stored with its fields, or none stored by this
// command (a timestamp after before, the shard's last) when it failed.
func (c *Checker) chains(cmd *shard.Command, events []shard.EventResult, remote []int, st *shard.State, before uint64, what func() string) bool {
	ts := cmd.Transfers
	ok := true
	shard.EachChain(len(ts), func(i int) bool { return ts[i].Flags&transport.TransferLinked != 0 }, func(i, j int, open bool) {
		if !ok || j-i == 1 && !open || remote[i] >= 0 && events[i].InFlight {
			return // a chain across shards in progress: chainBegun checked it
		}
		n := j - i
		count := map[transport.Code]int{}
		failing := transport.CodeOK
		var ids []string
		for k := i; k < j; k++ {
			count[events[k].Code]++
			if code := events[k].Code; code != transport.CodeLinkedEventFailed {
				failing = code
			}
			ids = append(ids, ts[k].ID)
		}
		if remote[i] >= 0 && (count[transport.CodeOK] == n || count[transport.CodeExists] == n) {
			// A re-send of a chain across shards its request committed,
			// answered as first (shard/chainsdone.go: ok, and exists for
			// a second copy in the batch): its legs live on their debit
			// shards, and the reply check holds each answer to the
			// timestamp its leg was applied at.
			return
		}
		stored := st.LookupTransfers(ids)
		// others: the events stored, but not by a copy of the chain elsewhere
		// in the command (sent again in one batch), which a failed chain
		// did not store.
		others := slices.DeleteFunc(slices.Clone(stored), func(f transport.Transfer) bool {
			for m := range ts {
				if (m < i || m >= j) && ts[m].ID == f.ID && events[m].Code == transport.CodeOK && events[m].Timestamp == f.Timestamp {
					return true
				}
			}
			return false
		})
		switch {
		case open:
			ok = count[transport.CodeLinkedEventChainOpen] == n &&
				!slices.ContainsFunc(others, func(f transport.Transfer) bool { return f.Timestamp > before })
		case count[transport.CodeOK] == n:
			ok = len(stored) == n
			for k := i; k < j && ok; k++ {
				f := stored[k-i]
				ok = f.ID == ts[k].ID && f.Timestamp == events[k].Timestamp && sameFields(&f, &ts[k])
			}
		case count[transport.CodeExists] == n:
			ok = len(stored) == n
		case count[transport.CodeLinkedEventFailed] == n-1 && failing != transport.CodeOK:
			ok = !slices.ContainsFunc(others, func(f transport.Transfer) bool { return f.Timestamp > before })
		default:
			ok = false
		}
		if !ok {
			var codes []transport.Code
			for k := i; k < j; k++ {
				codes = append(codes, events[k].Code)
			}
			c.bad("chain", "%s: chain %s..%s answered %v with %d of its %d events stored: not all or nothing", what(), ts[i].ID, ts[j-1].ID, codes, len(stored), n)
		}
	})
	return ok
}

// movedLater: an event of cmd after event i applied or went in flight and
// may have moved one of the accounts ids (on this shard).
func movedLater(cmd *shard.Command, events []shard.EventResult, i int, ids ...string) bool {
	for k := i + 1; k < len(cmd.Transfers); k++ {
		u := &cmd.Transfers[k]
		if (events[k].Code == transport.CodeOK || events[k].InFlight) &&
			(u.Flags&resolves != 0 || slices.Contains(ids, u.DebitAccountID) || slices.Contains(ids, u.CreditAccountID)) {
			return true
		}
	}
	return false
}

// creditedLater: a credit of cmd after credit i was applied and may have
// moved account id (a part of a chain may move any).
func creditedLater(cmd *shard.Command, answers []shard.Answer, i int, id string) bool {
	for k := i + 1; k < len(cmd.Credits); k++ {
		if cmd.Credits[k].Part != nil || answers[k].Outcome == shard.OutcomeCredited && cmd.Credits[k].Transfer.CreditAccountID == id {
			return true
		}
	}
	return false
}

// balancingDebit checks the reservation of the balancing transfer
// cmd.Transfers[i] across shards, of amount (its outbox row's): more than
// 0, at most the amount sent, below it only for a balancing_debit, which
// leaves its debit account's debits (pending included) within its posted
// credits, and no room if clamped (unless a later event of the command
// moved the account). False after a failure.
func (c *Checker) balancingDebit(g *Group, cmd *shard.Command, events []shard.EventResult, i int, st *shard.State, amount uint64, what func() string) bool {
	t := &cmd.Transfers[i]
	byDebit := t.Flags&transport.TransferBalancingDebit != 0
	if amount == 0 || amount > t.Amount || !byDebit && amount != t.Amount {
		c.bad("balancing", "%s: %s (flags %d) sent with amount %d, reserved with %d", what(), t.ID, t.Flags, t.Amount, amount)
		return false
	}
	if amount < t.Amount {
		c.w.reached["balancing across shards clamped on the debit shard"]++
	}
	if !byDebit || movedLater(cmd, events, i, t.DebitAccountID) {
		return true
	}
	as := st.LookupAccounts([]string{t.DebitAccountID})
	if len(as) != 1 {
		c.bad("balancing", "%s: %s reserved without its debit account", what(), t.ID)
		return false
	}
	dr := &as[0]
	if debits := dr.DebitsPending + dr.DebitsPosted; debits > dr.CreditsPosted || amount < t.Amount && debits != dr.CreditsPosted {
		c.bad("balancing", "%s: %s reserved %d of %d: its debit account has %d debits for %d credits posted", what(), t.ID, amount, t.Amount, debits, dr.CreditsPosted)
		return false
	}
	return true
}

// noRoom checks a balancing_debit cmd.Transfers[i] refused exceeds_credits:
// its debit account's debits (pending included) reach its posted credits
// (unless a later event of the command moved it). False after a failure.
func (c *Checker) noRoom(g *Group, cmd *shard.Command, events []shard.EventResult, i int, st *shard.State, id string, what func() string) bool {
	t := &cmd.Transfers[i]
	if c.w.shardOf(t.CreditAccountID) != g.id {
		c.w.reached["balancing across shards refused exceeds_credits on the debit shard"]++
	}
	if movedLater(cmd, events, i, id) {
		return true
	}
	as := st.LookupAccounts([]string{id})
	if len(as) != 1 {
		return true // refused for its missing account first? then not this code
	}
	if dr := &as[0]; dr.DebitsPending+dr.DebitsPosted < dr.CreditsPosted {
		c.bad("balancing", "%s: %s refused exceeds_credits, but its debit account has %d debits for %d credits posted", what(), t.ID, dr.DebitsPending+dr.DebitsPosted, dr.CreditsPosted)
		return false
	}
	return true
}

// balancingCredit checks the credit of balancing_credit rv, just applied on
// credit shard g: it credited rv.amount(), below the amount reserved only
// if clamped, which leaves its credit account's credits (pending included)
// within its posted debits, and no room if clamped (unless a later credit
// of the command moved the account). False after a failure.
func (c *Checker) balancingCredit(g *Group, cmd *shard.Command, answers []shard.Answer, i int, st *shard.State, rv *resv, what func() string) bool {
	amount, clamped := rv.amount(), rv.answered != 0
	if clamped {
		c.w.reached["balancing across shards clamped on the credit shard"]++
	}
	if creditedLater(cmd, answers, i, rv.t.CreditAccountID) {
		return true
	}
	as := st.LookupAccounts([]string{rv.t.CreditAccountID})
	if len(as) != 1 {
		c.bad("balancing", "%s: %s credited without its credit account", what(), rv.t.ID)
		return false
	}
	cr := &as[0]
	if credits := cr.CreditsPending + cr.CreditsPosted; credits > cr.DebitsPosted || clamped && credits != cr.DebitsPosted {
		c.bad("balancing", "%s: %s (flags %d) credited %d of %d: its credit account has %d credits for %d debits posted",
			what(), rv.t.ID, rv.t.Flags, amount, rv.t.Amount, credits, cr.DebitsPosted)
		return false
	}
	return true
}

// creditNoRoom checks a balancing_credit refused exceeds_debits on its
// credit shard: its credit account's credits (pending included) reach its
// posted debits (unless a later credit of the command moved it). False
// after a failure.
func (c *Checker) creditNoRoom(g *Group, cmd *shard.Command, answers []shard.Answer, i int, st *shard.State, id string, what func() string) bool {
	if creditedLater(cmd, answers, i, id) {
		return true
	}
	as := st.LookupAccounts([]string{id})
	if len(as) != 1 {
		return true
	}
	if cr := &as[0]; cr.CreditsPending+cr.CreditsPosted < cr.DebitsPosted {
		c.bad("balancing", "%s: %s refused exceeds_debits, but its credit account has %d credits for %d debits posted",
			what(), cmd.Credits[i].Transfer.ID, cr.CreditsPending+cr.CreditsPosted, cr.DebitsPosted)
		return false
	}
	return true
}

// balancingResolved checks the balancing transfer rv across shards, just
// resolved ok on its debit shard: it is stored with what its credit shard
// credited (posted, or pending). False after a failure.
func (c *Checker) balancingResolved(g *Group, rv *resv, r shard.Resolved, st *shard.State, what func() string) bool {
	found := st.LookupTransfers([]string{rv.t.ID})
	if len(found) != 1 || found[0].Amount != rv.amount() || !sameOrClamped(&found[0], &rv.t) {
		c.bad("balancing", "%s: %s attempt %d resolved ok, credited %d of %d on shard %d, but stored as %+v", what(), r.ID, rel(r.Attempt), rv.amount(), rv.t.Amount, rv.cs, found)
		return false
	}
	if holds(&rv.t) {
		c.w.reached["balancing across shards pending opened"]++
	} else {
		c.w.reached["balancing across shards posted"]++
	}
	return true
}
