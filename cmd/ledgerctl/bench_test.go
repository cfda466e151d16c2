package main

import (
	"math/rand/v2"
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
		pairs, err := genPairs(rand.New(rand.NewPCG(3, 4)), shardOf, n, cross)
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
	pairs, err := genPairs(rand.New(rand.NewPCG(5, 6)), shardOf, 5000, -1)
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
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), make([]int32, 10), 5, 0.5); err == nil || !strings.Contains(err.Error(), "2 shards") {
		t.Errorf("cross-shard on one shard: err %v", err)
	}
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), []int32{0, 1, 2}, 5, 0.5); err == nil {
		t.Error("same-shard pairs with one account per shard accepted")
	}
	if _, err := genPairs(rand.New(rand.NewPCG(1, 1)), []int32{0, 1, 2}, 5, 1); err != nil {
		t.Errorf("all cross-shard, one account per shard: %v", err)
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
	pairs := []pair{{0, 1}, {1, 2}, {2, 0}, {0, 2}}
	applied := []bool{true, true, false, true} // pair 2 was refused
	accounts := []transport.Account{
		{ID: "a0", DebitsPosted: 20, CreditsPosted: 0},
		{ID: "a1", DebitsPosted: 10, CreditsPosted: 10},
		{ID: "a2", DebitsPosted: 0, CreditsPosted: 20},
	}
	if p := checkBalances(ids, accounts, pairs, applied, 10); len(p) != 0 {
		t.Fatalf("problems %q, want none", p)
	}

	accounts[2].CreditsPosted, accounts[1].DebitsPending = 30, 1
	p := checkBalances(ids, accounts[1:], pairs, applied, 10)
	want := []string{"account a0: not found", "account a1: debits_pending 1", "account a2: debits_posted 0 credits_posted 30, want 0 20", "Σdebits_posted 10 != Σcredits_posted 40"}
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
