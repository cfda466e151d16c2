package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// Linked chains across shards. A small cluster of states (shard i is
// states[i-1]) exchanges outbox rows by hand; the property test below
// loses, repeats, reorders and aborts them.

type chainCluster struct {
	t      testing.TB
	c      *clock
	states []*State
	home   map[string]uint32 // account -> shard
	// resolved collects the answers of in-flight events, by (id, attempt).
	resolved map[attemptID]Resolved
	// answers are every answer ever sent back, to replay late duplicates.
	answers map[uint32][]Answer
}

type attemptID struct {
	id      string
	attempt uint64
}

func newChainCluster(t testing.TB, n int) *chainCluster {
	cl := &chainCluster{t: t, c: &clock{}, home: map[string]uint32{}, resolved: map[attemptID]Resolved{}, answers: map[uint32][]Answer{}}
	for i := range n {
		cl.states = append(cl.states, New(uint32(i+1), nil))
	}
	return cl
}

func (cl *chainCluster) shard(id uint32) *State { return cl.states[id-1] }

func (cl *chainCluster) accounts(on uint32, as ...transport.Account) {
	mustCreateAccounts(cl.t, cl.c, cl.shard(on), as...)
	for _, a := range as {
		cl.home[a.ID] = on
	}
}

// send routes a batch as the router does: each chain that touches another
// shard goes whole to its first debit account's shard.
func (cl *chainCluster) send(ts ...transport.Transfer) []EventResult {
	cl.t.Helper()
	if len(ts) == 0 {
		return nil
	}
	ds, cs := make([]uint32, len(ts)), make([]uint32, len(ts))
	for i := range ts {
		ds[i], cs[i] = cl.home[ts[i].DebitAccountID], cl.home[ts[i].CreditAccountID]
		if ds[i] == 0 {
			ds[i] = cl.home[ts[0].DebitAccountID]
		}
		if cs[i] == 0 {
			cs[i] = ds[i]
		}
	}
	out := cl.c.apply(cl.shard(ds[0]), Command{Kind: KindCreateTransfers, Transfers: ts, CreditShards: cs, DebitShards: ds})
	cl.collect(out)
	return out.Events[0]
}

func (cl *chainCluster) collect(out *Output) {
	for _, r := range out.Resolved {
		key := attemptID{r.ID, r.Attempt}
		if _, dup := cl.resolved[key]; dup {
			cl.t.Fatalf("%s attempt %d resolved twice", r.ID, r.Attempt)
		}
		cl.resolved[key] = r
	}
}

// deliver carries one outbox row of shard from to its target (as a credit
// or an abort) and, unless the answer is lost, the answer back.
func (cl *chainCluster) deliver(from *State, row OutboxRow, abort, loseAnswer bool) {
	kind := KindCredit
	if abort {
		kind = KindAbort
	}
	c := Credit{Transfer: row.Transfer, DebitShard: from.ID(), Part: row.Part}
	ans := cl.c.apply(cl.shard(row.CreditShard), Command{Kind: kind, Credits: []Credit{c}}).Answers[0]
	cl.answers[from.ID()] = append(cl.answers[from.ID()], ans...)
	if loseAnswer {
		return
	}
	cl.collect(cl.c.apply(from, Command{Kind: KindResolve, Answers: ans}))
}

// settle delivers every row until every outbox is empty.
func (cl *chainCluster) settle() {
	for range 1000 {
		busy := false
		for _, s := range cl.states {
			for _, row := range s.Outbox() {
				busy = true
				cl.deliver(s, row, false, false)
			}
		}
		if !busy {
			return
		}
	}
	cl.t.Fatal("the outboxes never emptied")
}

func (cl *chainCluster) result(id string, r EventResult) Resolved {
	cl.t.Helper()
	if !r.InFlight {
		return Resolved{ID: id, Code: r.Code, Timestamp: r.Timestamp}
	}
	got, ok := cl.resolved[attemptID{id, r.Attempt}]
	if !ok {
		cl.t.Fatalf("%s is not resolved", id)
	}
	return got
}

