package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// metaOnlyGate stands in front of one node's Raft port: it forwards the
// connections of the meta group and closes those of every shard group
// (raftmux's header: 0xA7, then the big-endian group id). The node behind
// it follows the meta state, answers its status and joins the shards moved
// to it, but receives nothing of them: it never catches up.
type metaOnlyGate struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	done   bool
}

func newMetaOnlyGate(t *testing.T, target string) *metaOnlyGate {
	ln, err := net.Listen("tcp", testnet.FreePort(t))
	if err != nil {
		t.Fatal(err)
	}
	g := &metaOnlyGate{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go g.serve()
	t.Cleanup(g.close)
	return g
}

func (g *metaOnlyGate) addr() string { return g.ln.Addr().String() }

func (g *metaOnlyGate) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		go g.route(c)
	}
}

// route reads c's header and pipes a meta group connection to the target.
func (g *metaOnlyGate) route(c net.Conn) {
	var h [5]byte
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, h[:]); err != nil || h[0] != 0xA7 || binary.BigEndian.Uint32(h[1:]) != 0 {
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		_ = c.Close()
		return
	}
	if !g.track(c, up) {
		return
	}
	if _, err := up.Write(h[:]); err != nil {
		_, _ = c.Close(), up.Close()
		return
	}
	go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
	_, _ = io.Copy(c, up)
	_ = c.Close()
}

func (g *metaOnlyGate) track(conns ...net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		g.conns[c] = struct{}{}
	}
	return true
}

func (g *metaOnlyGate) close() {
	_ = g.ln.Close()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.done = true
	for c := range g.conns {
		_ = c.Close()
	}
}

// shardMembers is a shard group's configuration as its leader answers the
// members request (node/mover.go's opMembers and members).
type shardMembers struct {
	Voters    []string `msgpack:"v"`
	Nonvoters []string `msgpack:"n"`
	Retry     string   `msgpack:"retry,omitempty"`
}

func membersOf(ctx context.Context, nc *nats.Conn, id uint32) (shardMembers, error) {
	msg := &nats.Msg{Subject: transport.Subjects{Prefix: transport.DefaultPrefix}.Shard(id), Header: nats.Header{wire.OpHeader: []string{"members"}}}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		return shardMembers{}, err
	}
	var m shardMembers
	if err := transport.Unmarshal(resp.Data, &m); err != nil {
		return shardMembers{}, err
	}
	if m.Retry != "" {
		return shardMembers{}, fmt.Errorf("shard %d: %s", id, m.Retry)
	}
	slices.Sort(m.Voters)
	slices.Sort(m.Nonvoters)
	return m, nil
}

