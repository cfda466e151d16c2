package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

// Cluster is ledgerd processes on loopback (chaos, e2e/crash, e2e/storage),
// each node with its own ports and data directory, killed, stopped, paused
// and restarted by the test. The test sets Args, NATSOptions and each node's
// Args and Env before it launches the nodes.
type Cluster struct {
	t      testing.TB
	bin    string
	dir    string
	formed int // the nodes that form the cluster (--bootstrap-expect)
	Shards int
	Nodes  []*Node
	// Args are flags every node is started with.
	Args []string
	// NATSOptions are those of the connections Connect and ConnectTo open.
	NATSOptions []nats.Option
	// ReadyGuard bounds a wait for a node's "ledgerd ready", QuietGuard a
	// wait for a status or a log line. They bound hangs; they assert
	// nothing about speed.
	ReadyGuard, QuietGuard time.Duration
	// DumpLogs prints every process's last lines when the test ends, as a
	// failure does.
	DumpLogs bool
	// PanicOK: a run that panicked does not fail the test of itself, the
	// test judges its end (a node that meets damaged storage on its apply
	// path stops with a panic naming it, docs/storage.md).
	PanicOK bool
}

// Node is one node of a Cluster and the processes it has run.
type Node struct {
	ID                              string
	NATSAddr, ClusterAddr, RaftAddr string   // ClusterAddr is "" in a one-node cluster
	DataDir                         string   // a test may set it before a launch
	Join                            bool     // start with --join rather than form the cluster
	Args                            []string // its own flags (TLS, operator endpoints)
	Env                             []string // its own environment, on top of ChildEnv
	Cur                             *Process // the running process, or nil
	Runs                            []*Process
}

// Process is one run of a node.
type Process struct {
	Cmd    *exec.Cmd
	Log    *Log
	Exited chan struct{} // closed once it exited, WaitErr then set
	// WaitErr is cmd.Wait's error; read it after Exited is closed.
	WaitErr error
}

// Waits of the harness: how long a killed or stopped process may take to
// exit, a status request may take, and how often a status is asked again.
const (
	exitGuard     = 30 * time.Second
	statusTimeout = 10 * time.Second
	statusPoll    = 100 * time.Millisecond
)

// badLogLines fail the test when any run logged them (panicLine unless
// the cluster's PanicOK).
var badLogLines = []string{panicLine, "DATA RACE", "fatal error:"}

const panicLine = "panic:"

// NewCluster returns n nodes (node-1...) of binary bin, not yet started,
// forming a cluster of shards shards. Its nodes are killed when the test
// ends.
func NewCluster(t testing.TB, bin string, n, shards int) *Cluster {
	c := &Cluster{t: t, bin: bin, dir: t.TempDir(), formed: n, Shards: shards,
		ReadyGuard: 90 * time.Second, QuietGuard: 3 * time.Minute}
	for range n {
		c.Add(false)
	}
	t.Cleanup(c.cleanup)
	return c
}

// Add adds a node, not yet started, to the cluster; join: it joins the
// running cluster instead of forming it.
func (c *Cluster) Add(join bool) *Node {
	id := fmt.Sprintf("node-%d", len(c.Nodes)+1)
	n := &Node{ID: id, NATSAddr: FreePort(c.t), RaftAddr: FreePort(c.t), DataDir: filepath.Join(c.dir, id), Join: join}
	if c.formed > 1 {
		n.ClusterAddr = FreePort(c.t)
	}
	c.Nodes = append(c.Nodes, n)
	return n
}

// Index returns the index of node id, or -1.
func (c *Cluster) Index(id string) int {
	return slices.IndexFunc(c.Nodes, func(n *Node) bool { return n.ID == id })
}

// LeaderOf returns the index of the node st names leader of shard id, or
// -1.
func (c *Cluster) LeaderOf(st *transport.StatusReply, id uint32) int {
	for _, s := range st.Shards {
		if s.ID == id && s.Leader != "" {
			return c.Index(s.Leader)
		}
	}
	return -1
}

// StartAll launches every node, then waits until each is ready: a forming
// cluster is ready only once every node runs.
func (c *Cluster) StartAll() {
	c.t.Helper()
	for i := range c.Nodes {
		c.Launch(i)
	}
	for i := range c.Nodes {
		c.WaitReady(i)
	}
}

// Start launches node i and waits until it is ready.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	c.Launch(i)
	c.WaitReady(i)
}

