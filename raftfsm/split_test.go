package raftfsm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/raftmux"
)

// TestSplitStartsTheNewShardsGroup splits a running shard group: the
// replica writes the new group's directory from the split's entry, and
// the new group opens from it with no bootstrap, elects its voter, holds
// the accounts and the history of the slots that left, serves them, and
// keeps what it applied across a restart. The parent refuses those
// accounts from the split on.
func TestSplitStartsTheNewShardsGroup(t *testing.T) {
	parent := openTestGroup(t, t.TempDir())
	defer parent.close(t)
	leaving := []string{"m1", "m2"}
	var slots shard.SlotSet
	for _, id := range leaving {
		slots.Add(transport.Slot(id))
	}
	stay := []string{}
	for i := 0; len(stay) < 2; i++ {
		if id := fmt.Sprintf("k%d", i); !slots.Has(transport.Slot(id)) {
			stay = append(stay, id)
		}
	}
	createAccounts(t, parent.g, append(stay, leaving...)...)
	for i := range 20 {
		if c := transfer(t, parent.g, fmt.Sprintf("t%d", i), stay[0], leaving[i%2], 10); c != transport.CodeOK {
			t.Fatalf("transfer %d: %v", i, c)
		}
	}
	if c := transfer(t, parent.g, "out", leaving[0], stay[1], 3); c != transport.CodeOK {
		t.Fatalf("transfer out: %v", c)
	}
	childDir := filepath.Join(t.TempDir(), "shard-2")
	wrote := make(chan error, 1)
	parent.m.SetSplits(func(r *shard.SplitResult, store *history.Store) {
		wrote <- WriteGenesis(childDir, r, store)
	})
	all := make([]uint16, transport.SlotCount)
	for i := range all {
		all[i] = uint16(i)
	}
	// A single voter never dials itself: its address is not used.
	addr := "127.0.0.1:1"
	split := shard.Command{Kind: shard.KindSplit, Slots: &shard.SlotCommand{Epoch: 2, Slots: slots.Slots(), Owned: all, To: 2,
		Voters: []shard.Voter{{ID: "n1", Addr: addr}}}}
	res, err := parent.g.ProposeWait(context.Background(), encode(t, &split))
	if err != nil {
		t.Fatal(err)
	}
	if r := res.(*shard.Output).Split; r == nil || r.Refused != "" {
		t.Fatalf("split: %+v", r)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(childDir + ".split"); !os.IsNotExist(err) {
		t.Fatalf("the temporary directory is left: %v", err)
	}
	after := shard.Command{Kind: shard.KindCreateTransfers, Transfers: []transport.Transfer{
		{ID: "after", DebitAccountID: stay[0], CreditAccountID: leaving[0], Amount: 1, Ledger: 1, Code: 1}}, CreditShards: []uint32{1}}
	res, err = parent.g.ProposeWait(context.Background(), encode(t, &after))
	if err != nil {
		t.Fatal(err)
	}
	if out := res.(*shard.Output); out.Moved[0].Epoch != 2 || out.Events[0] != nil {
		t.Fatalf("the parent, given a transfer to an account that left: %+v", out)
	}

	parent.m.Read(func(st *shard.State, _ uint64) {
		if ts := st.LookupTransfers([]string{"out", "t3"}); len(ts) != 1 || ts[0].ID != "t3" {
			t.Fatalf("the parent's lookup of out and t3: %+v", ts)
		}
	})
	child := openChild(t, childDir)
	check := func(g *Group, m *ShardMachine) {
		t.Helper()
		m.Read(func(st *shard.State, _ uint64) {
			as := st.LookupAccounts(leaving)
			if len(as) != 2 || as[0].CreditsPosted+as[1].CreditsPosted < 200 {
				t.Fatalf("the child's accounts: %+v", as)
			}
			// The child answers for the transfers debited on its
			// accounts, from the history it started with.
			if ts := st.LookupTransfers([]string{"out", "t3"}); len(ts) != 1 || ts[0].ID != "out" || ts[0].Amount != 3 {
				t.Fatalf("the child's lookup of out and t3: %+v", ts)
			}
		})
	}
	check(child.g, child.m)
	// The child serves its accounts: a transfer between them.
	c := shard.Command{Kind: shard.KindCreateTransfers, Transfers: []transport.Transfer{
		{ID: "on-child", DebitAccountID: leaving[0], CreditAccountID: leaving[1], Amount: 5, Ledger: 1, Code: 1}}, CreditShards: []uint32{2}}
	out, err := child.g.ProposeWait(context.Background(), encode(t, &c))
	if err != nil {
		t.Fatal(err)
	}
	if got := out.(*shard.Output).Events[0][0].Code; got != transport.CodeOK {
		t.Fatalf("transfer on the child: %v", got)
	}
	hash, applied := child.hash()
	child.close(t)
	child = openChild(t, childDir)
	defer child.close(t)
	if h, a := child.hash(); h != hash || a != applied {
		t.Fatalf("restarted child at %d (hash %x), was at %d (%x)", a, h, applied, hash)
	}
	check(child.g, child.m)
}

// openChild opens shard 2's group from dir, with no configuration of its
// own, and waits for it to lead.
func openChild(t *testing.T, dir string) *testGroup {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	mux, err := raftmux.Listen("127.0.0.1:0", nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := mux.Group(2)
	if err != nil {
		t.Fatal(err)
	}
	store, err := history.Open(filepath.Join(dir, "history"), history.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m := NewShardMachine(2, store)
	g, err := Open(GroupConfig{ID: 2, Dir: dir, NodeID: "n1", Transport: raftmux.NewTransport(layer, log), Machine: m, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !g.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the child elects no leader") // hang guard
		}
	}
	if err := g.Raft().Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
	return &testGroup{g: g, m: m, mux: mux}
}

// TestGenesisRefusesAStoreAheadOfTheSplit: a replica whose history store
// holds rows of the parent's later entries (restarted from an older
// snapshot, or copied from a peer that was ahead) writes no directory for
// the child: those rows would be its history on this replica alone.
func TestGenesisRefusesAStoreAheadOfTheSplit(t *testing.T) {
	st := shard.New(1, shard.NewMemArchive())
	st.Apply(&shard.Entry{Timestamp: 100, Commands: []shard.Command{{Kind: shard.KindCreateAccounts,
		Accounts: []transport.Account{{ID: "m1", Ledger: 1, Code: 1}, {ID: "k1", Ledger: 1, Code: 1}}}}})
	var leaving shard.SlotSet
	leaving.Add(transport.Slot("m1"))
	if leaving.Has(transport.Slot("k1")) {
		t.Fatal("pick other ids")
	}
	all := make([]uint16, transport.SlotCount)
	for i := range all {
		all[i] = uint16(i)
	}
	out := st.Apply(&shard.Entry{Timestamp: 200, Commands: []shard.Command{{Kind: shard.KindSplit,
		Slots: &shard.SlotCommand{Epoch: 2, Slots: leaving.Slots(), Owned: all, To: 2, Voters: []shard.Voter{{ID: "n1", Addr: "127.0.0.1:1"}}}}}})
	if out.Split == nil || out.Split.Child == nil {
		t.Fatalf("split: %+v", out.Split)
	}
	store, err := history.Open(t.TempDir(), history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	store.Begin()
	store.PutBalance("k1", &transport.Balance{Timestamp: out.Split.Child.LastTimestamp() + 1})
	if err := store.Commit(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "shard-2")
	if err := WriteGenesis(dir, out.Split, store); err == nil {
		t.Fatal("a genesis written from a store ahead of the split")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the child's directory exists: %v", err)
	}
}

// TestRestoreOfAnOlderSnapshotAsksForANewer: a snapshot older than the
// state applied is refused (it would rewind the state), and the machine
// says so through SetStale, so that the replica can ask its leader for a
// newer one.
func TestRestoreOfAnOlderSnapshotAsksForANewer(t *testing.T) {
	store, err := history.Open(t.TempDir(), history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := NewShardMachine(1, store)
	create := encode(t, &shard.Command{Kind: shard.KindCreateAccounts, Accounts: []transport.Account{{ID: "a", Ledger: 1, Code: 1}}})
	m.Apply(1, 100, [][]byte{create})
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	m.Apply(2, 200, [][]byte{create})
	asked := 0
	m.SetStale(func() { asked++ })
	if err := m.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err == nil || asked != 1 {
		t.Fatalf("restore of an older snapshot: %v, asked %d times", err, asked)
	}
}
