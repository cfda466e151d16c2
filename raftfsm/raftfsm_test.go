package raftfsm

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/raftmux"
	"go.etcd.io/bbolt"
)

func TestEntryEnvelopeRoundTrip(t *testing.T) {
	for _, cmds := range [][][]byte{nil, {{}}, {[]byte("a"), bytes.Repeat([]byte("b"), 300), {}}} {
		ts, got, err := decodeEntry(encodeEntry(42, cmds))
		if err != nil || ts != 42 || len(got) != len(cmds) {
			t.Fatalf("round trip of %d commands: ts %d, %d commands, %v", len(cmds), ts, len(got), err)
		}
		for i := range cmds {
			if !bytes.Equal(got[i], cmds[i]) {
				t.Fatalf("command %d: %q != %q", i, got[i], cmds[i])
			}
		}
	}
	valid := encodeEntry(7, [][]byte{[]byte("xyz"), []byte("w")})
	for n := range len(valid) {
		if _, _, err := decodeEntry(valid[:n]); err == nil {
			t.Fatalf("truncated entry of %d/%d bytes decoded", n, len(valid))
		}
	}
}

// FuzzDecodeEntry feeds arbitrary bytes to the decoders of what a group
// reads back from disk: the entry envelope, a whole stored entry as bbolt
// holds it (raft.Log in msgpack, its seal, its envelope or configuration),
// and a checksummed Raft value. None may panic; a decoded envelope decodes
// again to the same thing. The seeds are entries of every kind, sealed and
// not, and every entry of the fixture written by the release without
// checksums.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(1, [][]byte{[]byte("cmd")}))
	f.Add([]byte{envelopeVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	for _, l := range []*raft.Log{
		{Index: 5, Term: 2, Type: raft.LogCommand, Data: encodeEntry(3, [][]byte{[]byte("a"), {}})},
		{Index: 6, Term: 2, Type: raft.LogNoop},
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(raft.Configuration{
			Servers: []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: "127.0.0.1:1"}}})},
	} {
		f.Add(storedEntry(f, l)) // as the release without checksums stored it
		if err := sealEntry(l); err != nil {
			f.Fatal(err)
		}
		f.Add(storedEntry(f, l))
	}
	f.Add(encodeStable(keyTerm, []byte{0, 0, 0, 0, 0, 0, 0, 7}))
	f.Add(storeMarker{format: storeFormat, checkedFrom: 9}.encode())
	addFixtureEntries(f, "testdata/v1/data/shard-1/raft.db")
	f.Fuzz(func(t *testing.T, data []byte) {
		facts := &boltFacts{terms: map[uint64]uint64{}, configs: map[uint64]raft.Configuration{}}
		facts.checkStoredEntry(5, data, map[uint64]bool{5: true})
		facts.checkedFrom = 1
		facts.checkStoredEntry(5, data, nil)
		_, _ = decodeStable(keyTerm, data)
		_, _ = decodeMarker(data)
		ts, cmds, err := decodeEntry(data)
		if err != nil {
			return
		}
		if again := encodeEntry(ts, cmds); !bytes.Equal(again, data) {
			// Varints have one canonical form only when minimal; a
			// decoded entry must at least decode to the same thing again.
			ts2, cmds2, err := decodeEntry(again)
			if err != nil || ts2 != ts || len(cmds2) != len(cmds) {
				t.Fatalf("re-encoded entry differs: %v", err)
			}
		}
	})
}

// storedEntry is l as raft-boltdb stores it.
func storedEntry(t testing.TB, l *raft.Log) []byte {
	var b []byte
	if err := codec.NewEncoderBytes(&b, &codec.MsgpackHandle{}).Encode(l); err != nil {
		t.Fatal(err)
	}
	return b
}

// addFixtureEntries seeds the corpus with every stored entry of a raft.db.
func addFixtureEntries(f *testing.F, path string) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketLogs).ForEach(func(_, v []byte) error {
			f.Add(bytes.Clone(v))
			return nil
		})
	})
}

