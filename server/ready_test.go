package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/transport"
)

// Each reason a group keeps its node from being ready, as readiness judges
// it from the node's view and the leaders' answers.
func TestReadinessJudgesEveryGroup(t *testing.T) {
	voter := func(id uint32, leader string, applied uint64) node.GroupStats {
		g := node.GroupStats{ID: id, Open: true, State: raft.Follower, Leader: leader, Voter: true, AppliedIndex: applied, CommitIndex: applied}
		if leader == "n1" {
			g.State = raft.Leader
		}
		return g
	}
	leaderAt := func(id string, applied uint64) transport.NodeStatus {
		return transport.NodeStatus{ID: id, Groups: []transport.GroupStatus{{ID: 0, AppliedIndex: 10}, {ID: 1, AppliedIndex: applied}}}
	}
	meta := voter(0, "n2", 10)
	for _, c := range []struct {
		name     string
		group    node.GroupStats
		statuses []transport.NodeStatus
		want     string // "" ready
	}{
		{"a caught-up follower", voter(1, "n2", 1000), []transport.NodeStatus{leaderAt("n2", 1000+ReadyLagMax)}, ""},
		{"a follower past the lag", voter(1, "n2", 1000), []transport.NodeStatus{leaderAt("n2", 1001+ReadyLagMax)}, "shard 1: applied 1000, its leader n2 1065"},
		{"a leader that did not answer", voter(1, "n3", 1000), []transport.NodeStatus{leaderAt("n2", 1000)}, "shard 1: its leader n3 did not answer"},
		{"a leader that does not report the group", voter(2, "n2", 5), []transport.NodeStatus{leaderAt("n2", 1000)}, "shard 2: its leader n2 did not report it"},
		{"a leader that keeps up", voter(1, "n1", 1000), []transport.NodeStatus{leaderAt("n2", 0)}, ""},
		{"a leader behind its commits", func() node.GroupStats { g := voter(1, "n1", 10); g.CommitIndex = 11 + ReadyLagMax; return g }(),
			[]transport.NodeStatus{leaderAt("n2", 0)}, "shard 1: applied 10 of 75 committed"},
		{"no leader", voter(1, "", 1000), []transport.NodeStatus{leaderAt("n2", 0)}, "shard 1: no leader"},
		{"a nonvoter (joining)", func() node.GroupStats { g := voter(1, "n2", 1000); g.Voter = false; return g }(),
			[]transport.NodeStatus{leaderAt("n2", 1000)}, "shard 1: this node is not a voter yet"},
		{"a group being repaired", node.GroupStats{ID: 1}, []transport.NodeStatus{leaderAt("n2", 0)}, "shard 1: closed here while it is repaired"},
		{"a damaged group", func() node.GroupStats { g := voter(1, "n2", 1000); g.Damaged = errors.New("bad checksum"); return g }(),
			[]transport.NodeStatus{leaderAt("n2", 1000)}, "shard 1: stopped here on damaged storage"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := readiness("n1", []node.GroupStats{meta, c.group}, c.statuses)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("not ready: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("readiness %v, want %q", err, c.want)
			}
		})
	}
	if err := readiness("n1", nil, nil); err == nil {
		t.Error("a node with no group open is ready")
	}
}

// startCluster starts nodes ids in-process, forming one cluster of them
// (bootstrap-expect len(ids)), each with one shard.
func startCluster(t *testing.T, ctx context.Context, routes []string, ids ...string) []*Server {
	t.Helper()
	servers := make([]*Server, len(ids))
	errs := make(chan error, len(ids))
	for i, id := range ids {
		go func() {
			srv, err := Start(ctx, clusterConfig(t, id, routes, i, len(ids)))
			servers[i] = srv
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, srv := range servers {
		t.Cleanup(func() { _ = srv.Close() })
	}
	return servers
}

func clusterConfig(t *testing.T, id string, routes []string, i, expect int) Config {
	return Config{
		NodeID: id, DataDir: t.TempDir(), NATSListen: "127.0.0.1:0", RaftListen: testnet.FreePort(t),
		NATSClusterListen: routes[i], NATSRoutes: routes, BootstrapExpect: expect, Insecure: true, Shards: 1,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	}
}

// readyLeaderApplied is the highest applied index any node reports for
// group id: the leader's.
func readyLeaderApplied(servers []*Server, id uint32) uint64 {
	var top uint64
	for _, s := range servers {
		for _, g := range s.Node().GroupStats() {
			if g.ID == id {
				top = max(top, g.AppliedIndex)
			}
		}
	}
	return top
}

// A node that joins a running cluster is not ready while it is a
// nonvoter of a group, and never ready while it trails a leader by more
// than ReadyLagMax; it becomes ready once promoted and caught up. The
// cluster's own nodes are ready, followers included (their leaders
// answer on NATS).
func TestReadyzOfAJoiningNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	routes := []string{testnet.FreePort(t), testnet.FreePort(t), testnet.FreePort(t)}
	servers := startCluster(t, ctx, routes[:2], "n1", "n2")
	waitReady(t, ctx, servers...)

	// Entries for the joining node to catch up on.
	nc, err := nats.Connect(servers[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subjects := transport.Subjects{Prefix: transport.DefaultPrefix}
	request[transport.ResultsReply](t, nc, subjects.AccountsCreate(), &transport.CreateAccountsRequest{Accounts: []transport.Account{
		{ID: "a", Ledger: 1, Code: 1}, {ID: "b", Ledger: 1, Code: 1}}})
	for i := range 50 {
		request[transport.ResultsReply](t, nc, subjects.TransfersCreate(), &transport.CreateTransfersRequest{Transfers: []transport.Transfer{
			{ID: fmt.Sprintf("t%d", i), DebitAccountID: "a", CreditAccountID: "b", Amount: 1, Ledger: 1, Code: 1}}})
	}
	cfg := clusterConfig(t, "n3", routes, 2, 1)
	cfg.Join, cfg.NATSRoutes = true, routes[:2]
	n3, err := Start(ctx, cfg) // returns once it has joined every group, as a nonvoter
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n3.Close() })
	servers = append(servers, n3)

	// Until ready, sample: ready only as a voter everywhere, within the
	// lag of the leaders' applied index as it was before the check.
	joining := 0
	for {
		floor := map[uint32]uint64{}
		for _, id := range []uint32{0, 1} {
			floor[id] = readyLeaderApplied(servers[:2], id)
		}
		groups := n3.Node().GroupStats()
		err := n3.Ready(ctx)
		if err != nil {
			if strings.Contains(err.Error(), "not a voter yet") {
				joining++
			}
			if ctx.Err() != nil {
				t.Fatalf("never ready: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		after := n3.Node().GroupStats()
		for i, g := range after {
			if !g.Voter {
				t.Fatalf("ready while a nonvoter of group %d", g.ID)
			}
			if g.AppliedIndex+ReadyLagMax < floor[g.ID] {
				t.Fatalf("ready with group %d applied %d (%d before the check), its leader at %d before", g.ID, g.AppliedIndex, groups[i].AppliedIndex, floor[g.ID])
			}
		}
		break
	}
	t.Logf("not ready as a nonvoter %d times before it was ready", joining)
	waitReady(t, ctx, servers...)
}

func waitReady(t *testing.T, ctx context.Context, servers ...*Server) {
	t.Helper()
	for _, s := range servers {
		for {
			err := s.Ready(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s never ready: %v", s.nodeID, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
