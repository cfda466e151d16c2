package node

import (
	"testing"

	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
)

// Next plans from the placement the moves under way will leave: a fourth
// node receiving two replicas is not given a third and a fourth (which
// balancing would move back), and the plan after those moves end agrees.
func TestPlanCountsMovesUnderWay(t *testing.T) {
	st := raftfsm.MetaState{
		Replicas: 3,
		Nodes:    []raftfsm.NodeRecord{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}},
		Placement: placement.Placement{
			1: {"a", "b", "c"}, 2: {"a", "b", "c"}, 3: {"a", "b", "c"}, 4: {"a", "b", "c"},
		},
		Moving: map[uint32]placement.Move{
			1: {Shard: 1, Add: "d", Remove: "c"},
			2: {Shard: 2, Add: "d", Remove: "b"},
		},
	}
	busy := func(s uint32) bool { _, ok := st.Moving[s]; return ok }
	moves := placement.Next(projected(st), st.Cluster(), busy)
	if len(moves) != 1 || moves[0].Add != "d" || moves[0].Remove != "a" {
		t.Fatalf("with 2 moves to d under way, want one more move a → d, got %+v", moves)
	}
	// With that third move under way, d will hold 3 of 12, as every other
	// node: nothing more to plan.
	st.Moving[moves[0].Shard] = moves[0]
	if again := placement.Next(projected(st), st.Cluster(), busy); len(again) != 0 {
		t.Fatalf("the spread will be even once the moves end, yet Next plans %+v", again)
	}
	// Planned from the recorded placement, d looks empty: a 4th replica
	// would go to it, to be moved back later.
	if naive := placement.Next(st.Placement, st.Cluster(), busy); len(naive) != 1 || naive[0].Add != "d" {
		t.Fatalf("the recorded placement should send a 4th replica to d, got %+v", naive)
	}
}
