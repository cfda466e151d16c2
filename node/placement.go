package node

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// Following the placement. In a cluster that places replicas (MetaState
// Replicas > 0), a node holds only the shard groups the meta group places
// on it: those whose voters include it, and those a replica move is adding
// to it. Every node watches the meta state (followPlacement): it opens a
// group placed on it (joining it, for a move: VoteGate, a nonvoter first,
// promoted once caught up, as a node that lost its data does), and closes,
// then deletes, a group that is no longer placed on it. The meta leader
// records a move done (EndMove) only once the node is out of the group's
// configuration (mover.go), so the node never deletes what a quorum may
// still count. A cluster with Replicas 0 (created before placement) keeps
// every shard on every node.

// followEvery is how often a node compares the groups it holds with the
// placement: a move waits for it once on the node added, once on the node
// removed.
const followEvery = 200 * time.Millisecond

// placedHere returns the shards this node must hold: every shard with
// Replicas 0, else those placed on it or being added to it, sorted.
func (n *Node) placedHere(st raftfsm.MetaState) []uint32 {
	if st.Replicas == 0 {
		return st.Shards()
	}
	var ids []uint32
	for id, voters := range st.Placement {
		m, moving := st.Moving[id]
		if slices.Contains(voters, n.cfg.NodeID) || moving && m.Add == n.cfg.NodeID {
			ids = append(ids, id)
		}
	}
	if child, ok := n.splitWritten(&st); ok {
		ids = append(ids, child)
	}
	slices.Sort(ids)
	return ids
}

// addedHere reports whether a replica move is adding this node to shard id:
// its group, if new here, joins rather than bootstraps.
func (n *Node) addedHere(id uint32) bool {
	if id == metaGroupID {
		return false
	}
	st := n.metaM.State()
	m, ok := st.Moving[id]
	return st.Replicas > 0 && ok && m.Add == n.cfg.NodeID
}

// bootstrapServers is the configuration group id bootstraps with, if its
// directory is new and it does not join: the meta group's initial one, or
// a shard's placed voters (with Replicas 0, every node: the meta group's).
func (n *Node) bootstrapServers(id uint32) []raft.Server {
	st := n.metaM.State()
	if id == metaGroupID || st.Replicas == 0 {
		return n.servers
	}
	if splitChild(&st, id) {
		return nil // started by the split, or sent a snapshot by its leader
	}
	var out []raft.Server
	for _, v := range st.Placement[id] {
		if rec, ok := st.Node(v); ok {
			out = append(out, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(rec.ID), Address: raft.ServerAddress(rec.RaftAddr)})
		}
	}
	return out
}

// followPlacement opens the groups placed on this node and closes those
// placed elsewhere, until bg ends. It counts among the watchers, and so
// do the openings it starts, so that Close waits for them.
func (n *Node) followPlacement(bg context.Context) {
	defer n.watchers.Done()
	t := time.NewTicker(followEvery)
	defer t.Stop()
	opening := map[uint32]bool{}
	opened := make(chan uint32)
	for {
		select {
		case <-bg.Done():
			return
		case id := <-opened:
			delete(opening, id)
			continue
		case <-t.C:
		case <-n.kick:
		}
		st := n.metaM.State()
		transport.SetWireV2(st.Wire >= 2)
		if st.Replicas == 0 {
			continue
		}
		want, held := n.placedHere(st), n.heldIDs()
		for _, id := range want {
			if slices.Contains(held, id) || opening[id] {
				continue
			}
			opening[id] = true
			n.watchers.Add(1)
			go func() {
				defer n.watchers.Done()
				n.openPlaced(bg, id)
				select {
				case opened <- id:
				case <-bg.Done():
				}
			}()
		}
		for _, id := range held {
			if !slices.Contains(want, id) && !opening[id] {
				n.leave(id)
			}
		}
		n.dropStaleCopies(st, want, opening)
		n.shedLeaderships(st)
	}
}

