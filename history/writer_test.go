package history

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ledgerd/ledgerd/transport"
)

// gate holds the writer before its next write while held: the rows of the
// entries committed meanwhile stay in memory only.
type gate struct {
	mu   sync.Mutex
	held bool // the test's goroutine's
}

func (g *gate) fault() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return nil
}

func (g *gate) hold() { g.mu.Lock(); g.held = true }

// release lets the writer go; deferred, before the store's Close (which
// waits for the writer).
func (g *gate) release() {
	if g.held {
		g.held = false
		g.mu.Unlock()
	}
}

// unwritten returns the entries and bytes committed and not yet written.
func (w *writer) unwritten() (entries, bytes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.entries, w.bytes
}

// openGated opens a store whose writer waits at g, with the bounds given.
func openGated(t *testing.T, dir string, g *gate, o Options) *Store {
	t.Helper()
	o.Logger, o.WriteFault = slog.New(slog.DiscardHandler), g.fault
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// heldStore opens a store in a directory of its own whose writer is held
// (the gate is released, then the store closed, when the test ends).
func heldStore(t *testing.T, name string) (*Store, *gate) {
	t.Helper()
	g := new(gate)
	s := openGated(t, filepath.Join(t.TempDir(), name), g, Options{})
	t.Cleanup(func() { s.Close() })
	t.Cleanup(g.release)
	g.hold()
	return s, g
}

// inPebble tells whether the key is written to Pebble, not only in memory.
func inPebble(t *testing.T, s *Store, key []byte) bool {
	t.Helper()
	_, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	closer.Close()
	return true
}

// historyOf reads everything the queries answer about accounts a and b.
func historyOf(t *testing.T, s *Store) string {
	t.Helper()
	var out []string
	for _, account := range []string{"a", "b"} {
		for _, reverse := range []bool{false, true} {
			f := &transport.AccountFilter{AccountID: account, Limit: 100, Reverse: reverse}
			ts, err := s.AccountTransfers(f, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range ts {
				out = append(out, fmt.Sprintf("%s:%s@%d=%d/%v", account, x.ID, x.Timestamp, x.Amount, x.State))
			}
			bs, err := s.AccountBalances(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range bs {
				out = append(out, fmt.Sprintf("%s:balance@%d=%d", account, b.Timestamp, b.DebitsPosted))
			}
		}
		f := &transport.AccountFilter{AccountID: account, TimestampMin: 25, TimestampMax: 45, Limit: 2}
		ts, err := s.AccountTransfers(f, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ts {
			out = append(out, fmt.Sprintf("%s:[25,45]:%s", account, x.ID))
		}
	}
	return strings.Join(out, "\n")
}

// historyEntries are three entries: 0 holds t1 (pending, a copy in a's
// and b's rows) and a balance; 1 finalizes t1 (its row in a rewritten to a
// reference, a new version of the transfer) and adds t2; 2 adds t3 and a
// new version of t2.
func historyEntries(s *Store) []func() {
	pending := tr("t1", 10)
	pending.State = transport.StatePending
	return []func(){
		func() {
			s.PutAccountTransfer("a", 10, pending)
			s.PutAccountTransfer("b", 10, pending)
			s.PutBalance("a", &transport.Balance{Timestamp: 10, DebitsPosted: 1})
		},
		func() {
			s.PutTransfer(tr("t1", 10), 20)
			s.PutAccountTransferRef("a", 10, "t1")
			s.PutTransfer(tr("t2", 30), 30)
			s.PutAccountTransferRef("a", 30, "t2")
			s.PutBalance("a", &transport.Balance{Timestamp: 30, DebitsPosted: 2})
		},
		func() {
			x := tr("t2", 30) // first: rows of one key go in log order, not row order
			x.Amount = 31
			s.PutTransfer(x, 50)
			s.PutTransfer(tr("t3", 40), 40)
			s.PutAccountTransferRef("b", 40, "t3")
			s.PutAccountTransferRef("a", 40, "t3")
			s.PutBalance("a", &transport.Balance{Timestamp: 40, DebitsPosted: 3})
		},
	}
}

// writeHistory commits historyEntries[from:to].
func writeHistory(t *testing.T, s *Store, from, to int) {
	t.Helper()
	for _, e := range historyEntries(s)[from:to] {
		s.Begin()
		e()
		commit(t, s)
	}
}

// checkNewestT2 checks the lookups of t2 by id, between entries and within
// one: its newest version, put by the last entry.
func checkNewestT2(t *testing.T, s *Store, name string) {
	t.Helper()
	if x, at, ok := s.Transfer("t2"); !ok || at != 50 || x.Amount != 31 {
		t.Fatalf("%s: t2 between entries: %+v at %d, %v", name, x, at, ok)
	}
	s.Begin()
	defer commit(t, s)
	if x, at, ok := s.Transfer("t2"); !ok || at != 50 || x.Amount != 31 {
		t.Fatalf("%s: t2 within an entry: %+v at %d, %v", name, x, at, ok)
	}
	if _, _, ok := s.Transfer("t9"); ok {
		t.Fatalf("%s: t9 found", name)
	}
}

// Rows committed and not yet written answer every lookup and query as the
// same rows written do: by id, within an entry and between entries, and in
// the account queries, merged in order over the rows already in Pebble
// (older versions of some), the newest version of a key once.
func TestLookupsAndQueriesSeeRowsNotYetWritten(t *testing.T) {
	ref := open(t, filepath.Join(t.TempDir(), "ref"))
	defer ref.Close()
	writeHistory(t, ref, 0, 3)
	if err := ref.Drain(); err != nil {
		t.Fatal(err)
	}
	want := historyOf(t, ref)
	checkNewestT2(t, ref, "all written")
	for written := range 4 { // the first entries written, the others not
		name := fmt.Sprintf("%d entries written", written)
		s, g := heldStore(t, "h")
		g.release()
		writeHistory(t, s, 0, written)
		if err := s.Drain(); err != nil {
			t.Fatal(err)
		}
		g.hold()
		writeHistory(t, s, written, 3)
		if written == 3 { // and all again, unwritten: a replay
			writeHistory(t, s, 0, 3)
		}
		if got := inPebble(t, s, appendTransferKey(nil, "t3")); got != (written == 3) {
			t.Fatalf("%s: t3 in Pebble: %v", name, got)
		}
		if got := historyOf(t, s); got != want {
			t.Fatalf("%s: queries:\n%s\nwant\n%s", name, got, want)
		}
		checkNewestT2(t, s, name)
	}
}

// Entries written several to a batch leave in Pebble the rows that entries
// written one by one do, byte for byte: of one key, the last in log order.
func TestEntriesWrittenTogetherStoreWhatEntriesWrittenAloneDo(t *testing.T) {
	alone := open(t, filepath.Join(t.TempDir(), "alone"))
	defer alone.Close()
	for i := range 3 {
		writeHistory(t, alone, i, i+1)
		if err := alone.Drain(); err != nil {
			t.Fatal(err)
		}
	}
	together, g := heldStore(t, "together")
	writeHistory(t, together, 0, 3)
	g.release()
	want, _, err := alone.Export(nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := together.Export(nil, 1<<20)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("rows written together (%v):\n%q\nwant\n%q", err, got, want)
	}
}

// stepper lets the writer write one batch per step.
type stepper struct{ entered, steps chan struct{} }

func (g stepper) fault() error {
	g.entered <- struct{}{}
	<-g.steps
	return nil
}

// An entry written leaves memory, but not the versions of its transfers
// that a later entry, not yet written, put again.
func TestAWrittenEntryLeavesTheNewerVersionsOfLaterOnes(t *testing.T) {
	g := stepper{make(chan struct{}), make(chan struct{})}
	s, err := Open(filepath.Join(t.TempDir(), "h"), Options{Logger: slog.New(slog.DiscardHandler), WriteFault: g.fault})
	if err != nil {
		t.Fatal(err)
	}
	defer close(g.entered)
	defer s.Close()
	defer close(g.steps)
	writeHistory(t, s, 1, 2) // t2 at 30
	drained := make(chan error)
	go func() { drained <- s.Drain() }()
	<-g.entered              // the writer took it alone
	writeHistory(t, s, 2, 3) // t2 at 50, queued
	g.steps <- struct{}{}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	go func() { // the writes left, at Close
		for range g.entered {
		}
	}()
	checkNewestT2(t, s, "the first entry written") // its Begin drops that entry from memory
	if len(s.pending) != 1 {
		t.Fatalf("%d entries in memory, want 1", len(s.pending))
	}
}

// Apply waits (Throttle) while the writer is more entries or bytes behind
// than the bounds, and goes on once it has caught up.
func TestThrottleWaitsWhileTheWriterIsBeyondTheBound(t *testing.T) {
	for _, bound := range []struct {
		name string
		o    Options
	}{
		{"entries", Options{UnwrittenEntriesMax: 3}},
		{"bytes", Options{UnwrittenBytesMax: 2000}},
	} {
		t.Run(bound.name, func(t *testing.T) {
			var g gate
			s := openGated(t, filepath.Join(t.TempDir(), "h"), &g, bound.o)
			defer s.Close()
			defer g.release()
			g.hold()
			n := 0
			for ; ; n++ {
				s.Begin()
				s.PutTransfer(tr(fmt.Sprint("t", n), uint64(n+1)), uint64(n+1))
				s.PutAccountTransferRef("a", uint64(n+1), fmt.Sprint("t", n))
				commit(t, s)
				if entries, bytes := s.w.unwritten(); entries > s.w.entriesMax || bytes > s.w.bytesMax {
					break
				}
				if err := s.Throttle(); err != nil { // within the bound: at once
					t.Fatal(err)
				}
			}
			if n == 0 {
				t.Fatal("the first entry went beyond the bound")
			}
			done := make(chan error)
			go func() { done <- s.Throttle() }()
			select {
			case err := <-done:
				entries, bytes := s.w.unwritten()
				t.Fatalf("Throttle returned (%v) with %d entries, %d bytes unwritten", err, entries, bytes)
			case <-time.After(100 * time.Millisecond):
			}
			g.release()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Throttle still waits after the writer caught up") // hang guard
			}
			s.Begin() // drops the written entries from memory
			commit(t, s)
			if len(s.pending) != 0 || len(s.byID) != 0 {
				t.Fatalf("%d entries, %d transfers left in memory once written", len(s.pending), len(s.byID))
			}
		})
	}
}

// Sync waits for the writer: the durable index it records covers rows in
// Pebble, flushed, which a reopened store finds.
func TestSyncWaitsForTheWriter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "h")
	var g gate
	s := openGated(t, dir, &g, Options{})
	defer g.release()
	g.hold()
	writeHistory(t, s, 0, 3)
	done := make(chan error)
	go func() { done <- s.Sync(3) }()
	select {
	case err := <-done:
		t.Fatalf("Sync returned (%v) before the writer wrote", err)
	case <-time.After(100 * time.Millisecond):
	}
	if d, err := s.Durable(); err != nil || d != 0 {
		t.Fatalf("durable %d (%v) while the writer waits", d, err)
	}
	g.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := historyOf(t, s)
	// What Sync made durable survives without Close, which would write
	// what is left: the files are copied as a crash would leave them.
	crashed := filepath.Join(t.TempDir(), "crashed")
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(crashed, "LOCK"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := open(t, crashed)
	defer r.Close()
	if d, err := r.Durable(); err != nil || d != 3 {
		t.Fatalf("durable after reopen: %d %v", d, err)
	}
	if got := historyOf(t, r); got != want {
		t.Fatalf("after reopen:\n%s\nwant\n%s", got, want)
	}
}

// A write that fails stops the writer: Commit, Throttle, Drain and Sync
// return its error from then on (Apply panics on it), the durable index
// does not move, and damage goes the damage path (OnDamage, the marker).
func TestAFailedWriteIsReportedNeverDropped(t *testing.T) {
	for _, fault := range []struct {
		name   string
		err    error
		damage bool
	}{
		{"disk error", errors.New("input/output error"), false},
		{"damage", fmt.Errorf("block checksum: %w", pebble.ErrCorruption), true},
	} {
		t.Run(fault.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "h")
			var failing sync.Mutex
			fail := false
			s, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler), WriteFault: func() error {
				failing.Lock()
				defer failing.Unlock()
				if fail {
					return fault.err
				}
				return nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			told := make(chan error, 1)
			s.OnDamage(func(err error) { told <- err })
			writeHistory(t, s, 0, 3)
			if err := s.Sync(3); err != nil {
				t.Fatal(err)
			}
			failing.Lock()
			fail = true
			failing.Unlock()
			s.Begin()
			s.PutTransfer(tr("t4", 60), 60)
			if err := s.Commit(); err != nil {
				t.Fatalf("commit before the write: %v", err)
			}
			for _, call := range []struct {
				name string
				fn   func() error
			}{
				{"Drain", s.Drain}, // waits for the write
				{"Throttle", s.Throttle},
				{"Sync", func() error { return s.Sync(4) }},
				{"Commit", func() error { s.Begin(); return s.Commit() }},
			} {
				if err := call.fn(); !errors.Is(err, fault.err) {
					t.Errorf("%s after the failed write: %v", call.name, err)
				}
			}
			if d, err := s.Durable(); err != nil || d != 3 {
				t.Fatalf("durable after the failed write: %d %v", d, err)
			}
			if err := s.Close(); !errors.Is(err, fault.err) {
				t.Fatalf("Close: %v", err)
			}
			if !fault.damage {
				select {
				case err := <-told:
					t.Fatalf("OnDamage told of %v", err)
				default:
				}
				return
			}
			if err := <-told; !errors.Is(err, ErrDamaged) {
				t.Fatalf("OnDamage told %v", err)
			}
			if _, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler)}); !errors.Is(err, ErrDamaged) {
				t.Fatalf("reopened after damage: %v", err)
			}
		})
	}
}

