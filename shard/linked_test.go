package shard

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

const linked = transport.TransferLinked

func chained(xs ...transport.Transfer) []transport.Transfer {
	for i := range xs[:len(xs)-1] {
		xs[i].Flags |= linked
	}
	return xs
}

func codes(res []EventResult) []transport.Code {
	out := make([]transport.Code, len(res))
	for i, r := range res {
		out[i] = r.Code
	}
	return out
}

func wantCodes(t *testing.T, res []EventResult, want ...transport.Code) {
	t.Helper()
	if got := codes(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
}

// stateAndArchive is what a failed chain must leave exactly as it was.
type stateAndArchive struct {
	hash    uint64
	archive *MemArchive
}

func capture(s *State) stateAndArchive {
	return stateAndArchive{s.Hash(), s.archive.(*MemArchive).Clone()}
}

func unchanged(t *testing.T, s *State, before stateAndArchive) {
	t.Helper()
	if s.Hash() != before.hash {
		t.Fatal("a failed chain changed the state")
	}
	if !reflect.DeepEqual(s.archive.(*MemArchive), before.archive) {
		t.Fatal("a failed chain wrote history")
	}
}

func TestLinkedTransfersSucceedAsOne(t *testing.T) {
	s, c, _ := transferFixture(t)
	res := c.createTransfers(s, 0, chained(xfer("l1", "op", "wallet", 5), xfer("l2", "wallet", "op2", 105), xfer("l3", "op2", "hist", 1))...)
	wantCodes(t, res, transport.CodeOK, transport.CodeOK, transport.CodeOK)
	if !(res[0].Timestamp < res[1].Timestamp && res[1].Timestamp < res[2].Timestamp) {
		t.Fatalf("timestamps not increasing: %+v", res)
	}
	// The second leg spends what the first brought in: events see the ones
	// before them.
	if w := account(t, s, "wallet"); w.DebitsPosted != 105 || w.CreditsPosted != 105 {
		t.Fatalf("wallet %+v", w)
	}
	// A retry of the whole chain answers exists for each, with the
	// original timestamps.
	again := c.createTransfers(s, 0, chained(xfer("l1", "op", "wallet", 5), xfer("l2", "wallet", "op2", 105), xfer("l3", "op2", "hist", 1))...)
	wantCodes(t, again, transport.CodeExists, transport.CodeExists, transport.CodeExists)
	for i := range res {
		if again[i].Timestamp != res[i].Timestamp {
			t.Fatalf("exists %d with timestamp %d, want %d", i, again[i].Timestamp, res[i].Timestamp)
		}
	}
}

func TestLinkedChainFailsAsOne(t *testing.T) {
	s, c, _ := transferFixture(t)
	before := capture(s)
	last := s.last
	res := c.createTransfers(s, 0, chained(
		xfer("f1", "op", "hist", 5),     // ok alone (history rows written)
		xfer("f2", "wallet", "op", 101), // more than the wallet has
		xfer("f3", "op", "op2", 1),
	)...)
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeExceedsCredits, transport.CodeLinkedEventFailed)
	for _, r := range res {
		if r.Timestamp != 0 {
			t.Fatalf("a failed event has timestamp %d", r.Timestamp)
		}
	}
	unchanged(t, s, before)
	if s.last != last {
		t.Fatalf("a failed chain kept its timestamps: last %d, was %d", s.last, last)
	}
	// The ids stay free.
	mustTransfer(t, c, s, xfer("f1", "op", "hist", 5), xfer("f3", "op", "op2", 1))
}

