package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// placedCluster is in-process nodes of one cluster that places replicas.
type placedCluster struct {
	t      *testing.T
	routes []string
	nodes  map[string]*server.Server
	dirs   map[string]string
}

func (pc *placedCluster) config(id string, i int) server.Config {
	level := slog.LevelError
	if os.Getenv("E2E_DEBUG") != "" {
		level = slog.LevelInfo
	}
	dir := pc.t.TempDir()
	pc.dirs[id] = dir
	return server.Config{
		NodeID: id, DataDir: dir, NATSListen: "127.0.0.1:0", RaftListen: testnet.FreePort(pc.t),
		NATSClusterListen: pc.routes[i], NATSRoutes: pc.routes, Insecure: true, Shards: 4, Replicas: 3,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", id),
	}
}

// placed returns how many replicas the meta state places on each node, and
// the moves under way, as node n sees them.
func placed(srv *server.Server) (map[string]int, int) {
	st := srv.Node().MetaState()
	per := map[string]int{}
	for _, rec := range st.Nodes {
		per[rec.ID] = 0
	}
	for _, voters := range st.Placement {
		for _, v := range voters {
			per[v]++
		}
	}
	return per, len(st.Moving)
}

// holds returns the shard groups a node has open (meta group left out).
func holds(srv *server.Server) []uint32 {
	var ids []uint32
	for _, g := range srv.Node().GroupStats() {
		if !g.IsMeta() {
			ids = append(ids, g.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// checkHeld fails unless every node holds exactly the shards placed on
// it, and has deleted the directories of the others.
func (pc *placedCluster) checkHeld(ids ...string) {
	pc.t.Helper()
	st := pc.nodes[ids[0]].Node().MetaState()
	for _, id := range ids {
		var want []uint32
		for shard, voters := range st.Placement {
			if slices.Contains(voters, id) {
				want = append(want, shard)
			}
		}
		slices.Sort(want)
		if got := holds(pc.nodes[id]); !slices.Equal(got, want) {
			pc.t.Errorf("%s holds shards %v, placed %v", id, got, want)
		}
		for s := uint32(1); s <= 4; s++ {
			_, err := os.Stat(filepath.Join(pc.dirs[id], fmt.Sprintf("shard-%d", s)))
			if exists := err == nil; exists != slices.Contains(want, s) {
				pc.t.Errorf("%s: directory of shard %d exists %t, placed here %t", id, s, exists, slices.Contains(want, s))
			}
		}
	}
}

// waitSpread waits until the placement gives every node of want its count
// of replicas, no move is under way and every node holds what is placed.
func (pc *placedCluster) waitSpread(ctx context.Context, want map[string]int) time.Duration {
	pc.t.Helper()
	start := time.Now()
	for {
		per, moving := placed(pc.nodes["n1"])
		ok := moving == 0
		for id, n := range want {
			ok = ok && per[id] == n
		}
		if ok {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			pc.t.Fatalf("spread never reached %v: %v, %d moves under way", want, per, moving)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// load sends transfers of 1 from bank to the users, one batch at a time,
// each batch again with the same ids until it is answered, and counts what
// the cluster acknowledged per user.
type load struct {
	c      *client.Client
	users  []string
	mu     sync.Mutex
	credit map[string]uint64
	sent   int
	err    error
}

func (l *load) run(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	for b := 0; ctx.Err() == nil; b++ {
		var batch []transport.Transfer
		for i := range 4 {
			to := l.users[(b*4+i)%len(l.users)]
			batch = append(batch, xfer(fmt.Sprintf("p%d-%d", b, i), "bank", to, 1))
		}
		results, err := l.send(batch)
		l.mu.Lock()
		if err != nil {
			l.err = err
			l.mu.Unlock()
			return
		}
		for i, r := range results {
			if r.Code == transport.CodeOK || r.Code == transport.CodeExists {
				l.credit[batch[i].CreditAccountID]++
			}
		}
		l.sent++
		l.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // a light load
	}
}

// send sends one batch until the cluster answers it (the same ids each
// time: a retry of an applied transfer answers exists).
func (l *load) send(batch []transport.Transfer) ([]transport.Result, error) {
	var last error
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		results, err := l.c.CreateTransfers(ctx, batch)
		cancel()
		if err == nil {
			return results, nil
		}
		last = err
	}
	return nil, fmt.Errorf("batch %s never answered: %w", batch[0].ID, last)
}

// operate asks the meta leader about node id on subject until done.
func operate(ctx context.Context, t *testing.T, nc *nats.Conn, subject, id string) nodeops.Progress {
	t.Helper()
	body, _ := transport.Marshal(&nodeops.Request{Node: id})
	for {
		msg, err := nc.RequestWithContext(ctx, subject, body)
		var p nodeops.Progress
		if err == nil {
			if err := transport.Unmarshal(msg.Data, &p); err != nil {
				t.Fatal(err)
			}
			if p.Error != "" {
				t.Fatalf("%s %s: %s", subject, id, p.Error)
			}
			if p.Done {
				return p
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s %s: not done: %+v (%v)", subject, id, p, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// A three-node cluster with --replicas 3 and 4 shards: every node holds
// every shard. A fourth node joins under a light load of transfers and
// receives replicas, one move at a time per shard, until each node holds
// 3 of the 12; nodes moved off a shard close it and delete its copy. Then
// the fourth node is drained (it ends holding nothing and leading nothing)
// and removed, and traffic goes on throughout: every acknowledged transfer
// is in the balances exactly once.
func TestNodesJoinAndDrainUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pc, _ := startThree(ctx, t, 4, 4)
	ids := []string{"n1", "n2", "n3"}
	pc.waitSpread(ctx, map[string]int{"n1": 4, "n2": 4, "n3": 4})
	pc.checkHeld(ids...)

	nc, err := nats.Connect(pc.nodes["n1"].ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	l, stopLoad := startLoad(ctx, t, c)
	defer stopLoad()

	// The fourth node joins: 12 replicas over 4 nodes, 3 each.
	cfg := pc.config("n4", 3)
	cfg.Join, cfg.NATSRoutes = true, pc.routes[:3]
	joinStart := time.Now()
	n4, err := server.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n4.Close() })
	pc.nodes["n4"] = n4
	took := pc.waitSpread(ctx, map[string]int{"n1": 3, "n2": 3, "n3": 3, "n4": 3})
	t.Logf("n4 joined and received 3 replicas (3 moves) in %v (%v after its start returned)", time.Since(joinStart).Round(time.Millisecond), took.Round(time.Millisecond))
	waitHeld(ctx, t, pc, "n1", "n2", "n3", "n4")

	// Drain n4: its replicas go back, it leads nothing, then it is removed.
	drainStart := time.Now()
	p := operate(ctx, t, nc, nodeops.DrainSubject(transport.Subjects{Prefix: transport.DefaultPrefix}), "n4")
	t.Logf("n4 drained in %v: %+v", time.Since(drainStart).Round(time.Millisecond), p)
	pc.waitSpread(ctx, map[string]int{"n1": 4, "n2": 4, "n3": 4, "n4": 0})
	waitHeld(ctx, t, pc, "n1", "n2", "n3", "n4")
	operate(ctx, t, nc, nodeops.RemoveSubject(transport.Subjects{Prefix: transport.DefaultPrefix}), "n4")
	if st := pc.nodes["n1"].Node().MetaState(); slices.ContainsFunc(st.Nodes, func(r raftfsm.NodeRecord) bool { return r.ID == "n4" }) {
		t.Error("n4 is still a node of the meta state after its removal")
	}
	sentBefore := l.sentNow()
	time.Sleep(300 * time.Millisecond)
	if err := n4.Close(); err != nil {
		t.Logf("close n4: %v", err)
	}
	// Traffic goes on without n4.
	for l.sentNow() < sentBefore+10 {
		if ctx.Err() != nil || l.failed() != nil {
			t.Fatalf("traffic stopped after the drain: %v", l.failed())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopLoad()
	l.check(ctx, t)
}

// startThree starts n1, n2 and n3 of a new cluster of shards shards, 3
// replicas each, with NATS routes for routes nodes in all (room for nodes
// that join later), and returns it with the three configurations.
func startThree(ctx context.Context, t *testing.T, shards uint32, routes int) (*placedCluster, []server.Config) {
	t.Helper()
	pc := &placedCluster{t: t, nodes: map[string]*server.Server{}, dirs: map[string]string{}}
	for range routes {
		pc.routes = append(pc.routes, testnet.FreePort(t))
	}
	ids := []string{"n1", "n2", "n3"}
	cfgs := make([]server.Config, len(ids))
	for i, id := range ids {
		cfgs[i] = pc.config(id, i)
		cfgs[i].BootstrapExpect, cfgs[i].NATSRoutes, cfgs[i].Shards = 3, pc.routes[:3], shards
	}
	srvs := make([]*server.Server, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() { srvs[i], errs[i] = server.Start(ctx, cfgs[i]) })
	}
	wg.Wait()
	for i, srv := range srvs {
		if srv != nil {
			pc.nodes[ids[i]] = srv
			t.Cleanup(func() { _ = srv.Close() })
		}
	}
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return pc, cfgs
}

// startLoad creates a bank and eight users and sends a light load of
// transfers between them (load.run) until stop, which waits for it.
func startLoad(ctx context.Context, t *testing.T, c *client.Client) (l *load, stop func()) {
	t.Helper()
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"}
	accounts := []transport.Account{acct("bank", 0)}
	for _, u := range users {
		accounts = append(accounts, acct(u, 0))
	}
	if _, err := c.CreateAccounts(ctx, accounts); err != nil {
		t.Fatal(err)
	}
	l = &load{c: c, users: users, credit: map[string]uint64{}}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go l.run(lctx, done)
	var once sync.Once
	return l, func() { once.Do(func() { cancel(); <-done }) }
}

// check fails unless the load (stopped) ran without error, every user was
// credited what was acknowledged to it, and the bank debited their sum.
func (l *load) check(ctx context.Context, t *testing.T) {
	t.Helper()
	if l.err != nil {
		t.Fatal(l.err)
	}
	got, err := l.c.LookupAccounts(ctx, append([]string{"bank"}, l.users...))
	if err != nil || len(got) != len(l.users)+1 {
		t.Fatalf("lookup: %d accounts, %v", len(got), err)
	}
	var total uint64
	for _, a := range got[1:] {
		if a.CreditsPosted != l.credit[a.ID] {
			t.Errorf("%s: credits posted %d, acknowledged %d", a.ID, a.CreditsPosted, l.credit[a.ID])
		}
		total += a.CreditsPosted
	}
	if got[0].DebitsPosted != total || total == 0 {
		t.Errorf("bank debited %d, users credited %d", got[0].DebitsPosted, total)
	}
	t.Logf("%d batches of 4 transfers acknowledged, %d transfers", l.sent, total)
}

func (l *load) sentNow() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent
}

func (l *load) failed() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// waitHeld waits until every node holds what is placed on it (a node
// closes a shard moved off it within a round of its placement loop).
func waitHeld(ctx context.Context, t *testing.T, pc *placedCluster, ids ...string) {
	t.Helper()
	for {
		ok := true
		st := pc.nodes[ids[0]].Node().MetaState()
		for _, id := range ids {
			var want []uint32
			for shard, voters := range st.Placement {
				if slices.Contains(voters, id) {
					want = append(want, shard)
				}
			}
			slices.Sort(want)
			ok = ok && slices.Equal(holds(pc.nodes[id]), want)
		}
		if ok {
			pc.checkHeld(ids...)
			return
		}
		select {
		case <-ctx.Done():
			pc.checkHeld(ids...)
			t.Fatal("nodes never held what is placed on them")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
