// Package raftmux serves every Raft group of a node on one TCP port. A dialer
// writes a 5-byte header (magic 0xA7, big-endian uint32 group id); the mux
// reads it (with a deadline) and hands the connection to that group's
// listener.
//
// One port per node (rather than one per group) keeps firewall rules and
// advertised addresses independent of how many groups a node hosts; the same
// idea as rqlite's tcp/mux.go and Consul's RPC pool. Each group gets a Layer,
// a raft.StreamLayer, and runs a stock raft.NetworkTransport over it (see
// NewTransport), so features raft detects on its transport by type assertion,
// such as pre-vote, keep working.
//
// With a TLS configuration every connection is mutual TLS: the dialer
// proves a certificate of the cluster's CA before it sends its header, and
// so does the listener; a connection that does not is closed before it
// reaches any group.
package raftmux

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

const (
	magic     = 0xA7
	headerLen = 5
	// headerTimeout bounds how long a connection may sit without finishing
	// its TLS handshake and sending its header, so idle or hostile clients
	// cannot pin goroutines and fds.
	headerTimeout = 5 * time.Second
	// backlog is how many routed connections a Layer holds before its owner
	// Accepts them. NetworkTransport accepts in a tight loop, so a full
	// buffer means the group is stuck or gone; dropping is better than
	// blocking the handoff goroutine indefinitely.
	backlog = 16
)

// Mux owns the node's TCP listener and routes each connection to the Layer
// registered for the group id in its header.
type Mux struct {
	ln   net.Listener
	addr net.Addr
	log  *slog.Logger
	tls  *tls.Config // nil: plain TCP
	done chan struct{}
	wg   sync.WaitGroup // accept loop and per-connection handoff goroutines

	// DialVia, set before any group dials, maps a peer's address to the
	// address to dial instead (a chaos test's proxy for that pair of
	// nodes, which it can cut); nil in production.
	DialVia map[string]string

	mu      sync.Mutex
	closed  bool
	groups  map[uint32]*Layer
	pending map[net.Conn]struct{} // conns still sending their header
}

// Listen opens the node's single Raft port. advertise is the address peers
// should dial (it is what every Layer reports as Addr, and therefore what
// raft puts in configurations); nil means the listener's own address.
// tlsConfig, if not nil, serves and dials mutual TLS: it must hold this
// node's certificate, verify peers' (ClientAuth, ClientCAs) and name the
// server certificate peers present (RootCAs, ServerName). A nil logger
// discards.
func Listen(addr string, advertise net.Addr, tlsConfig *tls.Config, logger *slog.Logger) (*Mux, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	m := &Mux{
		ln:      ln,
		addr:    advertise,
		log:     logger,
		tls:     tlsConfig,
		done:    make(chan struct{}),
		groups:  make(map[uint32]*Layer),
		pending: make(map[net.Conn]struct{}),
	}
	m.wg.Add(1)
	go m.serve()
	return m, nil
}

// Addr returns the advertised address.
func (m *Mux) Addr() net.Addr { return m.addr }

// Group registers a Layer for id. An id can be registered again once its
// previous Layer has been closed.
func (m *Mux) Group(id uint32) (*Layer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("raftmux: group %d: %w", id, net.ErrClosed)
	}
	if _, ok := m.groups[id]; ok {
		return nil, fmt.Errorf("raftmux: group %d already registered", id)
	}
	l := &Layer{mux: m, id: id, conns: make(chan net.Conn, backlog), done: make(chan struct{})}
	m.groups[id] = l
	return l, nil
}

// Close stops accepting, drops connections still sending their header,
// closes every Layer and waits for the mux's goroutines to exit.
// Connections already accepted by a Layer's owner are left to that owner.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	err := m.ln.Close()
	layers := make([]*Layer, 0, len(m.groups))
	for _, l := range m.groups {
		layers = append(layers, l)
	}
	// Closing pending conns unblocks their header reads now instead of
	// after headerTimeout, so Close returns promptly.
	for c := range m.pending {
		c.Close()
	}
	m.mu.Unlock()
	for _, l := range layers {
		l.Close() // takes m.mu via unregister, hence outside the lock
	}
	m.wg.Wait()
	return err
}