// Export waits for the writer, so a history copy holds every entry
// committed before it was asked for; Import drops the rows in memory that
// it overwrites.
func TestExportHoldsRowsNotYetWrittenAndImportReplacesThem(t *testing.T) {
	src, g := heldStore(t, "src")
	writeHistory(t, src, 0, 3)
	type page struct {
		rows []Row
		err  error
	}
	done := make(chan page)
	go func() {
		rows, _, err := src.Export(nil, 1<<20)
		done <- page{rows, err}
	}()
	select {
	case p := <-done:
		t.Fatalf("Export answered %d rows (%v) before the writer wrote", len(p.rows), p.err)
	case <-time.After(100 * time.Millisecond):
	}
	g.release()
	p := <-done
	if p.err != nil || len(p.rows) != 11 {
		t.Fatalf("export: %d rows, %v", len(p.rows), p.err)
	}

	dst := open(t, filepath.Join(t.TempDir(), "dst"))
	defer dst.Close()
	dst.Begin()
	dst.PutTransfer(tr("t2", 1), 1) // an older version, in memory only
	commit(t, dst)
	if err := dst.Import(p.rows); err != nil {
		t.Fatal(err)
	}
	if x, at, ok := dst.Transfer("t2"); !ok || at != 50 || x.Amount != 31 {
		t.Fatalf("t2 after import: %+v at %d, %v", x, at, ok)
	}
	if got, want := historyOf(t, dst), historyOf(t, src); got != want {
		t.Fatalf("imported:\n%s\nwant\n%s", got, want)
	}
	rows, _, err := dst.Export(nil, 1<<20)
	if err != nil || !reflect.DeepEqual(rows, p.rows) {
		t.Fatalf("exported again: %d rows, %v", len(rows), err)
	}
}