// Launch starts node i without waiting for it.
func (c *Cluster) Launch(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	lw := NewLog()
	cmd := exec.Command(c.bin, c.args(n)...)
	cmd.Env = append(ChildEnv(), n.Env...)
	cmd.Stdout, cmd.Stderr = lw, lw // the same writer: one pipe, one writer goroutine
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", n.ID, err)
	}
	p := &Process{Cmd: cmd, Log: lw, Exited: make(chan struct{})}
	go func() {
		p.WaitErr = cmd.Wait()
		close(p.Exited)
	}()
	n.Cur = p
	n.Runs = append(n.Runs, p)
}

// args are node n's flags: forming the cluster (--bootstrap-expect, which
// a node with data ignores) or joining it.
func (c *Cluster) args(n *Node) []string {
	args := []string{"--node-id", n.ID, "--data-dir", n.DataDir, "--nats-listen", n.NATSAddr,
		"--raft-listen", n.RaftAddr, "--shards", fmt.Sprint(c.Shards), "--log-level", "info"}
	if n.ClusterAddr != "" {
		var routes []string
		for _, o := range c.Nodes {
			if o != n {
				routes = append(routes, o.ClusterAddr)
			}
		}
		args = append(args, "--nats-cluster-listen", n.ClusterAddr, "--nats-routes", strings.Join(routes, ","))
	}
	args = append(append(args, c.Args...), n.Args...)
	if n.ClusterAddr != "" && !slices.Contains(n.Args, "--tls-cert") {
		args = append(args, "--insecure") // the tests of node TLS give it
	}
	if n.Join {
		return append(args, "--join")
	}
	return append(args, "--bootstrap-expect", fmt.Sprint(c.formed))
}

// WaitReady waits for node i's "ledgerd ready". A forming node waits for
// every other, so any node exiting meanwhile fails the test.
func (c *Cluster) WaitReady(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	deadline := time.After(c.ReadyGuard)
	for {
		select {
		case <-n.Cur.Log.Ready():
			return
		default:
		}
		for _, o := range c.Nodes {
			if p := o.Cur; p != nil && hasExited(p) {
				c.t.Fatalf("%s exited while %s was starting: %v\n%s", o.ID, n.ID, p.WaitErr, p.Log.Tail(30))
			}
		}
		select {
		case <-n.Cur.Log.Ready():
			return
		case <-deadline:
			c.t.Fatalf("%s not ready after %v\n%s", n.ID, c.ReadyGuard, n.Cur.Log.Tail(30))
		case <-time.After(statusPoll):
		}
	}
}

// Started waits for node i's "ledgerd ready" (true) or for it to exit
// (false): for a node that may refuse to start.
func (c *Cluster) Started(i int) bool {
	c.t.Helper()
	n := c.Nodes[i]
	select {
	case <-n.Cur.Log.Ready():
		return true
	case <-n.Cur.Exited:
		return false
	case <-time.After(c.ReadyGuard):
		c.t.Fatalf("%s neither ready nor exited after %v\n%s", n.ID, c.ReadyGuard, n.Cur.Log.Tail(30))
		return false
	}
}

// WaitLogged waits until node i's current run has logged s k times, and
// fails the test if the run exits short of that.
func (c *Cluster) WaitLogged(i int, s string, k int) {
	c.t.Helper()
	n := c.Nodes[i]
	p := n.Cur
	deadline := time.Now().Add(c.QuietGuard)
	for {
		exited := hasExited(p) // first: once it exited, its output is all in the log
		got := p.Log.Count(s)
		switch {
		case got >= k:
			return
		case exited:
			c.t.Fatalf("%s exited (%v) having logged %q %d times, want %d\n%s", n.ID, p.WaitErr, s, got, k, p.Log.Tail(40))
		case time.Now().After(deadline):
			c.t.Fatalf("%s logged %q %d times in %v, want %d\n%s", n.ID, s, got, c.QuietGuard, k, p.Log.Tail(40))
		}
		time.Sleep(statusPoll)
	}
}