func TestLinkedChainMixingExistingAndNewEventsFails(t *testing.T) {
	s, c, _ := transferFixture(t)
	mustTransfer(t, c, s, xfer("m1", "op", "op2", 1))
	before := capture(s)
	res := c.createTransfers(s, 0, chained(xfer("new", "op", "op2", 2), xfer("m1", "op", "op2", 1))...)
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeExists)
	unchanged(t, s, before)
	// The same id twice in one chain: the second finds the first (whose
	// linked flag it lacks).
	res = c.createTransfers(s, 0, chained(xfer("twice", "op", "op2", 2), xfer("twice", "op", "op2", 2))...)
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeExistsWithDifferentFields)
	unchanged(t, s, before)
}

func TestLinkedChainOpenAtTheEndOfTheBatch(t *testing.T) {
	s, c, _ := transferFixture(t)
	before := capture(s)
	open := chained(xfer("o1", "op", "op2", 1), xfer("o2", "op", "op2", 1))
	open[1].Flags |= linked
	res := c.createTransfers(s, 0, append([]transport.Transfer{xfer("alone", "op", "op2", 1)}, open...)...)
	wantCodes(t, res, transport.CodeOK, transport.CodeLinkedEventChainOpen, transport.CodeLinkedEventChainOpen)
	if a := account(t, s, "op2"); a.CreditsPosted != 1+7 { // alone, and the fixture's t-exists
		t.Fatalf("op2 %+v", a)
	}
	_ = before
}

func TestLinkedChainsInOneBatchAreIndependent(t *testing.T) {
	s, c, _ := transferFixture(t)
	batch := append(chained(xfer("a1", "op", "op2", 1), xfer("a2", "wallet", "op", 1000)),
		chained(xfer("b1", "op", "op2", 2), xfer("b2", "op2", "op", 1))...)
	res := c.createTransfers(s, 0, batch...)
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeExceedsCredits, transport.CodeOK, transport.CodeOK)
}

// A chain may hold a pending transfer and its post; undone, the pending
// transfer is gone again (open transfers and the expiry index restored).
func TestLinkedChainWithTwoPhaseEvents(t *testing.T) {
	s, c, _ := transferFixture(t)
	p := xfer("p", "op", "wallet", 10)
	p.Flags, p.Timeout = transport.TransferPending, 60
	mustTransfer(t, c, s, p)
	before := capture(s)
	post := transport.Transfer{ID: "post", PendingID: "p", Flags: transport.TransferPostPendingTransfer}
	p2 := xfer("p2", "op", "op2", 3)
	p2.Flags, p2.Timeout = transport.TransferPending, 1
	res := c.createTransfers(s, 0, chained(post, p2, xfer("bad", "wallet", "op", 1000))...)
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeLinkedEventFailed, transport.CodeExceedsCredits)
	unchanged(t, s, before)
	if next, ok := s.NextExpiry(); !ok || next != expiresAt(s.transfers["p"]) {
		t.Fatalf("expiry index after the undo: %d %v", next, ok)
	}
	// Posted in a chain that holds: the post sees the pending transfer
	// created earlier in it.
	p3 := xfer("p3", "op", "op2", 4)
	p3.Flags = transport.TransferPending
	post3 := transport.Transfer{ID: "post3", PendingID: "p3", Flags: transport.TransferPostPendingTransfer}
	wantCodes(t, c.createTransfers(s, 0, chained(post, p3, post3)...), transport.CodeOK, transport.CodeOK, transport.CodeOK)
	if got := s.LookupTransfers([]string{"p", "p3"}); got[0].State != transport.StatePosted || got[1].State != transport.StatePosted {
		t.Fatalf("states %q %q", got[0].State, got[1].State)
	}
}

// A chain with a leg whose credit account lives on another shard is refused
// whole: all or nothing across shards is not built yet.
func TestLinkedChainAcrossShardsIsRefused(t *testing.T) {
	s, c, _ := transferFixture(t)
	before := capture(s)
	cmd := Command{Kind: KindCreateTransfers, Transfers: chained(xfer("x1", "op", "op2", 1), xfer("x2", "op", "remote", 1)), CreditShards: []uint32{1, 2}}
	res := c.apply(s, cmd).Events[0]
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeFlagsInvalid)
	unchanged(t, s, before)
	if s.OutboxLen() != 0 {
		t.Fatal("a refused chain left a reservation")
	}
}

