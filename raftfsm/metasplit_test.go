package raftfsm

import (
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/placement"
)

// splitAll grows the cluster to want shards, applying each split NextSplit
// plans as the meta leader would, and returns the state.
func splitAll(t *testing.T, m *MetaMachine, want uint32) MetaState {
	t.Helper()
	applyMeta(t, m, MetaCommand{Grow: want})
	for range ShardsMax {
		st := m.State()
		sp, ok := NextSplit(&st)
		if !ok {
			return st
		}
		applyMeta(t, m, MetaCommand{Split: &sp}, MetaCommand{Split: &sp}, MetaCommand{EndSplit: &sp}, MetaCommand{EndSplit: &sp})
		if got := m.State(); got.Epoch != sp.Epoch || got.Splitting != nil || got.SplitFrom[sp.Child] != sp.Parent {
			t.Fatalf("after split %+v: %+v", sp, got)
		}
	}
	t.Fatal("splits never end")
	return MetaState{}
}

func slotCounts(st *MetaState) map[uint32]int {
	n := map[uint32]int{}
	for _, id := range st.Slots {
		n[id]++
	}
	return n
}

// TestMetaSplitsUntilTheShardsWanted: from one shard to four, each split
// halving the largest shard; the new shards are placed on their parents'
// voters; the state survives its snapshot.
func TestMetaSplitsUntilTheShardsWanted(t *testing.T) {
	var m MetaMachine
	nodes := []NodeRecord{{ID: "n1", RaftAddr: "a1"}, {ID: "n2", RaftAddr: "a2"}, {ID: "n3", RaftAddr: "a3"}}
	applyMeta(t, &m, MetaCommand{InitShards: 1, Replicas: 3, Nodes: nodes})
	st := splitAll(t, &m, 4)
	if got := slotCounts(&st); len(got) != 4 || got[1] != 1024 || got[2] != 1024 || got[3] != 1024 || got[4] != 1024 {
		t.Fatalf("slots per shard %v", got)
	}
	for id := uint32(1); id <= 4; id++ {
		if !slices.Equal(st.Placement[id], []string{"n1", "n2", "n3"}) {
			t.Fatalf("shard %d placed on %v", id, st.Placement[id])
		}
	}
	if st.Epoch != 4 || st.ShardsWanted != 4 {
		t.Fatalf("epoch %d, wanted %d", st.Epoch, st.ShardsWanted)
	}
	var sink memSink
	snap, _ := m.Snapshot()
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if r := restoreMeta(t, sink.Bytes()).State(); !slices.Equal(r.Slots, st.Slots) || r.SplitFrom[4] != st.SplitFrom[4] || r.ShardsWanted != 4 {
		t.Fatalf("restored %+v", r)
	}
	// Three shards to four: the largest splits.
	var m3 MetaMachine
	applyMeta(t, &m3, MetaCommand{InitShards: 3, Replicas: 3, Nodes: nodes})
	st = splitAll(t, &m3, 4)
	if got := slotCounts(&st); len(got) != 4 || got[1] != 683 || got[4] != 683 || got[2] != 1365 {
		t.Fatalf("slots per shard %v", got)
	}
	// Grow never lowers, and is bounded.
	applyMeta(t, &m3, MetaCommand{Grow: 2}, MetaCommand{Grow: 1 << 20})
	if st := m3.State(); st.ShardsWanted != ShardsMax {
		t.Fatalf("wanted %d", st.ShardsWanted)
	}
}

// TestMetaSplitRefusals: a split that is not the next epoch, names a slot
// its parent does not own, all of them, an existing shard, or a shard
// moving a replica is not recorded; nor is an end that does not match; and
// no replica of a splitting shard starts moving.
func TestMetaSplitRefusals(t *testing.T) {
	var m MetaMachine
	nodes := []NodeRecord{{ID: "n1", RaftAddr: "a1"}, {ID: "n2", RaftAddr: "a2"}}
	applyMeta(t, &m, MetaCommand{InitShards: 2, Replicas: 1, Nodes: nodes})
	st := m.State()
	var mine []uint16 // shard 1's slots
	for slot, id := range st.Slots {
		if id == 1 {
			mine = append(mine, uint16(slot))
		}
	}
	good := Split{Parent: 1, Child: 3, Slots: mine[:10], Epoch: st.Epoch + 1}
	for _, bad := range []Split{
		{Parent: 1, Child: 3, Slots: mine[:10], Epoch: st.Epoch},
		{Parent: 1, Child: 3, Slots: []uint16{mine[0], mine[0] + 1}, Epoch: st.Epoch + 1}, // slot i+1 is shard 2's
		{Parent: 1, Child: 3, Slots: mine, Epoch: st.Epoch + 1},
		{Parent: 1, Child: 2, Slots: mine[:10], Epoch: st.Epoch + 1},
		{Parent: 1, Child: 3, Slots: []uint16{mine[1], mine[0]}, Epoch: st.Epoch + 1},
		{Parent: 5, Child: 3, Slots: mine[:10], Epoch: st.Epoch + 1},
	} {
		applyMeta(t, &m, MetaCommand{Split: &bad})
		if m.State().Splitting != nil {
			t.Fatalf("split %+v recorded", bad)
		}
	}
	move := placement.Move{Shard: 1, Add: "n2", Remove: st.Placement[1][0]}
	applyMeta(t, &m, MetaCommand{StartMove: &move})
	applyMeta(t, &m, MetaCommand{Split: &good})
	if m.State().Splitting != nil {
		t.Fatal("a split of a shard moving a replica was recorded")
	}
	applyMeta(t, &m, MetaCommand{CancelMove: &move}, MetaCommand{Split: &good})
	if m.State().Splitting == nil {
		t.Fatal("a valid split was not recorded")
	}
	applyMeta(t, &m, MetaCommand{StartMove: &move})
	if _, moving := m.State().Moving[1]; moving {
		t.Fatal("a replica of a splitting shard started moving")
	}
	other := good.clone()
	other.Slots = mine[:9]
	applyMeta(t, &m, MetaCommand{EndSplit: &other})
	if st := m.State(); st.Splitting == nil || st.Slots[mine[0]] != 1 {
		t.Fatal("an end that is not the split's was applied")
	}
	applyMeta(t, &m, MetaCommand{EndSplit: &good})
	if st := m.State(); st.Splitting != nil || st.Slots[mine[0]] != 3 || st.Slots[mine[10]] != 1 || st.Epoch != good.Epoch {
		t.Fatalf("after the split: %+v", st)
	}
}
