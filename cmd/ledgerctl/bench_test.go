package main

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/transport"
)

func TestPercentileIsNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{0.5: 50 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond, 0.001: time.Millisecond} {
		if got := percentile(d, p); got != want {
			t.Errorf("percentile(1..100ms, %v) = %v, want %v", p, got, want)
		}
	}
	if got := percentile([]time.Duration{7}, 0.99); got != 7 {
		t.Errorf("percentile of one = %v", got)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of none = %v", got)
	}
}

func randomShards(accounts, shards int) []int32 {
	rng := rand.New(rand.NewPCG(1, 2))
	s := make([]int32, accounts)
	for i := range s {
		s[i] = int32(rng.IntN(shards))
	}
	return s
}

func TestGenPairsHonorsCrossShardFraction(t *testing.T) {
	shardOf := randomShards(1000, 4)
	const n = 10007
	for _, cross := range []float64{0, 0.1, 0.25, 0.5, 1} {
		pairs, err := genPairs(rand.New(rand.NewPCG(3, 4)), shardOf, mix{transfers: n, crossShard: cross})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for i, p := range pairs {
			if p.debit == p.credit {
				t.Fatalf("cross %v: pair %d has one account twice", cross, i)
			}
			if shardOf[p.debit] != shardOf[p.credit] {
				got++
			}
		}
		if want := int(n * cross); got != want {
			t.Errorf("cross %v: %d cross-shard pairs of %d, want %d", cross, got, n, want)
		}
	}
}

func TestGenPairsUniformUsesEveryAccount(t *testing.T) {
	shardOf := randomShards(50, 3)
	pairs, err := genPairs(rand.New(rand.NewPCG(5, 6)), shardOf, mix{transfers: 5000, crossShard: -1})
	if err != nil {
		t.Fatal(err)
	}
	debits, credits, cross := map[int32]bool{}, map[int32]bool{}, 0
	for _, p := range pairs {
		if p.debit == p.credit {
			t.Fatal("pair with one account twice")
		}
		debits[p.debit], credits[p.credit] = true, true
		if shardOf[p.debit] != shardOf[p.credit] {
			cross++
		}
	}
	if len(debits) != 50 || len(credits) != 50 || cross < 2500 || cross > 4000 {
		t.Fatalf("%d debit and %d credit accounts used, %d cross-shard of 5000; want all 50 and about 2/3", len(debits), len(credits), cross)
	}
}

func TestGenPairsRefusesImpossibleMixes(t *testing.T) {
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), make([]int32, 10), mix{transfers: 5, crossShard: 0.5}); err == nil || !strings.Contains(err.Error(), "2 shards") {
		t.Errorf("cross-shard on one shard: err %v", err)
	}
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), []int32{0, 1, 2}, mix{transfers: 5, crossShard: 0.5}); err == nil {
		t.Error("same-shard pairs with one account per shard accepted")
	}
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), []int32{0, 1, 2}, mix{transfers: 5, crossShard: 1}); err != nil {
		t.Errorf("all cross-shard, one account per shard: %v", err)
	}
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), []int32{0, 1, 2}, mix{transfers: 5, crossShard: 1, twoPhase: 0.2}); err == nil {
		t.Error("two-phase pairs with one account per shard accepted")
	}
	// Chains across shards need 2 shards, even when too few chains are sent
	// for any to cross; with one account per shard, they need nothing else.
	for _, transfers := range []int{6, 1} {
		m := mix{transfers: transfers, crossShard: -1, linked: 1, legs: 2, linkedCross: 0.5}
		if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), make([]int32, 10), m); err == nil || !strings.Contains(err.Error(), "--linked-cross-shard 0.5 need accounts on 2 shards") {
			t.Errorf("%d transfers in chains across shards on one shard: err %v", transfers, err)
		}
	}
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), []int32{0, 1, 2}, mix{transfers: 6, crossShard: 1, linked: 1, legs: 2, linkedCross: 1}); err != nil {
		t.Errorf("chains all across shards, one account per shard: %v", err)
	}
}