func (cl *chainCluster) balances(id string) [4]uint64 {
	a := account(cl.t, cl.shard(cl.home[id]), id)
	return [4]uint64{a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted}
}

func (cl *chainCluster) want(id string, b [4]uint64) {
	cl.t.Helper()
	if got := cl.balances(id); got != b {
		cl.t.Fatalf("%s: balances (dp, dP, cp, cP) %v, want %v", id, got, b)
	}
}

func linkedXfer(id, debit, credit string, amount uint64) transport.Transfer {
	t := xfer(id, debit, credit, amount)
	t.Flags = transport.TransferLinked
	return t
}

// threeShards: a on 1, b on 2, c on 3; "capped" on 3 may not be credited
// past its debits.
func threeShards(t testing.TB) *chainCluster {
	cl := newChainCluster(t, 3)
	cl.accounts(1, acct("a", 1, 0), acct("a2", 1, transport.AccountDebitsMustNotExceedCredits|transport.AccountHistory))
	cl.accounts(2, acct("b", 1, transport.AccountHistory), acct("other", 2, 0))
	cl.accounts(3, acct("c", 1, 0), acct("capped", 1, transport.AccountCreditsMustNotExceedDebits))
	return cl
}

func TestChainAcrossShardsCommitsEveryLeg(t *testing.T) {
	cl := threeShards(t)
	res := cl.send(linkedXfer("t1", "a", "b", 10), linkedXfer("t2", "b", "c", 4), xfer("t3", "c", "a", 1))
	for _, r := range res {
		if !r.InFlight {
			t.Fatalf("a chain across shards answered at once: %+v", res)
		}
	}
	cl.want("a", [4]uint64{}) // nothing moves before the holds arrive
	for _, s := range cl.states {
		for _, row := range s.Outbox() {
			cl.deliver(s, row, false, false)
		}
	}
	// Holds: the money is pending on both sides, nothing posted.
	cl.want("a", [4]uint64{10, 0, 1, 0})
	if got := cl.shard(1).LookupTransfers([]string{"t1"}); len(got) != 0 {
		t.Fatalf("a held leg is visible: %+v", got)
	}
	cl.settle()
	for i, id := range []string{"t1", "t2", "t3"} {
		if r := cl.result(id, res[i]); r.Code != transport.CodeOK || r.Timestamp == 0 {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	cl.want("a", [4]uint64{0, 10, 0, 1})
	cl.want("b", [4]uint64{0, 4, 0, 10})
	cl.want("c", [4]uint64{0, 1, 0, 4})
	got := cl.shard(2).LookupTransfers([]string{"t2"})
	if len(got) != 1 || got[0].State != transport.StatePosted || got[0].Amount != 4 {
		t.Fatalf("t2 on its debit shard: %+v", got)
	}
	cl.quiet()

	// A retry finds every leg: exists on each, nothing moves.
	res = cl.send(linkedXfer("t1", "a", "b", 10), linkedXfer("t2", "b", "c", 4), xfer("t3", "c", "a", 1))
	cl.settle()
	for i, id := range []string{"t1", "t2", "t3"} {
		if r := cl.result(id, res[i]); r.Code != transport.CodeExists {
			t.Fatalf("retry of %s: %+v", id, r)
		}
	}
	cl.want("a", [4]uint64{0, 10, 0, 1})
	cl.want("b", [4]uint64{0, 4, 0, 10})
	cl.quiet()
}

func TestChainAcrossShardsRefusedLegReleasesAll(t *testing.T) {
	cl := threeShards(t)
	// capped has no debits: the credit side of t2 refuses.
	res := cl.send(linkedXfer("t1", "a", "b", 10), xfer("t2", "b", "capped", 4))
	cl.settle()
	if r := cl.result("t1", res[0]); r.Code != transport.CodeLinkedEventFailed {
		t.Fatalf("t1: %+v", r)
	}
	if r := cl.result("t2", res[1]); r.Code != transport.CodeExceedsDebits {
		t.Fatalf("t2: %+v", r)
	}
	for _, id := range []string{"a", "b", "capped"} {
		cl.want(id, [4]uint64{})
	}
	cl.quiet()
	// The ids are free again.
	res = cl.send(linkedXfer("t1", "a", "b", 10), xfer("t2", "b", "c", 4))
	cl.settle()
	if r := cl.result("t2", res[1]); r.Code != transport.CodeOK {
		t.Fatalf("t2 after the failed chain: %+v", r)
	}
	// The history shows the hold and its release on b, then the commit.
	// b is the credit side of t1 and the debit side of t2: 2 holds and 2
	// releases, then 2 holds and 2 commits.
	bal := cl.shard(2).Archive().(*MemArchive).Balances["b"]
	if len(bal) != 8 {
		t.Fatalf("b's balance history: %+v", bal)
	}
	if got := cl.shard(2).Archive().(*MemArchive).AccountTransfers["b"]; len(got) != 2 {
		t.Fatalf("b's transfers: %+v", got) // t1 and t2, at their commits
	}
	cl.quiet()
}

func TestChainAcrossShardsCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		legs []transport.Transfer
		want []transport.Code
	}{
		{"debit account missing", []transport.Transfer{linkedXfer("x1", "a", "b", 1), xfer("x2", "nobody", "c", 1)},
			[]transport.Code{transport.CodeLinkedEventFailed, transport.CodeDebitAccountNotFound}},
		{"credit account missing", []transport.Transfer{linkedXfer("x1", "a", "nobody", 1), xfer("x2", "b", "c", 1)},
			[]transport.Code{transport.CodeCreditAccountNotFound, transport.CodeLinkedEventFailed}},
		{"debit limit", []transport.Transfer{linkedXfer("x1", "a", "b", 1), xfer("x2", "a2", "c", 1)},
			[]transport.Code{transport.CodeLinkedEventFailed, transport.CodeExceedsCredits}},
		{"ledger mismatch wins over the limit", []transport.Transfer{linkedXfer("x1", "a", "b", 1), xfer("x2", "a2", "other", 1)},
			[]transport.Code{transport.CodeLinkedEventFailed, transport.CodeLedgerMismatch}},
		{"post in a chain across shards", []transport.Transfer{linkedXfer("x1", "a", "b", 1),
			{ID: "x2", PendingID: "p", Flags: transport.TransferPostPendingTransfer, DebitAccountID: "b"}},
			[]transport.Code{transport.CodeLinkedEventFailed, transport.CodeFlagsInvalid}},
		{"balancing in a chain across shards", []transport.Transfer{linkedXfer("x1", "a", "b", 1),
			{ID: "x2", DebitAccountID: "b", CreditAccountID: "c", Amount: 1, Ledger: 1, Code: 1, Flags: transport.TransferBalancingDebit}},
			[]transport.Code{transport.CodeLinkedEventFailed, transport.CodeFlagsInvalid}},
		{"an id twice", []transport.Transfer{linkedXfer("x1", "a", "b", 1), xfer("x1", "b", "c", 1)},
			[]transport.Code{transport.CodeLinkedEventFailed, transport.CodeExistsWithDifferentFields}},
		{"amount zero", []transport.Transfer{linkedXfer("x1", "a", "b", 0), xfer("x2", "b", "c", 1)},
			[]transport.Code{transport.CodeAmountInvalid, transport.CodeLinkedEventFailed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := threeShards(t)
			res := cl.send(tc.legs...)
			cl.settle()
			for i, want := range tc.want {
				if got := cl.result(tc.legs[i].ID, res[i]); got.Code != want {
					t.Fatalf("leg %d: %v, want %v", i, got.Code, want)
				}
			}
			for _, id := range []string{"a", "a2", "b", "c"} {
				cl.want(id, [4]uint64{})
			}
			cl.quiet()
		})
	}
}

