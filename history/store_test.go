package history

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tr(id string, ts uint64) *transport.Transfer {
	return &transport.Transfer{ID: id, DebitAccountID: "a", CreditAccountID: "b", Amount: ts, Ledger: 1, Code: 1,
		Timestamp: ts, State: transport.StatePosted}
}

func commit(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestStoreReadsItsOwnEntryAndSurvivesSyncAndReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "h")
	s := open(t, dir)
	s.Begin()
	if _, _, ok := s.Transfer("x"); ok {
		t.Fatal("empty store has x")
	}
	s.PutTransfer(tr("x", 10), 10)
	if got, at, ok := s.Transfer("x"); !ok || at != 10 || got.Amount != 10 {
		t.Fatalf("x within its entry: %+v %d %v", got, at, ok)
	}
	s.PutTransfer(tr("x", 10), 12) // a later version in the same entry
	commit(t, s)
	if _, at, ok := s.Transfer("x"); !ok || at != 12 {
		t.Fatalf("x between entries: at %d, %v", at, ok)
	}
	s.Begin()
	if _, at, ok := s.Transfer("x"); !ok || at != 12 {
		t.Fatalf("x in the next entry: at %d, %v", at, ok)
	}
	commit(t, s)
	if d, err := s.Durable(); err != nil || d != 0 {
		t.Fatalf("durable before any sync: %d %v", d, err)
	}
	if err := s.Sync(7); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	if d, err := s.Durable(); err != nil || d != 7 {
		t.Fatalf("durable after reopen: %d %v", d, err)
	}
	if _, at, ok := s.Transfer("x"); !ok || at != 12 {
		t.Fatalf("x after sync and reopen: at %d, %v", at, ok)
	}
}

func TestAccountRowsFilterOrderLimitAndSize(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "h"))
	defer s.Close()
	s.Begin()
	for ts := uint64(1); ts <= 20; ts++ {
		s.PutAccountTransfer("a", ts*10, tr(fmt.Sprint("t", ts), ts*10))
		s.PutBalance("a", &transport.Balance{Timestamp: ts * 10, DebitsPosted: ts})
	}
	s.PutTransfer(tr("ref", 205), 205) // archived by id, listed by reference
	s.PutAccountTransferRef("a", 205, "ref")
	// Another account whose id extends "a": its rows must not leak in.
	s.PutAccountTransfer("aa", 55, tr("other", 55))
	s.PutBalance("aa", &transport.Balance{Timestamp: 55})
	commit(t, s)

	ids := func(f transport.AccountFilter, maxBytes int) string {
		ts, err := s.AccountTransfers(&f, maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range ts {
			out = append(out, x.ID)
		}
		return strings.Join(out, ",")
	}
	all := transport.AccountFilter{AccountID: "a", Limit: 100}
	if got := ids(all, 1<<20); got != "t1,t2,t3,t4,t5,t6,t7,t8,t9,t10,t11,t12,t13,t14,t15,t16,t17,t18,t19,t20,ref" {
		t.Fatalf("all: %s", got)
	}
	f := transport.AccountFilter{AccountID: "a", TimestampMin: 50, TimestampMax: 80, Limit: 100}
	if got := ids(f, 1<<20); got != "t5,t6,t7,t8" {
		t.Fatalf("[50, 80]: %s", got)
	}
	f.Reverse, f.Limit = true, 3
	if got := ids(f, 1<<20); got != "t8,t7,t6" {
		t.Fatalf("[50, 80] newest 3: %s", got)
	}
	one, _ := transport.Marshal(tr("t1", 10))
	if got := ids(all, 2*len(one)+len(one)/2); got != "t1,t2" {
		t.Fatalf("capped at 2.5 rows' bytes: %s", got)
	}
	bs, err := s.AccountBalances(&transport.AccountFilter{AccountID: "a", TimestampMin: 195, Limit: 100})
	if err != nil || len(bs) != 1 || bs[0] != (transport.Balance{Timestamp: 200, DebitsPosted: 20}) {
		t.Fatalf("balances from 195: %+v %v", bs, err)
	}
	bs, err = s.AccountBalances(&transport.AccountFilter{AccountID: "aa", Limit: 100})
	if err != nil || len(bs) != 1 || bs[0].Timestamp != 55 {
		t.Fatalf("balances of aa: %+v %v", bs, err)
	}
}