// BenchmarkAccountQueryOverUnwrittenRows is an account query while the
// writer is as far behind as the default bound lets it be: the rows of
// every unwritten entry are scanned.
func BenchmarkAccountQueryOverUnwrittenRows(b *testing.B) {
	var g gate
	s, err := Open(filepath.Join(b.TempDir(), "h"), Options{Logger: slog.New(slog.DiscardHandler), WriteFault: g.fault})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	defer g.release()
	g.hold()
	n := 0
	for entries, bytes := s.w.unwritten(); bytes < unwrittenBytesMaxDefault && entries < unwrittenEntriesMaxDefault; entries, bytes = s.w.unwritten() {
		s.Begin()
		for range 1000 {
			t := tr("t-"+strconv.Itoa(n), uint64(n+1))
			t.DebitAccountID, t.CreditAccountID = "acct-"+strconv.Itoa(n%10_000), "acct-"+strconv.Itoa((n*7+1)%10_000)
			s.PutTransfer(t, t.Timestamp)
			s.PutAccountTransferRef(t.DebitAccountID, t.Timestamp, t.ID)
			s.PutAccountTransferRef(t.CreditAccountID, t.Timestamp, t.ID)
			n++
		}
		if err := s.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	f := &transport.AccountFilter{AccountID: "acct-7", Limit: 100}
	b.ResetTimer()
	for range b.N {
		ts, err := s.AccountTransfers(f, 1<<20)
		if err != nil || len(ts) == 0 {
			b.Fatalf("%d rows, %v", len(ts), err)
		}
	}
	b.ReportMetric(float64(n), "transfers-unwritten")
}