func TestChainAcrossShardsRetryWhileInProgress(t *testing.T) {
	cl := threeShards(t)
	legs := []transport.Transfer{linkedXfer("t1", "a", "b", 10), xfer("t2", "b", "c", 4)}
	first := cl.send(legs...)
	again := cl.send(legs...)
	if !again[0].Retry || again[0].Attempt != first[0].Attempt {
		t.Fatalf("a retry in progress did not join the chain: %+v", again)
	}
	other := cl.send(linkedXfer("t1", "a", "b", 11), xfer("t9", "b", "c", 4))
	if other[0].Code != transport.CodeExistsWithDifferentFields || other[1].Code != transport.CodeLinkedEventFailed {
		t.Fatalf("another chain under the same id: %+v", other)
	}
	cl.settle()
	if r := cl.result("t1", first[0]); r.Code != transport.CodeOK {
		t.Fatalf("t1: %+v", r)
	}
	cl.want("a", [4]uint64{0, 10, 0, 0})
	cl.quiet()
}

func TestChainAcrossShardsAbortBeforeHoldWins(t *testing.T) {
	cl := threeShards(t)
	res := cl.send(linkedXfer("t1", "a", "b", 10), xfer("t2", "b", "c", 4))
	// The coordinator gave up on the credit side of t1 before its hold
	// arrived: it is aborted, and the late hold is answered aborted too.
	home := cl.shard(1)
	var late OutboxRow
	for _, row := range home.Outbox() {
		if row.Part.Leg == 0 && !row.Part.Debit {
			late = row
			cl.deliver(home, row, true, false)
		}
	}
	cl.deliver(home, late, false, true)
	cl.settle()
	for i, id := range []string{"t1", "t2"} {
		if r := cl.result(id, res[i]); !r.Aborted {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		cl.want(id, [4]uint64{})
	}
	cl.quiet()
}

func TestChainAcrossShardsPendingLegThenPost(t *testing.T) {
	cl := threeShards(t)
	p := linkedXfer("p1", "a", "b", 10)
	p.Flags |= transport.TransferPending
	res := cl.send(p, xfer("t2", "b", "c", 3))
	cl.settle()
	if r := cl.result("p1", res[0]); r.Code != transport.CodeOK {
		t.Fatalf("p1: %+v", r)
	}
	cl.want("a", [4]uint64{10, 0, 0, 0})
	cl.want("b", [4]uint64{0, 3, 10, 0})
	// Post 6 of it: the debit shard settles the credit shard.
	post := transport.Transfer{ID: "post", PendingID: "p1", Amount: 6, Flags: transport.TransferPostPendingTransfer}
	out := cl.c.apply(cl.shard(1), Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{post}, CreditShards: []uint32{2}})
	cl.collect(out)
	cl.settle()
	if r := cl.result("post", out.Events[0][0]); r.Code != transport.CodeOK {
		t.Fatalf("post: %+v", r)
	}
	cl.want("a", [4]uint64{0, 6, 0, 0})
	cl.want("b", [4]uint64{0, 3, 0, 6})
	cl.quiet()
}

