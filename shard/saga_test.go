package shard

import (
	"reflect"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// The cross-shard saga with the shards wired by hand: shard 1 debits, shard
// 2 credits. Messages are the values a dispatcher would carry.

type saga struct {
	t      *testing.T
	c      clock
	s1, s2 *State
}

// newSaga: shard 1 holds op and alice (funded with 100, may not go
// negative); shard 2 holds bob, eur (ledger 2), closed, and cap (may receive
// at most its debits, 0).
func newSaga(t *testing.T) *saga {
	g := &saga{t: t, s1: New(1, nil), s2: New(2, nil)}
	mustCreateAccounts(t, &g.c, g.s1, acct("op", 1, 0), acct("alice", 1, transport.AccountDebitsMustNotExceedCredits))
	mustTransfer(t, &g.c, g.s1, xfer("fund", "op", "alice", 100))
	mustCreateAccounts(t, &g.c, g.s2, acct("bob", 1, 0), acct("eur", 2, 0),
		acct("closed", 1, transport.AccountClosed), acct("cap", 1, transport.AccountCreditsMustNotExceedDebits))
	return g
}

// reserve submits x on shard 1 with its credit account on shard 2.
func (g *saga) reserve(x transport.Transfer) EventResult {
	g.t.Helper()
	r := g.c.createTransfers(g.s1, 2, x)[0]
	if !r.InFlight || r.Retry || r.Code != transport.CodeOK {
		g.t.Fatalf("reserve %q: %+v", x.ID, r)
	}
	return r
}

// message is the Credit the dispatcher sends for x's outbox row.
func (g *saga) message(id string) Credit {
	g.t.Helper()
	for _, row := range g.s1.Outbox() {
		if row.Transfer.ID == id {
			return Credit{Transfer: row.Transfer, DebitShard: g.s1.ID()}
		}
	}
	g.t.Fatalf("no outbox row %q", id)
	return Credit{}
}

func (g *saga) credit(cs ...Credit) []Answer {
	return g.c.apply(g.s2, Command{Kind: KindCredit, Credits: cs}).Answers[0]
}

func (g *saga) abort(cs ...Credit) []Answer {
	return g.c.apply(g.s2, Command{Kind: KindAbort, Credits: cs}).Answers[0]
}

func (g *saga) resolve(as ...Answer) []Resolved {
	return g.c.apply(g.s1, Command{Kind: KindResolve, Answers: as}).Resolved
}

func (g *saga) forget() {
	g.c.apply(g.s2, Command{Kind: KindForget, Forget: &Forget{DebitShard: g.s1.ID(), Below: g.s1.ForgetBelow()}})
}

func (g *saga) balances(id string) transport.Account {
	g.t.Helper()
	if as := g.s1.LookupAccounts([]string{id}); len(as) == 1 {
		return as[0]
	}
	return account(g.t, g.s2, id)
}

func (g *saga) wantBalances(id string, debitsPending, debitsPosted, creditsPosted uint64) {
	g.t.Helper()
	a := g.balances(id)
	if a.DebitsPending != debitsPending || a.DebitsPosted != debitsPosted || a.CreditsPosted != creditsPosted || a.CreditsPending != 0 {
		g.t.Fatalf("%s: debits pending %d posted %d, credits posted %d; want %d %d %d",
			id, a.DebitsPending, a.DebitsPosted, a.CreditsPosted, debitsPending, debitsPosted, creditsPosted)
	}
}

// quiet checks the audit the design asks for at quiescence.
func (g *saga) quiet() {
	g.t.Helper()
	if n := g.s1.OutboxLen(); n != 0 {
		g.t.Fatalf("outbox holds %d rows", n)
	}
	assertBalanced(g.t, g.s1, g.s2)
}

func TestCrossShardTransferPostsOnCredit(t *testing.T) {
	g := newSaga(t)
	x := xfer("x", "alice", "bob", 30)
	r := g.reserve(x)
	g.wantBalances("alice", 30, 0, 100)
	if below := g.s1.ForgetBelow(); below != r.Attempt {
		t.Fatalf("ForgetBelow %d with attempt %d in flight", below, r.Attempt)
	}
	ans := g.credit(g.message("x"))
	if len(ans) != 1 || ans[0].Outcome != OutcomeCredited || ans[0].ID != "x" || ans[0].Attempt != r.Attempt || ans[0].Timestamp == 0 {
		t.Fatalf("answer %+v", ans)
	}
	g.wantBalances("bob", 0, 0, 30)
	res := g.resolve(ans...)
	if len(res) != 1 || res[0] != (Resolved{ID: "x", Attempt: r.Attempt, Code: transport.CodeOK, Timestamp: r.Attempt}) {
		t.Fatalf("resolved %+v", res)
	}
	g.wantBalances("alice", 0, 30, 100)
	got := g.s1.LookupTransfers([]string{"x"})
	if len(got) != 1 || got[0].Timestamp != r.Attempt || got[0].State != transport.StatePosted || got[0].CreditAccountID != "bob" {
		t.Fatalf("lookup %+v", got)
	}
	g.quiet()
	// A retry of the finished transfer gets exists with its timestamp.
	if again := g.c.createTransfers(g.s1, 2, x)[0]; again.Code != transport.CodeExists || again.Timestamp != r.Attempt || again.InFlight {
		t.Fatalf("retry after commit %+v", again)
	}
	if _, _, _, inbox := g.s2.Counts(); inbox != 1 {
		t.Fatalf("inbox %d rows before forget", inbox)
	}
	g.forget()
	if _, _, _, inbox := g.s2.Counts(); inbox != 0 {
		t.Fatalf("inbox %d rows after forget", inbox)
	}
}

func TestCrossShardRefusalVoidsAndFreesTheID(t *testing.T) {
	g := newSaga(t)
	x := xfer("x", "alice", "carol", 30) // carol does not exist yet
	r1 := g.reserve(x)
	s2Before := g.s2.LookupAccounts([]string{"bob"})
	ans := g.credit(g.message("x"))
	if ans[0].Outcome != OutcomeRefused || ans[0].Code != transport.CodeCreditAccountNotFound || ans[0].Timestamp != 0 {
		t.Fatalf("answer %+v", ans[0])
	}
	if got := g.s2.LookupAccounts([]string{"bob"}); !reflect.DeepEqual(got[0], s2Before[0]) {
		t.Fatal("a refusal moved money on the credit shard")
	}
	late := g.message("x") // a copy still in the network
	res := g.resolve(ans...)
	if len(res) != 1 || res[0] != (Resolved{ID: "x", Attempt: r1.Attempt, Code: transport.CodeCreditAccountNotFound}) {
		t.Fatalf("resolved %+v", res)
	}
	g.wantBalances("alice", 0, 0, 100)
	if got := g.s1.LookupTransfers([]string{"x"}); len(got) != 0 {
		t.Fatalf("voided transfer visible: %+v", got)
	}
	g.quiet()

	// The id is free: once carol exists, the same transfer goes through.
	mustCreateAccounts(t, &g.c, g.s2, acct("carol", 1, 0))
	r2 := g.reserve(x)
	if r2.Attempt <= r1.Attempt {
		t.Fatalf("new attempt %d not after %d", r2.Attempt, r1.Attempt)
	}
	// The old attempt's late copy cannot be credited: it is older than the
	// attempt the credit shard knows... once it knows it. Before the new
	// attempt arrives it still gets the recorded refusal.
	if a := g.credit(late); a[0].Outcome != OutcomeRefused || a[0].Attempt != r1.Attempt {
		t.Fatalf("late copy before the new attempt: %+v", a[0])
	}
	ans = g.credit(g.message("x"))
	if ans[0].Outcome != OutcomeCredited || ans[0].Attempt != r2.Attempt {
		t.Fatalf("new attempt: %+v", ans[0])
	}
	s2Hash := g.s2.Hash()
	if a := g.credit(late); a[0].Outcome != OutcomeStale {
		t.Fatalf("late copy after the new attempt: %+v", a[0])
	}
	if a := g.abort(late); a[0].Outcome != OutcomeStale {
		t.Fatalf("late abort after the new attempt: %+v", a[0])
	}
	if g.s2.Hash() != s2Hash {
		t.Fatal("a stale message changed the credit shard")
	}
	res = g.resolve(ans...)
	if len(res) != 1 || res[0].Code != transport.CodeOK || res[0].Timestamp != r2.Attempt {
		t.Fatalf("resolved %+v", res)
	}
	g.wantBalances("alice", 0, 30, 100)
	g.wantBalances("carol", 0, 0, 30)
	g.quiet()
}

func TestCrossShardCreditSideRefusals(t *testing.T) {
	cases := []struct {
		name string
		x    transport.Transfer
		want transport.Code
	}{
		{"credit account missing", xfer("x", "alice", "nobody", 10), transport.CodeCreditAccountNotFound},
		{"credit account on another ledger", xfer("x", "alice", "eur", 10), transport.CodeLedgerMismatch},
		{"credit account closed", xfer("x", "alice", "closed", 10), transport.CodeAccountClosed},
		{"credit account over its limit", xfer("x", "alice", "cap", 10), transport.CodeExceedsDebits},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newSaga(t)
			g.reserve(tc.x)
			before := g.s2.LookupAccounts([]string{"bob", "eur", "closed", "cap"})
			ans := g.credit(g.message("x"))
			if ans[0].Outcome != OutcomeRefused || ans[0].Code != tc.want {
				t.Fatalf("answer %+v, want refused %v", ans[0], tc.want)
			}
			after := g.s2.LookupAccounts([]string{"bob", "eur", "closed", "cap"})
			for i := range before {
				if !reflect.DeepEqual(before[i], after[i]) {
					t.Fatalf("refusal changed %s", before[i].ID)
				}
			}
			res := g.resolve(ans...)
			if len(res) != 1 || res[0].Code != tc.want || res[0].Aborted {
				t.Fatalf("resolved %+v", res)
			}
			g.wantBalances("alice", 0, 0, 100)
			g.quiet()
		})
	}
}

