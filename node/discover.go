package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/internal/buildinfo"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// Forming a cluster. A node with no data bootstraps every group with the
// same initial configuration as every other node: with BootstrapExpect n
// > 1, the n nodes that find each other on the Nodes subject, sorted by id;
// alone, itself. A node with data never bootstraps again (restarts are
// safe): its groups' configurations are in their logs.

// discoverEvery is how often a forming node asks who is there.
const discoverEvery = 200 * time.Millisecond

// formingReminder is how often a forming node repeats whom it has found
// when nothing changed: it logs each change at once.
const formingReminder = 5 * time.Second

// answerNodes answers every node's Nodes request with this node's info for
// as long as the node runs, so a node that starts late still finds every
// peer, and learns whether this one is a member of an established cluster:
// its meta log holds an entry past the bootstrap configuration, which only
// a leader writes, and a leader is elected only by a quorum of voters that
// have bootstrapped. A node without data that hears it therefore joins a
// cluster that has a quorum without it; a node that has merely
// bootstrapped, as its peers form the cluster, is no member yet, so that a
// slow peer still bootstraps with the others.
func (n *Node) answerNodes(self transport.NodeInfo) (*nats.Subscription, error) {
	return n.nc.Subscribe(n.subjects.Nodes(), func(msg *nats.Msg) {
		info := self
		if g := n.metaGroup(); g != nil {
			info.Member = g.Raft().LastIndex() > bootstrapIndex
		}
		if b, err := transport.Marshal(&info); err == nil {
			_ = msg.Respond(b)
		}
	})
}

// initialServers returns the servers every group bootstraps with, or nil
// if this node has data already.
func (n *Node) initialServers(ctx context.Context, self transport.NodeInfo) ([]raft.Server, error) {
	if _, err := os.Stat(filepath.Join(n.cfg.DataDir, "meta", "raft.db")); err == nil {
		return nil, nil
	}
	if n.cfg.Join {
		return nil, nil // added to every group by its leader
	}
	if n.cfg.BootstrapExpect <= 1 {
		return []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(self.ID), Address: raft.ServerAddress(self.RaftAddr)}}, nil
	}
	found := map[string]transport.NodeInfo{self.ID: self}
	inbox := nats.NewInbox()
	replies, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer replies.Unsubscribe()
	ask, err := transport.Marshal(&self)
	if err != nil {
		return nil, err
	}
	t := time.NewTicker(discoverEvery)
	defer t.Stop()
	var logged []string // the nodes last logged as found, and when
	var loggedAt time.Time
	for {
		if err := n.nc.PublishRequest(n.subjects.Nodes(), inbox, ask); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(discoverEvery)
		for {
			msg, err := replies.NextMsg(time.Until(deadline))
			if err != nil {
				break // the round is over
			}
			var peer transport.NodeInfo
			if transport.Unmarshal(msg.Data, &peer) != nil || peer.ID == "" {
				continue
			}
			if peer.Member && peer.ID != self.ID {
				// A node without data whose peers have formed the
				// cluster has lost its data (or is late): bootstrapping
				// would make it a voter that forgot what it voted and
				// acknowledged. It joins, so a lost volume heals with
				// the node's usual flags. (A peer answers while it runs,
				// leader or not.)
				n.log.Warn("this node has no data and its peers are members of a cluster: joining it", "peer", peer.ID)
				n.cfg.Join = true
				return nil, nil
			}
			if old, ok := found[peer.ID]; ok && old.RaftAddr != peer.RaftAddr {
				return nil, fmt.Errorf("two nodes named %q (Raft %s and %s): node ids must be unique", peer.ID, old.RaftAddr, peer.RaftAddr)
			}
			found[peer.ID] = peer
		}
		switch {
		case len(found) > n.cfg.BootstrapExpect:
			return nil, fmt.Errorf("found %d nodes (%v), more than --bootstrap-expect %d: refusing to form a cluster", len(found), slices.Sorted(maps.Keys(found)), n.cfg.BootstrapExpect)
		case len(found) == n.cfg.BootstrapExpect:
			var servers []raft.Server
			for _, id := range slices.Sorted(maps.Keys(found)) {
				servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(found[id].RaftAddr)})
			}
			n.log.Info("forming the cluster", "nodes", slices.Sorted(maps.Keys(found)))
			return servers, nil
		}
		if ids := slices.Sorted(maps.Keys(found)); !slices.Equal(ids, logged) || time.Since(loggedAt) >= formingReminder {
			n.log.Info("waiting for nodes to form the cluster", "found", ids, "expect", n.cfg.BootstrapExpect)
			logged, loggedAt = ids, time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %d nodes (found %v): %w", n.cfg.BootstrapExpect, slices.Sorted(maps.Keys(found)), ctx.Err())
		case <-t.C:
		}
	}
}

