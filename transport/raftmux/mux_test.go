package raftmux

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func newMux(t *testing.T) *Mux {
	t.Helper()
	return tlsMux(t, nil)
}

func mustGroup(t *testing.T, m *Mux, id uint32) *Layer {
	t.Helper()
	l, err := m.Group(id)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// acceptWithin guards Accept so a routing bug fails instead of hanging.
func acceptWithin(t *testing.T, l *Layer, d time.Duration) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("group %d Accept: %v", l.id, r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(d):
		l.Close() // unblocks the goroutine above
		t.Fatalf("group %d: no connection within %v", l.id, d)
		return nil
	}
}

// expectClosedByPeer asserts the mux closed a raw connection (EOF/reset)
// rather than leaving it open.
func expectClosedByPeer(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("%s: connection not closed by mux (err=%v)", what, err)
	}
}

func rawDial(t *testing.T, m *Mux, header []byte) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", m.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(header); err != nil {
		t.Fatal(err)
	}
	return c
}

func header(magicByte byte, id uint32) []byte {
	h := []byte{magicByte, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[1:], id)
	return h
}

func TestHeaderRouting(t *testing.T) {
	m := newMux(t)
	g1, g2 := mustGroup(t, m, 1), mustGroup(t, m, 0xDEADBEEF)
	if _, err := m.Group(1); err == nil {
		t.Fatal("duplicate Group(1) succeeded")
	}

	// A client that connects and never sends a header must not hold up
	// routing for everyone else.
	stalled := rawDial(t, m, nil)

	for _, tc := range []struct {
		l       *Layer
		payload string
	}{{g1, "to-one"}, {g2, "to-deadbeef"}, {g1, "one-again"}} {
		c, err := tc.l.Dial(raft.ServerAddress(m.Addr().String()), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(tc.payload)); err != nil {
			t.Fatal(err)
		}
		sc := acceptWithin(t, tc.l, 3*time.Second)
		got := make([]byte, len(tc.payload))
		sc.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(sc, got); err != nil || string(got) != tc.payload {
			t.Fatalf("group %d read %q, %v; want %q", tc.l.id, got, err, tc.payload)
		}
		// The header deadline must have been cleared for the Raft stream.
		sc.SetReadDeadline(time.Time{})
	}

	expectClosedByPeer(t, rawDial(t, m, header(magic, 99)), "unknown group")
	expectClosedByPeer(t, rawDial(t, m, header(0x00, 1)), "bad magic")

	// Neither rejected connection was handed to a group.
	for _, l := range []*Layer{g1, g2} {
		if n := len(l.conns); n != 0 {
			t.Fatalf("group %d has %d unexpected queued conns", l.id, n)
		}
	}
	_ = stalled
}

func TestClose(t *testing.T) {
	before := runtime.NumGoroutine()
	m, err := Listen("127.0.0.1:0", nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	g1, g2 := mustGroup(t, m, 1), mustGroup(t, m, 2)

	// Layer.Close: Accept fails with net.ErrClosed, Dial refuses, the id is
	// free again, and connections for the old group are closed.
	g1.Close()
	if _, err := g1.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Layer.Close = %v, want net.ErrClosed", err)
	}
	if _, err := g1.Dial(raft.ServerAddress(m.Addr().String()), time.Second); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Layer.Close = %v, want net.ErrClosed", err)
	}
	if g1.Close() != nil {
		t.Fatal("second Layer.Close returned error")
	}
	expectClosedByPeer(t, rawDial(t, m, header(magic, 1)), "closed group")
	g1b := mustGroup(t, m, 1)

	// Routed-but-unaccepted and header-pending conns must not keep Mux.Close
	// (or its goroutines) around: the first would wait in the layer buffer,
	// the second would otherwise hold a goroutine for headerTimeout.
	queued, err := g2.Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	stalled := rawDial(t, m, []byte{magic}) // partial header
	waitFor(t, "mux to queue one conn and hold one pending", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(g2.conns) == 1 && len(m.pending) == 1
	})

	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second { // headerTimeout is 5s
		t.Fatalf("Mux.Close took %v; pending header read not interrupted", d)
	}
	for _, l := range []*Layer{g2, g1b} {
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("group %d Accept after Mux.Close = %v, want net.ErrClosed", l.id, err)
		}
	}
	expectClosedByPeer(t, queued, "queued conn after Mux.Close")
	expectClosedByPeer(t, stalled, "header-pending conn after Mux.Close")
	if _, err := m.Group(3); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Group after Mux.Close = %v, want net.ErrClosed", err)
	}
	if _, err := net.DialTimeout("tcp", m.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still accepting after Mux.Close")
	}

	// Mux.Close already waited for its own goroutines; poll briefly only
	// for runtime bookkeeping of the test's helpers.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: %d before, %d after Close\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
