package node

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/auth"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// The meta state for operators (ledgerctl shards, ledgerctl status): the
// meta leader answers nodeops.MetaSubject for its term with its state (the
// slot map's epoch and counts, the nodes, the placement, the moves under
// way) and, when asked, each shard group's configuration from its leader.
// It only reads: like a drain, it answers an operator alone, since the
// placement tells which machines hold which accounts' shards.

// metaMembersParallel bounds the shard leaders the meta leader asks at
// once for their configuration: an operator's read must not flood NATS in
// a cluster of many shards.
const metaMembersParallel = 16

// metaMembersTimeout bounds one shard leader's answer: a shard without a
// leader is reported as such rather than holding the whole answer.
const metaMembersTimeout = 2 * time.Second

// serveMetaView subscribes the meta leader g to nodeops.MetaSubject and
// returns what ends it (a failure is logged: the term goes on without it).
func (n *Node) serveMetaView(g *raftfsm.Group) func() {
	sub, err := n.nc.QueueSubscribe(nodeops.MetaSubject(n.subjects), "meta", func(msg *nats.Msg) {
		go n.metaViewRequest(msg, g)
	})
	if err != nil {
		n.log.Error("subscribe the meta view subject", "err", err)
		return func() {}
	}
	return func() { _ = sub.Unsubscribe() }
}

// metaViewRequest checks the requester as the drain does, decodes the
// request and answers.
func (n *Node) metaViewRequest(msg *nats.Msg, g *raftfsm.Group) {
	var req nodeops.MetaRequest
	var v nodeops.Meta
	switch {
	case n.cfg.Operator != nil && !n.cfg.Operator(msg.Header.Get(auth.RequestInfoHeader)):
		v.Error = "unauthorized: the cluster's placement is read by operators"
	case len(msg.Data) > 0 && transport.Unmarshal(msg.Data, &req) != nil:
		v.Error = "bad request: want a meta request"
	default:
		ctx, cancel := context.WithTimeout(context.Background(), operatorRequestMax)
		v = n.metaView(ctx, g, req)
		cancel()
	}
	if b, err := transport.Marshal(&v); err == nil {
		_ = msg.Respond(b)
	}
}

// metaView is the meta state as an operator reads it.
func (n *Node) metaView(ctx context.Context, g *raftfsm.Group, req nodeops.MetaRequest) nodeops.Meta {
	st := n.metaM.State()
	v := nodeops.Meta{Leader: n.cfg.NodeID, Epoch: st.Epoch, Replicas: st.Replicas,
		Nodes: metaNodes(g, st), Shards: metaShards(st), Moves: []nodeops.Move{}, ShardsWanted: st.ShardsWanted}
	if sp := st.Splitting; sp != nil {
		v.Splitting = &nodeops.SplitView{Parent: sp.Parent, Child: sp.Child, Slots: len(sp.Slots)}
	}
	for _, m := range st.Moving {
		v.Moves = append(v.Moves, nodeops.Move{Shard: m.Shard, Add: m.Add, Remove: m.Remove})
	}
	slices.SortFunc(v.Moves, func(a, b nodeops.Move) int { return cmp.Compare(a.Shard, b.Shard) })
	if req.Members {
		n.shardMembers(ctx, v.Shards)
	}
	return v
}

// metaNodes lists the registered nodes and the meta group's servers (a
// cluster that does not place replicas registers none), with their seats.
func metaNodes(g *raftfsm.Group, st raftfsm.MetaState) []nodeops.MetaNode {
	out := []nodeops.MetaNode{}
	for _, rec := range st.Nodes {
		out = append(out, nodeops.MetaNode{ID: rec.ID, RaftAddr: rec.RaftAddr, Draining: rec.Draining})
	}
	f := g.Raft().GetConfiguration()
	if f.Error() != nil {
		return out // seats unknown for a moment: the nodes still tell
	}
	for _, s := range f.Configuration().Servers {
		seat := "nonvoter"
		if s.Suffrage == raft.Voter {
			seat = "voter"
		}
		i := slices.IndexFunc(out, func(m nodeops.MetaNode) bool { return m.ID == string(s.ID) })
		if i < 0 {
			out = append(out, nodeops.MetaNode{ID: string(s.ID), RaftAddr: string(s.Address)})
			i = len(out) - 1
		}
		out[i].Meta = seat
	}
	slices.SortFunc(out, func(a, b nodeops.MetaNode) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// metaShards lists every shard of the slot map or of the placement, with
// its slot count and placed voters.
func metaShards(st raftfsm.MetaState) []nodeops.MetaShard {
	slots := map[uint32]int{}
	for _, id := range st.Slots {
		slots[id]++
	}
	for id := range st.Placement {
		slots[id] += 0 // placed before it owns a slot
	}
	out := make([]nodeops.MetaShard, 0, len(slots))
	for id, count := range slots {
		out = append(out, nodeops.MetaShard{ID: id, Slots: count, Placement: append([]string{}, st.Placement[id]...)})
	}
	slices.SortFunc(out, func(a, b nodeops.MetaShard) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// shardMembers asks each shard's leader for its group's configuration,
// metaMembersParallel at a time, and fills shards in place.
func (n *Node) shardMembers(ctx context.Context, shards []nodeops.MetaShard) {
	sem := make(chan struct{}, metaMembersParallel)
	var wg sync.WaitGroup
	for i := range shards {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s := &shards[i]
			rctx, cancel := context.WithTimeout(ctx, metaMembersTimeout)
			defer cancel()
			var m members
			switch err := n.request(rctx, n.subjects.Shard(s.ID), opMembers, nil, &m); {
			case err != nil:
				s.MembersError = "its leader did not answer: " + err.Error()
			case m.Retry != "":
				s.MembersError = m.Retry
			case len(m.Voters) == 0: // a group has one at least
				s.MembersError = "its leader answered no configuration (a release without it?)"
			default:
				s.Voters, s.Nonvoters = m.Voters, m.Nonvoters
			}
		})
	}
	wg.Wait()
}
