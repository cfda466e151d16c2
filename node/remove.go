package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// Removing a node for good. A node whose machine is gone stays a voter of
// every group: each group's quorum still counts it, and status lists it
// unreachable. The operator removes it through any other node
// (RemoveNode): every group's leader takes it out of its configuration,
// the shards first and the meta group, which lists the cluster's nodes,
// last. Only a node that does not answer may be removed, so a removal
// never takes a serving replica, or a leader, by surprise; and since a
// node paused for a moment (a GC pause, a SIGSTOP, a partition that heals)
// does not answer either, RemoveNode first watches the node for a grace
// period and refuses if it answers within it. The operator may skip the
// wait (Force), and it is skipped when the node holds no shard replica any
// more (a removal cut short after the shards).
//
// A removed node must not come back with its data: its groups no longer
// count it, and their voters refuse its elections, so it would wait,
// never ready. To bring the machine back, wipe its data directory and
// start it with --join.

// Errors of RemoveNode.
var (
	ErrNodeUp    = errors.New("the node answers: stop it, then ask another node to remove it")
	ErrHeardFrom = errors.New("the node answered within the grace period: it is not gone (force the removal if it must go)")
	ErrNotMember = errors.New("the node is not a member of any group")
	ErrLastVoter = errors.New("the node is the last voter of a group")
)

// lastVoter is a leader's answer to the removal of its group's last voter.
const lastVoter = "the last voter of the group"

// RemoveGraceDefault is how long RemoveNode watches a node that does not
// answer before it removes it: longer than a pause or a failover, short
// enough for an operator to wait out.
const RemoveGraceDefault = 30 * time.Second

// removeWatchEvery is how often RemoveNode asks during the grace period.
const removeWatchEvery = time.Second

// RemoveOptions tune RemoveNode.
type RemoveOptions struct {
	// Grace is how long the node must stay silent before it is removed
	// (0: RemoveGraceDefault).
	Grace time.Duration
	// Force removes it without the grace period (never one that answers).
	Force bool
}

// RemoveNode removes node id from every group, and returns how many groups
// it was removed from. It is idempotent group by group: once interrupted,
// it can be asked again (ErrNotMember once every group is done). ctx must
// allow for the grace period.
func (n *Node) RemoveNode(ctx context.Context, id string, o RemoveOptions) (int, error) {
	if n.answers(ctx, id) {
		return 0, fmt.Errorf("%s: %w", id, ErrNodeUp)
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
	if !o.Force && members[0].ID() != 0 { // 0: only the meta group is left
		if err := n.watchSilent(ctx, id, cmp.Or(o.Grace, RemoveGraceDefault)); err != nil {
			return 0, err
		}
	}
	for _, g := range members {
		if err := n.removeFrom(ctx, g.ID(), id); err != nil {
			return 0, err
		}
		n.log.Info("removed a node", "node", id, "group", g.ID())
	}
	return len(members), nil
}

// answers reports whether node id answers its status now.
func (n *Node) answers(ctx context.Context, id string) bool {
	return slices.ContainsFunc(wire.NodeStatuses(ctx, n.nc, n.subjects), func(st transport.NodeStatus) bool { return st.ID == id })
}

// watchSilent asks node id for its status until it has been silent for
// grace, and fails with ErrHeardFrom as soon as it answers.
func (n *Node) watchSilent(ctx context.Context, id string, grace time.Duration) error {
	n.log.Info("removing a node: watching that it stays silent", "node", id, "grace", grace)
	end := time.Now().Add(grace)
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove %s: watching for %s: %w", id, grace, ctx.Err())
		case <-time.After(min(removeWatchEvery, time.Until(end))):
		}
		if n.answers(ctx, id) {
			return fmt.Errorf("%s: %w", id, ErrHeardFrom)
		}
	}
	return nil
}

// removeFrom asks group gid's leader to remove node id, until it has.
func (n *Node) removeFrom(ctx context.Context, gid uint32, id string) error {
	for {
		var reply wire.Reply
		err := n.request(ctx, n.groupSubject(gid), wire.OpRemove, &wire.Remove{Node: id}, &reply)
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
// wire.Remove). A node that is not a member is done; the last voter is
// never removed.
func removeReply(g *raftfsm.Group, data []byte) *wire.Reply {
	var rm wire.Remove
	if err := transport.Unmarshal(data, &rm); err != nil || rm.Node == "" {
		return &wire.Reply{Invalid: fmt.Sprintf("remove: bad request (%v)", err)}
	}
	r := g.Raft()
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return &wire.Reply{Retry: "remove: " + err.Error()}
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
		return &wire.Reply{}
	case others == 0:
		return &wire.Reply{Invalid: lastVoter}
	}
	if _, leader := r.LeaderWithID(); leader == id {
		return &wire.Reply{Retry: "remove: the node leads this group"} // it answered a moment ago
	}
	if err := r.RemoveServer(id, 0, joinTimeout).Error(); err != nil {
		return &wire.Reply{Retry: "remove: " + err.Error()}
	}
	return &wire.Reply{}
}
