package chaos

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/nodetls"
	"github.com/nats-io/nats.go"
)

// quietGuard bounds a wait for the cluster to be quiet: it bounds a hang;
// it asserts nothing about speed.
const quietGuard = 3 * time.Minute

// cluster is three ledgerd processes on loopback. Every node dials every
// peer's Raft port through a proxy of its own for that pair
// (LEDGERD_TEST_RAFT_VIA), so a partition cuts exactly one node's Raft
// traffic; NATS (embedded, joined by routes) is left alone. Nodes run as in
// production, with mutual TLS between them: the proxies pass it through.
type cluster struct {
	*testnet.Cluster
	// proxies[i][j] carries node i's dials to node j's Raft port.
	proxies [][]*proxy
}

func newCluster(t *testing.T, bin string, n, shards int) *cluster {
	// The proxies listen first: a port the kernel hands a listener is
	// never one testnet.FreePort picked for a node that has not bound it yet.
	// They close once the nodes are killed.
	proxies := make([][]*proxy, n)
	for i := range n {
		proxies[i] = make([]*proxy, n)
		for j := range n {
			if i != j {
				proxies[i][j] = newProxy(t)
				t.Cleanup(proxies[i][j].close)
			}
		}
	}
	ca, err := nodetls.NewCA("chaos cluster")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{Cluster: testnet.NewCluster(t, bin, n, shards), proxies: proxies}
	// Snapshots every few hundred entries: restarts restore them and a
	// rejoining node is sent one.
	c.Args = []string{"--snapshot-threshold", "256", "--snapshot-interval", "500ms", "--snapshot-trailing-logs", "64"}
	// A client moves to another node when one dies, and notices a paused
	// one within seconds.
	c.NATSOptions = []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond),
		nats.Timeout(2 * time.Second), nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2)}
	for i, a := range c.Nodes {
		f, err := ca.Issue(t.TempDir(), nodetls.DefaultServerName)
		if err != nil {
			t.Fatal(err)
		}
		a.Args = []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
		var via []string
		for j, b := range c.Nodes {
			if i != j {
				p := proxies[i][j]
				p.target = b.RaftAddr
				via = append(via, b.RaftAddr+"="+p.addr())
			}
		}
		a.Env = []string{"LEDGERD_TEST_RAFT_VIA=" + strings.Join(via, ",")}
	}
	for _, row := range proxies {
		for _, p := range row {
			if p != nil {
				go p.serve()
			}
		}
	}
	c.StartAll()
	return c
}

// restart starts node i again, and waits until it is ready: with its data
// (--bootstrap-expect, which a node with data ignores), or joining the
// cluster (a node whose data was lost).
func (c *cluster) restart(i int, join bool) {
	c.Nodes[i].Join = join
	c.Start(i)
}

// partition cuts (or heals) every Raft connection to and from node i.
func (c *cluster) partition(i int, cut bool) {
	for j := range c.Nodes {
		if j != i {
			c.proxies[i][j].setCut(cut)
			c.proxies[j][i].setCut(cut)
		}
	}
}

// notWhole says why st does not show every node up and a voter of the
// meta group, or "".
func (c *cluster) notWhole(st *transport.StatusReply) string {
	for _, n := range st.Nodes {
		if n.Health != "up" || len(n.Voters) != len(c.Nodes) {
			return fmt.Sprintf("node %s: %s, voters %v", n.ID, n.Health, n.Voters)
		}
	}
	if len(st.Nodes) != len(c.Nodes) {
		return fmt.Sprintf("%d nodes answer", len(st.Nodes))
	}
	return ""
}

// notQuiet says why st does not show every shard led, no saga in flight
// (outboxes empty) and every replica as far as its leader, or "".
func (c *cluster) notQuiet(st *transport.StatusReply) string {
	for _, s := range st.Shards {
		// Inbox rows (credits recorded against replays) go once the
		// debit shard's watermark passes them; they hold no money.
		if s.Leader == "" || s.OutboxDepth != 0 || len(s.Replicas) != len(c.Nodes) {
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

// buildLedgerd builds ./cmd/ledgerd (LEDGERD_CHAOS_RACE=1: with the race
// detector).
func buildLedgerd(t *testing.T) string {
	return testnet.BuildLedgerd(t, os.Getenv("LEDGERD_CHAOS_RACE") == "1")
}