func TestChainAcrossShardsHeldIDIsTaken(t *testing.T) {
	cl := threeShards(t)
	cl.send(linkedXfer("t1", "a", "b", 10), xfer("t2", "b", "c", 4))
	home := cl.shard(1)
	for _, row := range home.Outbox() {
		if row.Part.Leg == 0 && row.Part.Debit {
			cl.deliver(home, row, false, false)
		}
	}
	// t1 is held on shard 1: a plain transfer under its id is refused, and
	// so is another chain's leg.
	if r := cl.send(xfer("t1", "a", "c", 1)); r[0].Code != transport.CodeExistsWithDifferentFields {
		t.Fatalf("a plain transfer under a held id: %+v", r)
	}
	res := cl.send(linkedXfer("u1", "b", "c", 1), xfer("t1", "a", "c", 1))
	cl.settle()
	if r := cl.result("u1", res[0]); !r.Aborted {
		t.Fatalf("a chain whose leg's id is held: %+v", r)
	}
	cl.quiet()
}

func TestChainAcrossShardsSnapshotMidway(t *testing.T) {
	cl := threeShards(t)
	res := cl.send(linkedXfer("t1", "a2", "b", 0+5), xfer("t2", "b", "c", 4))
	_ = res
	home := cl.shard(1)
	for _, row := range home.Outbox()[:2] {
		cl.deliver(home, row, false, false)
	}
	for i, s := range cl.states {
		r := restored(t, s)
		if r.Hash() != s.Hash() {
			t.Fatalf("shard %d: the snapshot read back differs", i+1)
		}
		cl.states[i] = r
	}
	cl.settle()
	if r := cl.result("t1", res[0]); r.Code != transport.CodeExceedsCredits {
		t.Fatalf("t1: %+v", r)
	}
	cl.quiet()
}

