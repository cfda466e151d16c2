package raftfsm

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

func applyMeta(t *testing.T, m *MetaMachine, cmds ...MetaCommand) {
	t.Helper()
	for _, c := range cmds {
		b, err := transport.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		m.Apply(1, 0, [][]byte{b})
	}
}

func restoreMeta(t *testing.T, snapshot []byte) *MetaMachine {
	t.Helper()
	var m MetaMachine
	if err := m.Restore(bytes.NewReader(snapshot)); err != nil {
		t.Fatal(err)
	}
	return &m
}

func TestMetaPlacesReplicasAndRecordsMoves(t *testing.T) {
	var m MetaMachine
	nodes := []NodeRecord{{ID: "n1", RaftAddr: "a1"}, {ID: "n2", RaftAddr: "a2"}, {ID: "n3", RaftAddr: "a3"}}
	applyMeta(t, &m, MetaCommand{InitShards: 4, Replicas: 2, Nodes: nodes})
	st := m.State()
	if st.Replicas != 2 || len(st.Nodes) != 3 || len(st.Placement) != 4 {
		t.Fatalf("initial state %+v", st)
	}
	for id, voters := range st.Placement {
		if len(voters) != 2 {
			t.Fatalf("shard %d on %v", id, voters)
		}
	}
	// A node joins and one drains; the moves of the plan are recorded and
	// done one by one, and a repeated or foreign end changes nothing.
	applyMeta(t, &m, MetaCommand{Register: &NodeRecord{ID: "n4", RaftAddr: "a4"}}, MetaCommand{Register: &NodeRecord{ID: "n4", RaftAddr: "a4b"}},
		MetaCommand{Drain: "n1"})
	st = m.State()
	if n, _ := st.Node("n4"); n.RaftAddr != "a4b" || len(st.Nodes) != 4 {
		t.Fatalf("registered twice: %+v", st.Nodes)
	}
	for round := 0; ; round++ {
		moves := placement.Next(st.Placement, st.Cluster(), func(s uint32) bool { _, ok := st.Moving[s]; return ok })
		if len(moves) == 0 {
			break
		}
		if round > 50 {
			t.Fatal("moves never end")
		}
		for _, mv := range moves {
			applyMeta(t, &m, MetaCommand{StartMove: &mv}, MetaCommand{StartMove: &placement.Move{Shard: mv.Shard, Add: "n9"}})
			if got := m.State().Moving[mv.Shard]; got != mv {
				t.Fatalf("moving %+v, want %+v", got, mv)
			}
			other := mv
			other.Add = "n9"
			applyMeta(t, &m, MetaCommand{EndMove: &other}, MetaCommand{EndMove: &mv}, MetaCommand{EndMove: &mv})
		}
		st = m.State()
	}
	if len(st.Moving) != 0 || st.holds("n1") {
		t.Fatalf("n1 drained, yet: moving %v, placement %v", st.Moving, st.Placement)
	}
	applyMeta(t, &m, MetaCommand{Forget: "n2"}, MetaCommand{Forget: "n1"})
	st = m.State()
	if _, ok := st.Node("n1"); ok {
		t.Fatal("a drained node was not forgotten")
	}
	if _, ok := st.Node("n2"); !ok {
		t.Fatal("a node holding replicas was forgotten")
	}
	// The snapshot restores the same state.
	back := restoreMeta(t, persistMeta(t, &m)).State()
	if back.Epoch != st.Epoch || !slices.Equal(back.Slots, st.Slots) || !slices.Equal(back.Nodes, st.Nodes) || len(back.Placement) != len(st.Placement) {
		t.Fatalf("restored %+v, want %+v", back, st)
	}
	for id, voters := range st.Placement {
		if !slices.Equal(back.Placement[id], voters) {
			t.Fatalf("shard %d restored on %v, was %v", id, back.Placement[id], voters)
		}
	}
}