func TestCrossShardCreditOverflowIsRefused(t *testing.T) {
	g := newSaga(t)
	// bob receives 2^64-10 from a rich account on shard 2 itself.
	mustCreateAccounts(t, &g.c, g.s2, acct("mint", 1, 0))
	mustTransfer(t, &g.c, g.s2, xfer("big", "mint", "bob", maxU64-10))
	g.reserve(xfer("x", "alice", "bob", 11))
	ans := g.credit(g.message("x"))
	if ans[0].Outcome != OutcomeRefused || ans[0].Code != transport.CodeOverflow {
		t.Fatalf("answer %+v", ans[0])
	}
	g.resolve(ans...)
	g.wantBalances("bob", 0, 0, maxU64-10)
	g.quiet()
}

func TestCrossShardDuplicateCreditAppliesOnce(t *testing.T) {
	g := newSaga(t)
	g.reserve(xfer("x", "alice", "bob", 30))
	m := g.message("x")
	// Twice in one entry, then again in a later entry.
	first := g.credit(m, m)
	if first[0] != first[1] || first[0].Outcome != OutcomeCredited {
		t.Fatalf("answers %+v", first)
	}
	h := g.s2.Hash()
	if again := g.credit(m); again[0] != first[0] {
		t.Fatalf("repeat answered %+v, first %+v", again[0], first[0])
	}
	if g.s2.Hash() != h {
		t.Fatal("a duplicate credit changed the credit shard")
	}
	g.wantBalances("bob", 0, 0, 30)
	g.resolve(first[0])
	g.quiet()
}

