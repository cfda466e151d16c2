// Package placement decides which nodes hold each shard's replicas and
// lead each shard, as pure functions of the cluster's membership: the meta
// group records a Placement, and its leader asks Next for the replica moves
// to make, one at a time per shard (add the new replica as a nonvoter, let it
// catch up, promote it, then remove the one it replaces: CockroachDB's and
// TiKV's order, so a shard never has fewer voters than it should).
//
// Everything here is deterministic: shards and nodes are taken in sorted
// order and ties are broken by name, so every meta replica that computes a
// plan from the same state computes the same plan.
package placement

import (
	"cmp"
	"maps"
	"slices"
)

// Placement maps each shard to the nodes that hold one of its voters.
type Placement map[uint32][]string

// Move is one replica move of one shard: Add (if set) joins the shard's
// group and becomes a voter first; Remove (if set) leaves it after.
type Move struct {
	Shard  uint32
	Add    string
	Remove string
}

// Cluster is what a plan is made from.
type Cluster struct {
	// Nodes that may hold replicas, and Draining ones that must end up
	// holding none (ledgerctl nodes drain). A draining node is alive: its
	// replicas count until their replacements are voters.
	Nodes    []string
	Draining []string
	// Replicas is the replication factor (--replicas): each shard has this
	// many voters, or one per node while the cluster has fewer nodes.
	Replicas int
	// Unready nodes receive no new replica for now (the meta leader has
	// not heard from them for a while): a move to one would only wait for
	// it. They still count towards the replication factor, and the
	// replicas they hold stay. Read by Next only.
	Unready []string
}

// eligible returns the nodes that may receive replicas, sorted.
func (c Cluster) eligible() []string {
	out := slices.DeleteFunc(slices.Clone(c.Nodes), func(n string) bool { return slices.Contains(c.Draining, n) })
	slices.Sort(out)
	return slices.Compact(out)
}

// want is how many voters each shard should have.
func (c Cluster) want() int { return min(c.Replicas, len(c.eligible())) }

// targets returns the nodes that may receive a replica now: the eligible
// ones that are not unready.
func (c Cluster) targets() []string {
	return slices.DeleteFunc(c.eligible(), func(n string) bool { return slices.Contains(c.Unready, n) })
}

// Initial places new shards on the eligible nodes so that every node holds
// as many replicas as any other, ±1, counting the replicas p already
// places (p may be nil). It never moves an existing replica.
func Initial(p Placement, shards []uint32, c Cluster) Placement {
	out := maps.Clone(p)
	if out == nil {
		out = Placement{}
	}
	nodes := c.eligible()
	load := loads(out, nodes)
	for _, s := range sorted(shards) {
		if _, ok := out[s]; ok {
			continue
		}
		var replicas []string
		for range c.want() {
			n := leastLoaded(nodes, load, replicas)
			replicas = append(replicas, n)
			load[n]++
		}
		slices.Sort(replicas)
		out[s] = replicas
	}
	return out
}

// Next returns the moves to start now: at most one per shard, none for a
// shard that busy says is moving. In order of need:
//   - a replica on a draining or unknown node is replaced (or, if the shard
//     has more voters than it should, removed);
//   - a shard with too few voters gets one, on the least loaded node;
//   - a shard with too many loses one, from the most loaded node;
//   - while one node holds 2 or more replicas more than another, a replica
//     moves from the most to the least loaded (one move per plan, so that
//     loads are recounted from what really moved).
//
// No move adds a replica to an unready node.
func Next(p Placement, c Cluster, busy func(shard uint32) bool) []Move {
	nodes := c.targets()
	load := loads(p, c.eligible())
	want := c.want()
	var moves []Move
	moving := map[uint32]bool{}
	plan := func(m Move) {
		moves = append(moves, m)
		moving[m.Shard] = true
		if m.Add != "" {
			load[m.Add]++
		}
		if m.Remove != "" {
			load[m.Remove]--
		}
	}
	shards := sorted(slices.Collect(maps.Keys(p)))
	free := func(s uint32) bool { return !moving[s] && (busy == nil || !busy(s)) }
	for _, s := range shards {
		if !free(s) {
			continue
		}
		held := p[s]
		if gone := replaceable(held, c); gone != "" {
			if len(held) > want {
				plan(Move{Shard: s, Remove: gone})
			} else if n := leastLoaded(nodes, load, held); n != "" {
				plan(Move{Shard: s, Add: n, Remove: gone})
			}
			continue
		}
		switch {
		case len(held) < want:
			if n := leastLoaded(nodes, load, held); n != "" {
				plan(Move{Shard: s, Add: n})
			}
		case len(held) > want:
			plan(Move{Shard: s, Remove: mostLoaded(held, load)})
		}
	}
	if len(moves) > 0 {
		return moves
	}
	// Balance: one move from the most to the least loaded node.
	for _, s := range shards {
		if !free(s) {
			continue
		}
		from := mostLoaded(p[s], load)
		to := leastLoaded(nodes, load, p[s])
		if from != "" && to != "" && load[from]-load[to] >= 2 {
			return []Move{{Shard: s, Add: to, Remove: from}}
		}
	}
	return nil
}

