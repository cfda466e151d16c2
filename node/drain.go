package node

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/auth"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// Draining and removing a node (ledgerctl nodes drain, ledgerctl nodes
// remove). The meta leader serves both operator subjects (nodeops) for
// its term:
//   - drain marks the node draining (idempotent) and answers with what it
//     still holds: placement.Next then replaces each of its replicas (add
//     the new one first), the node hands on its leaderships (placement.go)
//     and the meta leader moves its meta seat (metaSeats). The operator
//     asks again until Done; a drain cut short by any crash resumes from the
//     meta state.
//   - remove takes a drained node that holds nothing out of the meta
//     group's configuration, then forgets it. It needs no grace period: the
//     node holds no replica a quorum counts. A node gone for good is drained
//     the same way (its replicas are replaced from the others) and then
//     removed.

// operatorRequestMax bounds the meta leader's work on one operator
// request.
const operatorRequestMax = 10 * time.Second

// opSubs are the operator subscriptions of one meta term.
type opSubs []*nats.Subscription

// Unsubscribe ends them.
func (s opSubs) Unsubscribe() {
	for _, sub := range s {
		_ = sub.Unsubscribe()
	}
}

// serveOperators subscribes the meta leader to the operator subjects.
func (n *Node) serveOperators(g *raftfsm.Group) (opSubs, error) {
	var subs opSubs
	for subject, h := range map[string]func(context.Context, *raftfsm.Group, string) nodeops.Progress{
		nodeops.DrainSubject(n.subjects):  n.drainNode,
		nodeops.RemoveSubject(n.subjects): n.removeDrained,
	} {
		sub, err := n.nc.QueueSubscribe(subject, "meta", func(msg *nats.Msg) {
			go n.operatorRequest(msg, g, h)
		})
		if err != nil {
			subs.Unsubscribe()
			return nil, err
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// operatorRequest checks the requester, decodes the request and answers.
func (n *Node) operatorRequest(msg *nats.Msg, g *raftfsm.Group, h func(context.Context, *raftfsm.Group, string) nodeops.Progress) {
	var req nodeops.Request
	var p nodeops.Progress
	switch {
	case n.cfg.Operator != nil && !n.cfg.Operator(msg.Header.Get(auth.RequestInfoHeader)):
		p.Error = "unauthorized: nodes are drained and removed by operators"
	case transport.Unmarshal(msg.Data, &req) != nil || transport.ValidNodeID(req.Node) != nil:
		p.Error = "bad request: want a node id"
	default:
		ctx, cancel := context.WithTimeout(context.Background(), operatorRequestMax)
		p = h(ctx, g, req.Node)
		cancel()
	}
	if b, err := transport.Marshal(&p); err == nil {
		_ = msg.Respond(b)
	}
}

// drainNode marks id draining and reports its progress.
func (n *Node) drainNode(ctx context.Context, g *raftfsm.Group, id string) nodeops.Progress {
	st := n.metaM.State()
	if st.Replicas == 0 {
		return nodeops.Progress{Node: id, Error: "this cluster keeps every shard on every node (created before --replicas): there is nothing to drain; remove a node gone for good with /admin/remove-node"}
	}
	rec, ok := st.Node(id)
	if !ok {
		return nodeops.Progress{Node: id, Error: "no such node"}
	}
	if !rec.Draining {
		if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{Drain: id}); err != nil {
			return nodeops.Progress{Node: id, Error: "record the drain: " + err.Error()}
		}
		n.log.Info("draining a node", "node", id)
		st = n.metaM.State()
	}
	p := n.progress(ctx, g, st, id)
	p.Done = p.Replicas == 0 && p.Moving == 0 && len(p.Leads) == 0 && !p.MetaVoter
	return p
}

// progress is what node id still holds.
func (n *Node) progress(ctx context.Context, g *raftfsm.Group, st raftfsm.MetaState, id string) nodeops.Progress {
	p := nodeops.Progress{Node: id, PerNode: map[string]int{}, Leads: []uint32{}}
	for _, rec := range st.Nodes {
		p.PerNode[rec.ID] = 0
	}
	for shard, voters := range st.Placement {
		for _, v := range voters {
			p.PerNode[v]++
		}
		m, moving := st.Moving[shard]
		if slices.Contains(voters, id) || moving && m.Add == id {
			p.Replicas++
		}
		if moving && (m.Add == id || m.Remove == id) {
			p.Moving++
		}
	}
	for _, ns := range wire.NodeStatuses(ctx, n.nc, n.subjects) {
		if ns.ID != id {
			continue
		}
		for _, gs := range ns.Groups {
			if gs.State == raft.Leader.String() {
				p.Leads = append(p.Leads, gs.ID)
			}
		}
	}
	p.MetaVoter = slices.Contains(membersOf(g).Voters, id)
	return p
}

// removeDrained takes a drained node out of the meta group and forgets it.
func (n *Node) removeDrained(ctx context.Context, g *raftfsm.Group, id string) nodeops.Progress {
	st := n.metaM.State()
	if st.Replicas == 0 {
		return nodeops.Progress{Node: id, Error: "this cluster keeps every shard on every node (created before --replicas): remove a node gone for good with /admin/remove-node"}
	}
	rec, registered := st.Node(id)
	cur := membersOf(g)
	inMeta := slices.Contains(cur.Voters, id) || slices.Contains(cur.Nonvoters, id)
	if !registered && !inMeta {
		return nodeops.Progress{Node: id, Done: true} // removed already
	}
	if registered && !rec.Draining {
		return nodeops.Progress{Node: id, Error: "drain it first: ledgerctl nodes drain " + id}
	}
	if p := n.progress(ctx, g, st, id); p.Replicas > 0 || p.Moving > 0 || p.MetaVoter {
		p.Error = "the node still holds replicas or a meta seat: wait for ledgerctl nodes drain " + id + " to finish"
		return p
	}
	if inMeta {
		if err := g.Raft().RemoveServer(raft.ServerID(id), 0, joinTimeout).Error(); err != nil {
			return nodeops.Progress{Node: id, Error: "remove from the meta group: " + err.Error()}
		}
		n.log.Info("removed a drained node from the meta group", "node", id)
	}
	if registered {
		if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{Forget: id}); err != nil {
			return nodeops.Progress{Node: id, Error: fmt.Sprintf("forget the node: %v", err)}
		}
	}
	p := n.progress(ctx, g, n.metaM.State(), id)
	p.Done = true
	return p
}