func TestCrossShardDuplicateResolveAppliesOnce(t *testing.T) {
	g := newSaga(t)
	r := g.reserve(xfer("x", "alice", "bob", 30))
	ans := g.credit(g.message("x"))
	res := g.resolve(ans[0], ans[0]) // twice in one entry
	if len(res) != 1 {
		t.Fatalf("resolved %+v", res)
	}
	h := g.s1.Hash()
	if res := g.resolve(ans[0]); len(res) != 0 {
		t.Fatalf("second resolve %+v", res)
	}
	// An answer for another attempt of the id, or a stale one, does nothing.
	other := ans[0]
	other.Attempt = r.Attempt + 1
	stale := ans[0]
	stale.Outcome = OutcomeStale
	if res := g.resolve(other, stale, Answer{ID: "unknown", Attempt: r.Attempt, Outcome: OutcomeCredited}); len(res) != 0 {
		t.Fatalf("unrelated answers resolved %+v", res)
	}
	if g.s1.Hash() != h {
		t.Fatal("a duplicate resolve changed the debit shard")
	}
	g.wantBalances("alice", 0, 30, 100)
	g.quiet()
}

// A stale answer must leave the reservation in place: the dispatcher keeps
// asking and gets the real decision.
func TestCrossShardStaleAnswerKeepsReservation(t *testing.T) {
	g := newSaga(t)
	r := g.reserve(xfer("x", "alice", "bob", 30))
	h := g.s1.Hash()
	if res := g.resolve(Answer{ID: "x", Attempt: r.Attempt, Outcome: OutcomeStale}); len(res) != 0 || g.s1.Hash() != h {
		t.Fatalf("stale answer resolved %+v", res)
	}
	g.wantBalances("alice", 30, 0, 100)
}