func TestLinkedAccounts(t *testing.T) {
	c := &clock{}
	s := New(1, nil)
	before := capture(s)
	a1, a2 := acct("a1", 1, transport.AccountLinked), acct("a2", 0, 0)
	wantCodes(t, c.createAccounts(s, a1, a2), transport.CodeLinkedEventFailed, transport.CodeLedgerInvalid)
	unchanged(t, s, before)
	a2.Ledger = 1
	wantCodes(t, c.createAccounts(s, a1, a2), transport.CodeOK, transport.CodeOK)
	wantCodes(t, c.createAccounts(s, a1, a2), transport.CodeExists, transport.CodeExists)
	wantCodes(t, c.createAccounts(s, a1), transport.CodeLinkedEventChainOpen)
}

func TestBalancingTransfers(t *testing.T) {
	s, c, _ := transferFixture(t)
	// wallet has credits 100 and a debit limit; op has no limit: balancing
	// clamps either way.
	bd := xfer("bd", "wallet", "op", 1000)
	bd.Flags = transport.TransferBalancingDebit
	res := c.createTransfers(s, 0, bd)
	wantCodes(t, res, transport.CodeOK)
	if got := s.LookupTransfers([]string{"bd"}); got[0].Amount != 100 {
		t.Fatalf("balancing debit stored %d, want 100", got[0].Amount)
	}
	// A retry with the amount asked exists; with a smaller one it differs.
	wantCodes(t, c.createTransfers(s, 0, bd), transport.CodeExists)
	small := bd
	small.Amount = 99
	wantCodes(t, c.createTransfers(s, 0, small), transport.CodeExistsWithDifferentFields)
	// Nothing left: refused with the limit's code.
	bd2 := bd
	bd2.ID = "bd2"
	wantCodes(t, c.createTransfers(s, 0, bd2), transport.CodeExceedsCredits)
	// balancing_credit: op2 was credited 7 (the fixture's t-exists); once
	// it is debited 20 it may be credited 13 more.
	bc := xfer("bc", "op", "op2", 50)
	bc.Flags = transport.TransferBalancingCredit
	wantCodes(t, c.createTransfers(s, 0, bc), transport.CodeExceedsDebits)
	mustTransfer(t, c, s, xfer("op2-out", "op2", "op", 20))
	wantCodes(t, c.createTransfers(s, 0, bc), transport.CodeOK)
	if got := s.LookupTransfers([]string{"bc"}); got[0].Amount != 13 {
		t.Fatalf("balancing credit stored %d, want 13", got[0].Amount)
	}
	// Pending counts: a pending balancing debit clamps to what is left
	// after pending debits.
	mustTransfer(t, c, s, xfer("fund", "op", "hist", 30))
	pend := xfer("pend", "hist", "op", 20)
	pend.Flags = transport.TransferPending
	mustTransfer(t, c, s, pend)
	b3 := xfer("b3", "hist", "op", 1000)
	b3.Flags = transport.TransferBalancingDebit | transport.TransferPending
	wantCodes(t, c.createTransfers(s, 0, b3), transport.CodeOK)
	if got := s.LookupTransfers([]string{"b3"}); got[0].Amount != 10 {
		t.Fatalf("pending balancing debit stored %d, want 10", got[0].Amount)
	}
	// Ledger and closed come before the clamp.
	bl := xfer("bl", "eur", "op", 5)
	bl.Flags = transport.TransferBalancingDebit
	wantCodes(t, c.createTransfers(s, 0, bl), transport.CodeLedgerMismatch)
	bcl := xfer("bcl", "closed", "op", 5)
	bcl.Flags = transport.TransferBalancingDebit
	wantCodes(t, c.createTransfers(s, 0, bcl), transport.CodeAccountClosed)
	// A post or void is not balancing (across shards: twophase_remote_test.go).
	bp := transport.Transfer{ID: "bp", PendingID: "pend", Flags: transport.TransferPostPendingTransfer | transport.TransferBalancingDebit}
	wantCodes(t, c.createTransfers(s, 0, bp), transport.CodeFlagsInvalid)
}