// dropStaleCopies deletes the directories of shards the placement puts on
// other nodes that this node neither holds nor opens: a copy left by a
// replica move cancelled while the node was down, which no later move
// would use whole (a move joins afresh). A shard the meta state does not
// place yet (a split's child being written) is left alone.
func (n *Node) dropStaleCopies(st raftfsm.MetaState, want []uint32, opening map[uint32]bool) {
	entries, err := os.ReadDir(n.cfg.DataDir)
	if err != nil {
		return
	}
	held := n.heldIDs()
	for _, e := range entries {
		id64, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), "shard-"), 10, 32)
		id := uint32(id64)
		if err != nil || !e.IsDir() || e.Name() != groupDir(id) || st.Placement[id] == nil ||
			slices.Contains(want, id) || slices.Contains(held, id) || opening[id] {
			continue
		}
		dir := filepath.Join(n.cfg.DataDir, e.Name())
		if err := os.RemoveAll(dir); err != nil {
			n.log.Warn("delete a stale copy of a shard placed elsewhere", "shard", id, "dir", dir, "err", err)
			continue
		}
		n.log.Info("deleted a stale copy of a shard placed elsewhere", "shard", id)
	}
}

// kickPlacement makes followPlacement look at the placement now.
func (n *Node) kickPlacement() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// openPlaced opens shard id, placed on this node while it runs, and
// watches it for damage. A failure is logged and tried again on the next
// round.
func (n *Node) openPlaced(bg context.Context, id uint32) {
	n.addID(id)
	start := time.Now()
	if err := n.openOrRepair(bg, bg, id); err != nil {
		n.dropID(id)
		if bg.Err() == nil {
			n.log.Warn("open a shard placed on this node", "shard", id, "err", err)
		}
		return
	}
	n.log.Info("opened a shard placed on this node", "shard", id, "took", time.Since(start).Round(time.Millisecond))
	n.watchers.Add(1)
	go n.watch(bg, id)
}

// leave closes shard id, no longer placed on this node, and deletes its
// directory: the meta group records a move done only once this node is
// out of the group's configuration.
func (n *Node) leave(id uint32) {
	if g := n.member(id); g != nil {
		if err := n.closeMember(id, g); err != nil {
			n.log.Warn("close a shard moved off this node", "shard", id, "err", err)
		}
	}
	n.dropID(id)
	dir := filepath.Join(n.cfg.DataDir, groupDir(id))
	if err := os.RemoveAll(dir); err != nil {
		n.log.Warn("delete a shard moved off this node", "shard", id, "dir", dir, "err", err)
		return
	}
	n.log.Info("left a shard moved off this node", "shard", id)
}

// shedLeaderships hands on every leadership this node should not hold: of
// every group while it drains, and of a shard a move removes it from (its
// leader would refuse to remove itself).
func (n *Node) shedLeaderships(st raftfsm.MetaState) {
	self := n.cfg.NodeID
	rec, _ := st.Node(self)
	for _, g := range n.groups() {
		if !g.IsLeader() {
			continue
		}
		m, moving := st.Moving[g.ID()]
		if !rec.Draining && !(moving && m.Remove == self && g.ID() != metaGroupID) {
			continue
		}
		to, ok := handoffTarget(g.Raft(), st, m)
		if !ok {
			continue
		}
		n.log.Info("handing a leadership off this node", "group", g.ID(), "to", to.ID, "draining", rec.Draining)
		if err := g.Raft().LeadershipTransferToServer(to.ID, to.Address).Error(); err != nil {
			n.log.Debug("leadership transfer", "group", g.ID(), "err", err)
		}
	}
}

// handoffTarget picks the voter of r's group to lead it instead of this
// node: one that neither drains nor leaves the group (m), first by id.
func handoffTarget(r *raft.Raft, st raftfsm.MetaState, m placement.Move) (raft.Server, bool) {
	f := r.GetConfiguration()
	if f.Error() != nil {
		return raft.Server{}, false
	}
	_, self := r.LeaderWithID()
	for _, s := range voters(f.Configuration()) {
		rec, _ := st.Node(string(s.ID))
		if s.ID != self && !rec.Draining && string(s.ID) != m.Remove {
			return s, true
		}
	}
	return raft.Server{}, false
}

// draining returns the nodes the meta state marks draining.
func draining(st raftfsm.MetaState) []string {
	return st.Cluster().Draining
}

// MetaState returns a copy of the meta group's state as this node holds
// it: the slot map, the nodes, the placement and the moves under way.
func (n *Node) MetaState() raftfsm.MetaState { return n.metaM.State() }
