package node

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/raftfsm"
)

// Leaders spread evenly over the nodes. Every node is a voter of every
// group, so every node sees who leads each one. Every rebalanceEvery a node
// that leads more than its share (the groups divided by the cluster's
// voters, rounded up) hands one of its groups to the node that leads the
// fewest; repeated, the counts converge without any coordination beyond
// Raft's.
//
// A leadership goes only to a node that can serve it at once: one that
// answers its status now (a node that is down, paused, cut off or still
// joining does not), is a voter of that group, and has applied within
// promoteLagMax entries of this leader. A node restarted from a lost data
// directory is still a voter of every group until its join removes it;
// handed a leadership then, it would have to hand it on again to leave.

// rebalanceEvery is how often a node compares its leaderships with its share.
const rebalanceEvery = 5 * time.Second

func (n *Node) balanceLeaders(ctx context.Context) {
	t := time.NewTicker(rebalanceEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if g, to, ok := n.surplusLeadership(ctx); ok {
			n.log.Info("handing a leadership to balance the nodes", "group", g.ID(), "to", to.ID)
			if err := g.Raft().LeadershipTransferToServer(to.ID, to.Address).Error(); err != nil {
				n.log.Warn("leadership transfer", "group", g.ID(), "to", to.ID, "err", err)
			}
		}
	}
}

// groupView is one group as the balancer sees it.
type groupView struct {
	id      uint32
	leader  raft.ServerID
	voters  []raft.Server // the group's own configuration
	applied uint64        // the leader's applied index, for groups this node leads
}

// surplusLeadership returns a group this node leads beyond its share and the
// voter to hand it to, if any.
func (n *Node) surplusLeadership(ctx context.Context) (*raftfsm.Group, raft.Server, bool) {
	meta := n.metaGroup()
	if meta == nil {
		return nil, raft.Server{}, false // being repaired
	}
	f := meta.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil, raft.Server{}, false
	}
	// A draining node receives no leadership: it is handing its own on.
	drain := draining(n.metaM.State())
	nodes := slices.DeleteFunc(voters(f.Configuration()), func(s raft.Server) bool { return slices.Contains(drain, string(s.ID)) })
	self := raft.ServerID(n.cfg.NodeID)
	groups := n.groups()
	views := make([]groupView, 0, len(groups))
	for _, g := range groups {
		r := g.Raft()
		_, leader := r.LeaderWithID()
		if leader == "" {
			return nil, raft.Server{}, false // an election is on: wait
		}
		v := groupView{id: g.ID(), leader: leader}
		if leader == self {
			gf := r.GetConfiguration()
			if gf.Error() != nil {
				return nil, raft.Server{}, false
			}
			v.voters, v.applied = voters(gf.Configuration()), r.AppliedIndex()
		}
		views = append(views, v)
	}
	if !surplus(self, nodes, views) {
		return nil, raft.Server{}, false // the common case: no need to ask anyone
	}
	applied := map[raft.ServerID]map[uint32]uint64{}
	for _, st := range wire.NodeStatuses(ctx, n.nc, n.subjects) {
		a := map[uint32]uint64{}
		for _, g := range st.Groups {
			a[g.ID] = g.AppliedIndex
		}
		applied[raft.ServerID(st.ID)] = a
	}
	i, to, ok := pickHandoff(self, nodes, views, applied)
	if !ok {
		return nil, raft.Server{}, false
	}
	return groups[i], to, true
}

func voters(c raft.Configuration) []raft.Server {
	var out []raft.Server
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, s)
		}
	}
	return out
}

// leads counts the groups each node leads, and returns the indexes of
// those self leads and its share.
func leads(self raft.ServerID, nodes []raft.Server, groups []groupView) (map[raft.ServerID]int, []int, int) {
	count := map[raft.ServerID]int{}
	var mine []int
	for i, g := range groups {
		count[g.leader]++
		if g.leader == self {
			mine = append(mine, i)
		}
	}
	return count, mine, (len(groups) + len(nodes) - 1) / max(len(nodes), 1)
}

// surplus reports whether self leads more than its share of the groups.
func surplus(self raft.ServerID, nodes []raft.Server, groups []groupView) bool {
	_, mine, share := leads(self, nodes, groups)
	return len(nodes) >= 2 && len(mine) > share
}

// pickHandoff chooses which of the groups self leads beyond its share to
// hand to which node: the node leading the fewest groups among those that
// answered (applied holds each answering node's applied index per group)
// and can serve the group at once, as long as that spreads the leaders
// better. It returns the group's index in groups.
func pickHandoff(self raft.ServerID, nodes []raft.Server, groups []groupView, applied map[raft.ServerID]map[uint32]uint64) (int, raft.Server, bool) {
	count, mine, share := leads(self, nodes, groups)
	if len(nodes) < 2 || len(mine) <= share {
		return 0, raft.Server{}, false
	}
	order := slices.Clone(nodes)
	slices.SortFunc(order, func(a, b raft.Server) int {
		return cmp.Or(cmp.Compare(count[a.ID], count[b.ID]), cmp.Compare(a.ID, b.ID))
	})
	for _, to := range order {
		if to.ID == self || count[to.ID]+1 >= len(mine) {
			continue // handing to it would not spread the leaders better
		}
		got, answered := applied[to.ID]
		if !answered {
			continue
		}
		for k := len(mine) - 1; k >= 0; k-- {
			g := groups[mine[k]]
			a, ok := got[g.id]
			if !ok || a+promoteLagMax < g.applied {
				continue
			}
			if i := slices.IndexFunc(g.voters, func(s raft.Server) bool { return s.ID == to.ID }); i >= 0 {
				return mine[k], g.voters[i], true
			}
		}
	}
	return 0, raft.Server{}, false
}