func TestClosingTransfers(t *testing.T) {
	s, c, _ := transferFixture(t)
	closing := func(id string, flags uint32, timeout uint32) transport.Transfer {
		x := xfer(id, "op", "op2", 1)
		x.Flags, x.Timeout = transport.TransferPending|flags, timeout
		return x
	}
	// Pending with closing_debit closes op; a new transfer from or to it
	// is refused; a void reopens it.
	mustTransfer(t, c, s, closing("c1", transport.TransferClosingDebit, 0))
	if a := account(t, s, "op"); a.Flags&transport.AccountClosed == 0 {
		t.Fatalf("op not closed: %+v", a)
	}
	wantCodes(t, c.createTransfers(s, 0, xfer("after", "op2", "op", 1)), transport.CodeAccountClosed)
	// Creating the account again still answers exists.
	wantCodes(t, c.createAccounts(s, acct("op", 1, 0)), transport.CodeExists)
	mustTransfer(t, c, s, transport.Transfer{ID: "v1", PendingID: "c1", Flags: transport.TransferVoidPendingTransfer})
	if a := account(t, s, "op"); a.Flags&transport.AccountClosed != 0 {
		t.Fatalf("op still closed after the void: %+v", a)
	}
	// closing_credit, posted: op2 stays closed.
	mustTransfer(t, c, s, closing("c2", transport.TransferClosingCredit, 0))
	mustTransfer(t, c, s, transport.Transfer{ID: "p2", PendingID: "c2", Flags: transport.TransferPostPendingTransfer})
	if a := account(t, s, "op2"); a.Flags&transport.AccountClosed == 0 {
		t.Fatalf("op2 reopened by a post: %+v", a)
	}
	// Expiry reopens, as a void.
	x := xfer("c3", "wallet", "hist", 1)
	x.Flags, x.Timeout = transport.TransferPending|transport.TransferClosingDebit|transport.TransferClosingCredit, 1
	mustTransfer(t, c, s, x)
	for _, id := range []string{"wallet", "hist"} {
		if a := account(t, s, id); a.Flags&transport.AccountClosed == 0 {
			t.Fatalf("%s not closed: %+v", id, a)
		}
	}
	s.Apply(&Entry{Timestamp: c.now + 2e9, Commands: []Command{{Kind: KindExpire}}})
	for _, id := range []string{"wallet", "hist"} {
		if a := account(t, s, id); a.Flags&transport.AccountClosed != 0 {
			t.Fatalf("%s still closed after expiry: %+v", id, a)
		}
	}
}

// TestLinkedChainsMatchAWholeStateCopy drives random batches of chains over
// random events and checks the shard's undo against the simplest possible
// model of all or nothing: apply the chain's events one by one to a full
// copy of the state and its history, and throw the copy away if the chain
// fails. Results, state hash and every history row must agree, and no limit
// may be broken at any point.
func TestLinkedChainsMatchAWholeStateCopy(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { chainProperty(t, seed) })
	}
}

func chainProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0xc4a1))
	s, ref := New(1, nil), New(1, nil)
	var now uint64 = 1_700_000_000_000_000_000
	var ids []string
	// Accounts on ledger 1 with every flag, funded both ways so that limits
	// bind now and then; two on ledger 2 for mismatches.
	flagsOf := []uint32{0, 0, transport.AccountDebitsMustNotExceedCredits, transport.AccountCreditsMustNotExceedDebits, transport.AccountHistory}
	acs := []transport.Account{acct("op", 1, 0), acct("eur1", 2, 0), acct("eur2", 2, 0)}
	var funding []transport.Transfer
	var names []string
	for i := range 10 {
		id := fmt.Sprintf("a%d", i)
		names = append(names, id)
		acs = append(acs, acct(id, 1, flagsOf[rng.IntN(len(flagsOf))]))
		funding = append(funding, xfer("in-"+id, "op", id, 100), xfer("out-"+id, id, "op", 50))
	}
	for _, st := range []*State{s, ref} {
		st.Apply(&Entry{Timestamp: now, Commands: []Command{
			{Kind: KindCreateAccounts, Accounts: acs}, {Kind: KindCreateTransfers, Transfers: funding}}})
	}
	next := 0
	var pendings []string
	event := func() (transport.Transfer, uint32) {
		// Two distinct accounts; a8 and a9 are the ones closing transfers
		// close (posted, they stay closed).
		pick := func() (string, string) {
			d := rng.IntN(len(names) - 2)
			return names[d], names[(d+1+rng.IntN(len(names)-3))%(len(names)-2)]
		}
		var x transport.Transfer
		switch r := rng.IntN(40); {
		case r < 8 && len(pendings) > 0: // a post or void of a pending transfer (maybe resolved)
			next++
			x = transport.Transfer{ID: fmt.Sprintf("r%d", next), PendingID: pendings[rng.IntN(len(pendings))],
				Flags: transport.TransferPostPendingTransfer << uint(rng.IntN(2)), Amount: uint64(rng.IntN(3)) * 3}
		case r < 9 && len(ids) > 0: // an id used before, same or other fields
			d, c := pick()
			x = xfer(ids[rng.IntN(len(ids))], d, c, 1+uint64(rng.IntN(10)))
		case r < 10:
			_, c := pick()
			x = xfer(fmt.Sprintf("t%d", next), "eur1", c, 1) // ledger mismatch
		case r < 11:
			next++
			x = xfer(fmt.Sprintf("t%d", next), "a8", "a9", 1)
			x.Flags = transport.TransferPending | transport.TransferClosingDebit<<uint(rng.IntN(2))
			x.Timeout = uint32(rng.IntN(2))
			pendings = append(pendings, x.ID)
		default:
			next++
			d, c := pick()
			x = xfer(fmt.Sprintf("t%d", next), d, c, 1+uint64(rng.IntN(10)))
			switch rng.IntN(5) {
			case 0:
				x.Flags = transport.TransferPending
				x.Timeout = uint32(rng.IntN(3))
				pendings = append(pendings, x.ID)
			case 1:
				x.Flags = transport.TransferBalancingDebit << uint(rng.IntN(2))
				x.Amount *= 10
			}
		}
		ids = append(ids, x.ID)
		credit := uint32(1)
		if rng.IntN(30) == 0 {
			credit = 2 // a leg whose credit account is on another shard
		}
		return x, credit
	}
	held, failed := 0, 0 // chains of several events
	for step := range 300 {
		now += uint64(rng.IntN(2)) * 1e9
		var cmd Command
		cmd.Kind = KindCreateTransfers
		for range 1 + rng.IntN(4) { // chains of 1 to 4 events
			n := 1 + rng.IntN(4)
			for k := range n {
				x, cs := event()
				if k < n-1 {
					x.Flags |= linked
				}
				cmd.Transfers = append(cmd.Transfers, x)
				cmd.CreditShards = append(cmd.CreditShards, cs)
			}
		}
		if rng.IntN(10) == 0 {
			cmd.Transfers[len(cmd.Transfers)-1].Flags |= linked // the last chain left open
		}
		entry := &Entry{Timestamp: now, Commands: []Command{cmd}}
		got := s.Apply(entry).Events[0]
		want := make([]EventResult, len(cmd.Transfers))
		EachChain(len(cmd.Transfers), func(k int) bool { return cmd.Transfers[k].Flags&linked != 0 }, func(i, j int, open bool) {
			refChain(ref, now, cmd.Transfers, cmd.CreditShards, want, i, j, open)
			if j-i > 1 && !open {
				switch want[i].Code {
				case transport.CodeOK:
					held++
				case transport.CodeLinkedEventFailed:
					failed++
				}
			}
		})
		if !reflect.DeepEqual(codes(got), codes(want)) {
			t.Fatalf("step %d: codes %v, model %v\nbatch %+v", step, codes(got), codes(want), cmd.Transfers)
		}
		for k := range got {
			if got[k].Timestamp != want[k].Timestamp {
				t.Fatalf("step %d event %d: timestamp %d, model %d", step, k, got[k].Timestamp, want[k].Timestamp)
			}
		}
		if s.Hash() != ref.Hash() {
			t.Fatalf("step %d: state differs from the model's", step)
		}
		if !reflect.DeepEqual(s.archive, ref.archive) {
			t.Fatalf("step %d: history differs from the model's", step)
		}
		for _, a := range s.accounts {
			if a.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && a.DebitsPending+a.DebitsPosted > a.CreditsPosted ||
				a.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && a.CreditsPending+a.CreditsPosted > a.DebitsPosted {
				t.Fatalf("step %d: %+v breaks its limit", step, a)
			}
		}
		if rng.IntN(4) == 0 {
			now += 1e9
			for _, st := range []*State{s, ref} {
				st.Apply(&Entry{Timestamp: now, Commands: []Command{{Kind: KindExpire}}})
			}
		}
	}
	if held < 50 || failed < 50 {
		t.Fatalf("the mix is too one-sided: %d chains held, %d failed", held, failed)
	}
	t.Logf("%d chains held, %d failed", held, failed)
}

