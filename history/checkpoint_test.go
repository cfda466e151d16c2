package history

import (
	"path/filepath"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// TestCheckpointCopiesEveryCommittedRow: rows committed and not yet written
// (still in the writer's queue or a memtable) reach the copy, which records
// the durable index it was given, not the source's.
func TestCheckpointCopiesEveryCommittedRow(t *testing.T) {
	src, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	src.Begin()
	for i, id := range []string{"a", "b", "c"} {
		src.PutTransfer(&transport.Transfer{ID: id, DebitAccountID: "x", CreditAccountID: "y", Amount: uint64(i + 1), Ledger: 1, Code: 1, Timestamp: uint64(i + 1)}, uint64(i+1))
	}
	if err := src.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := src.Sync(500); err != nil {
		t.Fatal(err)
	}
	src.Begin()
	src.PutTransfer(&transport.Transfer{ID: "d", DebitAccountID: "x", CreditAccountID: "y", Amount: 4, Ledger: 1, Code: 1, Timestamp: 4}, 4)
	if err := src.Commit(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "copy")
	if err := src.Checkpoint(dir, 1); err != nil {
		t.Fatal(err)
	}
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, id := range []string{"a", "b", "c", "d"} {
		got, at, ok := c.Transfer(id)
		if !ok || got.Amount != uint64(i+1) || at != uint64(i+1) {
			t.Fatalf("copy's %q: %+v at %d, %v", id, got, at, ok)
		}
	}
	if d, err := c.Durable(); err != nil || d != 1 {
		t.Fatalf("copy's durable index %d, %v; want 1", d, err)
	}
	if d, err := src.Durable(); err != nil || d != 500 {
		t.Fatalf("source's durable index %d, %v; want 500", d, err)
	}
}

// TestMaxTimestampCoversCommittedAndCopiedRows: the newest timestamp of the
// rows a store holds counts rows committed (written or not), survives a
// reopen, and counts rows copied from a peer (Import).
func TestMaxTimestampCoversCommittedAndCopiedRows(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Begin()
	s.PutTransfer(&transport.Transfer{ID: "a", Amount: 1, Ledger: 1, Code: 1, Timestamp: 7}, 9)
	s.PutBalance("x", &transport.Balance{Timestamp: 11})
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := s.MaxTimestamp(); got != 11 {
		t.Fatalf("newest %d after a commit, want 11", got)
	}
	if err := s.Sync(1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.MaxTimestamp(); got != 11 {
		t.Fatalf("newest %d after a reopen, want 11", got)
	}
	peer, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.Begin()
	peer.PutAccountTransferRef("y", 40, "b")
	peer.PutTransfer(&transport.Transfer{ID: "b", Amount: 1, Ledger: 1, Code: 1, Timestamp: 30}, 35)
	if err := peer.Commit(); err != nil {
		t.Fatal(err)
	}
	rows, _, err := peer.Export(nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Import(rows); err != nil {
		t.Fatal(err)
	}
	if got := s.MaxTimestamp(); got != 40 {
		t.Fatalf("newest %d after a copy, want 40", got)
	}
}
