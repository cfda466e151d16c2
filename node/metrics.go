package node

import (
	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/shard"
)

// GroupStats is one Raft group of this node as its own Raft sees it: what
// /metrics exports and /readyz judges. Reading it takes no Raft round trip
// and, for a shard, only the machine's read lock.
type GroupStats struct {
	ID uint32 // 0: the meta group (IsMeta); shards from 1
	// Open is false while the group is closed here to be repaired
	// (repair.go), or once the node closes; the fields below are then
	// zero.
	Open  bool
	State raft.RaftState
	// Leader is the node id of the leader this node knows ("": none).
	Leader string
	// Voter: this node is a voter of the group's latest configuration (a
	// nonvoter is joining: catching up before it is promoted).
	Voter bool
	Term  uint64
	// LastIndex, CommitIndex, AppliedIndex: Raft's own (applied: handed
	// to the state machine).
	LastIndex, CommitIndex, AppliedIndex uint64
	// Damaged is the storage damage that stopped the group here, if any.
	Damaged error
	// Shard is the shard's machine, nil for the meta group.
	Shard *ShardStats
	// Meta is the meta state as applied on this node, for the meta group.
	Meta *MetaStats
}

// MetaStats is the meta state's slot map and splits.
type MetaStats struct {
	Epoch, Shards, ShardsWanted uint64
	Splitting, Moving           uint64 // splits and replica moves under way
}

// IsMeta reports whether g is the meta group.
func (g *GroupStats) IsMeta() bool { return g.ID == metaGroupID }

// ShardStats is a shard's state machine as applied on this node.
type ShardStats struct {
	Accounts, Transfers     uint64
	OutboxDepth, InboxDepth uint64
	Batches                 raftfsm.ApplyBatches
}

// GroupStats returns every group placed on this node, the meta group
// first, then the shards in the order they were opened.
func (n *Node) GroupStats() []GroupStats {
	n.mu.Lock()
	ids := n.ids
	shards := make([]*shardServer, len(ids))
	for i, id := range ids {
		shards[i] = n.shards[id] // nil while repaired
	}
	n.mu.Unlock()
	out := make([]GroupStats, 0, 1+len(ids))
	meta := n.groupStats(metaGroupID, n.metaGroup())
	if meta.Open {
		st := n.metaM.State()
		meta.Meta = &MetaStats{Epoch: st.Epoch, Shards: uint64(len(st.Shards())), ShardsWanted: uint64(st.ShardsWanted), Moving: uint64(len(st.Moving))}
		if st.Splitting != nil {
			meta.Meta.Splitting = 1
		}
	}
	out = append(out, meta)
	for i, s := range shards {
		if s == nil {
			out = append(out, GroupStats{ID: ids[i]})
			continue
		}
		st := n.groupStats(s.id, s.g)
		st.Shard = shardStats(s.m)
		out = append(out, st)
	}
	return out
}

func (n *Node) groupStats(id uint32, g *raftfsm.Group) GroupStats {
	if g == nil {
		return GroupStats{ID: id}
	}
	r := g.Raft()
	_, leader := r.LeaderWithID()
	st := GroupStats{
		ID: id, Open: true, State: r.State(), Leader: string(leader), Term: r.CurrentTerm(),
		LastIndex: r.LastIndex(), CommitIndex: r.CommitIndex(), AppliedIndex: r.AppliedIndex(),
		Damaged: g.Damaged(),
	}
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == n.cfg.NodeID {
				st.Voter = s.Suffrage == raft.Voter
			}
		}
	}
	return st
}

func shardStats(m *raftfsm.ShardMachine) *ShardStats {
	st := &ShardStats{Batches: m.ApplyBatches()}
	m.Read(func(state *shard.State, _ uint64) {
		a, t, o, i := state.Counts()
		st.Accounts, st.Transfers, st.OutboxDepth, st.InboxDepth = uint64(a), uint64(t), uint64(o), uint64(i)
	})
	return st
}