// eventually polls cond until it holds, or fails the test with what it
// last said.
func eventually(ctx context.Context, t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	for {
		ok, why := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: never: %s", what, why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// movesTo returns the shards the meta state moves to node id, sorted.
func movesTo(srv *server.Server, id string) []uint32 {
	var out []uint32
	for s, m := range srv.Node().MetaState().Moving {
		if m.Add == id {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// joinedUncaught waits until three moves add id and id is a nonvoter of
// each of those shards, and returns them.
func joinedUncaught(ctx context.Context, t *testing.T, pc *placedCluster, nc *nats.Conn, id string) []uint32 {
	t.Helper()
	var shards []uint32
	eventually(ctx, t, id+" a nonvoter of the 3 shards moved to it", func() (bool, string) {
		shards = movesTo(pc.nodes["n1"], id)
		if len(shards) != 3 {
			return false, fmt.Sprintf("moves to %s: %v", id, shards)
		}
		for _, s := range shards {
			m, err := membersOf(ctx, nc, s)
			if err != nil || !slices.Contains(m.Nonvoters, id) {
				return false, fmt.Sprintf("shard %d: %+v (%v)", s, m, err)
			}
		}
		return true, ""
	})
	return shards
}

// settledOnThree reports whether no move is under way and every shard is
// placed on, and voted by, n1, n2 and n3 alone.
func settledOnThree(ctx context.Context, pc *placedCluster, nc *nats.Conn) (bool, string) {
	st := pc.nodes["n1"].Node().MetaState()
	if len(st.Moving) != 0 {
		return false, fmt.Sprintf("moving %v", st.Moving)
	}
	three := []string{"n1", "n2", "n3"}
	for s := uint32(1); s <= 4; s++ {
		if !slices.Equal(st.Placement[s], three) {
			return false, fmt.Sprintf("shard %d placed on %v", s, st.Placement[s])
		}
		m, err := membersOf(ctx, nc, s)
		if err != nil || !slices.Equal(m.Voters, three) || len(m.Nonvoters) != 0 {
			return false, fmt.Sprintf("shard %d: %+v (%v)", s, m, err)
		}
	}
	return true, ""
}

// promoteLead is how far the shards' applied indexes are pushed before n4
// joins: past node's promoteLagMax (256), so that an empty nonvoter is not
// close enough to be promoted.
const promoteLead = 400

// A fourth node joins three that hold every shard, is moved 3 replicas and
// joins those shards as a nonvoter, but never catches up (a gate in front
// of its Raft port lets only the meta group through); then it stops. With
// the bound shortened to 3 s (LEDGERD_TEST_MOVE_STALL), the meta leader
// cancels the three moves: each shard ends on its three voters, with no
// nonvoter and no move under way, and no new move goes to the silent node.
// The node comes back on its data, still cut off from the shards: moves to
// it start again and, since it answers, are not cancelled past the bound;
// draining it cancels them at once, it deletes its copies, and it is
// removed. Transfers run throughout: every acknowledged one is in the
// balances exactly once.
func TestMoveToANodeThatNeverCatchesUpIsCancelled(t *testing.T) {
	const stall = 3 * time.Second
	t.Setenv("LEDGERD_TEST_MOVE_STALL", stall.String())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pc := startThreePlaced(ctx, t)
	nc, err := nats.Connect(pc.nodes["n1"].ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The members request is internal: the client port refuses it.
	inc, err := pc.nodes["n1"].ConnectInternal()
	if err != nil {
		t.Fatal(err)
	}
	defer inc.Close()
	c := client.New(nc)
	l, stopLoad := startLoad(ctx, t, c)
	defer stopLoad()
	pushApplied(ctx, t, c, pc.nodes["n1"])

	// n4 joins behind the gate, is moved 3 replicas, joins those shards as
	// a nonvoter, and stops before it could catch up.
	cfg := pc.config("n4", 3)
	cfg.Join, cfg.NATSRoutes = true, pc.routes[:3]
	gate := newMetaOnlyGate(t, cfg.RaftListen)
	cfg.RaftAdvertise = gate.addr()
	stop := startNode(ctx, t, pc, cfg)
	first := joinedUncaught(ctx, t, pc, inc, "n4")
	stop()
	stopped := time.Now()
	eventually(ctx, t, "the moves to the stopped n4 cancelled", func() (bool, string) { return settledOnThree(ctx, pc, inc) })
	t.Logf("moves of shards %v to the stopped n4 cancelled %v after it stopped", first, time.Since(stopped).Round(time.Millisecond))
	// Silent, n4 is given no new move (4 rounds of the meta leader's plan).
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if moving := pc.nodes["n1"].Node().MetaState().Moving; len(moving) != 0 {
			t.Fatalf("a move started towards the silent n4: %v", moving)
		}
	}

	// n4 comes back on its data, still cut off from the shards.
	stop = startNode(ctx, t, pc, cfg)
	again := joinedUncaught(ctx, t, pc, inc, "n4")
	// It answers: past the bound, its moves are still waiting for it.
	time.Sleep(stall + stall/2)
	if got := movesTo(pc.nodes["n1"], "n4"); !slices.Equal(got, again) {
		t.Fatalf("moves to n4, which answers, changed past the bound: %v, were %v", got, again)
	}
	// Draining it cancels them at once; it deletes its copies.
	drainStart := time.Now()
	subjects := transport.Subjects{Prefix: transport.DefaultPrefix}
	p := operate(ctx, t, nc, nodeops.DrainSubject(subjects), "n4")
	t.Logf("n4 drained in %v: %+v", time.Since(drainStart).Round(time.Millisecond), p)
	eventually(ctx, t, "the moves to the draining n4 cancelled", func() (bool, string) { return settledOnThree(ctx, pc, inc) })
	waitHeld(ctx, t, pc, "n1", "n2", "n3", "n4")
	operate(ctx, t, nc, nodeops.RemoveSubject(subjects), "n4")
	stop()

	// Traffic goes on, and every acknowledged transfer is there once.
	sentBefore := l.sentNow()
	eventually(ctx, t, "traffic after n4's removal", func() (bool, string) {
		return l.sentNow() >= sentBefore+10 || l.failed() != nil, fmt.Sprintf("%d batches", l.sentNow()-sentBefore)
	})
	stopLoad()
	l.check(ctx, t)
}

// startNode starts a node of pc and returns what stops it (once, at the
// latest when the test ends).
func startNode(ctx context.Context, t *testing.T, pc *placedCluster, cfg server.Config) func() {
	t.Helper()
	srv, err := server.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc.nodes[cfg.NodeID] = srv
	stop := sync.OnceFunc(func() {
		if err := srv.Close(); err != nil {
			t.Logf("close %s: %v", cfg.NodeID, err)
		}
	})
	t.Cleanup(stop)
	return stop
}

// startThreePlaced starts n1, n2 and n3 (4 shards, 3 replicas, room for a
// fourth node's NATS route) and waits until each holds every shard.
func startThreePlaced(ctx context.Context, t *testing.T) *placedCluster {
	t.Helper()
	pc, _ := startThree(ctx, t, 4, 4)
	pc.waitSpread(ctx, map[string]int{"n1": 4, "n2": 4, "n3": 4})
	return pc
}

// pushApplied creates accounts, one request at a time, until every shard
// has applied promoteLead entries on srv (which holds every shard).
func pushApplied(ctx context.Context, t *testing.T, c *client.Client, srv *server.Server) {
	t.Helper()
	for i := 0; ; i++ {
		low := uint64(0)
		for _, g := range srv.Node().GroupStats() {
			if !g.IsMeta() && (low == 0 || g.AppliedIndex < low) {
				low = g.AppliedIndex
			}
		}
		if low >= promoteLead {
			return
		}
		var batch []transport.Account
		for j := range 16 {
			batch = append(batch, acct(fmt.Sprintf("push-%d-%d", i, j), 0))
		}
		if _, err := c.CreateAccounts(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
}