// Apply returns p after m has completed.
func Apply(p Placement, m Move) Placement {
	out := maps.Clone(p)
	held := slices.Clone(out[m.Shard])
	if m.Add != "" && !slices.Contains(held, m.Add) {
		held = append(held, m.Add)
	}
	if m.Remove != "" {
		held = slices.DeleteFunc(held, func(n string) bool { return n == m.Remove })
	}
	slices.Sort(held)
	out[m.Shard] = held
	return out
}

// Leaderships returns the leadership transfers (shard → new leader) that
// spread leaders so that every node leads as many shards as any other, ±1,
// among the shards' own replicas; one transfer per shard. leaders maps a
// shard to its current leader ("" or absent: none, left alone).
func Leaderships(p Placement, leaders map[uint32]string) map[uint32]string {
	led := map[string]int{}
	for _, held := range p {
		for _, n := range held {
			led[n] += 0
		}
	}
	for _, l := range leaders {
		if l != "" {
			led[l]++
		}
	}
	out := map[uint32]string{}
	for changed := true; changed; {
		changed = false
		for _, s := range sorted(slices.Collect(maps.Keys(p))) {
			cur := leaders[s]
			if to, ok := out[s]; ok {
				cur = to
			}
			if cur == "" {
				continue
			}
			to := leastLoaded(p[s], led, []string{cur})
			if to != "" && led[cur]-led[to] >= 2 {
				led[cur]--
				led[to]++
				out[s] = to
				changed = true
			}
		}
	}
	return out
}

// MetaVotersMax: the meta group runs on at most 5 nodes; more would slow
// every change of the slot map and placement for no added safety.
const MetaVotersMax = 5

// MetaVoters returns the meta group's voters: the current ones that are
// still eligible, then the first eligible others by name, up to
// MetaVotersMax and to an odd number (an even one tolerates no more
// failures than the odd one below it).
func MetaVoters(current []string, c Cluster) []string {
	nodes := c.eligible()
	var out []string
	for _, n := range sorted(current) {
		if slices.Contains(nodes, n) && len(out) < MetaVotersMax {
			out = append(out, n)
		}
	}
	for _, n := range nodes {
		if len(out) == MetaVotersMax {
			break
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) > 1 && len(out)%2 == 0 {
		out = out[:len(out)-1]
	}
	slices.Sort(out)
	return out
}

func loads(p Placement, nodes []string) map[string]int {
	load := make(map[string]int, len(nodes))
	for _, n := range nodes {
		load[n] = 0
	}
	for _, held := range p {
		for _, n := range held {
			load[n]++
		}
	}
	return load
}

// leastLoaded returns the node of nodes, not in except, with the smallest
// load (the first by name among equals), or "".
func leastLoaded(nodes []string, load map[string]int, except []string) string {
	best := ""
	for _, n := range sorted(nodes) {
		if slices.Contains(except, n) {
			continue
		}
		if best == "" || load[n] < load[best] {
			best = n
		}
	}
	return best
}

// mostLoaded returns the node of nodes with the largest load (the last by
// name among equals, so that leastLoaded and mostLoaded never pick the same
// node of two equals), or "".
func mostLoaded(nodes []string, load map[string]int) string {
	best := ""
	for _, n := range sorted(nodes) {
		if best == "" || load[n] >= load[best] {
			best = n
		}
	}
	return best
}

// replaceable returns the replica of held to replace first: one on a node
// that is gone (neither a node nor draining), else one on a draining node,
// or "".
func replaceable(held []string, c Cluster) string {
	draining := ""
	for _, n := range sorted(held) {
		switch {
		case slices.Contains(c.Draining, n):
			if draining == "" {
				draining = n
			}
		case !slices.Contains(c.Nodes, n):
			return n
		}
	}
	return draining
}

func sorted[T cmp.Ordered](xs []T) []T {
	out := slices.Clone(xs)
	slices.Sort(out)
	return out
}