func TestBenchOptionsCheckLinkedCrossShard(t *testing.T) {
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"--linked", "1", "--linked-cross-shard", "1.5"}, "--linked-cross-shard 1.5: want 0 to 1"},
		{[]string{"--linked", "1", "--linked-cross-shard", "-0.1"}, "--linked-cross-shard -0.1: want 0 to 1"},
		{[]string{"--linked-cross-shard", "0.5"}, "--linked-cross-shard needs --linked"},
	} {
		o, _ := parse(t, addBenchFlags, c.args...)
		if err := o.check(); err == nil || err.Error() != c.err {
			t.Errorf("%q: err %v, want %q", c.args, err, c.err)
		}
	}
	o, _ := parse(t, addBenchFlags, "--linked", "0.5", "--linked-cross-shard", "0.25", "--id-prefix", "run1")
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	if m := o.mix(); m.linked != 0.5 || m.linkedCross != 0.25 {
		t.Fatalf("mix %+v", m)
	}
	if o, _ := parse(t, addBenchFlags); o.linkedCross != 0 {
		t.Fatalf("--linked-cross-shard defaults to %v, want 0", o.linkedCross)
	}
}

// Two-phase transfers keep both accounts on one shard whatever
// --cross-shard says, which then counts among the single-phase ones, except
// the --two-phase-cross-shard fraction of them.
func TestGenPairsPutsTwoPhaseOnOneShardInExactFractions(t *testing.T) {
	shardOf := randomShards(1000, 4)
	const n = 10007
	for _, m := range []mix{
		{transfers: n, crossShard: -1, twoPhase: 0.3, void: 0.25, partial: 0.5},
		{transfers: n, crossShard: 0.5, twoPhase: 0.5, void: 0.1},
		{transfers: n, crossShard: 1, twoPhase: 1, void: 1},
		{transfers: n, crossShard: 0.25},
		{transfers: n, crossShard: 0.5, twoPhase: 0.5, twoPhaseCross: 0.3, void: 0.2},
	} {
		pairs, err := genPairs(rand.New(rand.NewPCG(7, 8)), shardOf, m)
		if err != nil {
			t.Fatal(err)
		}
		count := map[kind]int{}
		cross, crossTwoPhase := 0, 0
		for i, p := range pairs {
			count[p.kind]++
			if p.debit == p.credit {
				t.Fatalf("%+v: pair %d has one account twice", m, i)
			}
			if shardOf[p.debit] != shardOf[p.credit] {
				if p.kind.twoPhase() {
					crossTwoPhase++
				} else {
					cross++
				}
			}
		}
		twoPhase := int(n * m.twoPhase)
		if w := int(float64(twoPhase) * m.twoPhaseCross); crossTwoPhase != w {
			t.Errorf("%+v: %d two-phase pairs across shards, want %d", m, crossTwoPhase, w)
		}
		voids := int(float64(twoPhase) * m.void)
		want := map[kind]int{kindSingle: n - twoPhase, kindVoid: voids, kindPostPartial: int(float64(twoPhase-voids) * m.partial)}
		want[kindPost] = twoPhase - voids - want[kindPostPartial]
		for k, w := range want {
			if count[k] != w {
				t.Errorf("%+v: %d of kind %d, want %d", m, count[k], k, w)
			}
		}
		if m.crossShard >= 0 {
			if w := int(float64(n-twoPhase) * m.crossShard); cross != w {
				t.Errorf("%+v: %d cross-shard, want %d", m, cross, w)
			}
		}
	}
}

func TestResolutionNamesThePendingTransferAndItsAccounts(t *testing.T) {
	o := benchOptions{idPrefix: "run", ledger: 3, amount: 9}
	ids := []string{"a", "b"}
	p := pair{debit: 1, credit: 0, kind: kindPostPartial}
	if x := o.transfer(p, ids, 7); x.ID != "run-t7" || x.Flags != transport.TransferPending || x.Amount != 9 || x.DebitAccountID != "b" {
		t.Fatalf("pending %+v", x)
	}
	want := transport.Transfer{ID: "run-r7", PendingID: "run-t7", DebitAccountID: "b", CreditAccountID: "a", Amount: 4,
		Ledger: 3, Code: 1, Flags: transport.TransferPostPendingTransfer}
	if x := o.resolution(p, ids, 7); !reflect.DeepEqual(x, want) {
		t.Fatalf("partial post %+v, want %+v", x, want)
	}
	p.kind = kindPost
	if x := o.resolution(p, ids, 7); x.Amount != 0 || x.Flags != transport.TransferPostPendingTransfer {
		t.Fatalf("post %+v, want amount 0: all", x)
	}
	p.kind = kindVoid
	if x := o.resolution(p, ids, 7); x.Amount != 0 || x.Flags != transport.TransferVoidPendingTransfer {
		t.Fatalf("void %+v", x)
	}
	if x := o.transfer(pair{kind: kindSingle}, ids, 1); x.Flags != 0 {
		t.Fatalf("single-phase transfer %+v", x)
	}
}

