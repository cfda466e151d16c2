package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/nodetls"
	"github.com/nats-io/nats.go"
)

// Guards: how long the harness waits before it calls a run stuck. They
// bound hangs; they assert nothing about speed.
const (
	readyGuard = 90 * time.Second
	exitGuard  = 30 * time.Second
	quietGuard = 3 * time.Minute
)

// cluster is three ledgerd processes on loopback. Every node dials every
// peer's Raft port through a proxy of its own for that pair
// (LEDGERD_TEST_RAFT_VIA), so a partition cuts exactly one node's Raft
// traffic; NATS (embedded, joined by routes) is left alone. Nodes run as in
// production, with mutual TLS between them: the proxies pass it through.
type cluster struct {
	t      *testing.T
	bin    string
	dir    string
	shards int
	nodes  []*node
	// proxies[i][j] carries node i's dials to node j's Raft port.
	proxies [][]*proxy
}

type node struct {
	id, natsAddr, clusterAddr, raftAddr, dataDir string
	env                                          []string
	tls                                          []string // its TLS flags; the files live outside its data
	cur                                          *process
	runs                                         []*process
}

type process struct {
	cmd     *exec.Cmd
	log     *testnet.Log
	exited  chan struct{}
	waitErr error
}

func newCluster(t *testing.T, bin string, n, shards int) *cluster {
	c := &cluster{t: t, bin: bin, dir: t.TempDir(), shards: shards}
	// The proxies listen first: a port the kernel hands a listener is
	// never one freePort picked for a node that has not bound it yet.
	c.proxies = make([][]*proxy, n)
	for i := range n {
		c.proxies[i] = make([]*proxy, n)
		for j := range n {
			if i != j {
				c.proxies[i][j] = newProxy(t)
			}
		}
	}
	ca, err := nodetls.NewCA("chaos cluster")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		f, err := ca.Issue(t.TempDir(), nodetls.DefaultServerName)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, &node{
			id: fmt.Sprintf("node-%d", i+1), natsAddr: testnet.FreePort(t), clusterAddr: testnet.FreePort(t), raftAddr: testnet.FreePort(t),
			dataDir: filepath.Join(c.dir, fmt.Sprintf("node-%d", i+1)),
			tls:     []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA},
		})
	}
	for i, a := range c.nodes {
		var via []string
		for j, b := range c.nodes {
			if i == j {
				continue
			}
			p := c.proxies[i][j]
			p.target = b.raftAddr
			via = append(via, b.raftAddr+"="+p.addr())
		}
		a.env = append(testnet.ChildEnv(), "LEDGERD_TEST_RAFT_VIA="+strings.Join(via, ","))
	}
	for _, row := range c.proxies {
		for _, p := range row {
			if p != nil {
				go p.serve()
			}
		}
	}
	t.Cleanup(c.cleanup)
	for i := range c.nodes {
		c.launch(i, false)
	}
	for i := range c.nodes {
		c.waitReady(i)
	}
	return c
}

// launch starts node i: forming the cluster (--bootstrap-expect, which a
// node with data ignores), or joining it (a node whose data was lost).
func (c *cluster) launch(i int, join bool) {
	n := c.nodes[i]
	var routes []string
	for _, o := range c.nodes {
		if o != n {
			routes = append(routes, o.clusterAddr)
		}
	}
	lw := testnet.NewLog()
	cmd := exec.Command(c.bin,
		"--node-id", n.id, "--data-dir", n.dataDir,
		"--nats-listen", n.natsAddr, "--nats-cluster-listen", n.clusterAddr, "--nats-routes", strings.Join(routes, ","),
		"--raft-listen", n.raftAddr, "--shards", fmt.Sprint(c.shards), "--log-level", "info",
		// Snapshots every few hundred entries: restarts restore them and
		// a rejoining node is sent one.
		"--snapshot-threshold", "256", "--snapshot-interval", "500ms", "--snapshot-trailing-logs", "64",
	)
	cmd.Args = append(cmd.Args, n.tls...)
	if join {
		cmd.Args = append(cmd.Args, "--join")
	} else {
		cmd.Args = append(cmd.Args, "--bootstrap-expect", fmt.Sprint(len(c.nodes)))
	}
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", n.id, err)
	}
	p := &process{cmd: cmd, log: lw, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	n.cur = p
	n.runs = append(n.runs, p)
}

func (c *cluster) waitReady(i int) {
	c.t.Helper()
	n := c.nodes[i]
	deadline := time.After(readyGuard)
	for {
		select {
		case <-n.cur.log.Ready():
			return
		case <-deadline:
			c.t.Fatalf("%s not ready after %v\n%s", n.id, readyGuard, n.cur.log.Tail(30))
		case <-time.After(100 * time.Millisecond):
		}
		// A forming node waits for every other: any of them exiting
		// is the reason.
		for _, o := range c.nodes {
			if p := o.cur; p != nil {
				select {
				case <-p.exited:
					c.t.Fatalf("%s exited while %s was starting: %v\n%s", o.id, n.id, p.waitErr, p.log.Tail(30))
				default:
				}
			}
		}
	}
}

