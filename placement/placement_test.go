package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%d", i+1)
	}
	return out
}

func ids(n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(i + 1)
	}
	return out
}

// settle applies Next's moves until it has none, checking after every move
// that no shard has fewer voters than it should among the nodes alive
// (eligible or draining), and returns the placement and the moves made.
func settle(t *testing.T, p Placement, c Cluster) (Placement, int) {
	t.Helper()
	alive := append(slices.Clone(c.Nodes), c.Draining...)
	moves := 0
	for round := 0; ; round++ {
		ms := Next(p, c, nil)
		if len(ms) == 0 {
			return p, moves
		}
		if round > 1000 {
			t.Fatalf("no convergence after %d rounds: %v", round, p)
		}
		seen := map[uint32]bool{}
		for _, m := range ms {
			if seen[m.Shard] {
				t.Fatalf("two moves of shard %d in one plan: %v", m.Shard, ms)
			}
			seen[m.Shard] = true
			before := voters(p[m.Shard], alive)
			p = Apply(p, m)
			moves++
			if after := voters(p[m.Shard], alive); after < min(before, c.want()) {
				t.Fatalf("move %+v took shard %d from %d to %d voters (want %d)", m, m.Shard, before, after, c.want())
			}
		}
	}
}

func voters(held, alive []string) int {
	n := 0
	for _, h := range held {
		if slices.Contains(alive, h) {
			n++
		}
	}
	return n
}

// balanced checks the end state: every shard has want voters, all on
// eligible nodes, and node loads differ by at most 1.
func balanced(t *testing.T, p Placement, c Cluster) map[string]int {
	t.Helper()
	nodes := c.eligible()
	load := loads(p, nodes)
	for s, held := range p {
		if len(held) != c.want() {
			t.Fatalf("shard %d has %d voters, want %d: %v", s, len(held), c.want(), held)
		}
		for _, n := range held {
			if !slices.Contains(nodes, n) {
				t.Fatalf("shard %d keeps a replica on %s, not eligible", s, n)
			}
		}
		if len(slices.Compact(slices.Clone(held))) != len(held) {
			t.Fatalf("shard %d has two replicas on one node: %v", s, held)
		}
	}
	lo, hi := len(p)*c.Replicas, 0
	for _, n := range nodes {
		lo, hi = min(lo, load[n]), max(hi, load[n])
	}
	if hi-lo > 1 {
		t.Fatalf("loads %v differ by %d", load, hi-lo)
	}
	return load
}

func TestScaleOutAndInKeepsTheSpreadEven(t *testing.T) {
	c := Cluster{Nodes: names(3), Replicas: 3}
	p := Initial(nil, ids(6), c)
	balanced(t, p, c)
	// Two nodes join: 18 replicas over 5 nodes.
	c.Nodes = names(5)
	p, moves := settle(t, p, c)
	load := balanced(t, p, c)
	t.Logf("3 → 5 nodes: %d replica moves, loads %v", moves, load)
	if moves == 0 {
		t.Fatal("joining nodes received nothing")
	}
	// Two shards are added.
	p = Initial(p, ids(8), c)
	balanced(t, p, c)
	// node-5 and node-4 drain, then leave.
	c.Draining = []string{"node-4", "node-5"}
	p, _ = settle(t, p, c)
	load = balanced(t, p, c)
	if load["node-4"]+load["node-5"] != 0 {
		t.Fatalf("drained nodes hold replicas: %v", p)
	}
	c.Nodes, c.Draining = names(3), nil
	if ms := Next(p, c, nil); len(ms) != 0 {
		t.Fatalf("removing drained nodes moves replicas: %v", ms)
	}
}

func TestFewerNodesThanReplicas(t *testing.T) {
	c := Cluster{Nodes: names(1), Replicas: 3}
	p := Initial(nil, ids(2), c)
	balanced(t, p, c)
	c.Nodes = names(2)
	p, _ = settle(t, p, c)
	balanced(t, p, c)
	c.Nodes = names(4)
	p, _ = settle(t, p, c)
	balanced(t, p, c)
}

func TestALostNodeIsReplaced(t *testing.T) {
	c := Cluster{Nodes: names(4), Replicas: 3}
	p := Initial(nil, ids(4), c)
	c.Nodes = slices.DeleteFunc(names(4), func(n string) bool { return n == "node-2" })
	p, _ = settle(t, p, c)
	balanced(t, p, c)
}

func TestBusyShardsWait(t *testing.T) {
	c := Cluster{Nodes: names(3), Replicas: 3}
	p := Initial(nil, ids(3), c)
	c.Draining = []string{"node-1"}
	c.Nodes = names(4)
	ms := Next(p, c, func(s uint32) bool { return s == 2 })
	for _, m := range ms {
		if m.Shard == 2 {
			t.Fatalf("a busy shard was given a move: %v", ms)
		}
	}
	if len(ms) != 2 {
		t.Fatalf("want a move for each of shards 1 and 3: %v", ms)
	}
}