func (m *Mux) serve() {
	defer m.wg.Done()
	var delay time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			// Transient (e.g. EMFILE): back off like net/http rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			m.log.Warn("raftmux: accept failed", "err", err, "retry_in", delay)
			select {
			case <-m.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			c.Close()
			return
		}
		m.pending[c] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		// Handoff from its own goroutine: a client that connects and then
		// stalls must not delay the accept of everyone else.
		go m.handoff(c)
	}
}

func (m *Mux) handoff(raw net.Conn) {
	defer m.wg.Done()
	c, err := m.secure(raw)
	var id uint32
	if err == nil {
		id, err = readHeader(c)
	}

	m.mu.Lock()
	delete(m.pending, raw)
	l := m.groups[id]
	m.mu.Unlock()

	switch {
	case err != nil:
		m.log.Debug("raftmux: dropping connection", "remote", raw.RemoteAddr(), "err", err)
	case l == nil:
		m.log.Debug("raftmux: dropping connection for unknown group", "remote", raw.RemoteAddr(), "group", id)
	case !l.deliver(c):
		m.log.Debug("raftmux: dropping connection, group closed or backlog full", "remote", raw.RemoteAddr(), "group", id)
	default:
		return
	}
	raw.Close()
}

// secure runs the server side of the TLS handshake, if the mux has TLS.
func (m *Mux) secure(c net.Conn) (net.Conn, error) {
	if m.tls == nil {
		return c, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), headerTimeout)
	defer cancel()
	tc := tls.Server(c, m.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return tc, nil
}

func readHeader(c net.Conn) (uint32, error) {
	var h [headerLen]byte
	if err := c.SetReadDeadline(time.Now().Add(headerTimeout)); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, fmt.Errorf("reading header: %w", err)
	}
	if h[0] != magic {
		return 0, fmt.Errorf("bad magic 0x%02x", h[0])
	}
	// The deadline must not leak into the Raft stream: NetworkTransport
	// reads idle pooled connections with no deadline of its own.
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(h[1:]), nil
}

// Layer is one group's view of the mux: a raft.StreamLayer whose Accept
// yields connections routed to the group and whose Dial prefixes the
// group's header.
type Layer struct {
	mux   *Mux
	id    uint32
	conns chan net.Conn
	done  chan struct{}

	mu     sync.Mutex // orders deliver against Close so no conn is stranded in conns
	closed bool
}

var _ raft.StreamLayer = (*Layer)(nil)

// Accept waits for the next connection routed to this group. After Close it
// returns an error wrapping net.ErrClosed.
func (l *Layer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.errClosed()
	}
}

// Close unregisters the group and closes connections routed but not yet
// accepted. Later connections for the group are closed by the mux.
// NetworkTransport.Close calls it, so it is idempotent.
func (l *Layer) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	for len(l.conns) > 0 {
		(<-l.conns).Close()
	}
	l.mu.Unlock()

	m := l.mux
	m.mu.Lock()
	if m.groups[l.id] == l {
		delete(m.groups, l.id)
	}
	m.mu.Unlock()
	return nil
}

// Addr returns the mux's advertised address: every group on a node shares it.
func (l *Layer) Addr() net.Addr { return l.mux.addr }

// Dial connects to the mux at address and sends this group's header, so both
// ends of a connection always belong to the same group id.
func (l *Layer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.errClosed()
	default:
	}
	target := string(address)
	if via, ok := l.mux.DialVia[target]; ok {
		target = via
	}
	c, err := net.DialTimeout("tcp", target, timeout)
	if err != nil {
		return nil, err
	}
	// One deadline bounds the TLS handshake and the header, then is
	// cleared for the Raft stream.
	if timeout > 0 {
		err = c.SetDeadline(time.Now().Add(timeout))
	}
	if err == nil && l.mux.tls != nil {
		tc := tls.Client(c, l.mux.tls)
		err = tc.Handshake()
		c = tc
	}
	var h [headerLen]byte
	h[0] = magic
	binary.BigEndian.PutUint32(h[1:], l.id)
	if err == nil {
		_, err = c.Write(h[:])
	}
	if err == nil && timeout > 0 {
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("raftmux: group %d: connecting to %s: %w", l.id, address, err)
	}
	return c, nil
}

// deliver queues c for Accept without blocking; false means the caller must
// close c.
func (l *Layer) deliver(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	select {
	case l.conns <- c:
		return true
	default:
		return false
	}
}

func (l *Layer) errClosed() error {
	return fmt.Errorf("raftmux: group %d: %w", l.id, net.ErrClosed)
}
