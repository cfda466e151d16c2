package node

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/shard"
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

// answerNodes answers every node's Nodes request with this node's info for
// as long as the node runs, so a node that starts late still finds every
// peer; it records the askers in seen.
func (n *Node) answerNodes(self transport.NodeInfo, seen func(transport.NodeInfo)) (*nats.Subscription, error) {
	b, err := transport.Marshal(&self)
	if err != nil {
		return nil, err
	}
	return n.nc.Subscribe(n.subjects.Nodes(), func(msg *nats.Msg) {
		var asker transport.NodeInfo
		if transport.Unmarshal(msg.Data, &asker) == nil && asker.ID != "" && seen != nil {
			seen(asker)
		}
		_ = msg.Respond(b)
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
			if transport.Unmarshal(msg.Data, &peer) == nil && peer.ID != "" {
				if old, ok := found[peer.ID]; ok && old.RaftAddr != peer.RaftAddr {
					return nil, fmt.Errorf("two nodes named %q (Raft %s and %s): node ids must be unique", peer.ID, old.RaftAddr, peer.RaftAddr)
				}
				found[peer.ID] = peer
			}
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
		n.log.Info("waiting for nodes to form the cluster", "found", len(found), "expect", n.cfg.BootstrapExpect)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %d nodes (found %v): %w", n.cfg.BootstrapExpect, slices.Sorted(maps.Keys(found)), ctx.Err())
		case <-t.C:
		}
	}
}

// answerStatus answers the NodesStatus subject with this node's view of
// every group, for as long as the node runs.
func (n *Node) answerStatus(self transport.NodeInfo) (*nats.Subscription, error) {
	return n.nc.Subscribe(n.subjects.NodesStatus(), func(msg *nats.Msg) {
		st := transport.NodeStatus{ID: self.ID, Version: transport.Version, Health: "up", RaftAddr: self.RaftAddr}
		if f := n.meta.Raft().GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				st.Voters = append(st.Voters, string(s.ID))
			}
		}
		n.mu.Lock()
		groups := []*raftfsm.Group{n.meta}
		for _, id := range n.ids {
			groups = append(groups, n.shards[id].g)
		}
		n.mu.Unlock()
		for _, g := range groups {
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

// joinTimeout bounds one AddVoter.
const joinTimeout = 10 * time.Second

// joinReply adds the node in data (a transport.NodeInfo) to g as a voter;
// the leader calls it for a joining node's request. Adding a voter that is
// one already changes nothing.
func joinReply(g *raftfsm.Group, data []byte) *shard.Reply {
	var peer transport.NodeInfo
	if err := transport.Unmarshal(data, &peer); err != nil || peer.ID == "" || peer.RaftAddr == "" {
		return &shard.Reply{Invalid: fmt.Sprintf("join: bad node info (%v)", err)}
	}
	if err := g.Raft().AddVoter(raft.ServerID(peer.ID), raft.ServerAddress(peer.RaftAddr), 0, joinTimeout).Error(); err != nil {
		return &shard.Reply{Retry: "join: " + err.Error()}
	}
	return &shard.Reply{}
}

// join asks the leader of group id (on subject) to add this node, until it
// has.
func (n *Node) join(ctx context.Context, subject string, id uint32, self transport.NodeInfo) error {
	for {
		var reply shard.Reply
		err := n.request(ctx, subject, shard.OpJoin, &self, &reply)
		switch {
		case err == nil && reply.Invalid != "":
			return fmt.Errorf("join group %d: %s", id, reply.Invalid)
		case err == nil && reply.Retry == "":
			n.log.Info("joined", "group", id)
			return nil
		}
		n.log.Info("joining: retrying", "group", id, "err", err, "retry", reply.Retry)
		select {
		case <-ctx.Done():
			return fmt.Errorf("join group %d: %w", id, ctx.Err())
		case <-time.After(discoverEvery):
		}
	}
}
