package node

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/raftfsm"
)

// Leaders spread evenly over the nodes. Every node is a voter of every
// group, so every node sees who leads each one. Every rebalanceEvery a node
// that leads more than its share (the groups divided by the voters,
// rounded up) hands one of its groups to the voter that leads the fewest;
// repeated, the counts converge without any coordination beyond Raft's.

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
		if g, to, ok := n.surplusLeadership(); ok {
			n.log.Info("handing a leadership to balance the nodes", "group", g.ID(), "to", to.ID)
			if err := g.Raft().LeadershipTransferToServer(to.ID, to.Address).Error(); err != nil {
				n.log.Warn("leadership transfer", "group", g.ID(), "to", to.ID, "err", err)
			}
		}
	}
}

// surplusLeadership returns a group this node leads beyond its share and the
// voter to hand it to, if any.
func (n *Node) surplusLeadership() (*raftfsm.Group, raft.Server, bool) {
	f := n.meta.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil, raft.Server{}, false
	}
	var voters []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s)
		}
	}
	if len(voters) < 2 {
		return nil, raft.Server{}, false
	}
	groups := n.groups()
	leads := map[raft.ServerID]int{}
	var mine []*raftfsm.Group
	for _, g := range groups {
		_, leader := g.Raft().LeaderWithID()
		if leader == "" {
			return nil, raft.Server{}, false // an election is on: wait
		}
		leads[leader]++
		if leader == raft.ServerID(n.cfg.NodeID) {
			mine = append(mine, g)
		}
	}
	share := (len(groups) + len(voters) - 1) / len(voters)
	if len(mine) <= share {
		return nil, raft.Server{}, false
	}
	to := slices.MinFunc(voters, func(a, b raft.Server) int {
		return cmp.Or(cmp.Compare(leads[a.ID], leads[b.ID]), cmp.Compare(a.ID, b.ID))
	})
	if leads[to.ID]+1 >= len(mine) {
		return nil, raft.Server{}, false // no better spread
	}
	return mine[len(mine)-1], to, true
}