func TestCrossShardAbortBeforeCreditWins(t *testing.T) {
	g := newSaga(t)
	x := xfer("x", "alice", "bob", 30)
	r := g.reserve(x)
	m := g.message("x")
	ans := g.abort(m)
	if ans[0].Outcome != OutcomeAborted || ans[0].Attempt != r.Attempt {
		t.Fatalf("abort answer %+v", ans[0])
	}
	// The credit arrives after the abort: it is not applied.
	if late := g.credit(m); late[0] != ans[0] {
		t.Fatalf("credit after abort answered %+v", late[0])
	}
	g.wantBalances("bob", 0, 0, 0)
	res := g.resolve(ans...)
	if len(res) != 1 || !res[0].Aborted || res[0].Code != transport.CodeOK || res[0].Timestamp != 0 {
		t.Fatalf("resolved %+v", res)
	}
	g.wantBalances("alice", 0, 0, 100)
	if got := g.s1.LookupTransfers([]string{"x"}); len(got) != 0 {
		t.Fatalf("aborted transfer visible: %+v", got)
	}
	g.quiet()
	// Still not credited after the watermark passes it.
	g.forget()
	if late := g.credit(m); late[0].Outcome != OutcomeStale {
		t.Fatalf("credit after abort and forget answered %+v", late[0])
	}
	g.wantBalances("bob", 0, 0, 0)
	// The client retries; the new attempt goes through.
	r2 := g.reserve(x)
	ans = g.credit(g.message("x"))
	if ans[0].Outcome != OutcomeCredited || ans[0].Attempt != r2.Attempt {
		t.Fatalf("retry after abort: %+v", ans[0])
	}
	g.resolve(ans...)
	g.wantBalances("alice", 0, 30, 100)
	g.wantBalances("bob", 0, 0, 30)
	g.quiet()
}

func TestCrossShardAbortAfterCreditReturnsCredited(t *testing.T) {
	g := newSaga(t)
	g.reserve(xfer("x", "alice", "bob", 30))
	m := g.message("x")
	credited := g.credit(m)
	h := g.s2.Hash()
	ans := g.abort(m)
	if ans[0] != credited[0] || ans[0].Outcome != OutcomeCredited {
		t.Fatalf("abort after credit answered %+v", ans[0])
	}
	if g.s2.Hash() != h {
		t.Fatal("a losing abort changed the credit shard")
	}
	res := g.resolve(ans...)
	if len(res) != 1 || res[0].Code != transport.CodeOK || res[0].Aborted {
		t.Fatalf("resolved %+v", res)
	}
	g.wantBalances("alice", 0, 30, 100)
	g.wantBalances("bob", 0, 0, 30)
	g.quiet()
}