// hasExited reports whether p exited.
func hasExited(p *Process) bool {
	select {
	case <-p.Exited:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to node i (also to a paused one) and reaps it.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	if err := c.Nodes[i].Cur.Cmd.Process.Kill(); err != nil {
		c.t.Fatalf("kill %s: %v", c.Nodes[i].ID, err)
	}
	c.ReapKilled(i, exitGuard)
}

// ReapKilled waits up to guard for node i to exit, and checks that SIGKILL
// killed it (Kill, or a crash point of its own).
func (c *Cluster) ReapKilled(i int, guard time.Duration) {
	c.t.Helper()
	n := c.Nodes[i]
	p := n.Cur
	select {
	case <-p.Exited:
	case <-time.After(guard):
		c.t.Fatalf("%s did not die within %v", n.ID, guard)
	}
	n.Cur = nil
	var ee *exec.ExitError
	if !errors.As(p.WaitErr, &ee) {
		c.t.Fatalf("%s after SIGKILL: wait = %v", n.ID, p.WaitErr)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		c.t.Errorf("%s did not die of SIGKILL: %v", n.ID, p.WaitErr)
	}
}

// Stop sends SIGTERM to node i and expects a clean exit (status 0) after
// "stopping".
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	p := n.Cur
	c.signal(i, syscall.SIGTERM, 0)
	select {
	case <-p.Exited:
	case <-time.After(exitGuard):
		c.t.Fatalf("%s did not exit %v after SIGTERM", n.ID, exitGuard)
	}
	n.Cur = nil
	if p.WaitErr != nil || !p.Log.Contains("stopping") {
		c.t.Errorf("%s after SIGTERM: %v (logged stopping: %v)", n.ID, p.WaitErr, p.Log.Contains("stopping"))
	}
}

// End sends sig (SIGKILL, SIGTERM) to node i unless it already exited, and
// waits for it to be gone however it exits: for a node that may exit on its
// own, which Kill and Stop would report.
func (c *Cluster) End(i int, sig syscall.Signal) {
	c.t.Helper()
	n := c.Nodes[i]
	if !end(n.Cur, sig) {
		c.t.Fatalf("%s did not exit within %v of %v", n.ID, exitGuard, sig)
	}
	n.Cur = nil
}

// end sends sig to p, which may have exited, and reports whether it is gone
// within exitGuard.
func end(p *Process, sig syscall.Signal) bool {
	_ = p.Cmd.Process.Signal(sig) // fails once it exited
	select {
	case <-p.Exited:
		return true
	case <-time.After(exitGuard):
		return false
	}
}

// Pause stops node i with SIGSTOP, as a long GC pause or a host swapping
// would: it keeps its sockets and its Raft state, answers nothing, and its
// peers see only silence, until Resume.
func (c *Cluster) Pause(i int) {
	c.t.Helper()
	c.signal(i, syscall.SIGSTOP, 'T')
}

// Resume wakes node i with SIGCONT.
func (c *Cluster) Resume(i int) {
	c.t.Helper()
	c.signal(i, syscall.SIGCONT, 0)
}

// signal sends sig to node i and, when state is not 0, waits until the
// kernel reports the process in that state (/proc/<pid>/stat; skipped where
// there is no /proc): a signal is delivered asynchronously.
func (c *Cluster) signal(i int, sig syscall.Signal, state byte) {
	c.t.Helper()
	n := c.Nodes[i]
	if err := n.Cur.Cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("%v to %s: %v", sig, n.ID, err)
	}
	if state == 0 {
		return
	}
	deadline := time.Now().Add(exitGuard)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.Cur.Cmd.Process.Pid))
		if err != nil {
			return
		}
		// "pid (comm) state ...": comm may hold spaces and ')', so the
		// state follows the last ") ".
		if j := strings.LastIndex(string(b), ") "); j >= 0 && j+2 < len(b) && b[j+2] == state {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s not in state %c %v after %v: %s", n.ID, state, exitGuard, sig, b)
		}
		time.Sleep(time.Millisecond)
	}
}

// Wipe deletes node i's data directory (the node is down): it lost its
// disk.
func (c *Cluster) Wipe(i int) {
	c.t.Helper()
	if err := os.RemoveAll(c.Nodes[i].DataDir); err != nil {
		c.t.Fatal(err)
	}
}

// Logged counts the lines of every run of every node that contain s.
func (c *Cluster) Logged(s string) int {
	k := 0
	for _, n := range c.Nodes {
		for _, p := range n.Runs {
			k += p.Log.Count(s)
		}
	}
	return k
}

// cleanup kills the processes left running, reports anything alarming in
// the logs, and prints them when the test failed (or with DumpLogs).
func (c *Cluster) cleanup() {
	for _, n := range c.Nodes {
		if p := n.Cur; p != nil {
			end(p, syscall.SIGKILL)
		}
	}
	for _, n := range c.Nodes {
		for r, p := range n.Runs {
			for _, bad := range badLogLines {
				if p.Log.Contains(bad) && !(bad == panicLine && c.PanicOK) {
					c.t.Errorf("%s run %d logged %q", n.ID, r+1, bad)
				}
			}
			if k := p.Log.Count("level=ERROR"); k > 0 {
				c.t.Logf("%s run %d logged %d ERROR lines, e.g.: %s", n.ID, r+1, k, p.Log.First("level=ERROR"))
			}
		}
	}
	if !c.t.Failed() && !c.DumpLogs {
		return
	}
	for _, n := range c.Nodes {
		for r, p := range n.Runs {
			c.t.Logf("---- %s run %d (last lines) ----\n%s", n.ID, r+1, p.Log.Tail(60))
		}
	}
}

