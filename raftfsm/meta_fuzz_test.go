package raftfsm

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// fuzzSink holds a snapshot in memory.
type fuzzSink struct{ bytes.Buffer }

func (s *fuzzSink) ID() string    { return "fuzz" }
func (s *fuzzSink) Cancel() error { return nil }
func (s *fuzzSink) Close() error  { return nil }

func persistMeta(tb testing.TB, m *MetaMachine) []byte {
	tb.Helper()
	snap, err := m.Snapshot()
	if err != nil {
		tb.Fatal(err)
	}
	var sink fuzzSink
	if err := snap.Persist(&sink); err != nil {
		tb.Fatal(err)
	}
	return sink.Bytes()
}

// FuzzRestoreMeta restores the meta group from a snapshot, as a replica
// does from its disk or from the leader, and decodes the slot map its
// leader serves the routers (the same SlotMap). Restore never panics
// (msgpack/v5 allocated a slot list of whatever length a header declared);
// a map it takes is empty or holds every slot, each owned by a shard, and
// snapshots and restores to itself.
func FuzzRestoreMeta(f *testing.F) {
	initialised := &MetaMachine{}
	cmd, err := transport.Marshal(&MetaCommand{InitShards: 3})
	if err != nil {
		f.Fatal(err)
	}
	initialised.Apply(1, 0, [][]byte{cmd})
	f.Add(persistMeta(f, &MetaMachine{}))
	f.Add(persistMeta(f, initialised))
	f.Add([]byte{0x82, 0xa5, 'e', 'p', 'o', 'c', 'h', 0x01, 0xa5, 's', 'l', 'o', 't', 's', 0x92, 0x01, 0x02})
	// Regression in testdata/fuzz/FuzzRestoreMeta: a slot list declaring
	// 2^28 elements, for which msgpack/v5 allocated 2 GiB before it failed.
	f.Fuzz(func(t *testing.T, data []byte) {
		var wire SlotMap
		if transport.Unmarshal(data, &wire) == nil {
			if len(wire.Slots) > transport.BatchEventsMax {
				t.Fatalf("a slot map of %d slots decoded", len(wire.Slots))
			}
		}
		m := &MetaMachine{}
		if m.Restore(bytes.NewReader(data)) != nil {
			return
		}
		got := m.SlotMap()
		if len(got.Slots) != 0 && len(got.Slots) != transport.SlotCount || slices.Contains(got.Slots, 0) {
			t.Fatalf("restored a slot map of %d slots, shards %v", len(got.Slots), got.Shards())
		}
		if !slices.IsSorted(got.Shards()) {
			t.Fatalf("shards %v", got.Shards())
		}
		again := &MetaMachine{}
		if err := again.Restore(bytes.NewReader(persistMeta(t, m))); err != nil {
			t.Fatalf("restoring a restored map's snapshot: %v", err)
		}
		if back := again.SlotMap(); back.Epoch != got.Epoch || !slices.Equal(back.Slots, got.Slots) {
			t.Fatal("the snapshot of a restored map restores another map")
		}
	})
}