func TestReplayOfALookedUpTransferFollowsItsState(t *testing.T) {
	b := &bench{o: benchOptions{amount: 10}}
	for _, c := range []struct {
		kind    kind
		state   string
		posted  uint64
		problem bool
	}{
		{kindSingle, transport.StatePosted, 10, false},
		{kindPost, transport.StatePosted, 10, false},
		{kindPostPartial, transport.StatePosted, 5, false},
		{kindVoid, transport.StateVoided, 0, false},
		{kindPost, transport.StateExpired, 0, false},
		{kindPost, transport.StatePending, 0, true},
		{kindVoid, transport.StatePosted, 0, true},
	} {
		posted, problem := b.replayLookedUp(c.kind, transport.Transfer{ID: "x", State: c.state})
		if posted != c.posted || (problem != "") != c.problem {
			t.Errorf("kind %d %s: posted %d, problem %q; want %d, problem %v", c.kind, c.state, posted, problem, c.posted, c.problem)
		}
	}
}

func TestRefusedPendingOrChainLegFailsTheRun(t *testing.T) {
	pairs := []pair{{kind: kindSingle}, {kind: kindPost}, {kind: kindVoid}, {kind: kindLeg}, {kind: kindLegLast}}
	ok, flagsInvalid, failed := uint8(transport.CodeOK), uint8(transport.CodeFlagsInvalid), uint8(transport.CodeLinkedEventFailed)
	if e := refusedOnOneShard(pairs, []uint8{flagsInvalid, ok, codeNoAnswer, ok, ok}); e != nil {
		t.Fatalf("errors %q, want none: only a pending or a chain's leg refused flags_invalid fails the run", e)
	}
	e := refusedOnOneShard(pairs, []uint8{0, flagsInvalid, flagsInvalid, flagsInvalid, failed})
	if len(e) != 2 || !strings.HasPrefix(e[0], "2 pending transfers refused flags_invalid (the first is transfer 1)") ||
		!strings.HasPrefix(e[1], "1 legs of linked chains refused flags_invalid (the first is transfer 3)") {
		t.Fatalf("errors %q", e)
	}
}

func TestAccountShardsFollowTheSlotMap(t *testing.T) {
	ids := []string{"a", "b", "c", "d", "e"}
	st := &transport.StatusReply{Shards: []transport.ShardStatus{{ID: 10}, {ID: 11}}}
	for slot := range transport.SlotCount {
		st.Shards[slot%2].Slots = append(st.Shards[slot%2].Slots, uint16(slot))
	}
	shardOf, err := accountShards(st, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if want := int32(transport.Slot(id) % 2); shardOf[i] != want {
			t.Errorf("account %s on shard index %d, want %d", id, shardOf[i], want)
		}
	}
	st.Shards[1].Slots = nil
	if _, err := accountShards(st, ids); err == nil {
		t.Error("accounts on unowned slots accepted")
	}
}

func TestCheckBalancesFindsWrongBalances(t *testing.T) {
	ids := []string{"a0", "a1", "a2"}
	pairs := []pair{{debit: 0, credit: 1}, {debit: 1, credit: 2}, {debit: 2, credit: 0}, {debit: 0, credit: 2}}
	posted := []uint64{10, 10, 0, 4} // pair 2 was refused or voided, pair 3 posted in part
	accounts := []transport.Account{
		{ID: "a0", DebitsPosted: 14, CreditsPosted: 0},
		{ID: "a1", DebitsPosted: 10, CreditsPosted: 10},
		{ID: "a2", DebitsPosted: 0, CreditsPosted: 14},
	}
	if p := checkBalances(ids, accounts, pairs, posted); len(p) != 0 {
		t.Fatalf("problems %q, want none", p)
	}

	accounts[2].CreditsPosted, accounts[1].DebitsPending = 30, 1
	p := checkBalances(ids, accounts[1:], pairs, posted)
	want := []string{"account a0: not found", "account a1: debits_pending 1", "account a2: debits_posted 0 credits_posted 30, want 0 14", "Σdebits_posted 10 != Σcredits_posted 40"}
	if len(p) != len(want) {
		t.Fatalf("problems %q, want %q", p, want)
	}
	for i := range want {
		if !strings.HasPrefix(p[i], want[i]) {
			t.Errorf("problem %q, want %q", p[i], want[i])
		}
	}
}