// answerStatus answers the NodesStatus subject with this node's view of
// every group, for as long as the node runs. Start subscribes only once the
// node has joined every group: a joining node does not answer, so the
// balancer hands it no leadership.
func (n *Node) answerStatus(self transport.NodeInfo) (*nats.Subscription, error) {
	build := buildinfo.Get().Build()
	return n.nc.Subscribe(n.subjects.NodesStatus(), func(msg *nats.Msg) {
		st := transport.NodeStatus{ID: self.ID, Version: transport.Version, Build: build, Health: "up", RaftAddr: self.RaftAddr, Wire: transport.WireVersion}
		if g := n.metaGroup(); g != nil {
			if f := g.Raft().GetConfiguration(); f.Error() == nil {
				for _, s := range f.Configuration().Servers {
					if s.Suffrage == raft.Voter {
						st.Voters = append(st.Voters, string(s.ID))
					}
				}
			}
		}
		for _, g := range n.groups() {
			r := g.Raft()
			st.Groups = append(st.Groups, transport.GroupStatus{
				ID: g.ID(), State: r.State().String(), Term: r.CurrentTerm(), LastIndex: r.LastIndex(), AppliedIndex: r.AppliedIndex(),
			})
		}
		b, err := transport.Marshal(&st)
		if err == nil {
			_ = msg.Respond(b)
		}
	})
}

// bootstrapIndex is the index of the configuration a cluster bootstraps
// with, its first entry.
const bootstrapIndex = 1

// joinTimeout bounds one membership change.
const joinTimeout = 10 * time.Second

// promoteLagMax is how far behind the leader's applied index a nonvoter may
// be and still be made a voter: close enough that it adds no wait to the
// quorum, loose enough that it is reached under load.
const promoteLagMax = 256

// joinReply is the leader's answer to a joining node (data is a wire.Join).
//
// A node joins as a nonvoter: it takes no part in the quorum while it
// copies the log. A node that asks to join while it is a voter has lost its
// data (joining is only for nodes without data), and with it the term and
// vote it had given: it is removed first, so that no vote of its old life
// and of its new one can both count. Once its applied index is within
// promoteLagMax of the leader's, it asks again with Promote and becomes a
// voter. Each step is idempotent: a repeated request changes nothing more.
func joinReply(g *raftfsm.Group, data []byte) *wire.Reply {
	var j wire.Join
	if err := transport.Unmarshal(data, &j); err != nil || j.Node.ID == "" || j.Node.RaftAddr == "" {
		return &wire.Reply{Invalid: fmt.Sprintf("join: bad request (%v)", err)}
	}
	r := g.Raft()
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return &wire.Reply{Retry: "join: " + err.Error()}
	}
	id, addr := raft.ServerID(j.Node.ID), raft.ServerAddress(j.Node.RaftAddr)
	var cur *raft.Server
	for _, s := range f.Configuration().Servers {
		if s.ID == id {
			cur = &s
		}
	}
	var err error
	switch {
	case j.Promote && (cur == nil || cur.Address != addr):
		return &wire.Reply{Retry: "join: not a member yet"}
	case j.Promote && cur.Suffrage == raft.Voter:
		return &wire.Reply{}
	case j.Promote && j.Applied+promoteLagMax < r.AppliedIndex():
		return &wire.Reply{Retry: fmt.Sprintf("join: catching up (applied %d, leader %d)", j.Applied, r.AppliedIndex())}
	case j.Promote:
		err = r.AddVoter(id, addr, 0, joinTimeout).Error()
	case cur != nil && cur.Suffrage == raft.Nonvoter && cur.Address == addr:
		return &wire.Reply{}
	default:
		if _, leader := r.LeaderWithID(); cur != nil && leader == id {
			// The node that lost its data leads this group (elected, or
			// handed the leadership by the balancer, once it had restored
			// the leader's snapshot): removing itself would shut its
			// Raft down. It hands the leadership on first; the join is
			// tried again against the next leader.
			go r.LeadershipTransfer()
			return &wire.Reply{Retry: "join: the joining node leads this group: handing it on"}
		}
		if cur != nil {
			if err := r.RemoveServer(id, 0, joinTimeout).Error(); err != nil {
				return &wire.Reply{Retry: "join: remove the old member: " + err.Error()}
			}
		}
		err = r.AddNonvoter(id, addr, 0, joinTimeout).Error()
	}
	if err != nil {
		return &wire.Reply{Retry: "join: " + err.Error()}
	}
	return &wire.Reply{}
}

