package crash

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// TestThreeNodesSurviveKillingALeader: three ledgerd processes on loopback
// form one cluster (--bootstrap-expect 3, embedded NATS joined by routes),
// every group replicated on the three. Transfers, same-shard and across
// shards, are acknowledged; the node leading shard 1 is killed with
// SIGKILL while clients go on through the other nodes; the shard fails over
// and serves again; the node restarts from its data and rejoins. Once the
// cluster is quiet every acknowledged transfer is there, once, and the
// balances are their sums; the leaders spread over the nodes; a fourth node
// joins (--join) and becomes a caught-up replica of every shard. SIGTERM
// then stops each node cleanly.
func TestThreeNodesSurviveKillingALeader(t *testing.T) {
	rng := crashRNG(t, 0x3a0de)
	mc := newMultiCluster(t, 3, 2)
	for i := range mc.nodes {
		mc.launch(i)
	}
	for i := range mc.nodes {
		mc.waitReady(i)
	}
	nc, c := mc.connect()
	defer nc.Close()
	fast := client.New(nc, client.WithRequestTimeout(250*time.Millisecond))

	st := mc.status(c)
	ids := accountsPerShard(t, st, 3)
	createAccounts(t, c, ids)
	acked := map[string]transport.Transfer{}
	next := 0
	batch := func() []transport.Transfer {
		var xs []transport.Transfer
		for range 20 {
			next++
			d, cr := ids[rng.IntN(len(ids))], ids[rng.IntN(len(ids))]
			for cr == d {
				cr = ids[rng.IntN(len(ids))]
			}
			xs = append(xs, newTransfer(fmt.Sprintf("m-%d", next), d, cr, 1+uint64(rng.IntN(100))))
		}
		return xs
	}
	// send retries a batch (same ids) until it is answered, and records it.
	send := func(xs []transport.Transfer) {
		deadline := time.Now().Add(2 * quietGuard)
		for {
			ctx, cancel := reqCtx()
			res, err := c.CreateTransfers(ctx, xs)
			cancel()
			if err == nil {
				for i, r := range res {
					if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
						t.Fatalf("transfer %s: %v", xs[i].ID, r.Code)
					}
					acked[xs[i].ID] = xs[i]
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("batch never answered: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for range 10 {
		send(batch())
	}

	// Kill the leader of shard 1, measure until a transfer on shard 1
	// commits again, restart the node; again (LEDGERD_FAILOVERS times, 3 by
	// default).
	kills := 3
	if v := os.Getenv("LEDGERD_FAILOVERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("LEDGERD_FAILOVERS=%q", v)
		}
		kills = n
	}
	var failovers []time.Duration
	for k := range kills {
		victim := -1
		for _, s := range mc.status(c).Shards {
			if s.ID == st.Shards[0].ID {
				victim = mc.index(s.Leader)
			}
		}
		if victim < 0 {
			t.Fatal("shard 1 has no leader")
		}
		mc.kill(victim)
		killed := time.Now()
		// The probe resends every 250 ms, so that a request lost with the
		// killed node's router costs 250 ms, not the client's timeout.
		probe := newTransfer(fmt.Sprintf("after-kill-%d", k), ids[0], ids[1], 1) // both on shard 1
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
			res, err := fast.CreateTransfers(ctx, []transport.Transfer{probe})
			cancel()
			if err == nil && (res[0].Code == transport.CodeOK || res[0].Code == transport.CodeExists) {
				break
			}
			if time.Since(killed) > quietGuard {
				t.Fatalf("shard %d not served %v after its leader was killed: %v %v", st.Shards[0].ID, quietGuard, res, err)
			}
		}
		failovers = append(failovers, time.Since(killed))
		acked[probe.ID] = probe
		if k == 0 { // the status lists the dead node unreachable
			var health string
			for _, n := range mc.status(c).Nodes {
				if n.ID == mc.nodes[victim].id {
					health = n.Health
				}
			}
			if health != "unreachable" {
				t.Errorf("killed %s: status says %q, want unreachable", mc.nodes[victim].id, health)
			}
		}
		for range 5 {
			send(batch())
		}
		mc.launch(victim)
		mc.waitReady(victim)
		send(batch())
	}
	slices.Sort(failovers)
	t.Logf("failover of shard %d over %d kills of its leader (SIGKILL to the first transfer committed on it): p50 %v, p99 %v, max %v",
		st.Shards[0].ID, kills, failovers[len(failovers)/2].Round(time.Millisecond),
		failovers[min(len(failovers)-1, len(failovers)*99/100)].Round(time.Millisecond), failovers[len(failovers)-1].Round(time.Millisecond))
	mc.waitQuiet(c)

	// Every acknowledged transfer is there once; balances are their sums.
	var idsAcked []string
	want := map[string][2]uint64{}
	for id, x := range acked {
		idsAcked = append(idsAcked, id)
		d, cr := want[x.DebitAccountID], want[x.CreditAccountID]
		d[0] += x.Amount
		cr[1] += x.Amount
		want[x.DebitAccountID], want[x.CreditAccountID] = d, cr
	}
	found := lookupTransfers(t, c, idsAcked)
	for id, x := range acked {
		if got, ok := found[id]; !ok || !sameTransfer(got, x) {
			t.Errorf("acknowledged %s: found %+v", id, got)
		}
	}
	for id, a := range lookupAccounts(t, c, ids) {
		if w := want[id]; a.DebitsPosted != w[0] || a.CreditsPosted != w[1] || a.DebitsPending != 0 || a.CreditsPending != 0 {
			t.Errorf("%s: %+v, the acknowledged transfers give debits %d, credits %d", id, a, w[0], w[1])
		}
	}
	// Leaders spread: three groups (meta and two shards) over three nodes,
	// one each, so the two shards are led by different nodes. Every node
	// is up and holds a replica of each shard, none lagging at rest.
	deadline := time.Now().Add(quietGuard)
	for {
		st := mc.status(c)
		spread := st.Shards[0].Leader != st.Shards[1].Leader
		up := 0
		for _, n := range st.Nodes {
			if n.Health == "up" && len(n.Groups) == 1+mc.shards {
				up++
			}
		}
		caughtUp := true
		for _, s := range st.Shards {
			caughtUp = caughtUp && len(s.Replicas) == len(mc.nodes)
			for _, r := range s.Replicas {
				caughtUp = caughtUp && r.Lag == 0
			}
		}
		if spread && up == len(mc.nodes) && caughtUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: shards led by %s and %s, %d nodes up, replicas %+v %+v", quietGuard,
				st.Shards[0].Leader, st.Shards[1].Leader, up, st.Shards[0].Replicas, st.Shards[1].Replicas)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A fourth node joins the running cluster: every group adds it, it
	// catches up, and it becomes a voter.
	mc.add(true)
	mc.launch(3)
	mc.waitReady(3)
	send(batch())
	deadline = time.Now().Add(quietGuard)
	for {
		st := mc.status(c)
		joined := true
		for _, s := range st.Shards {
			n := 0
			for _, r := range s.Replicas {
				if r.Lag == 0 {
					n++
				}
			}
			joined = joined && n == 4
		}
		// It joined as a nonvoter and asks to vote once caught up.
		for _, n := range st.Nodes {
			joined = joined && len(n.Voters) == 4
		}
		if joined {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-4 not a caught-up voting replica of every shard after %v: %+v %+v", quietGuard, st.Shards, st.Nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i := range mc.nodes {
		mc.stop(i)
	}
}

type multiNode struct {
	id                              string
	natsAddr, clusterAddr, raftAddr string
	dataDir                         string
	join                            bool
	args                            []string // more flags (TLS)
	cur                             *process
	runs                            []*process
}

type multiCluster struct {
	t      *testing.T
	bin    string
	dir    string
	shards int
	nodes  []*multiNode
	formed int // the nodes that formed the cluster (--bootstrap-expect)
}

func newMultiCluster(t *testing.T, n, shards int) *multiCluster {
	mc := &multiCluster{t: t, bin: buildLedgerd(t), shards: shards}
	dir := t.TempDir()
	mc.dir, mc.formed = dir, n
	for range n {
		mc.add(false)
	}
	t.Cleanup(mc.cleanup)
	return mc
}

// add adds a node to the test's list; join: it joins the running cluster
// instead of forming it.
func (mc *multiCluster) add(join bool) {
	i := len(mc.nodes)
	mc.nodes = append(mc.nodes, &multiNode{
		id: fmt.Sprintf("node-%d", i+1), natsAddr: testnet.FreePort(mc.t), clusterAddr: testnet.FreePort(mc.t), raftAddr: testnet.FreePort(mc.t),
		dataDir: filepath.Join(mc.dir, fmt.Sprintf("node-%d", i+1)), join: join,
	})
}

func (mc *multiCluster) index(id string) int {
	return slices.IndexFunc(mc.nodes, func(n *multiNode) bool { return n.id == id })
}

// launch starts node i without waiting for it: a forming cluster is ready
// only once every node runs.
func (mc *multiCluster) launch(i int) {
	n := mc.nodes[i]
	var routes []string
	for _, o := range mc.nodes {
		if o != n {
			routes = append(routes, o.clusterAddr)
		}
	}
	lw := testnet.NewLog()
	cmd := exec.Command(mc.bin,
		"--node-id", n.id, "--data-dir", n.dataDir,
		"--nats-listen", n.natsAddr, "--nats-cluster-listen", n.clusterAddr, "--nats-routes", strings.Join(routes, ","),
		"--raft-listen", n.raftAddr, "--shards", fmt.Sprint(mc.shards), "--log-level", "info",
		// Every node holds every shard, as these tests check: a shard has
		// a voter on each of up to 5 nodes (a node that joins receives a
		// replica of every shard through replica moves).
		"--replicas", "5",
	)
	cmd.Args = append(cmd.Args, n.args...)
	if !slices.Contains(n.args, "--tls-cert") {
		cmd.Args = append(cmd.Args, "--insecure") // the tests of node TLS give it
	}
	if n.join {
		cmd.Args = append(cmd.Args, "--join")
	} else {
		cmd.Args = append(cmd.Args, "--bootstrap-expect", fmt.Sprint(mc.formed))
	}
	cmd.Env = testnet.ChildEnv()
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		mc.t.Fatalf("start %s: %v", n.id, err)
	}
	p := &process{cmd: cmd, log: lw, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	n.cur = p
	n.runs = append(n.runs, p)
}

func (mc *multiCluster) waitReady(i int) {
	mc.t.Helper()
	n := mc.nodes[i]
	select {
	case <-n.cur.log.Ready():
	case <-n.cur.exited:
		mc.t.Fatalf("%s exited before ready: %v\n%s", n.id, n.cur.waitErr, n.cur.log.Tail(30))
	case <-time.After(readyGuard):
		mc.t.Fatalf("%s not ready after %v\n%s", n.id, readyGuard, n.cur.log.Tail(30))
	}
}

func (mc *multiCluster) kill(i int) {
	mc.t.Helper()
	p := mc.nodes[i].cur
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(exitGuard):
		mc.t.Fatalf("%s did not die after SIGKILL", mc.nodes[i].id)
	}
	mc.nodes[i].cur = nil
}

// pause stops node i with SIGSTOP, as a long GC pause or a host swapping
// would: it keeps its sockets and its Raft state, answers nothing, and its
// peers see only silence, until resume.
func (mc *multiCluster) pause(i int) {
	mc.t.Helper()
	mc.signal(i, syscall.SIGSTOP, 'T')
}

// resume wakes node i with SIGCONT.
func (mc *multiCluster) resume(i int) {
	mc.t.Helper()
	mc.signal(i, syscall.SIGCONT, 0)
}

// signal sends sig to node i and, when state is not 0, waits until the
// kernel reports the process in that state (/proc/<pid>/stat; skipped where
// there is no /proc): a signal is delivered asynchronously.
func (mc *multiCluster) signal(i int, sig syscall.Signal, state byte) {
	mc.t.Helper()
	n := mc.nodes[i]
	if err := n.cur.cmd.Process.Signal(sig); err != nil {
		mc.t.Fatalf("%v to %s: %v", sig, n.id, err)
	}
	if state == 0 {
		return
	}
	deadline := time.Now().Add(exitGuard)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.cur.cmd.Process.Pid))
		if err != nil {
			return
		}
		// "pid (comm) state ...": comm may hold spaces and ')', so the
		// state follows the last ") ".
		if j := strings.LastIndex(string(b), ") "); j >= 0 && j+2 < len(b) && b[j+2] == state {
			return
		}
		if time.Now().After(deadline) {
			mc.t.Fatalf("%s not in state %c %v after %v: %s", n.id, state, exitGuard, sig, b)
		}
		time.Sleep(time.Millisecond)
	}
}