// A snapshot of the release before placement, a bare slot map, restores as
// a cluster without placement: every node holds every shard.
func TestMetaSnapshotOfTheReleaseBeforePlacementRestores(t *testing.T) {
	slots := make([]uint32, transport.SlotCount)
	for i := range slots {
		slots[i] = uint32(i)%2 + 1
	}
	old, err := msgpack.Marshal(&SlotMap{Epoch: 1, Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	st := restoreMeta(t, old).State()
	if st.Epoch != 1 || !slices.Equal(st.Slots, slots) || st.Replicas != 0 || st.Placement != nil {
		t.Fatalf("restored %+v", st)
	}
	// And initialising without Replicas keeps that shape.
	var m MetaMachine
	applyMeta(t, &m, MetaCommand{InitShards: 2})
	if st := m.State(); st.Replicas != 0 || st.Placement != nil || len(st.Shards()) != 2 {
		t.Fatalf("init without replicas: %+v", st)
	}
}

func TestMetaSnapshotWithUnsortedNodesIsRefused(t *testing.T) {
	b, err := msgpack.Marshal(&MetaState{Nodes: []NodeRecord{{ID: "b"}, {ID: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	var m MetaMachine
	if err := m.Restore(bytes.NewReader(b)); err == nil {
		t.Fatal("unsorted nodes restored")
	}
}

// The cluster's internal encoding is set by a new cluster's init, raised
// alone, and never lowered; a second init does not touch it.
func TestMetaWireOnlyGoesUp(t *testing.T) {
	var m MetaMachine
	applyMeta(t, &m, MetaCommand{InitShards: 1})
	if w := m.State().Wire; w != 0 {
		t.Fatalf("an init without Wire: %d", w)
	}
	applyMeta(t, &m, MetaCommand{InitShards: 1, Wire: 2})
	if w := m.State().Wire; w != 0 {
		t.Fatalf("an init of an initialised map raised Wire to %d", w)
	}
	applyMeta(t, &m, MetaCommand{Wire: 2}, MetaCommand{Wire: 1})
	if w := m.State().Wire; w != 2 {
		t.Fatalf("raised to 2 then asked 1: %d", w)
	}
	var fresh MetaMachine
	applyMeta(t, &fresh, MetaCommand{InitShards: 2, Wire: 2})
	if back := restoreMeta(t, persistMeta(t, &fresh)).State(); back.Wire != 2 {
		t.Fatalf("a new cluster's Wire after a snapshot: %d", back.Wire)
	}
}

// A cancelled move leaves the placement as it was before the move and
// frees the shard for another. A cancel applies only to the move under
// way as recorded: repeated, of another move, of a shard not moving, or
// after the move ended, it changes nothing.
func TestMetaCancelMove(t *testing.T) {
	var m MetaMachine
	nodes := []NodeRecord{{ID: "n1", RaftAddr: "a1"}, {ID: "n2", RaftAddr: "a2"}, {ID: "n3", RaftAddr: "a3"}}
	applyMeta(t, &m, MetaCommand{InitShards: 2, Replicas: 3, Nodes: nodes}, MetaCommand{Register: &NodeRecord{ID: "n4", RaftAddr: "a4"}})
	before := m.State()
	mv := placement.Move{Shard: 1, Add: "n4", Remove: "n3"}
	other := placement.Move{Shard: 1, Add: "n5", Remove: "n3"}
	notMoving := placement.Move{Shard: 2, Add: "n4", Remove: "n1"}
	applyMeta(t, &m, MetaCommand{CancelMove: &notMoving}, MetaCommand{StartMove: &mv}, MetaCommand{CancelMove: &other})
	if got := m.State().Moving[1]; got != mv {
		t.Fatalf("a cancel of another move touched the move under way: moving %+v", m.State().Moving)
	}
	if len(m.State().Moving) != 1 {
		t.Fatalf("a cancel of a shard not moving recorded something: %+v", m.State().Moving)
	}
	applyMeta(t, &m, MetaCommand{CancelMove: &mv}, MetaCommand{CancelMove: &mv})
	st := m.State()
	if len(st.Moving) != 0 {
		t.Fatalf("cancelled, yet moving %+v", st.Moving)
	}
	for id, voters := range before.Placement {
		if !slices.Equal(st.Placement[id], voters) {
			t.Fatalf("shard %d on %v after a cancel, was %v", id, st.Placement[id], voters)
		}
	}
	if st.holds("n4") {
		t.Fatal("the node of a cancelled move still counts as holding a replica")
	}
	// An end of the cancelled move is ignored too: n4 never became a voter.
	applyMeta(t, &m, MetaCommand{EndMove: &mv})
	if slices.Contains(m.State().Placement[1], "n4") {
		t.Fatalf("the end of a cancelled move placed n4: %v", m.State().Placement[1])
	}
	// The shard is free: another move starts, and a cancel of the first
	// (a driver of an earlier term, late) leaves it alone.
	again := placement.Move{Shard: 1, Add: "n4", Remove: "n2"}
	applyMeta(t, &m, MetaCommand{StartMove: &again}, MetaCommand{CancelMove: &mv})
	if got := m.State().Moving[1]; got != again {
		t.Fatalf("moving %+v, want %+v", m.State().Moving, again)
	}
	// After the move ended, its cancel changes nothing.
	applyMeta(t, &m, MetaCommand{EndMove: &again}, MetaCommand{CancelMove: &again})
	st = m.State()
	if want := []string{"n1", "n3", "n4"}; len(st.Moving) != 0 || !slices.Equal(st.Placement[1], want) {
		t.Fatalf("after the end then a cancel: moving %+v, shard 1 on %v, want %v", st.Moving, st.Placement[1], want)
	}
	// A cancel survives a snapshot as any change does.
	applyMeta(t, &m, MetaCommand{StartMove: &notMoving}, MetaCommand{CancelMove: &notMoving})
	back := restoreMeta(t, persistMeta(t, &m)).State()
	if len(back.Moving) != 0 || !slices.Equal(back.Placement[2], before.Placement[2]) {
		t.Fatalf("restored moving %+v, shard 2 on %v", back.Moving, back.Placement[2])
	}
}