// testGroup is a single-voter group with a real mux and bbolt files.
type testGroup struct {
	g   *Group
	m   *ShardMachine
	mux *raftmux.Mux
}

func openTestGroup(t testing.TB, dir string) *testGroup {
	t.Helper()
	tg, err := tryOpenTestGroup(t, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// tryOpenTestGroup opens the group in dir (salvaging it if asked) and waits
// for it to lead; it returns Open's error.
func tryOpenTestGroup(t testing.TB, dir string, salvage bool) (*testGroup, error) {
	t.Helper()
	return tryOpenShardGroup(t, dir, 1, "n1", salvage)
}

// tryOpenShardGroup is tryOpenTestGroup for shard id on node node.
func tryOpenShardGroup(t testing.TB, dir string, id uint32, node string, salvage bool) (*testGroup, error) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	mux, err := raftmux.Listen("127.0.0.1:0", nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := mux.Group(id)
	if err != nil {
		t.Fatal(err)
	}
	trans := raftmux.NewTransport(layer, log)
	store, err := history.Open(filepath.Join(dir, "history"), history.Options{Logger: log, Salvage: salvage})
	if err != nil {
		mux.Close()
		return nil, err
	}
	m := NewShardMachine(id, store)
	g, err := Open(GroupConfig{
		ID: id, Dir: dir, NodeID: node, Transport: trans, Machine: m, Logger: log, Salvage: salvage,
		// The address changes across restarts (port 0); a single voter
		// does not dial itself, so the bootstrap address does not matter.
		Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(node), Address: trans.LocalAddr()}},
	})
	if err != nil {
		mux.Close()
		store.Close()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second) // hang guard
	for !g.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := g.Raft().Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
	return &testGroup{g: g, m: m, mux: mux}, nil
}

func (tg *testGroup) close(t testing.TB) {
	t.Helper()
	if err := tg.g.Shutdown(); err != nil {
		t.Fatal(err)
	}
	tg.mux.Close()
	if err := tg.m.History().Close(); err != nil {
		t.Fatal(err)
	}
}

func (tg *testGroup) hash() (h uint64, applied uint64) {
	tg.m.Read(func(st *shard.State, a uint64) { h, applied = st.Hash(), a })
	return h, applied
}