// quiet checks a cluster at rest: no outbox row, chain or hold left, every
// ledger's debits equal its credits, nothing pending that no open transfer
// explains, and the inboxes empty once every shard announced its watermark.
func (cl *chainCluster) quiet() {
	cl.t.Helper()
	for _, s := range cl.states {
		if len(s.outbox) != 0 || len(s.chains) != 0 || len(s.heldIDs) != 0 {
			cl.t.Fatalf("shard %d at rest: %d outbox rows, %d chains, %d held ids", s.ID(), len(s.outbox), len(s.chains), len(s.heldIDs))
		}
	}
	for l, v := range ledgerSums(cl.states...) {
		if v[0] != v[1] {
			cl.t.Fatalf("ledger %d: debits %d, credits %d", l, v[0], v[1])
		}
	}
	pending := map[string][2]uint64{}
	for _, s := range cl.states {
		for _, p := range s.transfers {
			v := pending[p.DebitAccountID]
			v[0] += p.Amount
			pending[p.DebitAccountID] = v
			v = pending[p.CreditAccountID]
			v[1] += p.Amount
			pending[p.CreditAccountID] = v
		}
	}
	for _, s := range cl.states {
		for _, a := range s.accounts {
			if got := [2]uint64{a.DebitsPending, a.CreditsPending}; got != pending[a.ID] {
				cl.t.Fatalf("%s: pending %v, open transfers explain %v", a.ID, got, pending[a.ID])
			}
		}
	}
	for _, from := range cl.states {
		below := from.ForgetBelow()
		for _, to := range cl.states { // itself too: it holds parts of its own chains
			cl.c.apply(to, Command{Kind: KindForget, Forget: &Forget{DebitShard: from.ID(), Below: below}})
		}
	}
	for _, s := range cl.states {
		if len(s.inbox) != 0 {
			cl.t.Fatalf("shard %d: %d inbox rows after every watermark", s.ID(), len(s.inbox))
		}
	}
}

// TestChainAcrossShardsProperty runs random chains and plain transfers over
// 3 shards while messages are lost, repeated, reordered and aborted, and
// checks after every step that no limit is broken, and at rest that every
// chain is whole or absent, balances replay the transfers found, and
// debits equal credits.
func TestChainAcrossShardsProperty(t *testing.T) {
	seeds := 20
	if testing.Short() {
		seeds = 5
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { crossChainProperty(t, seed) })
	}
}

func crossChainProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	cl := newChainCluster(t, 3)
	var ids []string
	for sh := uint32(1); sh <= 3; sh++ {
		for k := range 4 {
			id := fmt.Sprintf("s%d-%d", sh, k)
			flags := []uint32{0, transport.AccountDebitsMustNotExceedCredits, transport.AccountCreditsMustNotExceedDebits, transport.AccountHistory}[k]
			cl.accounts(sh, acct(id, 1, flags))
			ids = append(ids, id)
		}
	}
	// Fund the debit-limited accounts on their own shard.
	for sh := uint32(1); sh <= 3; sh++ {
		mustTransfer(t, cl.c, cl.shard(sh), xfer(fmt.Sprintf("fund%d", sh), fmt.Sprintf("s%d-0", sh), fmt.Sprintf("s%d-1", sh), 200))
	}
	type sent struct {
		legs []transport.Transfer
		res  []EventResult
	}
	var chains []sent
	n := 0
	checkLimits := func() {
		for _, s := range cl.states {
			for _, a := range s.accounts {
				if a.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && a.DebitsPending+a.DebitsPosted > a.CreditsPosted ||
					a.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && a.CreditsPending+a.CreditsPosted > a.DebitsPosted {
					t.Fatalf("%s breaks its limit: %+v", a.ID, *a)
				}
			}
		}
	}
	for step := range 400 {
		switch r := rng.IntN(10); {
		case r < 3: // a new chain (or a retry of an old one)
			var legs []transport.Transfer
			if len(chains) > 0 && rng.IntN(5) == 0 {
				legs = chains[rng.IntN(len(chains))].legs
			} else {
				for k := range 2 + rng.IntN(3) {
					d, c := ids[rng.IntN(len(ids))], ids[rng.IntN(len(ids))]
					for c == d {
						c = ids[rng.IntN(len(ids))]
					}
					leg := linkedXfer(fmt.Sprintf("c%d-%d", n, k), d, c, uint64(1+rng.IntN(30)))
					if rng.IntN(6) == 0 {
						leg.Flags |= transport.TransferPending
					}
					legs = append(legs, leg)
				}
				legs[len(legs)-1].Flags &^= transport.TransferLinked
				n++
			}
			chains = append(chains, sent{legs: legs, res: cl.send(legs...)})
		case r < 4: // a plain transfer on one shard, sometimes under a leg's id
			sh := uint32(1 + rng.IntN(3))
			id := fmt.Sprintf("p%d", step)
			if len(chains) > 0 && rng.IntN(3) == 0 {
				id = chains[rng.IntN(len(chains))].legs[0].ID
			}
			d, c := fmt.Sprintf("s%d-%d", sh, rng.IntN(4)), fmt.Sprintf("s%d-%d", sh, rng.IntN(4))
			if d != c {
				cl.c.apply(cl.shard(sh), Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer(id, d, c, uint64(1+rng.IntN(10)))}})
			}
		case r < 9: // a message
			s := cl.states[rng.IntN(3)]
			rows := s.Outbox()
			if len(rows) == 0 {
				continue
			}
			row := rows[rng.IntN(len(rows))]
			cl.deliver(s, row, rng.IntN(25) == 0, rng.IntN(4) == 0)
			if rng.IntN(4) == 0 { // and a duplicate, now or later
				cl.deliver(s, row, false, rng.IntN(2) == 0)
			}
		default: // a late duplicate answer
			s := cl.states[rng.IntN(3)]
			if old := cl.answers[s.ID()]; len(old) > 0 {
				cl.collect(cl.c.apply(s, Command{Kind: KindResolve, Answers: []Answer{old[rng.IntN(len(old))]}}))
			}
		}
		checkLimits()
	}
	cl.settle()
	checkLimits()
	// Every chain is whole or absent, as its answer says.
	var committed, existed, failed, aborted int
	defer func() {
		t.Logf("%d chains: %d committed, %d existed, %d failed, %d aborted", len(chains), committed, existed, failed, aborted)
	}()
	for _, ch := range chains {
		var codes []transport.Code
		wasAborted := false
		for k, leg := range ch.legs {
			r := cl.result(leg.ID, ch.res[k])
			codes = append(codes, r.Code)
			wasAborted = wasAborted || r.Aborted
		}
		ok := !wasAborted && (slices.Index(codes, transport.CodeOK) >= 0 || slices.Index(codes, transport.CodeExists) >= 0)
		switch {
		case wasAborted:
			aborted++
		case ok && codes[0] == transport.CodeOK:
			committed++
		case ok:
			existed++
		default:
			failed++
		}
		for k, leg := range ch.legs {
			found, _ := cl.shard(cl.home[leg.DebitAccountID]).lookupTransfer(leg.ID)
			same := found.ID != "" && sameTransfer(&found, &leg)
			if ok && codes[k] != transport.CodeOK && codes[k] != transport.CodeExists {
				t.Fatalf("chain %s: codes %v mix success and failure", ch.legs[0].ID, codes)
			}
			if ok && !same {
				t.Fatalf("chain %s answered %v but leg %s is %+v", ch.legs[0].ID, codes, leg.ID, found)
			}
		}
	}
	// Balances replay the transfers found.
	want := map[string][4]uint64{}
	for _, s := range cl.states {
		for _, tr := range s.allTransfers() {
			d, c := want[tr.DebitAccountID], want[tr.CreditAccountID]
			switch tr.State {
			case transport.StatePending:
				d[0] += tr.Amount
				c[2] += tr.Amount
			case transport.StatePosted:
				if tr.Flags&transport.TransferPending == 0 {
					d[1] += tr.Amount
					c[3] += tr.Amount
				}
			}
			want[tr.DebitAccountID], want[tr.CreditAccountID] = d, c
		}
	}
	for _, id := range ids {
		if got := cl.balances(id); got != want[id] {
			t.Fatalf("%s: balances %v, the transfers found give %v", id, got, want[id])
		}
	}
	cl.quiet()
}

