package history

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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

// Rows are encoded in place and written sorted at Commit: the bytes stored
// are still the timestamp and transport.Marshal's encoding, and the last
// version of a transfer written in an entry is the one kept.
func TestRowsHoldTheWireEncodingAndTheLastVersionWritten(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "h"))
	defer s.Close()
	x := tr("x", 10)
	x.PendingID, x.Timeout, x.Metadata = "p", 30, map[string]string{"k": "v"}
	s.Begin()
	s.PutTransfer(tr("x", 10), 10)
	s.PutAccountTransfer("a", 10, x)
	s.PutAccountTransferRef("b", 10, "x")
	s.PutBalance("a", &transport.Balance{Timestamp: 10, DebitsPending: 1, DebitsPosted: 2, CreditsPending: 3, CreditsPosted: 4})
	s.PutTransfer(x, 12)
	commit(t, s)
	if err := s.Drain(); err != nil { // the rows in Pebble, read below
		t.Fatal(err)
	}

	wire, err := transport.Marshal(x)
	if err != nil {
		t.Fatal(err)
	}
	balance := []byte{}
	for _, v := range []uint64{1, 2, 3, 4} {
		balance = binary.BigEndian.AppendUint64(balance, v)
	}
	for _, row := range []struct {
		name       string
		key, value []byte
	}{
		{"transfer x", appendTransferKey(nil, "x"), append(binary.BigEndian.AppendUint64(nil, 12), wire...)},
		{"a's copy of x", appendAccountKey(nil, prefixAccount, "a", 10), append([]byte{rowCopy}, wire...)},
		{"b's reference to x", appendAccountKey(nil, prefixAccount, "b", 10), []byte{rowRef, 'x'}},
		{"a's balance", appendAccountKey(nil, prefixBalance, "a", 10), balance},
	} {
		v, closer, err := s.db.Get(row.key)
		if err != nil {
			t.Fatalf("%s: %v", row.name, err)
		}
		if !bytes.Equal(v, row.value) {
			t.Errorf("%s: %x, want %x", row.name, v, row.value)
		}
		closer.Close()
	}
}

// BenchmarkStoreEntry is the store's share of applying a same-shard
// transfer: its id looked up (a miss), three rows written, the entry of
// 1000 transfers committed. It reports apart what Apply's goroutine spends
// in the lookups and in Commit (handing the rows to the writer), and the
// whole, until the writer has written every entry.
func BenchmarkStoreEntry(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "h"), Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const accounts, batch = 10_000, 1000
	ts := make([]transport.Transfer, b.N)
	for k := range ts {
		ts[k] = transport.Transfer{ID: "t-" + strconv.Itoa(k), DebitAccountID: "acct-" + strconv.Itoa(k%accounts),
			CreditAccountID: "acct-" + strconv.Itoa((k*7+1)%accounts), Amount: 1, Ledger: 1, Code: 1,
			Timestamp: uint64(1_700_000_000_000_000_000 + k), State: transport.StatePosted}
	}
	var commitTime, lookupTime time.Duration
	b.ResetTimer()
	for first := 0; first < b.N; first += batch {
		s.Begin()
		for k := first; k < min(first+batch, b.N); k++ {
			t := &ts[k]
			start := time.Now()
			if _, _, ok := s.Transfer(t.ID); ok {
				b.Fatalf("%s found before it was written", t.ID)
			}
			lookupTime += time.Since(start)
			s.PutAccountTransferRef(t.DebitAccountID, t.Timestamp, t.ID)
			s.PutAccountTransferRef(t.CreditAccountID, t.Timestamp, t.ID)
			s.PutTransfer(t, t.Timestamp)
		}
		start := time.Now()
		if err := s.Commit(); err != nil {
			b.Fatal(err)
		}
		commitTime += time.Since(start)
		if err := s.Throttle(); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Drain(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(commitTime.Nanoseconds())/float64(b.N), "commit-ns/transfer")
	b.ReportMetric(float64(lookupTime.Nanoseconds())/float64(b.N), "lookup-ns/transfer")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/transfer")
}
