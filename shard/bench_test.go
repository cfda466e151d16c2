package shard

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

const (
	benchAccounts          = 10_000
	benchTransfersPerEntry = 1000
	// benchResetEvery bounds the transfers a benchmark state accumulates
	// (idempotency records stay in memory): a fresh state every so many
	// entries, built with the timer stopped.
	benchResetEvery = 200
)

func benchState(b *testing.B) *State {
	b.Helper()
	s := New(1, nil)
	accounts := make([]transport.Account, benchAccounts)
	for i := range accounts {
		accounts[i] = acct(fmt.Sprintf("acc-%d", i), 1, 0)
	}
	for i := 0; i < len(accounts); i += transport.BatchEventsMax {
		out := s.Apply(&Entry{Timestamp: 1, Commands: []Command{{Kind: KindCreateAccounts, Accounts: accounts[i:min(i+transport.BatchEventsMax, len(accounts))]}}})
		for _, r := range out.Events[0] {
			if r.Code != transport.CodeOK {
				b.Fatal(r.Code)
			}
		}
	}
	return s
}

// benchEntry is entry n: benchTransfersPerEntry transfers between random
// accounts, credited on creditShard (0: this shard).
func benchEntry(rng *rand.Rand, n int, creditShard uint32) *Entry {
	cmd := Command{Kind: KindCreateTransfers, Transfers: make([]transport.Transfer, benchTransfersPerEntry)}
	if creditShard != 0 {
		cmd.CreditShards = make([]uint32, benchTransfersPerEntry)
	}
	for i := range cmd.Transfers {
		d := rng.IntN(benchAccounts)
		c := (d + 1 + rng.IntN(benchAccounts-1)) % benchAccounts
		credit := fmt.Sprintf("acc-%d", c)
		if creditShard != 0 {
			credit = fmt.Sprintf("remote-%d", c)
			cmd.CreditShards[i] = creditShard
		}
		cmd.Transfers[i] = transport.Transfer{
			ID: fmt.Sprintf("t-%d-%d", n, i), DebitAccountID: fmt.Sprintf("acc-%d", d), CreditAccountID: credit,
			Amount: 1 + uint64(rng.IntN(1000)), Ledger: 1, Code: 1,
		}
	}
	return &Entry{Timestamp: uint64(n+1) * 1_000_000, Commands: []Command{cmd}}
}

func reportPerTransfer(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchTransfersPerEntry), "ns/transfer")
}

// BenchmarkApplySameShard: one op is one entry of 1000 same-shard transfers
// over 10,000 accounts.
func BenchmarkApplySameShard(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := benchState(b)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		if n > 0 && n%benchResetEvery == 0 {
			s = benchState(b)
		}
		e := benchEntry(rng, n, 0)
		b.StartTimer()
		out := s.Apply(e)
		b.StopTimer()
		if r := out.Events[0][0]; r.Code != transport.CodeOK || r.InFlight {
			b.Fatalf("transfer: %+v", r)
		}
		b.StartTimer()
	}
	reportPerTransfer(b)
}

// BenchmarkApplyCrossShardReserve: one op is one entry of 1000 transfers
// whose credit accounts are on shard 2: each is reserved and put in the
// outbox. The reservations are resolved with the timer stopped, so the
// outbox stays at one entry's worth.
func BenchmarkApplyCrossShardReserve(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := benchState(b)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		if n > 0 && n%benchResetEvery == 0 {
			s = benchState(b)
		}
		e := benchEntry(rng, n, 2)
		b.StartTimer()
		out := s.Apply(e)
		b.StopTimer()
		answers := make([]Answer, len(out.Events[0]))
		for i, r := range out.Events[0] {
			if !r.InFlight || r.Retry {
				b.Fatalf("reserve: %+v", r)
			}
			answers[i] = Answer{ID: e.Commands[0].Transfers[i].ID, Attempt: r.Attempt, Outcome: OutcomeCredited}
		}
		if res := s.Apply(&Entry{Timestamp: e.Timestamp, Commands: []Command{{Kind: KindResolve, Answers: answers}}}).Resolved; len(res) != len(answers) {
			b.Fatalf("%d of %d resolved", len(res), len(answers))
		}
		b.StartTimer()
	}
	reportPerTransfer(b)
}
