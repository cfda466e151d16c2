package shard

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// busySim runs the simulation without draining it, so every table (outbox,
// inbox, watermarks, accounts with metadata) holds rows.
func busySim(t *testing.T, seed uint64) *sim {
	t.Helper()
	m := newSim(t, seed)
	for range 3 * simShards {
		m.createAccounts()
	}
	for m.step = 0; m.step < 300; m.step++ {
		m.randomStep()
	}
	for _, s := range m.shards[1:] {
		accounts, _, outbox, inbox := s.Counts()
		if accounts == 0 || outbox+inbox == 0 || len(s.watermarks) == 0 {
			t.Fatalf("seed %d: shard %d too quiet for a snapshot test: %d accounts, outbox %d, inbox %d, %d watermarks",
				seed, s.id, accounts, outbox, inbox, len(s.watermarks))
		}
	}
	return m
}

// continueBoth applies the same further traffic to a and b: it must give
// the same outputs and hashes, so the copy behaves as the original does.
func continueBoth(t *testing.T, m *sim, id uint32, a, b *State) {
	t.Helper()
	var c clock
	c.now = max(a.last, b.last)
	entries := []*Entry{}
	// Every message still in the network for this shard, twice, then a
	// re-submit of every transfer and account it holds.
	for _, msg := range m.net {
		if msg.to == id {
			entries = append(entries, &Entry{Commands: []Command{msg.cmd, msg.cmd}})
		}
	}
	resubmit := Command{Kind: KindCreateTransfers}
	for _, x := range a.allTransfers() {
		y := *x
		y.Timestamp = 0
		resubmit.Transfers = append(resubmit.Transfers, y)
	}
	for _, row := range a.outbox {
		y := row.Transfer
		y.Timestamp = 0
		resubmit.Transfers = append(resubmit.Transfers, y)
		resubmit.CreditShards = append(resubmit.CreditShards, row.CreditShard)
	}
	entries = append(entries, &Entry{Commands: []Command{resubmit}})
	for _, e := range entries {
		e.Timestamp = c.next()
		oa, ob := a.Apply(e), b.Apply(e)
		if !reflect.DeepEqual(oa, ob) {
			t.Fatalf("shard %d: outputs differ:\n%+v\n%+v", id, oa, ob)
		}
		if a.Hash() != b.Hash() {
			t.Fatalf("shard %d: hashes differ after the same entry", id)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		m := busySim(t, seed)
		for _, s := range m.shards[1:] {
			var buf bytes.Buffer
			n, err := s.WriteTo(&buf)
			if err != nil || n != int64(buf.Len()) {
				t.Fatalf("WriteTo: %d bytes, err %v; buffer %d", n, err, buf.Len())
			}
			encoded := bytes.Clone(buf.Bytes())
			r, err := Read(&buf, s.Archive())
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if r.ID() != s.ID() || r.Hash() != s.Hash() || r.ForgetBelow() != s.ForgetBelow() {
				t.Fatalf("seed %d shard %d: restored state differs", seed, s.id)
			}
			var again bytes.Buffer
			if _, err := r.WriteTo(&again); err != nil || !bytes.Equal(again.Bytes(), encoded) {
				t.Fatalf("seed %d shard %d: re-encoding differs (err %v)", seed, s.id, err)
			}
			if !reflect.DeepEqual(r.Totals(), s.Totals()) || !reflect.DeepEqual(r.Outbox(), s.Outbox()) {
				t.Fatalf("seed %d shard %d: totals or outbox differ", seed, s.id)
			}
			continueBoth(t, m, s.id, s, r)
		}
	}
}

// The encoding depends on the state only, not on how its events were batched
// into entries.
func TestSnapshotDependsOnStateOnly(t *testing.T) {
	var c1, c2 clock
	a, b := New(1, nil), New(1, nil)
	accounts := []transport.Account{acct("x", 1, 0), acct("y", 1, 0), acct("z", 1, 0)}
	c1.createAccounts(a, accounts...)
	for i := range accounts { // one entry each, same timestamps as the batch
		b.Apply(&Entry{Timestamp: c2.next() + uint64(i), Commands: []Command{{Kind: KindCreateAccounts, Accounts: accounts[i : i+1]}}})
		c2.now -= 1000
	}
	if a.Hash() != b.Hash() {
		t.Fatal("equal states hash differently")
	}
	c1.createTransfers(a, 0, xfer("t", "x", "y", 1))
	if a.Hash() == b.Hash() {
		t.Fatal("different states hash alike")
	}
}

func TestSnapshotReadRejectsDamage(t *testing.T) {
	m := busySim(t, 4)
	var buf bytes.Buffer
	if _, err := m.shards[2].WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	for _, n := range []int{0, 1, 3, len(full) / 3, len(full) / 2, len(full) - 1} {
		if _, err := Read(bytes.NewReader(full[:n]), nil); err == nil {
			t.Fatalf("a snapshot cut to %d of %d bytes was read", n, len(full))
		}
	}
	bad := bytes.Clone(full)
	bad[0] = 99 // the version: a positive fixint
	if _, err := Read(bytes.NewReader(bad), nil); err == nil {
		t.Fatal("a snapshot of an unknown version was read")
	}
}

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after -= len(p); w.after < 0 {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestSnapshotWriteErrorIsReturned(t *testing.T) {
	m := busySim(t, 5)
	if _, err := m.shards[1].WriteTo(&failingWriter{after: 10}); err == nil {
		t.Fatal("a failing writer went unnoticed")
	}
}

func TestCloneIsIsolated(t *testing.T) {
	m := busySim(t, 6)
	for _, s := range m.shards[1:] {
		clone := s.Clone()
		h := clone.Hash()
		if h != s.Hash() {
			t.Fatalf("shard %d: clone differs from its original", s.id)
		}
		// Drive the original on: credits, resolves, forgets, new transfers.
		continueBoth(t, m, s.id, s, s.Clone())
		for range 100 {
			m.randomStep()
		}
		m.drain()
		if clone.Hash() != h {
			t.Fatalf("shard %d: applying to the original changed its clone", s.id)
		}
		// And the other way round. A clone shares its original's archive
		// (it is only ever encoded); applied on its own it is another
		// history, so it gets its own copy.
		clone.archive = s.archive.(*MemArchive).Clone()
		orig := s.Hash()
		var c clock
		c.now = clone.last
		c.createAccounts(clone, acct("clone-only", 1, 0))
		for _, a := range clone.accounts {
			if a.Ledger == 1 && a.ID != "clone-only" && a.Flags&(transport.AccountClosed|transport.AccountDebitsMustNotExceedCredits) == 0 {
				c.createTransfers(clone, 0, xfer("clone-t", a.ID, "clone-only", 1))
				break
			}
		}
		if s.Hash() != orig {
			t.Fatalf("shard %d: applying to the clone changed the original", s.id)
		}
	}
}

// TestCloneEncodesWhileOriginalApplies is raftfsm's snapshot pattern: the
// clone is encoded on another goroutine while apply goes on. Run with -race.
func TestCloneEncodesWhileOriginalApplies(t *testing.T) {
	m := busySim(t, 7)
	s := m.shards[1]
	clone := s.Clone()
	want := clone.Hash()
	done := make(chan uint64)
	go func() {
		var h uint64
		for range 5 {
			h = clone.Hash()
			if _, err := clone.WriteTo(io.Discard); err != nil {
				panic(err)
			}
		}
		done <- h
	}()
	for range 200 {
		m.randomStep()
	}
	m.drain()
	if got := <-done; got != want {
		t.Fatal("the clone changed while it was encoded")
	}
}
