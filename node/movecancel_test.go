package node

import (
	"slices"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
)

// A move's next step, from its shard's configuration and what the meta
// leader knows of the added node: it is cancelled only while cancelling
// leaves the shard its voters of before the move, and finished once the
// node it replaces is out.
func TestMoveNextStep(t *testing.T) {
	mv := placement.Move{Shard: 1, Add: "d", Remove: "c"}
	before := members{Voters: []string{"a", "b", "c"}}
	nonvoter := members{Voters: []string{"a", "b", "c"}, Nonvoters: []string{"d"}}
	voter := members{Voters: []string{"a", "b", "c", "d"}}
	replaced := members{Voters: []string{"a", "b", "d"}}
	alive := addedNode{answers: true}
	silent := addedNode{silent: true}
	draining := addedNode{gone: "draining", answers: true}
	for _, tc := range []struct {
		name string
		m    placement.Move
		cur  members
		a    addedNode
		want moveStep
	}{
		{"catching up", mv, nonvoter, alive, stepWait},
		{"not added yet, not heard from this move", mv, before, addedNode{}, stepWait},
		{"answers but holds no seat", mv, before, alive, stepAdopt},
		{"promoted", mv, voter, alive, stepFinish},
		{"promoted, then silent", mv, voter, silent, stepFinish},
		{"replaced node out already", mv, replaced, draining, stepFinish},
		{"replaced node out already, silent", mv, replaced, silent, stepFinish},
		{"silent before it was added", mv, before, silent, stepCancel},
		{"silent as a nonvoter", mv, nonvoter, silent, stepCancel},
		{"draining as a nonvoter", mv, nonvoter, draining, stepCancel},
		{"draining as a voter, the replaced node still there", mv, voter, draining, stepCancel},
		{"forgotten", mv, before, addedNode{gone: "no longer registered"}, stepCancel},
		{"an added voter, nothing replaced, draining", placement.Move{Shard: 1, Add: "d"}, voter, draining, stepCancel},
		{"a removal only", placement.Move{Shard: 1, Remove: "c"}, before, addedNode{}, stepFinish},
	} {
		if got := nextStep(tc.m, tc.cur, tc.a); got != tc.want {
			t.Errorf("%s: step %d, want %d", tc.name, got, tc.want)
		}
	}
}

// A node is silent once it has answered no status round for the bound,
// counted from when the term first knew of it; an answer starts the count
// again.
func TestLivenessSilence(t *testing.T) {
	l := newLiveness(time.Minute)
	t0 := time.Now()
	if l.silent("a", t0) || l.silent("a", t0.Add(59*time.Second)) {
		t.Fatal("silent before the bound")
	}
	if !l.silent("a", t0.Add(time.Minute)) {
		t.Fatal("not silent after the bound")
	}
	// b is first known later: its own bound.
	if l.silent("b", t0.Add(time.Minute)) || !l.silent("b", t0.Add(2*time.Minute)) {
		t.Fatal("b's bound does not start when it is first known")
	}
	l.heard["a"] = t0.Add(90 * time.Second)
	if l.silent("a", t0.Add(2*time.Minute)) || !l.heardSince("a", t0) || l.heardSince("a", t0.Add(100*time.Second)) {
		t.Fatal("an answer does not count")
	}
	if l.every() != livenessEveryMax || newLiveness(4*time.Second).every() != 500*time.Millisecond {
		t.Fatal("status rounds are not several within the bound")
	}
}

// Unready nodes: the silent ones and those out of the meta configuration;
// a node that answers and holds a seat is ready, and an unknown meta
// configuration marks nobody.
func TestUnreadyNodes(t *testing.T) {
	st := raftfsm.MetaState{Nodes: []raftfsm.NodeRecord{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d", Draining: true}}}
	l := newLiveness(time.Minute)
	t0 := time.Now()
	unready(st, nil, l, t0) // the term knows of them from t0
	l.heard["a"], l.heard["b"], l.heard["d"] = t0.Add(time.Minute), t0.Add(time.Minute), t0.Add(time.Minute)
	meta := &members{Voters: []string{"a", "c"}, Nonvoters: []string{"d"}}
	if got := unready(st, meta, l, t0.Add(90*time.Second)); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("unready %v, want b (removed from the meta group) and c (silent)", got)
	}
	if got := unready(st, nil, l, t0.Add(90*time.Second)); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("unready %v without the meta configuration, want c", got)
	}
	for id, want := range map[string]string{"a": "", "b": "removed from the meta group", "d": "draining", "x": "no longer registered"} {
		if got := goneWhy(st, meta, id); got != want {
			t.Errorf("%s gone %q, want %q", id, got, want)
		}
	}
}
