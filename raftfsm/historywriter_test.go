package raftfsm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/raftmux"
)

// crashChildEnv names the data directory of the child process that
// TestCrashBetweenApplyAndWriteReplaysTheSameHistory kills.
const crashChildEnv = "RAFTFSM_HISTORY_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

// historyGate holds the history store's writer before its next write while
// held (history.Options.WriteFault).
type historyGate struct {
	mu   sync.Mutex
	held bool // the test's goroutine's
}

func (g *historyGate) fault() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return nil
}

func (g *historyGate) hold() { g.mu.Lock(); g.held = true }

func (g *historyGate) release() {
	if g.held {
		g.held = false
		g.mu.Unlock()
	}
}

// openHistoryGroup opens a single-voter shard group in dir whose history
// store has the options given, and waits for it to lead.
func openHistoryGroup(t testing.TB, dir string, o history.Options) *testGroup {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	o.Logger = log
	mux, err := raftmux.Listen("127.0.0.1:0", nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := mux.Group(1)
	if err != nil {
		t.Fatal(err)
	}
	trans := raftmux.NewTransport(layer, log)
	store, err := history.Open(filepath.Join(dir, "history"), o)
	if err != nil {
		t.Fatal(err)
	}
	m := NewShardMachine(1, store)
	g, err := Open(GroupConfig{ID: 1, Dir: dir, NodeID: "n1", Transport: trans, Machine: m, Logger: log,
		Servers: []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: trans.LocalAddr()}}})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !g.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader") // hang guard
		}
	}
	if err := g.Raft().Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
	return &testGroup{g: g, m: m, mux: mux}
}

// createHistoryAccounts creates accounts that keep balance rows.
func createHistoryAccounts(t testing.TB, g *Group, ids ...string) {
	t.Helper()
	c := shard.Command{Kind: shard.KindCreateAccounts}
	for _, id := range ids {
		c.Accounts = append(c.Accounts, transport.Account{ID: id, Ledger: 1, Code: 1, Flags: transport.AccountHistory})
	}
	res, err := g.ProposeWait(t.Context(), encode(t, &c))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range res.(*shard.Output).Events[0] {
		if e.Code != transport.CodeOK {
			t.Fatalf("create account: %v", e.Code)
		}
	}
}

// Apply and the shard's reads see the history of entries applied but not
// yet written: an id used again is refused, lookups and the account
// queries find the transfer.
func TestApplyAndReadsSeeHistoryNotYetWritten(t *testing.T) {
	var gate historyGate
	tg := openHistoryGroup(t, t.TempDir(), history.Options{WriteFault: gate.fault})
	defer tg.close(t)
	defer gate.release()
	createHistoryAccounts(t, tg.g, "a", "b")
	if err := tg.m.History().Drain(); err != nil {
		t.Fatal(err)
	}
	gate.hold()
	if c := transfer(t, tg.g, "t1", "a", "b", 5); c != transport.CodeOK {
		t.Fatalf("t1: %v", c)
	}
	if c := transfer(t, tg.g, "t1", "a", "b", 5); c != transport.CodeExists {
		t.Fatalf("t1 again, its history not written: %v, want exists", c)
	}
	tg.m.Read(func(st *shard.State, _ uint64) {
		if got := st.LookupTransfers([]string{"t1"}); len(got) != 1 || got[0].Amount != 5 {
			t.Fatalf("lookup of t1: %+v", got)
		}
	})
	f := &transport.AccountFilter{AccountID: "a", Limit: 10}
	ts, err := tg.m.History().AccountTransfers(f, 1<<20)
	if err != nil || len(ts) != 1 || ts[0].ID != "t1" {
		t.Fatalf("a's transfers: %+v, %v", ts, err)
	}
	bs, err := tg.m.History().AccountBalances(f)
	if err != nil || len(bs) != 1 || bs[0].DebitsPosted != 5 {
		t.Fatalf("a's balances: %+v, %v", bs, err)
	}
	if d, err := tg.m.History().Durable(); err != nil || d != 0 {
		t.Fatalf("durable %d, %v", d, err)
	}
}

// A write of the history that fails stops the shard's apply, as a failed
// write inside apply did: the next entry panics (on Raft's FSM goroutine
// that stops the process), and no snapshot covers the entries unwritten,
// so the log that replays them stays.
func TestAFailedHistoryWriteStopsApply(t *testing.T) {
	var fail atomic.Bool
	var gate historyGate
	diskErr := errors.New("input/output error")
	store, err := history.Open(filepath.Join(t.TempDir(), "history"), history.Options{Logger: slog.New(slog.DiscardHandler),
		WriteFault: func() error {
			gate.fault()
			if fail.Load() {
				return diskErr
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := NewShardMachine(1, store)
	cmd := func(c *shard.Command) [][]byte { return [][]byte{encode(t, c)} }
	m.Apply(1, 100, cmd(&shard.Command{Kind: shard.KindCreateAccounts, Accounts: []transport.Account{{ID: "a", Ledger: 1, Code: 1}, {ID: "b", Ledger: 1, Code: 1}}}))
	if err := store.Drain(); err != nil {
		t.Fatal(err)
	}
	gate.hold()
	fail.Store(true)
	m.Apply(2, 200, cmd(&shard.Command{Kind: shard.KindCreateTransfers, CreditShards: []uint32{1},
		Transfers: []transport.Transfer{{ID: "t1", DebitAccountID: "a", CreditAccountID: "b", Amount: 7, Ledger: 1, Code: 1}}}))
	gate.release() // the write of entry 2 fails
	if err := store.Drain(); !errors.Is(err, diskErr) {
		t.Fatalf("drain: %v", err)
	}
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink cancelSink
	if err := snap.Persist(&sink); !errors.Is(err, diskErr) || !sink.cancelled || sink.Len() != 0 {
		t.Fatalf("snapshot over unwritten history: %v (cancelled %v, %d bytes)", err, sink.cancelled, sink.Len())
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "shard 1 log index 3") || !strings.Contains(fmt.Sprint(r), diskErr.Error()) {
			t.Fatalf("apply after the failed write: %v", r)
		}
	}()
	m.Apply(3, 300, cmd(&shard.Command{Kind: shard.KindExpire}))
	t.Fatal("apply went on after its history failed to be written")
}

// cancelSink is a snapshot sink that tells whether it was cancelled.
type cancelSink struct {
	memSink
	cancelled bool
}

func (s *cancelSink) Cancel() error { s.cancelled = true; return nil }

// Damage the writer meets goes the damage path: the group stops on this
// node.
func TestHistoryDamageFoundByTheWriterStopsTheGroup(t *testing.T) {
	var fail atomic.Bool
	tg := openHistoryGroup(t, t.TempDir(), history.Options{WriteFault: func() error {
		if fail.Load() {
			return fmt.Errorf("block checksum: %w", pebble.ErrCorruption)
		}
		return nil
	}})
	defer func() {
		_ = tg.g.Shutdown()
		tg.mux.Close()
		if err := tg.m.History().Close(); !errors.Is(err, history.ErrDamaged) {
			t.Errorf("close: %v", err)
		}
	}()
	createHistoryAccounts(t, tg.g, "a", "b")
	fail.Store(true)
	transfer(t, tg.g, "t1", "a", "b", 5)
	if err := tg.m.History().Drain(); !errors.Is(err, history.ErrDamaged) { // writes t1's rows
		t.Fatalf("drain: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); tg.g.Raft().State() != raft.Shutdown; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("group still %v after the writer met damage", tg.g.Raft().State()) // hang guard
		}
	}
	if err := tg.g.Damaged(); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Damaged() = %v", err)
	}
}

// crashTransfers are the transfers the child makes: the first third
// before its snapshot, the second written after it, the last applied (and
// acknowledged) while its history writer is held, then it is killed.
const crashTransfers = 60

// crashChild runs in the child process: a shard group in dir, transfers,
// a snapshot, more transfers whose history is never written, a snapshot
// that waits for it; it prints "acked" and waits to be killed.
func crashChild(dir string) {
	var held atomic.Bool
	t := &childT{}
	tg := openHistoryGroup(t, dir, history.Options{WriteFault: func() error {
		if held.Load() {
			select {} // until killed
		}
		return nil
	}})
	createHistoryAccounts(t, tg.g, "a", "b", "c")
	pay := func(from, to int) {
		for i := from; i < to; i++ {
			accounts := []string{"a", "b", "c"}
			if c := transfer(t, tg.g, "t"+strconv.Itoa(i), accounts[i%3], accounts[(i+1)%3], uint64(1+i)); c != transport.CodeOK {
				t.Fatalf("transfer %d: %v", i, c)
			}
		}
	}
	pay(0, crashTransfers/3)
	if err := tg.g.Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	pay(crashTransfers/3, 2*crashTransfers/3)
	if err := tg.m.History().Drain(); err != nil {
		t.Fatalf("drain: %v", err)
	}
	held.Store(true)
	pay(2*crashTransfers/3, crashTransfers)
	// A snapshot now must wait for the writer (Sync): one that did not
	// would let the restart skip the entries whose history is lost.
	snapshot := make(chan error, 1)
	go func() { snapshot <- tg.g.Raft().Snapshot().Error() }()
	select {
	case err := <-snapshot:
		fmt.Fprintf(os.Stderr, "a snapshot over unwritten history: %v\n", err)
	case <-time.After(time.Second):
	}
	fmt.Println("acked")
	select {}
}

// childT is the testing.TB of the child process: a failure exits it.
type childT struct{ testing.TB }

func (*childT) Helper() {}

func (*childT) Fatal(args ...any) { fmt.Fprintln(os.Stderr, args...); os.Exit(3) }

func (*childT) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(3)
}

func (*childT) TempDir() string { panic("no temporary directory in the child") }

func (*childT) Context() context.Context { return context.Background() }

// A process killed (SIGKILL) while the history of acknowledged entries is
// applied but not written restarts with the history the log alone gives:
// Raft replays those entries (no snapshot covers them), and the store ends
// byte for byte as the same log applied to an empty store.
func TestCrashBetweenApplyAndWriteReplaysTheSameHistory(t *testing.T) {
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), crashChildEnv+"="+dir)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	acked := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "acked" {
				acked <- true
				return
			}
		}
		acked <- false
	}()
	select {
	case ok := <-acked:
		if !ok {
			child.Wait()
			t.Fatal("the child exited before acknowledging its transfers")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the child acknowledged nothing") // hang guard
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()

	tg := openHistoryGroup(t, dir, history.Options{})
	tg.m.Read(func(st *shard.State, _ uint64) {
		ids := make([]string, crashTransfers)
		for i := range ids {
			ids[i] = "t" + strconv.Itoa(i)
		}
		if got := st.LookupTransfers(ids); len(got) != crashTransfers {
			t.Fatalf("%d of %d acknowledged transfers after the restart", len(got), crashTransfers)
		}
	})
	got := exportAll(t, tg.m.History())
	tg.close(t)

	// The same log, applied to an empty store as Raft applies it.
	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	first, _ := logs.FirstIndex()
	last, _ := logs.LastIndex()
	if first != 1 {
		t.Fatalf("the log starts at %d: compacted", first)
	}
	ref, err := history.Open(filepath.Join(t.TempDir(), "history"), history.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fsm{m: NewShardMachine(1, ref), group: 1, log: slog.New(slog.DiscardHandler)}
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			t.Fatal(err)
		}
		f.ApplyBatch([]*raft.Log{&l})
	}
	defer ref.Close()
	if want := exportAll(t, ref); !reflect.DeepEqual(got, want) {
		t.Fatalf("history after the crash: %d rows; the log applied afresh: %d rows, not the same", len(got), len(want))
	}
	if len(got) < 3*crashTransfers {
		t.Fatalf("%d rows of history", len(got))
	}
}

// exportAll reads every row of the store (the writer's included: Export
// waits for it).
func exportAll(t *testing.T, s *history.Store) []history.Row {
	t.Helper()
	rows, more, err := s.Export(nil, 1<<30)
	if err != nil || more {
		t.Fatalf("export: %v (more %v)", err, more)
	}
	return rows
}