// join asks the leader of group id (on subject) to add this node, until it
// has.
func (n *Node) join(ctx context.Context, subject string, id uint32, j wire.Join) error {
	for {
		var reply wire.Reply
		err := n.request(ctx, subject, wire.OpJoin, &j, &reply)
		switch {
		case err == nil && reply.Invalid != "":
			return fmt.Errorf("join group %d: %s", id, reply.Invalid)
		case err == nil && reply.Retry == "":
			n.log.Info("joined", "group", id, "voter", j.Promote)
			return nil
		}
		n.log.Info("joining: retrying", "group", id, "voter", j.Promote, "err", err, "retry", reply.Retry)
		select {
		case <-ctx.Done():
			return fmt.Errorf("join group %d: %w", id, ctx.Err())
		case <-time.After(discoverEvery):
		}
	}
}

// promoteEvery is how often a node checks whether it is a nonvoter of a
// group, and asks to become a voter.
const promoteEvery = 500 * time.Millisecond

// promote asks, for every group where this node is a nonvoter, to be made
// a voter: after joining, and also after a restart that interrupted a join.
func (n *Node) promote(ctx context.Context, self transport.NodeInfo) {
	t := time.NewTicker(promoteEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, g := range n.groups() {
			f := g.Raft().GetConfiguration()
			if f.Error() != nil {
				continue
			}
			for _, s := range f.Configuration().Servers {
				if string(s.ID) != self.ID || s.Suffrage != raft.Nonvoter {
					continue
				}
				j := wire.Join{Node: self, Promote: true, Applied: g.Raft().AppliedIndex()}
				var reply wire.Reply
				err := n.request(ctx, n.groupSubject(g.ID()), wire.OpJoin, &j, &reply)
				if err == nil && reply.Retry == "" && reply.Invalid == "" {
					n.log.Info("promoted to voter", "group", g.ID())
				} else {
					n.log.Debug("promotion: not yet", "group", g.ID(), "err", err, "retry", reply.Retry, "invalid", reply.Invalid)
				}
			}
		}
	}
}

// rejoinMarker, in a group's directory, marks a group this node is joining
// again after losing its data: until the join has made it a member anew,
// the group stays silent in elections (raftmux.VoteGate). The marker is
// written before the group's first byte and removed only once joined, so a
// crash in between resumes the join rather than voting from a partial log.
const rejoinMarker = "joining"

// rejoining reports whether the group in dir must join: a joining node's
// group with no data yet, a group a replica move adds to this node (added),
// or one whose join was cut short.
func (n *Node) rejoining(id uint32, dir string, added bool) (bool, error) {
	path := filepath.Join(n.cfg.DataDir, dir)
	marker := filepath.Join(path, rejoinMarker)
	if _, err := os.Stat(marker); err == nil {
		return true, nil
	}
	// --join (or a node that found its peers members) joins the groups it
	// opens, but never a split's new shard: its replicas start from the
	// split, or are sent a snapshot by its leader, as on every node.
	joinAll := n.cfg.Join
	if joinAll && id != metaGroupID {
		st := n.metaM.State()
		joinAll = !splitChild(&st, id)
	}
	if !joinAll && !added {
		return false, nil
	}
	if _, err := os.Stat(filepath.Join(path, "raft.db")); err == nil {
		return false, nil // a member already: restarted with --join still set
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return false, err
	}
	f, err := os.Create(marker)
	if err != nil {
		return false, err
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return false, err
	}
	return true, syncDir(path)
}

// rejoined removes the marker of a group that has joined.
func (n *Node) rejoined(dir string) error {
	path := filepath.Join(n.cfg.DataDir, dir)
	if err := os.Remove(filepath.Join(path, rejoinMarker)); err != nil {
		return err
	}
	return syncDir(path)
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