func encode(t testing.TB, c *shard.Command) []byte {
	t.Helper()
	b, err := msgpack.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func createAccounts(t testing.TB, g *Group, ids ...string) {
	t.Helper()
	c := shard.Command{Kind: shard.KindCreateAccounts}
	for _, id := range ids {
		c.Accounts = append(c.Accounts, transport.Account{ID: id, Ledger: 1, Code: 1})
	}
	res, err := g.ProposeWait(context.Background(), encode(t, &c))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range res.(*shard.Output).Events[0] {
		if e.Code != transport.CodeOK {
			t.Fatalf("create account: %v", e.Code)
		}
	}
}

func transfer(t testing.TB, g *Group, id, from, to string, amount uint64) transport.Code {
	t.Helper()
	c := shard.Command{Kind: shard.KindCreateTransfers, Transfers: []transport.Transfer{
		{ID: id, DebitAccountID: from, CreditAccountID: to, Amount: amount, Ledger: 1, Code: 1}}, CreditShards: []uint32{1}}
	res, err := g.ProposeWait(context.Background(), encode(t, &c))
	if err != nil {
		t.Fatal(err)
	}
	return res.(*shard.Output).Events[0][0].Code
}

func TestGroupRestartRecoversStateFromSnapshotAndLog(t *testing.T) {
	dir := t.TempDir()
	tg := openTestGroup(t, dir)
	createAccounts(t, tg.g, "a", "b")
	for i := range 50 {
		if c := transfer(t, tg.g, fmt.Sprintf("t%d", i), "a", "b", 1); c != transport.CodeOK {
			t.Fatalf("transfer %d: %v", i, c)
		}
	}
	if err := tg.g.Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for i := 50; i < 80; i++ { // after the snapshot: only in the log
		transfer(t, tg.g, fmt.Sprintf("t%d", i), "b", "a", 1)
	}
	want, appliedBefore := tg.hash()
	tg.close(t)

	tg = openTestGroup(t, dir)
	defer tg.close(t)
	got, applied := tg.hash()
	if got != want {
		t.Fatalf("state after restart %016x, before %016x (applied index %d)", got, want, applied)
	}
	if applied < appliedBefore {
		t.Fatalf("applied index %d after restart, %d before", applied, appliedBefore)
	}
	if c := transfer(t, tg.g, "t3", "a", "b", 1); c != transport.CodeExists {
		t.Fatalf("an id applied before the restart: %v, want exists", c)
	}
}

func TestActorBatchesQueuedCommandsIntoFewerEntries(t *testing.T) {
	tg := openTestGroup(t, t.TempDir())
	defer tg.close(t)
	createAccounts(t, tg.g, "a", "b")
	before := tg.g.Raft().LastIndex()
	const proposals = 2000
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[transport.Code]int{}
	for i := range proposals {
		c := shard.Command{Kind: shard.KindCreateTransfers, Transfers: []transport.Transfer{
			{ID: fmt.Sprintf("t%d", i), DebitAccountID: "a", CreditAccountID: "b", Amount: 1, Ledger: 1, Code: 1}}, CreditShards: []uint32{1}}
		b := encode(t, &c)
		wg.Add(1)
		for {
			err := tg.g.Propose(b, func(res any, err error) {
				defer wg.Done()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("proposal failed: %v", err)
					return
				}
				codes[res.(*shard.Output).Events[0][0].Code]++
			})
			if err == nil {
				break
			}
			if err != ErrBusy {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond) // the mailbox is bounded: wait for room
		}
	}
	wg.Wait()
	if codes[transport.CodeOK] != proposals {
		t.Fatalf("results: %v", codes)
	}
	entries := tg.g.Raft().LastIndex() - before
	if entries >= proposals {
		t.Fatalf("%d proposals took %d entries: the actor did not batch", proposals, entries)
	}
	t.Logf("%d proposals in %d entries", proposals, entries)
	var a transport.Account
	tg.m.Read(func(st *shard.State, _ uint64) { a = st.LookupAccounts([]string{"a"})[0] })
	if a.DebitsPosted != proposals {
		t.Fatalf("a.debits_posted = %d", a.DebitsPosted)
	}
}

func TestProposeOnFollowerOrStoppedGroupFails(t *testing.T) {
	tg := openTestGroup(t, t.TempDir())
	tg.close(t)
	if err := tg.g.Propose([]byte{}, func(any, error) {}); err == nil {
		t.Fatal("propose on a stopped group succeeded")
	}
}

func TestMetaMachineInitialisesOnceAndSnapshots(t *testing.T) {
	var m MetaMachine
	cmd, _ := msgpack.Marshal(&MetaCommand{InitShards: 3})
	m.Apply(1, 0, [][]byte{cmd})
	first := m.SlotMap()
	again, _ := msgpack.Marshal(&MetaCommand{InitShards: 5})
	m.Apply(2, 0, [][]byte{again})
	if got := m.SlotMap(); got.Epoch != first.Epoch || len(got.Shards()) != 3 {
		t.Fatalf("second init changed the map: epoch %d, shards %v", got.Epoch, got.Shards())
	}
	if ids := first.Shards(); len(ids) != 3 || ids[0] != 1 || ids[2] != 3 || len(first.Slots) != transport.SlotCount {
		t.Fatalf("shards %v, %d slots", ids, len(first.Slots))
	}
	snap, _ := m.Snapshot()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	var restored MetaMachine
	if err := restored.Restore(bytes.NewReader(sink.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got := restored.SlotMap(); got.Epoch != first.Epoch || !slices.Equal(got.Slots, first.Slots) {
		t.Fatal("restored slot map differs")
	}
}

type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }
