package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Removing a node for good. A node whose machine is gone stays a voter of
// every group: each group's quorum still counts it, and status lists it
// unreachable. The operator removes it through any other node
// (RemoveNode): every group's leader takes it out of its configuration,
// the shards first and the meta group, which lists the cluster's nodes,
// last. Only a node that does not answer may be removed, so a removal
// never takes a serving replica, or a leader, by surprise.
//
// A removed node must not come back with its data: its groups no longer
// count it, and their voters refuse its elections, so it would wait,
// never ready. To bring the machine back, wipe its data directory and
// start it with --join.

// Errors of RemoveNode.
var (
	ErrNodeUp    = errors.New("the node answers: stop it, then ask another node to remove it")
	ErrNotMember = errors.New("the node is not a member of any group")
	ErrLastVoter = errors.New("the node is the last voter of a group")
)

// lastVoter is a leader's answer to the removal of its group's last voter.
const lastVoter = "the last voter of the group"

// RemoveNode removes node id from every group, and returns how many groups
// it was removed from. It is idempotent group by group: once interrupted,
// it can be asked again (ErrNotMember once every group is done).
func (n *Node) RemoveNode(ctx context.Context, id string) (int, error) {
	for _, st := range transport.NodeStatuses(ctx, n.nc, n.subjects) {
		if st.ID == id {
			return 0, fmt.Errorf("%s: %w", id, ErrNodeUp)
		}
	}
	// The shards first, the meta group last: until the end the node is
	// listed, so an interrupted removal shows as unfinished.
	groups := n.groups()
	groups = append(groups[1:], groups[0])
	var members []*raftfsm.Group
	for _, g := range groups {
		f := g.Raft().GetConfiguration()
		if err := f.Error(); err != nil {
			return 0, err
		}
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == id {
				members = append(members, g)
			}
		}
	}
	if len(members) == 0 {
		return 0, fmt.Errorf("%s: %w", id, ErrNotMember)
	}
	for _, g := range members {
		if err := n.removeFrom(ctx, g.ID(), id); err != nil {
			return 0, err
		}
		n.log.Info("removed a node", "node", id, "group", g.ID())
	}
	return len(members), nil
}

// removeFrom asks group gid's leader to remove node id, until it has.
func (n *Node) removeFrom(ctx context.Context, gid uint32, id string) error {
	for {
		var reply shard.Reply
		err := n.request(ctx, n.groupSubject(gid), shard.OpRemove, &shard.Remove{Node: id}, &reply)
		switch {
		case err == nil && reply.Invalid == lastVoter:
			return fmt.Errorf("remove %s from group %d: %w", id, gid, ErrLastVoter)
		case err == nil && reply.Invalid != "":
			return fmt.Errorf("remove %s from group %d: %s", id, gid, reply.Invalid)
		case err == nil && reply.Retry == "":
			return nil
		}
		n.log.Info("removing a node: retrying", "node", id, "group", gid, "err", err, "retry", reply.Retry)
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove %s from group %d: %w", id, gid, ctx.Err())
		case <-time.After(discoverEvery):
		}
	}
}

// removeReply is a group leader's answer to a removal (data is a
// shard.Remove). A node that is not a member is done; the last voter is
// never removed.
func removeReply(g *raftfsm.Group, data []byte) *shard.Reply {
	var rm shard.Remove
	if err := transport.Unmarshal(data, &rm); err != nil || rm.Node == "" {
		return &shard.Reply{Invalid: fmt.Sprintf("remove: bad request (%v)", err)}
	}
	r := g.Raft()
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return &shard.Reply{Retry: "remove: " + err.Error()}
	}
	id := raft.ServerID(rm.Node)
	member, others := false, 0
	for _, s := range f.Configuration().Servers {
		switch {
		case s.ID == id:
			member = true
		case s.Suffrage == raft.Voter:
			others++
		}
	}
	switch {
	case !member:
		return &shard.Reply{}
	case others == 0:
		return &shard.Reply{Invalid: lastVoter}
	}
	if _, leader := r.LeaderWithID(); leader == id {
		return &shard.Reply{Retry: "remove: the node leads this group"} // it answered a moment ago
	}
	if err := r.RemoveServer(id, 0, joinTimeout).Error(); err != nil {
		return &shard.Reply{Retry: "remove: " + err.Error()}
	}
	return &shard.Reply{}
}
