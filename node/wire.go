package node

import (
	"context"
	"slices"
	"time"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// The internal encoding the cluster writes (transport.WireVersion). A new
// cluster writes this release's from its first entry (createSlotMap). A
// cluster created by a release before writes the maps that release reads
// until every node of its meta configuration says it reads the compact
// forms; then the meta leader raises the meta state's Wire, and every node
// follows it (followPlacement). A node of the older release that answers
// nothing (down, paused) holds it back: it may still come back. Wire never
// goes down, so a node of the older release must not rejoin afterwards.

// raiseWireEvery spaces raiseWire's status rounds (each asks every node,
// and waits up to a second for their answers): a cluster waiting for a
// node of the older release would otherwise ask twice a second for ever.
const raiseWireEvery = 10 * time.Second

// raiseWire raises the cluster's encoding when every node reads it.
func (n *Node) raiseWire(ctx context.Context, g *raftfsm.Group, st raftfsm.MetaState) {
	if st.Wire >= transport.WireVersion {
		return
	}
	f := g.Raft().GetConfiguration()
	if f.Error() != nil {
		return
	}
	var servers []string
	for _, s := range f.Configuration().Servers {
		servers = append(servers, string(s.ID))
	}
	if !allRead(servers, wire.NodeStatuses(ctx, n.nc, n.subjects), transport.WireVersion) {
		return
	}
	if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{Wire: transport.WireVersion}); err != nil {
		n.log.Warn("raise the internal encoding", "err", err)
		return
	}
	n.log.Info("every node reads the compact internal encoding: the cluster writes it from now on", "wire", transport.WireVersion)
}

// allRead reports whether every server answered a status that reads
// encoding version.
func allRead(servers []string, statuses []transport.NodeStatus, version uint32) bool {
	for _, id := range servers {
		if !slices.ContainsFunc(statuses, func(s transport.NodeStatus) bool { return s.ID == id && s.Wire >= version }) {
			return false
		}
	}
	return len(servers) > 0
}