func TestCrossShardRetryOfInFlightTransfer(t *testing.T) {
	g := newSaga(t)
	x := xfer("x", "alice", "bob", 30)
	r := g.reserve(x)
	h := g.s1.Hash()
	out := g.c.apply(g.s1, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{x, x}, CreditShards: []uint32{2, 2}})
	for _, e := range out.Events[0] {
		if !e.InFlight || !e.Retry || e.Attempt != r.Attempt || e.Code != transport.CodeOK {
			t.Fatalf("retry %+v", e)
		}
	}
	if len(out.Reserved) != 0 || g.s1.Hash() != h {
		t.Fatal("a retry reserved again")
	}
	g.wantBalances("alice", 30, 0, 100)
	// The same id with other fields while in flight.
	y := x
	y.Amount = 31
	if e := g.c.createTransfers(g.s1, 2, y)[0]; e.Code != transport.CodeExistsWithDifferentFields || e.InFlight {
		t.Fatalf("different transfer under an in-flight id: %+v", e)
	}
	// Same-shard routing of the same id cannot sneak past the reservation.
	z := xfer("x", "alice", "op", 30)
	if e := g.c.createTransfers(g.s1, 0, z)[0]; e.Code != transport.CodeExistsWithDifferentFields {
		t.Fatalf("same-shard transfer under an in-flight id: %+v", e)
	}
	// A retry in the same batch as the first submission.
	w := xfer("w", "alice", "bob", 5)
	out = g.c.apply(g.s1, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{w, w}, CreditShards: []uint32{2, 2}})
	e0, e1 := out.Events[0][0], out.Events[0][1]
	if !e0.InFlight || e0.Retry || !e1.Retry || e1.Attempt != e0.Attempt || len(out.Reserved) != 1 {
		t.Fatalf("batch with a repeat: %+v %+v", e0, e1)
	}
	g.wantBalances("alice", 35, 0, 100)
	for _, id := range []string{"x", "w"} {
		g.resolve(g.credit(g.message(id))...)
	}
	g.wantBalances("alice", 0, 35, 100)
	g.quiet()
}

func TestForgetDropsResolvedRowsOnly(t *testing.T) {
	g := newSaga(t)
	rA := g.reserve(xfer("a", "alice", "bob", 1))
	rB := g.reserve(xfer("b", "alice", "bob", 2))
	rC := g.reserve(xfer("c", "alice", "bob", 3))
	ansA := g.credit(g.message("a"))
	ansB := g.abort(g.message("b"))
	ansC := g.credit(g.message("c"))
	lateA, lateB, lateC := g.message("a"), g.message("b"), g.message("c")
	// b is still in flight on shard 1 (its answer lost); a and c resolve.
	g.resolve(ansA[0], ansC[0])
	if below := g.s1.ForgetBelow(); below != rB.Attempt {
		t.Fatalf("ForgetBelow %d, want the in-flight attempt %d", below, rB.Attempt)
	}
	g.forget()
	if _, _, _, inbox := g.s2.Counts(); inbox != 2 {
		t.Fatalf("inbox %d rows, want b and c (at or above the watermark)", inbox)
	}
	// a is below the watermark: a late copy is stale and moves nothing.
	h := g.s2.Hash()
	if ans := g.credit(lateA); ans[0].Outcome != OutcomeStale {
		t.Fatalf("late a: %+v", ans[0])
	}
	if g.s2.Hash() != h {
		t.Fatal("a stale credit changed the credit shard")
	}
	// b and c are not: their decisions are still answered.
	if ans := g.credit(lateB); ans[0] != ansB[0] {
		t.Fatalf("late b: %+v, want %+v", ans[0], ansB[0])
	}
	if ans := g.credit(lateC); ans[0] != ansC[0] {
		t.Fatalf("late c: %+v, want %+v", ans[0], ansC[0])
	}
	// A lower watermark, delivered late, changes nothing.
	h = g.s2.Hash()
	g.c.apply(g.s2, Command{Kind: KindForget, Forget: &Forget{DebitShard: 1, Below: rA.Attempt}})
	if g.s2.Hash() != h {
		t.Fatal("a lower watermark changed the credit shard")
	}
	// A watermark of another debit shard leaves shard 1's rows alone.
	g.c.apply(g.s2, Command{Kind: KindForget, Forget: &Forget{DebitShard: 7, Below: maxU64}})
	if _, _, _, inbox := g.s2.Counts(); inbox != 2 {
		t.Fatalf("inbox %d rows after another shard's forget", inbox)
	}
	g.resolve(g.credit(lateB)...)
	if n := g.s1.OutboxLen(); n != 0 {
		t.Fatalf("outbox %d", n)
	}
	g.forget()
	if _, _, _, inbox := g.s2.Counts(); inbox != 0 {
		t.Fatalf("inbox %d rows at quiescence", inbox)
	}
	g.wantBalances("alice", 0, 4, 100)
	g.wantBalances("bob", 0, 0, 4)
	g.quiet()
	_ = rC
}