// kill sends SIGKILL (also to a paused process) and reaps it.
func (c *cluster) kill(i int) {
	c.t.Helper()
	p := c.nodes[i].cur
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(exitGuard):
		c.t.Fatalf("%s did not die after SIGKILL", c.nodes[i].id)
	}
	c.nodes[i].cur = nil
}

func (c *cluster) signal(i int, sig syscall.Signal) {
	c.t.Helper()
	if err := c.nodes[i].cur.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("%s: %v: %v", c.nodes[i].id, sig, err)
	}
}

// wipe deletes node i's data directory (the node is down).
func (c *cluster) wipe(i int) {
	c.t.Helper()
	if err := os.RemoveAll(c.nodes[i].dataDir); err != nil {
		c.t.Fatal(err)
	}
}

// partition cuts (or heals) every Raft connection to and from node i.
func (c *cluster) partition(i int, cut bool) {
	for j := range c.nodes {
		if j != i {
			c.proxies[i][j].setCut(cut)
			c.proxies[j][i].setCut(cut)
		}
	}
}

func (c *cluster) cleanup() {
	for _, n := range c.nodes {
		if p := n.cur; p != nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	for _, row := range c.proxies {
		for _, p := range row {
			if p != nil {
				p.close()
			}
		}
	}
	for _, n := range c.nodes {
		for r, p := range n.runs {
			for _, bad := range []string{"panic:", "DATA RACE", "fatal error:"} {
				if p.log.Contains(bad) {
					c.t.Errorf("%s run %d logged %q", n.id, r+1, bad)
				}
			}
			if c.t.Failed() {
				c.t.Logf("---- %s run %d (last lines) ----\n%s", n.id, r+1, p.log.Tail(40))
			}
		}
	}
}

// connect returns a client connected to every node's NATS: it moves to
// another node when one dies, and notices a paused one within seconds.
func (c *cluster) connect() (*nats.Conn, *client.Client) {
	c.t.Helper()
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, "nats://"+n.natsAddr)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.Timeout(2*time.Second), nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		c.t.Fatalf("connect: %v", err)
	}
	c.t.Cleanup(nc.Close)
	return nc, client.New(nc)
}

// status asks for the cluster's status until it gets one.
func (c *cluster) status(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cl.Status(ctx)
		cancel()
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no status after %v: %v", quietGuard, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leaderOf returns the index of the node leading shard id, or -1.
func (c *cluster) leaderOf(st *transport.StatusReply, id uint32) int {
	for _, s := range st.Shards {
		if s.ID == id {
			for i, n := range c.nodes {
				if n.id == s.Leader {
					return i
				}
			}
		}
	}
	return -1
}

// waitQuiet waits until every node is a voter, every shard has a leader,
// no saga is in flight (outboxes empty) and every replica has applied what
// its leader has.
func (c *cluster) waitQuiet(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		st := c.status(cl)
		why := c.notQuiet(st)
		if why == "" {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster not quiet after %v: %s", quietGuard, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) notQuiet(st *transport.StatusReply) string {
	for _, n := range st.Nodes {
		if n.Health != "up" || len(n.Voters) != len(c.nodes) {
			return fmt.Sprintf("node %s: %s, voters %v", n.ID, n.Health, n.Voters)
		}
	}
	if len(st.Nodes) != len(c.nodes) {
		return fmt.Sprintf("%d nodes answer", len(st.Nodes))
	}
	for _, s := range st.Shards {
		// Inbox rows (credits recorded against replays) go once the
		// debit shard's watermark passes them; they hold no money.
		if s.Leader == "" || s.OutboxDepth != 0 || len(s.Replicas) != len(c.nodes) {
			return fmt.Sprintf("shard %d: leader %q outbox %d replicas %d", s.ID, s.Leader, s.OutboxDepth, len(s.Replicas))
		}
		for _, r := range s.Replicas {
			if r.Lag != 0 {
				return fmt.Sprintf("shard %d: replica %s lags %d", s.ID, r.Node, r.Lag)
			}
		}
	}
	return ""
}

// proxy forwards TCP connections to target until it is cut: a cut closes
// every connection and holds new ones open without forwarding a byte, as a
// network that drops packets does (the dialer's reads time out), until it
// heals.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

// newProxy listens; it serves once its target is set (before any node
// starts).
func newProxy(t *testing.T) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, conns: map[net.Conn]struct{}{}}
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		cut := p.cut
		p.mu.Unlock()
		if !cut {
			go p.pipe(c)
		}
	}
}

func (p *proxy) pipe(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		up.Close()
		return // setCut closed c
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	p.drop(c)
	p.drop(up)
}

func (p *proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.setCut(true)
}

// logged counts the lines of every run of every node that contain s.
func (c *cluster) logged(s string) int {
	n := 0
	for _, nd := range c.nodes {
		for _, p := range nd.runs {
			n += p.log.Count(s)
		}
	}
	return n
}

// buildLedgerd builds ./cmd/ledgerd (LEDGERD_CHAOS_RACE=1: with the race
// detector).
func buildLedgerd(t *testing.T) string {
	return testnet.BuildLedgerd(t, os.Getenv("LEDGERD_CHAOS_RACE") == "1")
}