// Random clusters, joins, drains and losses: the plan always converges to an
// even spread without a shard ever losing a voter it needs.
func TestRandomMembershipChanges(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		all := names(9)
		c := Cluster{Nodes: all[:1+r.IntN(5)], Replicas: 1 + r.IntN(5)}
		p := Initial(nil, ids(1+r.IntN(12)), c)
		for range 6 {
			n := 1 + r.IntN(len(all))
			c.Nodes, c.Draining = slices.Clone(all[:n]), nil
			if r.IntN(2) == 0 && n > 1 {
				c.Draining = []string{all[r.IntN(n)]}
			}
			if r.IntN(3) == 0 {
				p = Initial(p, ids(len(p)+1+r.IntN(3)), c)
			}
			p, _ = settle(t, p, c)
			balanced(t, p, c)
		}
	}
}

func TestLeadershipsSpread(t *testing.T) {
	c := Cluster{Nodes: names(3), Replicas: 3}
	p := Initial(nil, ids(6), c)
	leaders := map[uint32]string{}
	for s := range p {
		leaders[s] = "node-1"
	}
	moves := Leaderships(p, leaders)
	for s, to := range moves {
		if !slices.Contains(p[s], to) {
			t.Fatalf("shard %d led by %s, which holds no replica", s, to)
		}
		leaders[s] = to
	}
	led := map[string]int{}
	for _, l := range leaders {
		led[l]++
	}
	if led["node-1"] != 2 || led["node-2"] != 2 || led["node-3"] != 2 {
		t.Fatalf("leaders %v", led)
	}
	if again := Leaderships(p, leaders); len(again) != 0 {
		t.Fatalf("an even spread moves leaders: %v", again)
	}
}

func TestMetaVoters(t *testing.T) {
	for _, tc := range []struct {
		current []string
		c       Cluster
		want    []string
	}{
		{nil, Cluster{Nodes: names(1)}, []string{"node-1"}},
		{nil, Cluster{Nodes: names(2)}, []string{"node-1"}},
		{[]string{"node-1", "node-2", "node-3"}, Cluster{Nodes: names(9)}, names(5)},
		{[]string{"node-7", "node-8", "node-9"}, Cluster{Nodes: names(9), Draining: []string{"node-8"}},
			[]string{"node-1", "node-2", "node-3", "node-7", "node-9"}},
		{names(5), Cluster{Nodes: names(4)}, []string{"node-1", "node-2", "node-3"}},
	} {
		if got := MetaVoters(tc.current, tc.c); !slices.Equal(got, tc.want) {
			t.Errorf("MetaVoters(%v, %+v) = %v, want %v", tc.current, tc.c, got, tc.want)
		}
	}
}

// An unready node (silent: a move to it would only wait) receives nothing,
// whether a shard lacks a voter, a draining node's replica is replaced or
// the spread is evened out; the others still receive theirs. It still
// counts towards the replication factor, so no shard loses a voter for it,
// and once it is ready again it receives its share.
func TestUnreadyNodesReceiveNothing(t *testing.T) {
	c := Cluster{Nodes: names(3), Replicas: 3}
	p := Initial(nil, ids(4), c)
	// node-4 and node-5 join; node-4 is silent.
	c.Nodes, c.Unready = names(5), []string{"node-4"}
	for round := 0; ; round++ {
		ms := Next(p, c, nil)
		if len(ms) == 0 {
			break
		}
		if round > 100 {
			t.Fatalf("no convergence: %v", p)
		}
		for _, m := range ms {
			if m.Add == "node-4" {
				t.Fatalf("a replica planned on an unready node: %+v", m)
			}
			p = Apply(p, m)
		}
	}
	load := loads(p, c.eligible())
	if load["node-4"] != 0 || load["node-5"] != 3 {
		t.Fatalf("loads %v: node-5 should have received its share, node-4 nothing", load)
	}
	// In three nodes with one unready, every shard keeps its 3 voters.
	small := Cluster{Nodes: names(3), Replicas: 3, Unready: []string{"node-3"}}
	if ms := Next(Initial(nil, ids(4), Cluster{Nodes: names(3), Replicas: 3}), small, nil); len(ms) != 0 {
		t.Fatalf("an unready node made shards lose voters: %v", ms)
	}
	// A draining node's replicas go to ready nodes only, or wait.
	drain := Cluster{Nodes: names(4), Replicas: 3, Draining: []string{"node-1"}, Unready: []string{"node-4"}}
	if ms := Next(Initial(nil, ids(2), Cluster{Nodes: names(3), Replicas: 3}), drain, nil); len(ms) != 0 {
		t.Fatalf("the only node to receive is unready, yet moves were planned: %v", ms)
	}
	// Ready again, node-4 receives its share.
	c.Unready = nil
	p, _ = settle(t, p, c)
	if load := balanced(t, p, c); load["node-4"] == 0 {
		t.Fatalf("node-4, ready again, received nothing: %v", load)
	}
}