// TestLateCreditAfterForgetCreatesNoMoney is the hazard the watermark exists
// for: the attempt was credited and resolved, its inbox row is gone, and a
// copy of its Credit is still in the network. Without the watermark the
// credit shard would credit it again.
func TestLateCreditAfterForgetCreatesNoMoney(t *testing.T) {
	for _, aborted := range []bool{false, true} {
		g := newSaga(t)
		g.reserve(xfer("x", "alice", "bob", 30))
		m := g.message("x")
		var ans []Answer
		if aborted {
			ans = g.abort(m)
		} else {
			ans = g.credit(m)
		}
		g.resolve(ans...)
		g.forget()
		h := g.s2.Hash()
		for range 3 {
			if a := g.credit(m); a[0].Outcome != OutcomeStale {
				t.Fatalf("aborted=%v: late credit answered %+v", aborted, a[0])
			}
			if a := g.abort(m); a[0].Outcome != OutcomeStale {
				t.Fatalf("aborted=%v: late abort answered %+v", aborted, a[0])
			}
		}
		if g.s2.Hash() != h {
			t.Fatalf("aborted=%v: late messages changed the credit shard", aborted)
		}
		if aborted {
			g.wantBalances("bob", 0, 0, 0)
		} else {
			g.wantBalances("bob", 0, 0, 30)
		}
		g.quiet()
	}
}

// A credit shard ignores a Credit that claims to come from itself.
func TestCreditFromOwnShardIsStale(t *testing.T) {
	g := newSaga(t)
	h := g.s2.Hash()
	x := xfer("x", "alice", "bob", 30)
	x.Timestamp = 99999
	if a := g.credit(Credit{Transfer: x, DebitShard: 2}); a[0].Outcome != OutcomeStale {
		t.Fatalf("answer %+v", a[0])
	}
	if g.s2.Hash() != h {
		t.Fatal("changed")
	}
}

// TestCreditForeignIDReuseCreatesNoMoney: two debit shards use the same
// transfer id for different transfers to one credit shard. Whatever the
// credit shard answers the second one, a copy of that Credit delivered later
// (after the first shard's rows are forgotten) must get the same answer, or
// stale: never a second decision that moves money the debit shard voided.
func TestCreditForeignIDReuseCreatesNoMoney(t *testing.T) {
	var c clock
	s1, s2, s3 := New(1, nil), New(2, nil), New(3, nil)
	mustCreateAccounts(t, &c, s1, acct("a1", 1, 0))
	mustCreateAccounts(t, &c, s3, acct("a3", 1, 0))
	mustCreateAccounts(t, &c, s2, acct("bob", 1, 0))
	credit := func(cr Credit) Answer {
		return c.apply(s2, Command{Kind: KindCredit, Credits: []Credit{cr}}).Answers[0][0]
	}
	resolve := func(s *State, a Answer) {
		c.apply(s, Command{Kind: KindResolve, Answers: []Answer{a}})
	}
	// Shard 1's x: credited and resolved.
	c.createTransfers(s1, 2, xfer("x", "a1", "bob", 10))
	m1 := Credit{Transfer: s1.Outbox()[0].Transfer, DebitShard: 1}
	resolve(s1, credit(m1))
	// Shard 3's x (another transfer under the same id).
	c.createTransfers(s3, 2, xfer("x", "a3", "bob", 7))
	m3 := Credit{Transfer: s3.Outbox()[0].Transfer, DebitShard: 3}
	first := credit(m3)
	resolve(s3, first)
	if s3.OutboxLen() != 0 {
		t.Fatalf("shard 3 did not resolve: answer %+v", first)
	}
	assertBalanced(t, s1, s2, s3)
	// Shard 1 announces its watermark; shard 3 has not yet.
	c.apply(s2, Command{Kind: KindForget, Forget: &Forget{DebitShard: 1, Below: s1.ForgetBelow()}})
	late := credit(m3)
	if late != first && late.Outcome != OutcomeStale {
		t.Fatalf("late copy of shard 3's credit answered %+v, first answer %+v", late, first)
	}
	assertBalanced(t, s1, s2, s3)
}