// stop sends SIGTERM and expects a clean exit after "stopping".
func (mc *multiCluster) stop(i int) {
	mc.t.Helper()
	n := mc.nodes[i]
	p := n.cur
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(exitGuard):
		mc.t.Fatalf("%s did not exit %v after SIGTERM", n.id, exitGuard)
	}
	n.cur = nil
	if p.waitErr != nil || !p.log.Contains("stopping") {
		mc.t.Errorf("%s after SIGTERM: %v (logged stopping: %v)", n.id, p.waitErr, p.log.Contains("stopping"))
	}
}

func (mc *multiCluster) cleanup() {
	for _, n := range mc.nodes {
		if p := n.cur; p != nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	for _, n := range mc.nodes {
		for r, p := range n.runs {
			for _, bad := range []string{"panic:", "DATA RACE", "fatal error:"} {
				if p.log.Contains(bad) {
					mc.t.Errorf("%s run %d logged %q", n.id, r+1, bad)
				}
			}
			if mc.t.Failed() {
				mc.t.Logf("---- %s run %d (last lines) ----\n%s", n.id, r+1, p.log.Tail(40))
			}
		}
	}
}

// connect connects to every node's NATS: the client reconnects to another
// when one dies.
func (mc *multiCluster) connect() (*nats.Conn, *client.Client) {
	var urls []string
	for _, n := range mc.nodes {
		urls = append(urls, "nats://"+n.natsAddr)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(5*time.Second))
	if err != nil {
		mc.t.Fatalf("connect: %v", err)
	}
	return nc, client.New(nc)
}

// connectTo connects to node i's NATS alone: requests go through that
// node's router, whatever befalls the others.
func (mc *multiCluster) connectTo(i int) (*nats.Conn, *client.Client) {
	mc.t.Helper()
	nc, err := nats.Connect("nats://"+mc.nodes[i].natsAddr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(5*time.Second))
	if err != nil {
		mc.t.Fatalf("connect %s: %v", mc.nodes[i].id, err)
	}
	return nc, client.New(nc)
}

func (mc *multiCluster) status(c *client.Client) *transport.StatusReply {
	mc.t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := c.Status(ctx)
		cancel()
		ok := err == nil && len(st.Shards) == mc.shards
		for _, s := range st.Shards {
			ok = ok && s.Error == "" && s.Leader != ""
		}
		if ok {
			return st
		}
		if time.Now().After(deadline) {
			mc.t.Fatalf("no status with every shard led after %v: %v %+v", quietGuard, err, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitQuiet waits until every shard has a leader and empty outbox and inbox,
// and returns that status.
func (mc *multiCluster) waitQuiet(c *client.Client) *transport.StatusReply {
	mc.t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		st := mc.status(c)
		quiet := true
		for _, s := range st.Shards {
			quiet = quiet && s.OutboxDepth == 0 && s.InboxDepth == 0
		}
		if quiet {
			return st
		}
		if time.Now().After(deadline) {
			mc.t.Fatalf("not quiet after %v: %+v", quietGuard, st.Shards)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLeadersSpread waits until every node is up, every group led, and no
// node leads more than its share (groups ÷ nodes, rounded up: with three
// nodes and two shards, one each), so that no node hands a leadership over
// on its own while the test runs.
func (mc *multiCluster) waitLeadersSpread(c *client.Client) *transport.StatusReply {
	mc.t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		st := mc.status(c)
		groups := 1 + mc.shards
		share := (groups + len(mc.nodes) - 1) / len(mc.nodes)
		spread, up, led := true, 0, 0
		for _, n := range st.Nodes {
			if n.Health == "up" {
				up++
			}
			leads := 0
			for _, g := range n.Groups {
				if g.State == "Leader" {
					leads++
				}
			}
			led += leads
			spread = spread && leads <= share
		}
		if spread && up == len(mc.nodes) && led == groups {
			return st
		}
		if time.Now().After(deadline) {
			mc.t.Fatalf("leaders not spread over the nodes after %v: %+v", quietGuard, st.Nodes)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitCaughtUp waits until every node holds a replica of every shard that
// has applied as far as the shard's leader.
func (mc *multiCluster) waitCaughtUp(c *client.Client) *transport.StatusReply {
	mc.t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		st := mc.status(c)
		caughtUp := true
		for _, s := range st.Shards {
			caughtUp = caughtUp && len(s.Replicas) == len(mc.nodes)
			for _, r := range s.Replicas {
				caughtUp = caughtUp && r.Lag == 0 && r.AppliedIndex == s.Replicas[0].AppliedIndex
			}
		}
		if caughtUp {
			return st
		}
		if time.Now().After(deadline) {
			mc.t.Fatalf("replicas not caught up after %v: %+v", quietGuard, st.Shards)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// createAccounts creates a plain account (no flags) for each id, every one
// of which must be new.
func createAccounts(t *testing.T, c *client.Client, ids []string) {
	t.Helper()
	var accounts []transport.Account
	for _, id := range ids {
		accounts = append(accounts, newAccount(id, 0))
	}
	ctx, cancel := reqCtx()
	defer cancel()
	if res, err := c.CreateAccounts(ctx, accounts); err != nil || !allOK(res) {
		t.Fatalf("accounts: %v %v", err, res)
	}
}

// accountsPerShard returns n account ids on each shard, shard by shard in
// the status's order.
func accountsPerShard(t *testing.T, st *transport.StatusReply, n int) []string {
	index := map[uint16]int{}
	for i, s := range st.Shards {
		for _, slot := range s.Slots {
			index[slot] = i
		}
	}
	per := make([][]string, len(st.Shards))
	for i := 0; ; i++ {
		id := fmt.Sprintf("mn-%d", i)
		if s := index[transport.Slot(id)]; len(per[s]) < n {
			per[s] = append(per[s], id)
		}
		done := true
		for _, p := range per {
			done = done && len(p) == n
		}
		if done {
			break
		}
	}
	var ids []string
	for _, p := range per {
		ids = append(ids, p...)
	}
	return ids
}
