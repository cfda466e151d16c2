package sim

import (
	"cmp"
	"maps"
	"slices"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Checks of linked chains across shards (shard/chains.go), from the outputs
// of the real state machines: the coordinator's KindCreateTransfers (the
// chain begun: every leg in flight, a hold part per side of every leg in
// Output.Reserved), the participants' KindCredit and KindAbort carrying
// parts (first writer wins; a hold aborted, refused or held; a finish never
// refused, and only of what the chain held), the coordinator's KindResolve
// (the answers it applies, the next stage's parts in Output.Reserved, and
// the legs' results once the chain is over), and the balances every hold and
// finish moves. The checks keep their own model of the coordinator: which
// stage comes after which answers, which parts it writes and what each leg
// is answered (the rules of the header of shard/chains.go, written again
// here rather than called). What a participant decides (which refusal code
// a hold earns) is not modelled exactly: it is checked for its kind (a code
// of that side), for what it implies of the store (a debit side held only
// for an id not stored there nor held; refused exists only for the leg
// stored with its fields and timestamp), and through the limits and
// conservation checks of every command. At quiescence (finalChecks) every
// chain drawn is stored whole, each leg exactly as sent, or not at all.

// chainStage is a chain's stage in the checks' model of its coordinator.
type chainStage uint8

const (
	chainHolding chainStage = iota + 1
	chainCommitCredit
	chainCommitDebit
	chainReleasing
	chainOver
)

// chainRec is a chain across shards as the checks saw its coordinator
// begin it.
type chainRec struct {
	co      uint32 // the coordinator
	attempt uint64
	legs    []transport.Transfer
	ds, cs  []uint32
	votes   []shard.Answer // as the coordinator applied them: [2k] debit side of leg k, [2k+1] credit side
	holds   []*partRec     // the hold parts, same order
	stage   chainStage
	waiting int
	results []shard.Resolved // once over
}

// partRec is one part of a chain (an outbox row of its coordinator).
type partRec struct {
	chain    *chainRec
	p        shard.ChainPart
	t        transport.Transfer // as sent: the leg's fields, ID the part's key, Timestamp the attempt
	to       uint32
	decision shard.Outcome // the participant's first decision
	code     transport.Code
	ts       uint64
	resolved bool // its answer applied on the coordinator
}

// chainState is the checks' view of every chain across shards.
type chainState struct {
	chains map[resvKey]*chainRec // by coordinator, chain id, attempt
	order  []*chainRec           // in the order begun (deterministic iteration)
	parts  map[resvKey]*partRec  // by coordinator, part key, attempt
	// heldIDs: the legs' ids held on their debit shards (by debit shard
	// and id) to the part holding them.
	heldIDs map[idKey]*partRec
	// inProgress: the chain in progress by coordinator and chain id.
	inProgress map[idKey]*chainRec
}

func newChainState() chainState {
	return chainState{chains: map[resvKey]*chainRec{}, parts: map[resvKey]*partRec{}, heldIDs: map[idKey]*partRec{}, inProgress: map[idKey]*chainRec{}}
}

// remoteChains marks the events of cmd that belong to a chain the shard
// (g) coordinates across shards (shard.State.crossShardChain), each with the
// index of its chain's first event; -1 elsewhere.
func remoteChains(g *Group, cmd *shard.Command) []int {
	ts := cmd.Transfers
	start := make([]int, len(ts))
	for i := range start {
		start[i] = -1
	}
	if len(cmd.DebitShards) != len(ts) || len(cmd.CreditShards) != len(ts) {
		return start
	}
	shard.EachChain(len(ts), func(i int) bool { return ts[i].Flags&transport.TransferLinked != 0 }, func(i, j int, open bool) {
		if open || j-i < 2 {
			return
		}
		for k := i; k < j; k++ {
			if cmd.DebitShards[k] != g.id || cmd.CreditShards[k] != g.id {
				for l := i; l < j; l++ {
					start[l] = i
				}
				return
			}
		}
	})
	return start
}

// partRow is the outbox row of part p of chain ch: the leg's fields under
// the part's key, stamped with the chain's attempt, to the side's shard.
func partRow(ch *chainRec, p shard.ChainPart) shard.OutboxRow {
	t := ch.legs[p.Leg]
	t.ID, t.Timestamp, t.State = p.Key(), ch.attempt, ""
	to := p.CreditShard
	if p.Debit {
		to = p.DebitShard
	}
	return shard.OutboxRow{Transfer: t, CreditShard: to, Part: &p}
}

func (ch *chainRec) part(k int, debit, finish, commit bool) shard.ChainPart {
	return shard.ChainPart{Chain: ch.legs[0].ID, Leg: uint16(k), ID: ch.legs[k].ID, Debit: debit, Finish: finish, Commit: commit,
		DebitShard: ch.ds[k], CreditShard: ch.cs[k]}
}

// expectRow checks that row is the outbox row of part p of ch, and records
// the part in flight. False after a failure.
func (c *Checker) expectRow(ch *chainRec, p shard.ChainPart, row *shard.OutboxRow, what func() string) bool {
	want := partRow(ch, p)
	if row == nil || row.Part == nil || *row.Part != p || row.CreditShard != want.CreditShard || row.Transfer.ID != want.Transfer.ID ||
		row.Transfer.Timestamp != want.Transfer.Timestamp || !sameFields(&row.Transfer, &want.Transfer) {
		c.bad("chain", "%s: chain %s: outbox row %+v, want %+v (part %+v)", what(), ch.legs[0].ID, row, want, p)
		return false
	}
	key := resvKey{ch.co, p.Key(), ch.attempt}
	if c.ch.parts[key] != nil {
		c.bad("chain", "%s: chain %s: part %s written twice", what(), ch.legs[0].ID, p.Key())
		return false
	}
	pr := &partRec{chain: ch, p: p, t: want.Transfer, to: want.CreditShard}
	c.ch.parts[key] = pr
	if !p.Finish {
		v := 2 * int(p.Leg)
		if !p.Debit {
			v++
		}
		ch.holds[v] = pr
	}
	return true
}

// chainBegun checks the events [i, j) of a create_transfers command, a
// chain across shards that g coordinates: begun (every leg in flight, new,
// under one attempt, its hold parts in Output.Reserved from *reserved on),
// joined (a retry of the chain in progress: every leg in flight, joined,
// with its attempt), or refused at once (checked with the chains on one
// shard, by Checker.chains). False after a failure.
func (c *Checker) chainBegun(g *Group, cmd *shard.Command, events []shard.EventResult, i, j int, out *shard.Output, reserved *int, stamps *[]uint64, what func() string) bool {
	w := c.w
	legs := cmd.Transfers[i:j]
	inFlight, joined := 0, 0
	attempt := events[i].Attempt
	// A re-send by the same request joins its own attempt answered as
	// that attempt (Retry off, shard/requests.go): the checks know it
	// begun.
	ch := c.ch.chains[resvKey{g.id, legs[0].ID, attempt}]
	again := c.w.reqIDs && ch != nil && ch.stage != chainOver
	for k := i; k < j; k++ {
		if events[k].InFlight {
			inFlight++
			if events[k].Retry || again {
				joined++
			}
		}
	}
	for k := i; k < j && inFlight > 0; k++ {
		if e := events[k]; !e.InFlight || e.ID != cmd.Transfers[k].ID || e.Attempt != attempt {
			c.bad("chain", "%s: chain %s..%s across shards answered in part in flight: %+v", what(), legs[0].ID, legs[len(legs)-1].ID, events[i:j])
			return false
		}
	}
	switch {
	case inFlight == 0:
		w.reached["chain across shards refused by its coordinator"]++
		return true
	case joined == len(legs):
		same := ch != nil && ch.stage != chainOver && len(ch.legs) == len(legs)
		for k := 0; same && k < len(legs); k++ {
			same = sameFields(&ch.legs[k], &legs[k]) && ch.ds[k] == cmd.DebitShards[i+k] && ch.cs[k] == cmd.CreditShards[i+k]
		}
		if !same {
			c.bad("chain", "%s: chain %s joined attempt %d, which is not in progress with these legs", what(), legs[0].ID, attempt)
			return false
		}
		w.reached["chain across shards joined in progress"]++
		return true
	case joined > 0:
		c.bad("chain", "%s: chain %s: %d of its %d legs joined attempt %d", what(), legs[0].ID, joined, len(legs), attempt)
		return false
	}
	if ch := c.openChain(g.id, legs[0].ID); ch != nil {
		c.bad("chain", "%s: chain %s begun again (attempt %d) while attempt %d is in progress", what(), legs[0].ID, attempt, ch.attempt)
		return false
	}
	for k := range legs {
		if legs[k].Flags&^(transport.TransferLinked|transport.TransferPending) != 0 {
			c.bad("chain", "%s: chain %s across shards began with leg %s of flags %d (plain or pending legs only)", what(), legs[0].ID, legs[k].ID, legs[k].Flags)
			return false
		}
		if fieldCode(&legs[k]) != transport.CodeOK {
			c.bad("chain", "%s: chain %s across shards began with leg %s, whose fields earn %s", what(), legs[0].ID, legs[k].ID, fieldCode(&legs[k]))
			return false
		}
	}
	ch = &chainRec{co: g.id, attempt: attempt, legs: slices.Clone(legs), ds: slices.Clone(cmd.DebitShards[i:j]), cs: slices.Clone(cmd.CreditShards[i:j]),
		votes: make([]shard.Answer, 2*len(legs)), holds: make([]*partRec, 2*len(legs)), stage: chainHolding, waiting: 2 * len(legs)}
	c.ch.chains[resvKey{g.id, legs[0].ID, attempt}] = ch
	c.ch.order = append(c.ch.order, ch)
	c.ch.inProgress[idKey{g.id, legs[0].ID}] = ch
	for k := range legs {
		for _, debit := range []bool{true, false} {
			var row *shard.OutboxRow
			if *reserved < len(out.Reserved) {
				row = &out.Reserved[*reserved]
			}
			if !c.expectRow(ch, ch.part(k, debit, false, false), row, what) {
				return false
			}
			*reserved++
		}
	}
	w.stats.Chains++
	w.reached["chain across shards begun"]++
	*stamps = append(*stamps, attempt)
	return true
}

// openChain is the chain in progress coordinated by co under id, if any.
func (c *Checker) openChain(co uint32, id string) *chainRec { return c.ch.inProgress[idKey{co, id}] }

// debitHoldCodes and creditHoldCodes are the refusals each side of a hold
// may earn (besides exists and exists_with_different_fields on the debit
// side, checked apart).
var debitHoldCodes = []transport.Code{transport.CodeDebitAccountNotFound, transport.CodeLedgerMismatch, transport.CodeAccountClosed,
	transport.CodeExceedsCredits, transport.CodeExceedsDebits}
var creditHoldCodes = []transport.Code{transport.CodeCreditAccountNotFound, transport.CodeLedgerMismatch, transport.CodeAccountClosed,
	transport.CodeExceedsCredits, transport.CodeExceedsDebits}

// chainPart checks a participant's answer a to part cr (a KindCredit, or a
// KindAbort with abort) applied on g, and books what it moved. False after
// a failure.
func (c *Checker) chainPart(g *Group, cr *shard.Credit, a shard.Answer, abort bool, st *shard.State, d func(uint32) *delta,
	stamps *[]uint64, touched *[]string, what func() string) bool {
	w := c.w
	key := resvKey{cr.DebitShard, cr.Transfer.ID, cr.Transfer.Timestamp}
	pr := c.ch.parts[key]
	if pr == nil || pr.to != g.id || *cr.Part != pr.p || !sameFields(&pr.t, &cr.Transfer) {
		c.bad("chain", "%s: part %s attempt %d of coordinator %d (%+v), which it never wrote for this shard", what(), key.id, key.attempt, key.ds, *cr.Part)
		return false
	}
	ch, p := pr.chain, &pr.p
	if a.Outcome == shard.OutcomeStale {
		if !pr.resolved {
			c.bad("chain", "%s: part %s attempt %d answered stale while its coordinator %d waits for it: it can never finish", what(), key.id, key.attempt, key.ds)
			return false
		}
		return true
	}
	if pr.decision != 0 {
		if a.Outcome != pr.decision || a.Code != pr.code || a.Timestamp != pr.ts {
			c.bad("chain", "%s: part %s attempt %d answered %d/%s at %d, decided %d/%s at %d before (first writer wins)", what(), key.id, key.attempt,
				a.Outcome, a.Code, rel(a.Timestamp), pr.decision, pr.code, rel(pr.ts))
			return false
		}
		return true
	}
	pr.decision, pr.code, pr.ts = a.Outcome, a.Code, a.Timestamp
	leg := ch.legs[p.Leg]
	l := leg.Ledger
	amount := int64(leg.Amount)
	pending := leg.Flags&transport.TransferPending != 0
	lk := idKey{p.DebitShard, p.ID}
	if p.Finish {
		// The coordinator's decision: never refused, not even by an abort,
		// and only of what the chain held.
		hold := ch.holds[2*int(p.Leg)+b2i(!p.Debit)]
		switch {
		case a.Outcome != shard.OutcomeCredited:
			c.bad("chain", "%s: finish %s of chain %s answered %d/%s (abort=%v): a finish cannot be refused", what(), key.id, ch.legs[0].ID, a.Outcome, a.Code, abort)
		case hold == nil || hold.decision != shard.OutcomeCredited:
			c.bad("chain", "%s: finish %s of chain %s, whose side was never held", what(), key.id, ch.legs[0].ID)
		case p.Commit && slices.ContainsFunc(ch.holds, func(h *partRec) bool { return h == nil || h.decision != shard.OutcomeCredited }):
			c.bad("chain", "%s: commit %s of chain %s, some of whose parts were not held", what(), key.id, ch.legs[0].ID)
		}
		if w.failure != nil {
			return false
		}
		*stamps = append(*stamps, a.Timestamp)
		dl := d(l)
		switch {
		case !p.Debit && !p.Commit:
			dl.creditsPending -= amount
			c.creditsHeld[l] -= leg.Amount
		case !p.Debit && !pending:
			dl.creditsPending -= amount
			dl.creditsPosted += amount
			c.creditsHeld[l] -= leg.Amount
			c.creditedInFlight[l] += leg.Amount // until its debit side posts
			c.landed[lk] = true
		case !p.Debit: // a pending leg: the hold stays, as its pending credit
			c.landed[lk] = true
			if p.DebitShard != g.id {
				if h := c.held[lk]; h != nil && h.open {
					c.bad("chain", "%s: pending leg %s of shard %d credited while an earlier credit is held", what(), p.ID, p.DebitShard)
					return false
				}
				ht := leg
				ht.Timestamp = a.Timestamp
				c.held[lk] = &heldCredit{t: ht, cs: g.id, open: true}
			}
		case p.Debit:
			if c.ch.heldIDs[lk] != hold {
				c.bad("chain", "%s: finish %s of chain %s: its id %s is not held by the chain", what(), key.id, ch.legs[0].ID, p.ID)
				return false
			}
			delete(c.ch.heldIDs, lk)
			dl.debitsPending -= amount
			c.reserved[l] -= leg.Amount
			if !p.Commit {
				if f := st.LookupTransfers([]string{p.ID}); len(f) > 0 {
					c.bad("chain", "%s: release %s of chain %s, but %s is stored on shard %d: %+v", what(), key.id, ch.legs[0].ID, p.ID, g.id, f)
					return false
				}
			} else {
				if !c.legStored(g, st, &leg, a.Timestamp, pending, what) {
					return false
				}
				if pending {
					dl.debitsPending += amount
					c.pendingOpen[l] += leg.Amount
					pr := &pendingRec{t: leg, state: transport.StatePending}
					pr.t.Timestamp = a.Timestamp
					pr.t.Flags &^= transport.TransferLinked
					pr.deadline = deadline(&leg, a.Timestamp)
					if p.CreditShard != g.id {
						pr.remote = p.CreditShard
					}
					if c.pending[g.id-1][leg.ID] != nil {
						c.bad("chain", "%s: pending leg %s applied twice", what(), leg.ID)
						return false
					}
					c.pending[g.id-1][leg.ID] = pr
					w.stats.Pending++
					w.reached["chain across shards pending leg opened"]++
				} else {
					dl.debitsPosted += amount
					c.creditedInFlight[l] -= leg.Amount
					w.stats.Posted++
				}
			}
		}
		if p.Debit {
			*touched = append(*touched, leg.DebitAccountID)
		} else {
			*touched = append(*touched, leg.CreditAccountID)
		}
		return true
	}
	// A hold.
	codes := creditHoldCodes
	if p.Debit {
		codes = debitHoldCodes
	}
	switch {
	case abort && a.Outcome != shard.OutcomeAborted:
		c.bad("chain", "%s: an abort answered hold %s %d/%s", what(), key.id, a.Outcome, a.Code)
	case a.Outcome == shard.OutcomeAborted:
		if !abort {
			w.reached["chain across shards hold aborted: id busy"]++
			if !p.Debit {
				c.bad("chain", "%s: hold %s of a credit side aborted by a credit", what(), key.id)
			}
		} else {
			w.reached["chain across shards hold aborted"]++
		}
	case a.Outcome == shard.OutcomeRefused && p.Debit && a.Code == transport.CodeExists:
		if !c.legStored(g, st, &leg, a.Timestamp, pending, what) {
			return false
		}
	case a.Outcome == shard.OutcomeRefused && p.Debit && a.Code == transport.CodeExistsWithDifferentFields:
		if f := st.LookupTransfers([]string{p.ID}); len(f) != 1 || sameFields(&f[0], &leg) {
			c.bad("chain", "%s: hold %s refused exists_with_different_fields, but shard %d stores %+v under %s", what(), key.id, g.id, f, p.ID)
		}
	case a.Outcome == shard.OutcomeRefused:
		if !slices.Contains(codes, a.Code) {
			c.bad("chain", "%s: hold %s (debit side %v) refused %s", what(), key.id, p.Debit, a.Code)
		}
		if p.Debit {
			w.reached["chain across shards debit side refused "+a.Code.String()]++
		} else {
			w.reached["chain across shards credit side refused "+a.Code.String()]++
		}
	case a.Outcome == shard.OutcomeCredited && a.Code == transport.CodeOK:
		*stamps = append(*stamps, a.Timestamp)
		if p.Debit {
			if h := c.ch.heldIDs[lk]; h != nil {
				c.bad("chain", "%s: hold %s holds id %s, held already by part %s", what(), key.id, p.ID, h.p.Key())
				return false
			}
			if f := st.LookupTransfers([]string{p.ID}); len(f) > 0 {
				c.bad("chain", "%s: hold %s holds id %s, stored already on shard %d", what(), key.id, p.ID, g.id)
				return false
			}
			c.ch.heldIDs[lk] = pr
			d(l).debitsPending += amount
			c.reserved[l] += leg.Amount
			*touched = append(*touched, leg.DebitAccountID)
		} else {
			d(l).creditsPending += amount
			c.creditsHeld[l] += leg.Amount
			*touched = append(*touched, leg.CreditAccountID)
		}
	default:
		c.bad("chain", "%s: hold %s answered %d/%s", what(), key.id, a.Outcome, a.Code)
	}
	return w.failure == nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// legStored: leg is stored on g at ts with its fields (posted, or pending).
func (c *Checker) legStored(g *Group, st *shard.State, leg *transport.Transfer, ts uint64, pending bool, what func() string) bool {
	f := st.LookupTransfers([]string{leg.ID})
	if len(f) != 1 || f[0].ID != leg.ID || f[0].Timestamp != ts || !sameFields(&f[0], leg) {
		c.bad("chain", "%s: leg %s of a chain across shards should be stored on shard %d at %d with its fields; found %+v", what(), leg.ID, g.id, rel(ts), f)
		return false
	}
	return true
}

// chainResolve applies, in the checks' model of the coordinator g, the
// answers of a KindResolve to the parts of chains: it returns the outbox
// rows the shard must write (the next stage's parts) and the results of the
// chains it ends; ok is false after a failure. Answers to no part in flight
// (to other outbox rows, stale, or repeated) are left to the caller.
func (c *Checker) chainResolve(g *Group, answers []shard.Answer, what func() string) (rows []shard.OutboxRow, results []shard.Resolved, ok bool) {
	for _, a := range answers {
		pr := c.ch.parts[resvKey{g.id, a.ID, a.Attempt}]
		if pr == nil || pr.resolved || a.Outcome == shard.OutcomeStale {
			continue
		}
		if pr.decision == 0 || a.Outcome != pr.decision || a.Code != pr.code || a.Timestamp != pr.ts {
			c.bad("chain", "%s: part %s attempt %d resolved with %d/%s at %d, its participant %d decided %d/%s at %d", what(), a.ID, a.Attempt,
				a.Outcome, a.Code, rel(a.Timestamp), pr.to, pr.decision, pr.code, rel(pr.ts))
			return nil, nil, false
		}
		pr.resolved = true
		ch := pr.chain
		if !pr.p.Finish {
			ch.votes[2*int(pr.p.Leg)+b2i(!pr.p.Debit)] = a
		} else if ch.stage == chainCommitDebit {
			ch.votes[2*int(pr.p.Leg)].Timestamp = a.Timestamp // the leg's timestamp
		}
		if ch.waiting--; ch.waiting > 0 {
			continue
		}
		add := func(p shard.ChainPart) {
			rows = append(rows, partRow(ch, p))
		}
		switch ch.stage {
		case chainHolding:
			held := 0
			for _, v := range ch.votes {
				if v.Outcome == shard.OutcomeCredited {
					held++
				}
			}
			if held == len(ch.votes) {
				ch.stage, ch.waiting = chainCommitCredit, len(ch.legs)
				for k := range ch.legs {
					add(ch.part(k, false, true, true))
				}
				continue
			}
			ch.stage, ch.waiting = chainReleasing, held
			for v := range ch.votes {
				if ch.votes[v].Outcome == shard.OutcomeCredited {
					add(ch.part(v/2, v%2 == 0, true, false))
				}
			}
			if held > 0 {
				continue
			}
		case chainCommitCredit:
			ch.stage, ch.waiting = chainCommitDebit, len(ch.legs)
			for k := range ch.legs {
				add(ch.part(k, true, true, true))
			}
			continue
		}
		committed := ch.stage == chainCommitDebit
		ch.stage = chainOver
		delete(c.ch.inProgress, idKey{ch.co, ch.legs[0].ID})
		ch.results = ch.outcome(committed)
		results = append(results, ch.results...)
	}
	return rows, results, true
}

// outcome is what every leg of a chain over is answered, by the rules of
// shard/chains.go: ok on every leg (with the timestamp its debit side was
// stored at) when committed; retry (aborted) on every leg when any part was
// aborted; exists on every leg when every leg existed; else the first
// failing leg's code (exists for a leg that existed when the others were
// held) and linked_event_failed on the others.
func (ch *chainRec) outcome(committed bool) []shard.Resolved {
	n := len(ch.legs)
	res := make([]shard.Resolved, n)
	for k := range res {
		res[k] = shard.Resolved{ID: ch.legs[k].ID, Attempt: ch.attempt, Chain: true}
	}
	d := func(k int) *shard.Answer { return &ch.votes[2*k] }
	if committed {
		for k := range res {
			res[k].Code, res[k].Timestamp = transport.CodeOK, d(k).Timestamp
		}
		return res
	}
	if slices.ContainsFunc(ch.votes, func(v shard.Answer) bool { return v.Outcome == shard.OutcomeAborted }) {
		for k := range res {
			res[k].Aborted = true
		}
		return res
	}
	existed, failed := 0, -1
	var code transport.Code
	for k := range res {
		dv, cv := d(k), &ch.votes[2*k+1]
		dr, cr := dv.Outcome == shard.OutcomeRefused, cv.Outcome == shard.OutcomeRefused
		switch {
		case dr && dv.Code == transport.CodeExists:
			existed++
		case failed >= 0:
		case dr && cr:
			failed, code = k, min(dv.Code, cv.Code)
		case dr:
			failed, code = k, dv.Code
		case cr:
			failed, code = k, cv.Code
		}
	}
	if failed < 0 && existed == n {
		for k := range res {
			res[k].Code, res[k].Timestamp = transport.CodeExists, d(k).Timestamp
		}
		return res
	}
	if failed < 0 {
		for k := range res {
			if d(k).Code == transport.CodeExists {
				failed, code = k, transport.CodeExists
				break
			}
		}
	}
	for k := range res {
		res[k].Code = transport.CodeLinkedEventFailed
	}
	res[failed].Code = code
	return res
}

// chainsQuiet: at quiescence no chain is in progress, no part unanswered,
// no id held, no outbox row left; and every chain drawn is stored whole
// (each leg on its debit shard, exactly as sent) or not at all.
func (c *Checker) chainsQuiet() bool {
	w := c.w
	for _, ch := range c.ch.order {
		if ch.stage != chainOver {
			w.fail("liveness", "chain %s (coordinator %d, attempt %d) in stage %d at quiescence, waiting for %d parts", ch.legs[0].ID, ch.co, rel(ch.attempt), ch.stage, ch.waiting)
			return false
		}
	}
	if len(c.ch.heldIDs) > 0 {
		keys := slices.SortedFunc(maps.Keys(c.ch.heldIDs), func(a, b idKey) int { return cmp.Or(cmp.Compare(a.ds, b.ds), cmp.Compare(a.id, b.id)) })
		w.fail("liveness", "%d ids held for chains at quiescence, first %s on shard %d", len(keys), keys[0].id, keys[0].ds)
		return false
	}
	last := map[uint32]uint64{}
	for _, ch := range c.ch.order {
		last[ch.co] = max(last[ch.co], ch.attempt)
	}
	for _, g := range w.groups {
		st := g.leader.r.st
		if n := st.OutboxLen(); n > 0 {
			w.fail("liveness", "%s: %d outbox rows at quiescence", g.name(), n)
			return false
		}
		if a, ok := last[g.id]; ok && st.ForgetBelow() <= a {
			w.fail("liveness", "%s: forget watermark %d at quiescence, not past its last chain's attempt %d: a chain row is left", g.name(), rel(st.ForgetBelow()), rel(a))
			return false
		}
	}
	for _, legs := range w.ref.chains {
		stored := 0
		var found []transport.Transfer
		for k := range legs {
			g := w.groups[w.shardOf(legs[k].DebitAccountID)-1]
			f := g.leader.r.st.LookupTransfers([]string{legs[k].ID})
			found = append(found, f...)
			if len(f) == 1 && sameFields(&f[0], &legs[k]) {
				stored++
			}
		}
		if len(found) > 0 && stored != len(legs) {
			w.fail("chain", "chain %s..%s at quiescence: %d of its %d legs stored as sent, %d stored in all: not all or nothing (%+v)",
				legs[0].ID, legs[len(legs)-1].ID, stored, len(legs), len(found), found)
			return false
		}
		if stored == len(legs) {
			w.reached["chain stored whole at quiescence"]++
		}
	}
	return true
}