// A chain across shards re-sent by the request that committed it (its
// answer lost on the way back) is answered as first: ok on each leg with
// its timestamp, exists for a second copy in the batch; the same chain
// sent by another request is exists; the record survives a snapshot and is
// forgotten with the request's.
func TestChainAcrossShardsReSentByItsRequest(t *testing.T) {
	cl := threeShards(t)
	legs := []transport.Transfer{linkedXfer("t1", "a", "b", 10), linkedXfer("t2", "b", "c", 4), xfer("t3", "c", "a", 1)}
	req := make([]byte, RequestIDBytes)
	req[0] = 9
	send := func(request []byte, batch ...transport.Transfer) *Output {
		ds, cs := make([]uint32, len(batch)), make([]uint32, len(batch))
		for i := range batch {
			ds[i], cs[i] = cl.home[batch[i].DebitAccountID], cl.home[batch[i].CreditAccountID]
		}
		out := cl.c.apply(cl.shard(1), Command{Kind: KindCreateTransfers, Transfers: batch, CreditShards: cs, DebitShards: ds, Request: request})
		cl.collect(out)
		return out
	}
	first := send(req, legs...).Events[0]
	cl.settle()
	var stamps []uint64
	for i, id := range []string{"t1", "t2", "t3"} {
		r := cl.result(id, first[i])
		if r.Code != transport.CodeOK {
			t.Fatalf("%s: %+v", id, r)
		}
		stamps = append(stamps, r.Timestamp)
	}
	for _, s := range []*State{cl.shard(1), restored(t, cl.shard(1).Clone())} {
		out := cl.c.apply(s, Command{Kind: KindCreateTransfers, Transfers: append(slices.Clone(legs), legs...),
			CreditShards: []uint32{2, 3, 1, 2, 3, 1}, DebitShards: []uint32{1, 2, 3, 1, 2, 3}, Request: req})
		for i, r := range out.Events[0] {
			want := transport.CodeOK
			if i >= len(legs) {
				want = transport.CodeExists
			}
			if r.InFlight || r.Code != want || r.Timestamp != stamps[i%len(legs)] {
				t.Fatalf("re-send, event %d: %+v, want %v at %d", i, r, want, stamps[i%len(legs)])
			}
		}
		if len(out.Reserved) != 0 {
			t.Fatal("a re-send of a committed chain ran it again")
		}
	}
	other := make([]byte, RequestIDBytes)
	other[0] = 10
	again := send(other, legs...).Events[0]
	cl.settle()
	for i, id := range []string{"t1", "t2", "t3"} {
		if r := cl.result(id, again[i]); r.Code != transport.CodeExists {
			t.Fatalf("another request's %s: %+v", id, r)
		}
	}
	cl.c.now += requestsRetention + 1e9
	mustTransfer(t, cl.c, cl.shard(1), xfer("later", "a", "a2", 1))
	cl.c.apply(cl.shard(1), Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("later2", "a", "a2", 1)}, Request: other})
	if n := len(cl.shard(1).chainsDone.live()); n != 0 {
		t.Fatalf("%d committed chains kept past the retention", n)
	}
}
