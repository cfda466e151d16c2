package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/transport"
)

// Readiness (/readyz). A node is ready once every group placed on it is
// open, undamaged, has a leader, counts this node among its voters, and
// this node has caught up: its applied index is within ReadyLagMax entries
// of the leader's. A node that leads a group compares its applied index
// with its own commit index. A follower cannot tell on its own: its commit
// index is bounded by its own log, so a follower far behind sees both
// close together. It asks the leaders instead, on the node status subject
// (the applied index each node reports for each group), as the balancer
// does; a leader that does not answer leaves this node not ready. So a
// node that is joining a group (a nonvoter until it is promoted), repairs
// one (closed, then joining), or was restarted and still replays what it
// missed, is not ready, and a rolling restart waits for it before taking
// the next node down.

// ReadyLagMax is how many entries a node's applied index may trail its
// leader's and still count as caught up: an entry or two in flight under
// load, far below the 256 at which a joining node is promoted (a node
// ready here would be promoted, not the other way round).
const ReadyLagMax = 64

// readyReasonsMax bounds the groups a not-ready answer names.
const readyReasonsMax = 4

// Ready returns nil if this node is ready, else why it is not.
func (s *Server) Ready(ctx context.Context) error {
	groups := s.node.GroupStats()
	var statuses []transport.NodeStatus
	for _, g := range groups {
		if g.Open && g.Leader != "" && g.Leader != s.nodeID {
			statuses = wire.NodeStatuses(ctx, s.nodeNC, transport.Subjects{Prefix: s.prefix})
			// Read again: the leaders' applied indexes were read as they
			// answered, so this node's, read after, is compared with
			// values no newer than its own (at thousands of entries a
			// second, the 100 ms the answers take would otherwise count
			// against it).
			groups = s.node.GroupStats()
			break
		}
	}
	return readiness(s.nodeID, groups, statuses)
}

// readiness judges groups as node self sees them, against the statuses
// the other nodes answered.
func readiness(self string, groups []node.GroupStats, statuses []transport.NodeStatus) error {
	if len(groups) == 0 {
		return errors.New("no group open: closing")
	}
	leaders := map[string]*transport.NodeStatus{}
	for i := range statuses {
		leaders[statuses[i].ID] = &statuses[i]
	}
	var reasons []string
	for i := range groups {
		if why := groupNotReady(self, &groups[i], leaders); why != "" {
			reasons = append(reasons, groupName(groups[i].ID)+": "+why)
		}
	}
	if n := len(reasons); n > readyReasonsMax {
		reasons = append(reasons[:readyReasonsMax], fmt.Sprintf("and %d more groups", n-readyReasonsMax))
	}
	if reasons != nil {
		return errors.New(strings.Join(reasons, "; "))
	}
	return nil
}

// groupNotReady says why group g keeps this node from being ready ("":
// it does not).
func groupNotReady(self string, g *node.GroupStats, statuses map[string]*transport.NodeStatus) string {
	switch {
	case !g.Open:
		return "closed here while it is repaired"
	case g.Damaged != nil:
		return "stopped here on damaged storage (being repaired)"
	case g.Leader == "":
		return "no leader"
	case !g.Voter:
		return "this node is not a voter yet (joining, catching up)"
	case g.Leader == self:
		if g.State != raft.Leader {
			return "leadership changing"
		}
		if g.CommitIndex > g.AppliedIndex+ReadyLagMax {
			return fmt.Sprintf("applied %d of %d committed entries", g.AppliedIndex, g.CommitIndex)
		}
		return ""
	}
	st := statuses[g.Leader]
	if st == nil {
		return fmt.Sprintf("its leader %s did not answer its status", g.Leader)
	}
	for _, lg := range st.Groups {
		if lg.ID != g.ID {
			continue
		}
		if lg.AppliedIndex > g.AppliedIndex+ReadyLagMax {
			return fmt.Sprintf("applied %d, its leader %s %d", g.AppliedIndex, g.Leader, lg.AppliedIndex)
		}
		return ""
	}
	return fmt.Sprintf("its leader %s did not report it", g.Leader)
}

func groupName(id uint32) string {
	if id == 0 {
		return "meta group"
	}
	return "shard " + strconv.FormatUint(uint64(id), 10)
}
