package node

import (
	"testing"

	"github.com/hashicorp/raft"
)

func servers(ids ...string) []raft.Server {
	var out []raft.Server
	for _, id := range ids {
		out = append(out, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(id + ":7000")})
	}
	return out
}

// caughtUp is every node's answer, applied up to the leaders' index.
func caughtUp(groups []groupView, ids ...string) map[raft.ServerID]map[uint32]uint64 {
	out := map[raft.ServerID]map[uint32]uint64{}
	for _, id := range ids {
		a := map[uint32]uint64{}
		for _, g := range groups {
			a[g.id] = 1000
		}
		out[raft.ServerID(id)] = a
	}
	return out
}

func TestPickHandoff(t *testing.T) {
	nodes := servers("a", "b", "c")
	// a leads all three groups; b and c lead none.
	all := func() []groupView {
		var gs []groupView
		for id := uint32(0); id < 3; id++ {
			gs = append(gs, groupView{id: id, leader: "a", voters: servers("a", "b", "c"), applied: 1000})
		}
		return gs
	}
	type want struct {
		ok    bool
		group uint32
		to    raft.ServerID
	}
	cases := []struct {
		name    string
		nodes   []raft.Server // the cluster's voters, if not a, b and c
		self    raft.ServerID
		groups  func() []groupView
		applied func(gs []groupView) map[raft.ServerID]map[uint32]uint64
		want    want
	}{
		{"to the least loaded, lowest id", nil, "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a", "b", "c") },
			want{true, 2, "b"}},
		{"not a node that did not answer", nil, "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a", "c") },
			want{true, 2, "c"}},
		{"nobody answered", nil, "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a") },
			want{}},
		{"not a node behind on that group: another group", nil, "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 {
				a := caughtUp(gs, "a", "b", "c")
				a["b"][2] = 1000 - promoteLagMax - 1
				a["c"][2] = 0
				return a
			},
			want{true, 1, "b"}},
		{"within promoteLagMax is caught up", nil, "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 {
				a := caughtUp(gs, "a", "b", "c")
				a["b"][2] = 1000 - promoteLagMax
				return a
			},
			want{true, 2, "b"}},
		{"not a node that is no voter of the group", nil, "a",
			func() []groupView {
				gs := all()
				for i := range gs {
					gs[i].voters = servers("a", "c") // b was removed: it is rejoining
				}
				return gs
			},
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a", "b", "c") },
			want{true, 2, "c"}},
		{"not a group the node has not opened", nil, "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 {
				a := caughtUp(gs, "a", "b", "c")
				delete(a["b"], 2)
				delete(a["c"], 2)
				return a
			},
			want{true, 1, "b"}},
		{"within its share: nothing", nil, "a",
			func() []groupView {
				gs := all()
				gs[1].leader, gs[2].leader = "b", "c"
				return gs
			},
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a", "b", "c") },
			want{}},
		{"no better spread: nothing", nil, "a",
			func() []groupView {
				// 4 groups on 3 nodes: share 2; a leads 2, b 2: a has no surplus.
				gs := append(all(), groupView{id: 3, leader: "b"})
				gs[2].leader = "b"
				return gs
			},
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a", "b", "c") },
			want{}},
		{"a lone node keeps its groups", servers("a"), "a", all,
			func(gs []groupView) map[raft.ServerID]map[uint32]uint64 { return caughtUp(gs, "a") },
			want{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gs := c.groups()
			n := nodes
			if c.nodes != nil {
				n = c.nodes
			}
			i, to, ok := pickHandoff(c.self, n, gs, c.applied(gs))
			if ok != c.want.ok {
				t.Fatalf("ok = %v, want %v (group %d to %s)", ok, c.want.ok, i, to.ID)
			}
			if !ok {
				return
			}
			if gs[i].id != c.want.group || to.ID != c.want.to {
				t.Fatalf("group %d to %s, want group %d to %s", gs[i].id, to.ID, c.want.group, c.want.to)
			}
			if to.Address != raft.ServerAddress(string(to.ID)+":7000") {
				t.Fatalf("address %q: not the group's", to.Address)
			}
		})
	}
}
