package shard

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// Helpers shared by the package's tests. Everything reaches a state through
// Apply, so every invariant the state keeps is one it built itself.

const maxU64 = ^uint64(0)

func acct(id string, ledger uint32, flags uint32) transport.Account {
	return transport.Account{ID: id, Ledger: ledger, Code: 1, Flags: flags}
}

func xfer(id, debit, credit string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: amount, Ledger: 1, Code: 1}
}

// clock hands out entry timestamps for one test.
type clock struct{ now uint64 }

func (c *clock) next() uint64 { c.now += 1000; return c.now }

func (c *clock) apply(s *State, cmds ...Command) *Output {
	return s.Apply(&Entry{Timestamp: c.next(), Commands: cmds})
}

func (c *clock) createAccounts(s *State, accounts ...transport.Account) []EventResult {
	return c.apply(s, Command{Kind: KindCreateAccounts, Accounts: accounts}).Events[0]
}

// createTransfers applies transfers whose credit accounts are all on shard
// creditShard (0 means this shard).
func (c *clock) createTransfers(s *State, creditShard uint32, transfers ...transport.Transfer) []EventResult {
	cmd := Command{Kind: KindCreateTransfers, Transfers: transfers}
	if creditShard != 0 {
		cmd.CreditShards = make([]uint32, len(transfers))
		for i := range cmd.CreditShards {
			cmd.CreditShards[i] = creditShard
		}
	}
	return c.apply(s, cmd).Events[0]
}

func mustCreateAccounts(t testing.TB, c *clock, s *State, accounts ...transport.Account) {
	t.Helper()
	for i, r := range c.createAccounts(s, accounts...) {
		if r.Code != transport.CodeOK {
			t.Fatalf("create account %q: %v", accounts[i].ID, r.Code)
		}
	}
}

func mustTransfer(t testing.TB, c *clock, s *State, transfers ...transport.Transfer) {
	t.Helper()
	for i, r := range c.createTransfers(s, 0, transfers...) {
		if r.Code != transport.CodeOK || r.InFlight {
			t.Fatalf("transfer %q: %+v", transfers[i].ID, r)
		}
	}
}

func account(t testing.TB, s *State, id string) transport.Account {
	t.Helper()
	as := s.LookupAccounts([]string{id})
	if len(as) != 1 {
		t.Fatalf("shard %d: no account %q", s.ID(), id)
	}
	return as[0]
}

func metadataPairs(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[string(rune('a'+i))] = "v"
	}
	return m
}

// metadataBytes returns one pair whose key and value total n bytes.
func metadataBytes(n int) map[string]string {
	return map[string]string{"k": strings.Repeat("v", n-1)}
}

// ledgerSums returns, per ledger, Σ debits_posted and Σ credits_posted over
// the given shards, modulo 2^64: a shard's sums are exact (Totals), and
// amounts in overflow territory take them past 2^64.
func ledgerSums(states ...*State) map[uint32][2]uint64 {
	sums := map[uint32][2]uint64{}
	for _, s := range states {
		for _, tot := range s.Totals() {
			v, exact := sums[tot.Ledger], tot.Sums()
			v[0] += exact.DebitsPosted.Lo
			v[1] += exact.CreditsPosted.Lo
			sums[tot.Ledger] = v
		}
	}
	return sums
}

// allTransfers returns every transfer debited on s: the open ones in memory
// and the final ones in its MemArchive.
func (s *State) allTransfers() map[string]*transport.Transfer {
	all := make(map[string]*transport.Transfer, len(s.transfers))
	for id, a := range s.archive.(*MemArchive).Transfers {
		all[id] = &a.T
	}
	for id, t := range s.transfers {
		all[id] = t
	}
	return all
}

// mod returns v changed by f.
func mod[T any](v T, f func(*T)) T { f(&v); return v }

// restored is s written as a snapshot and read back, as a replica that
// restores it holds it.
func restored(t testing.TB, s *State) *State {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := Read(&buf, s.Archive())
	if err != nil {
		t.Fatal(err)
	}
	return r
}