// refChain is the model: each event applied alone to a copy of the whole
// state; the copy replaces the state only if the chain holds.
func refChain(ref *State, now uint64, xs []transport.Transfer, cs []uint32, res []EventResult, i, j int, open bool) {
	if open {
		for k := i; k < j; k++ {
			res[k].Code = transport.CodeLinkedEventChainOpen
		}
		return
	}
	cp := ref.Clone()
	cp.archive = ref.archive.(*MemArchive).Clone()
	codes := map[transport.Code]int{}
	failed := -1
	for k := i; k < j && failed < 0; k++ {
		res[k] = cp.createTransfer(now, &xs[k], cs[k], j-i > 1)
		codes[res[k].Code]++
		if res[k].Code != transport.CodeOK && res[k].Code != transport.CodeExists {
			failed = k
		}
	}
	if failed < 0 && codes[transport.CodeOK] > 0 && codes[transport.CodeExists] > 0 {
		for k := i; k < j; k++ {
			if res[k].Code == transport.CodeExists {
				failed = k
				break
			}
		}
	}
	if failed >= 0 {
		for k := i; k < j; k++ {
			if k != failed {
				res[k] = EventResult{Code: transport.CodeLinkedEventFailed}
			}
		}
		return
	}
	*ref = *cp
}

// A chain's last event (not flagged linked) may repeat a transfer in flight
// to another shard: it must not wait on that saga, whose outcome the chain
// cannot share.
func TestLinkedChainNeverJoinsASaga(t *testing.T) {
	s, c, _ := transferFixture(t)
	remote := xfer("remote-1", "op", "far", 5)
	if r := c.createTransfers(s, 2, remote); !r[0].InFlight {
		t.Fatalf("not in flight: %+v", r[0])
	}
	before := capture(s)
	cmd := Command{Kind: KindCreateTransfers, Transfers: chained(xfer("l1", "op", "op2", 1), remote), CreditShards: []uint32{1, 2}}
	wantCodes(t, c.apply(s, cmd).Events[0], transport.CodeLinkedEventFailed, transport.CodeExistsWithDifferentFields)
	unchanged(t, s, before)
}