func TestReportCountsCodesAndNoAnswers(t *testing.T) {
	run := &sendRun{
		codes:     []uint8{uint8(transport.CodeOK), uint8(transport.CodeExists), uint8(transport.CodeExceedsCredits), codeNoAnswer},
		noAnswer:  map[string]int{"request unauthorized": 1},
		latencies: []time.Duration{time.Millisecond, 3 * time.Millisecond},
		elapsed:   time.Second,
	}
	r := run.report(benchOptions{transfers: 4})
	if r.OK != 1 || r.Exists != 1 || r.Failed["exceeds_credits"] != 1 || r.Failed["request unauthorized"] != 1 ||
		r.TransfersPerSecond != 2 || r.Requests != 2 || r.LatencyMsP50 != 1 || r.LatencyMsMax != 3 {
		t.Fatalf("report %+v", r)
	}
}

// Each pending, post and void is one event of transfers/s; a pair is a
// two-phase transfer whose post or void took effect.
func TestReportCountsPendingsAndResolutionsAsEvents(t *testing.T) {
	ok, noAnswer := uint8(transport.CodeOK), uint8(codeNoAnswer)
	run := &sendRun{
		codes:           []uint8{ok, ok, ok, uint8(transport.CodeFlagsInvalid)},
		resolutionCodes: []uint8{noAnswer, ok, uint8(transport.CodeExists), noAnswer}, // transfer 0 single, 3 refused
		noAnswer:        map[string]int{},
		latencies:       []time.Duration{time.Millisecond},
		elapsed:         time.Second,
	}
	r := run.report(benchOptions{transfers: 4})
	if r.OK != 4 || r.Exists != 1 || r.Failed["flags_invalid"] != 1 || r.TransfersPerSecond != 5 || r.PairsResolved != 2 || r.PairsPerSecond != 2 {
		t.Fatalf("report %+v", r)
	}
}

// A chain is a whole block of legs transfers starting at a multiple of legs
// (so a sender taking whole blocks never cuts one), from one debit account
// to accounts of its shard, or, for exactly the linkedCross fraction of the
// chains, every leg to an account of another shard; the fractions of the
// other kinds count among the transfers outside chains.
func TestGenPairsPutsEachChainOnOneShardInWholeBlocks(t *testing.T) {
	shardOf := randomShards(1000, 4)
	const n = 10007
	for _, m := range []mix{
		{transfers: n, crossShard: -1, linked: 1, legs: 2},
		{transfers: n, crossShard: 0.5, linked: 0.5, legs: 3, twoPhase: 0.4, void: 0.5},
		{transfers: n, crossShard: -1, linked: 0.3, legs: 5},
		{transfers: n, crossShard: -1, linked: 1, legs: 2, linkedCross: 1},
		{transfers: n, crossShard: 0.5, linked: 0.5, legs: 3, twoPhase: 0.4, void: 0.5, twoPhaseCross: 0.5, linkedCross: 0.3},
		{transfers: n, crossShard: 0, linked: 0.3, legs: 5, linkedCross: 0.5},
		{transfers: n, crossShard: 1, linked: 0.7, legs: 4, linkedCross: 0.01},
	} {
		pairs, err := genPairs(rand.New(rand.NewPCG(9, 10)), shardOf, m)
		if err != nil {
			t.Fatal(err)
		}
		chains, crossChains, twoPhase, cross, singles := 0, 0, 0, 0, 0
		for i := 0; i < len(pairs); i++ {
			p := pairs[i]
			if p.debit == p.credit {
				t.Fatalf("%+v: transfer %d has one account twice", m, i)
			}
			switch {
			case p.kind.twoPhase():
				twoPhase++
			case p.kind == kindSingle:
				singles++
				if shardOf[p.debit] != shardOf[p.credit] {
					cross++
				}
			}
			if !p.kind.inChain() {
				continue
			}
			if i%m.legs != 0 {
				t.Fatalf("%+v: chain starts at transfer %d, not a multiple of %d", m, i, m.legs)
			}
			crosses := shardOf[p.credit] != shardOf[p.debit] // then every leg's credit is off the debit's shard
			for j := i; j < i+m.legs; j++ {
				want := kindLeg
				if j == i+m.legs-1 {
					want = kindLegLast
				}
				q := pairs[j]
				if q.kind != want || q.debit != p.debit || (shardOf[q.credit] != shardOf[p.debit]) != crosses || q.credit == q.debit {
					t.Fatalf("%+v: leg %d of the chain at %d is %+v; want kind %d, debit %d, a credit on shard %d (chain across shards: %v)",
						m, j-i, i, q, want, p.debit, shardOf[p.debit], crosses)
				}
			}
			chains++
			if crosses {
				crossChains++
			}
			i += m.legs - 1
		}
		others := n - chains*m.legs
		if want := int(float64(n/m.legs) * m.linked); chains != want {
			t.Errorf("%+v: %d chains, want %d", m, chains, want)
		}
		if want := int(float64(chains) * m.linkedCross); crossChains != want {
			t.Errorf("%+v: %d of the %d chains across shards, want %d", m, crossChains, chains, want)
		}
		if want := int(float64(others) * m.twoPhase); twoPhase != want {
			t.Errorf("%+v: %d two-phase, want %d of the %d outside chains", m, twoPhase, want, others)
		}
		if m.crossShard >= 0 && cross != int(float64(singles)*m.crossShard) {
			t.Errorf("%+v: %d cross-shard of %d single-phase", m, cross, singles)
		}
	}
}