// Connect connects to every node's NATS (NATSOptions say whether it moves
// to another when one dies); the connection is closed when the test ends.
func (c *Cluster) Connect() (*nats.Conn, *client.Client) {
	c.t.Helper()
	var urls []string
	for _, n := range c.Nodes {
		urls = append(urls, "nats://"+n.NATSAddr)
	}
	return c.connect(strings.Join(urls, ","))
}

// ConnectTo connects to node i's NATS alone: requests go through that
// node's router, whatever befalls the others.
func (c *Cluster) ConnectTo(i int) (*nats.Conn, *client.Client) {
	c.t.Helper()
	return c.connect("nats://" + c.Nodes[i].NATSAddr)
}

func (c *Cluster) connect(urls string) (*nats.Conn, *client.Client) {
	c.t.Helper()
	nc, err := nats.Connect(urls, c.NATSOptions...)
	if err != nil {
		c.t.Fatalf("connect %s: %v", urls, err)
	}
	c.t.Cleanup(nc.Close)
	return nc, client.New(nc)
}

// Status asks for the cluster's status until it gets one.
func (c *Cluster) Status(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	return c.WaitStatus(cl)
}

// WaitStatus asks for the cluster's status until every why finds nothing
// amiss in it (returns ""), and returns that status.
func (c *Cluster) WaitStatus(cl *client.Client, whys ...func(*transport.StatusReply) string) *transport.StatusReply {
	c.t.Helper()
	deadline := time.Now().Add(c.QuietGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
		st, err := cl.Status(ctx)
		cancel()
		why := fmt.Sprint(err)
		if err == nil {
			why = ""
			for _, f := range whys {
				if why = f(st); why != "" {
					break
				}
			}
			if why == "" {
				return st
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("status after %v: %s", c.QuietGuard, why)
		}
		time.Sleep(statusPoll)
	}
}

// WaitLed waits until every shard answers and has a leader.
func (c *Cluster) WaitLed(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	return c.WaitStatus(cl, c.NotLed)
}

// NotLed says why st does not list every shard answering with a leader, or
// "".
func (c *Cluster) NotLed(st *transport.StatusReply) string {
	if len(st.Shards) != c.Shards {
		return fmt.Sprintf("%d shards, want %d", len(st.Shards), c.Shards)
	}
	for _, s := range st.Shards {
		if s.Error != "" || s.Leader == "" {
			return fmt.Sprintf("shard %d: leader %q, error %q", s.ID, s.Leader, s.Error)
		}
	}
	return ""
}

// WaitQuiet waits until every shard is led and has empty outbox and inbox:
// no cross-shard transfer is in flight.
func (c *Cluster) WaitQuiet(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	return c.WaitStatus(cl, c.NotLed, func(st *transport.StatusReply) string {
		for _, s := range st.Shards {
			if s.OutboxDepth != 0 || s.InboxDepth != 0 {
				return fmt.Sprintf("not quiet: %+v", st.Shards)
			}
		}
		return ""
	})
}

// WaitLeadersSpread waits until every node is up, every group led, and no
// node leads more than its share (groups ÷ nodes, rounded up: with three
// nodes and two shards, one each), so that no node hands a leadership over
// on its own while the test runs.
func (c *Cluster) WaitLeadersSpread(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	return c.WaitStatus(cl, c.NotLed, func(st *transport.StatusReply) string {
		groups := 1 + c.Shards
		share := (groups + len(c.Nodes) - 1) / len(c.Nodes)
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
		if spread && up == len(c.Nodes) && led == groups {
			return ""
		}
		return fmt.Sprintf("leaders not spread over the nodes: %+v", st.Nodes)
	})
}

// WaitCaughtUp waits until every node holds a replica of every shard that
// has applied as far as the shard's leader.
func (c *Cluster) WaitCaughtUp(cl *client.Client) *transport.StatusReply {
	c.t.Helper()
	return c.WaitStatus(cl, c.NotLed, func(st *transport.StatusReply) string {
		for _, s := range st.Shards {
			caughtUp := len(s.Replicas) == len(c.Nodes)
			for _, r := range s.Replicas {
				caughtUp = caughtUp && r.Lag == 0 && r.AppliedIndex == s.Replicas[0].AppliedIndex
			}
			if !caughtUp {
				return fmt.Sprintf("replicas not caught up: %+v", st.Shards)
			}
		}
		return ""
	})
}
