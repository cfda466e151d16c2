package raftfsm

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/raftmux"
)

// TestReplicaSentASnapshotCopiesTheHistory adds a replica to a group whose
// log was compacted behind a snapshot: Raft sends it the snapshot, which
// holds the state but not the history the compacted entries wrote. The
// replica copies the leader's history store before it restores (here
// in-process; a node does it over NATS, node/historycopy.go), and ends with
// the leader's state and history.
func TestReplicaSentASnapshotCopiesTheHistory(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	policy := SnapshotPolicy{Threshold: 1 << 30, Interval: time.Hour, TrailingLogs: 1}
	open := func(dir, id string, servers []raft.Server) (*Group, *ShardMachine, raft.ServerAddress) {
		mux, err := raftmux.Listen("127.0.0.1:0", nil, nil, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mux.Close() })
		layer, err := mux.Group(1)
		if err != nil {
			t.Fatal(err)
		}
		trans := raftmux.NewTransport(layer, log)
		store, err := history.Open(filepath.Join(dir, "history"), history.Options{Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		m := NewShardMachine(1, store)
		if servers != nil {
			servers[0].Address = trans.LocalAddr()
		}
		g, err := Open(GroupConfig{ID: 1, Dir: dir, NodeID: id, Transport: trans, Machine: m, Logger: log, Servers: servers, Snapshots: policy})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = g.Shutdown()
			_ = store.Close()
		})
		return g, m, trans.LocalAddr()
	}
	leader, lm, _ := open(t.TempDir(), "n1", []raft.Server{{Suffrage: raft.Voter, ID: "n1"}})
	for deadline := time.Now().Add(30 * time.Second); !leader.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader") // hang guard
		}
	}
	createAccounts(t, leader, "a", "b")
	for i := range 40 {
		if c := transfer(t, leader, fmt.Sprintf("t%d", i), "a", "b", uint64(1+i)); c != transport.CodeOK {
			t.Fatalf("transfer %d: %v", i, c)
		}
	}
	if err := leader.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	for i := 40; i < 50; i++ { // in the log only
		transfer(t, leader, fmt.Sprintf("t%d", i), "b", "a", 1)
	}

	follower, fm, addr := open(t.TempDir(), "n2", nil)
	copies := 0
	fm.SetFetch(func(applied uint64) error {
		copies++
		var after []byte
		for {
			rows, more, err := lm.History().Export(after, 64) // small pages: several
			if err != nil {
				return err
			}
			if err := fm.History().Import(rows); err != nil {
				return err
			}
			if !more {
				return nil
			}
			after = rows[len(rows)-1].Key
		}
	})
	if err := leader.Raft().AddVoter("n2", addr, 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	want, wantApplied := uint64(0), uint64(0)
	lm.Read(func(st *shard.State, a uint64) { want, wantApplied = st.Hash(), a })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var got, applied uint64
		fm.Read(func(st *shard.State, a uint64) { got, applied = st.Hash(), a })
		if applied >= wantApplied {
			if got != want {
				t.Fatalf("replica's state %016x at %d, leader's %016x at %d", got, applied, want, wantApplied)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica at %d, leader at %d", applied, wantApplied) // hang guard
		}
	}
	if copies != 1 {
		t.Fatalf("history copied %d times, want once (a snapshot was installed)", copies)
	}
	if follower.Raft().State() != raft.Follower {
		t.Fatalf("the new replica is %v", follower.Raft().State())
	}
	f := &transport.AccountFilter{AccountID: "a", Limit: 100}
	lt, err := lm.History().AccountTransfers(f, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ft, err := fm.History().AccountTransfers(f, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(lt) != 50 || !reflect.DeepEqual(lt, ft) {
		t.Fatalf("account a's history: leader %d rows, replica %d rows, equal %v", len(lt), len(ft), reflect.DeepEqual(lt, ft))
	}
	for _, id := range []string{"t0", "t39", "t45"} {
		if _, _, ok := fm.History().Transfer(id); !ok {
			t.Fatalf("%s missing from the replica's history", id)
		}
	}
}

// TestSnapshotWhoseHistoryCopyWasCutShortIsDropped: Raft persists a
// snapshot the leader sends before Restore copies the history; a crash in
// between leaves a snapshot the node cannot restore on its own. Opening the
// group drops it (the leader sends it again) instead of failing to start.
func TestSnapshotWhoseHistoryCopyWasCutShortIsDropped(t *testing.T) {
	src := t.TempDir()
	tg := openTestGroup(t, src)
	createAccounts(t, tg.g, "a", "b")
	transfer(t, tg.g, "t1", "a", "b", 5)
	if err := tg.g.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tg.close(t)

	// A node whose Raft holds that snapshot, with an empty history store.
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "snapshots"), os.DirFS(filepath.Join(src, "snapshots"))); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	mux, err := raftmux.Listen("127.0.0.1:0", nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	layer, err := mux.Group(1)
	if err != nil {
		t.Fatal(err)
	}
	store, err := history.Open(filepath.Join(dir, "history"), history.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := NewShardMachine(1, store)
	g, err := Open(GroupConfig{ID: 1, Dir: dir, NodeID: "n2", Transport: raftmux.NewTransport(layer, log), Machine: m, Logger: log})
	if err != nil {
		t.Fatalf("open with an uncovered snapshot: %v", err)
	}
	defer g.Shutdown()
	if left, _ := os.ReadDir(filepath.Join(dir, "snapshots")); len(left) != 0 {
		t.Fatalf("snapshots left: %v", left)
	}
	m.Read(func(st *shard.State, applied uint64) {
		if applied != 0 || len(st.LookupAccounts([]string{"a"})) != 0 {
			t.Fatalf("state restored from a dropped snapshot: applied %d", applied)
		}
	})
}

// TestRestoreRefusesASnapshotOlderThanTheState: Raft would rewind its
// applied index to an older snapshot a leader sent and then replay entries
// this replica has compacted away (hashicorp/raft#697, a panic). Restore
// refuses it and keeps the state.
func TestRestoreRefusesASnapshotOlderThanTheState(t *testing.T) {
	store, err := history.Open(filepath.Join(t.TempDir(), "history"), history.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := NewShardMachine(1, store)
	cmd := func(c *shard.Command) [][]byte { return [][]byte{encode(t, c)} }
	m.Apply(1, 100, cmd(&shard.Command{Kind: shard.KindCreateAccounts, Accounts: []transport.Account{{ID: "a", Ledger: 1, Code: 1}, {ID: "b", Ledger: 1, Code: 1}}}))
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var old memSink
	if err := snap.Persist(&old); err != nil {
		t.Fatal(err)
	}
	m.Apply(2, 200, cmd(&shard.Command{Kind: shard.KindCreateTransfers, CreditShards: []uint32{1},
		Transfers: []transport.Transfer{{ID: "t1", DebitAccountID: "a", CreditAccountID: "b", Amount: 7, Ledger: 1, Code: 1}}}))
	var want uint64
	m.Read(func(st *shard.State, _ uint64) { want = st.Hash() })
	if err := m.Restore(&old.Buffer); err == nil {
		t.Fatal("restored a snapshot at index 1 over a state at index 2")
	}
	m.Read(func(st *shard.State, applied uint64) {
		if applied != 2 || st.Hash() != want {
			t.Fatalf("state changed by a refused restore: applied %d", applied)
		}
	})
}