func TestChainLegsAreLinkedButTheLast(t *testing.T) {
	o := benchOptions{idPrefix: "run", ledger: 1, amount: 5}
	ids := []string{"a", "b", "c"}
	leg := o.transfer(pair{debit: 0, credit: 1, kind: kindLeg}, ids, 4)
	last := o.transfer(pair{debit: 0, credit: 2, kind: kindLegLast}, ids, 5)
	if leg.Flags != transport.TransferLinked || leg.ID != "run-t4" || last.Flags != 0 || last.CreditAccountID != "c" || last.Amount != 5 {
		t.Fatalf("legs %+v %+v", leg, last)
	}
}

// A chain counts as applied when every leg answered ok or exists; one that
// failed as a whole is counted by its codes only; one answered in part
// breaks the protocol and fails the run.
func TestCountChainsWantsEveryLegApplied(t *testing.T) {
	ok, exists, failed := uint8(transport.CodeOK), uint8(transport.CodeExists), uint8(transport.CodeLinkedEventFailed)
	pairs := []pair{{kind: kindLeg}, {kind: kindLegLast}, {kind: kindLeg}, {kind: kindLegLast}, {kind: kindLeg}, {kind: kindLegLast},
		{kind: kindLeg}, {kind: kindLegLast}, {kind: kindSingle}}
	run := &sendRun{
		codes:    []uint8{ok, exists, failed, uint8(transport.CodeCreditAccountNotFound), ok, failed, codeNoAnswer, codeNoAnswer, ok},
		noAnswer: map[string]int{}, latencies: []time.Duration{time.Millisecond}, elapsed: time.Second,
	}
	r := run.report(benchOptions{transfers: 9, linked: 1, legs: 2})
	r.count(pairs, make([]int32, 9))
	errs := r.countChains(pairs, run)
	if r.Chains != 4 || r.ChainsApplied != 1 || r.ChainsPerSecond != 1 || r.LegsPerSecond != 2 || r.Failed["linked_event_failed"] != 2 ||
		r.Failed["credit_account_not_found"] != 1 || r.OK != 3 || r.TransfersPerSecond != 4 {
		t.Fatalf("report %+v", r)
	}
	if len(errs) != 1 || !strings.HasPrefix(errs[0], "1 linked chains answered in part") || !strings.Contains(errs[0], "transfer 4") {
		t.Fatalf("errors %q", errs)
	}
}

func TestAuditFindsAChainAppliedInPart(t *testing.T) {
	b := &bench{o: benchOptions{idPrefix: "run", legs: 3}}
	pairs := []pair{{kind: kindLeg}, {kind: kindLeg}, {kind: kindLegLast}, {kind: kindLeg}, {kind: kindLeg}, {kind: kindLegLast}, {kind: kindSingle}}
	p := b.chainsAppliedInPart(pairs, []uint64{1, 1, 1, 0, 1, 0, 0})
	if len(p) != 1 || !strings.HasPrefix(p[0], "chain run-t3..run-t5: 1 of its 3 legs applied") {
		t.Fatalf("problems %q", p)
	}
}

func TestBenchTableShowsChains(t *testing.T) {
	var out strings.Builder
	benchTable(&out, benchReport{Transfers: 10, Chains: 5, Legs: 2, ChainsApplied: 4, ChainsPerSecond: 40, LegsPerSecond: 80,
		TransfersPerSecond: 90, Failed: map[string]int{"linked_event_failed": 1, "exceeds_credits": 1}})
	for _, want := range []string{"linked\t5 chains of 2 legs: 10 of the transfers\n", "transfers/s\t90 (each leg one)\n",
		"chains/s\t40 (4 of 5 chains applied, every leg ok or exists; 80 legs/s)\n", "failed\t1 linked_event_failed\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
