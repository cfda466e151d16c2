package raftmux

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

func issue(t *testing.T, ca *nodetls.CA, dnsNames ...string) nodetls.Files {
	t.Helper()
	f, err := ca.Issue(t.TempDir(), dnsNames...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func newCA(t *testing.T, name string) *nodetls.CA {
	t.Helper()
	ca, err := nodetls.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func load(t *testing.T, f nodetls.Files) *tls.Config {
	t.Helper()
	cfg, err := nodetls.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// tlsMux opens a mux on a free loopback port, closed at the test's end;
// a nil cfg serves plain TCP.
func tlsMux(t *testing.T, cfg *tls.Config) *Mux {
	t.Helper()
	m, err := Listen("127.0.0.1:0", nil, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// tlsDial dials m with cfg as a TLS client and sends a group header; the
// handshake's outcome is returned, not judged.
func tlsDial(t *testing.T, m *Mux, cfg *tls.Config, id uint32) (net.Conn, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", m.Addr().String(), cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(header(magic, id)); err != nil {
		return nil, err
	}
	return c, nil
}

// TestMutualTLS: nodes of one CA talk; nothing else reaches a group: not
// plain TCP, not a client without a certificate, not a node of another CA,
// not a server whose certificate lacks the cluster's name.
func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "cluster CA")
	a := tlsMux(t, load(t, issue(t, ca, nodetls.DefaultServerName)))
	b := tlsMux(t, load(t, issue(t, ca, nodetls.DefaultServerName, "node-b.example")))
	gb := mustGroup(t, b, 7)
	ga := mustGroup(t, a, 7)

	// A node of the CA dials another: the stream carries the payload.
	c, err := ga.Dial(raft.ServerAddress(b.Addr().String()), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*tls.Conn); !ok {
		t.Fatalf("dialed a %T, want a TLS connection", c)
	}
	if _, err := c.Write([]byte("append")); err != nil {
		t.Fatal(err)
	}
	sc := acceptWithin(t, gb, 3*time.Second)
	got := make([]byte, 6)
	sc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(sc, got); err != nil || string(got) != "append" {
		t.Fatalf("read %q, %v", got, err)
	}
	peer := sc.(*tls.Conn).ConnectionState().PeerCertificates
	if len(peer) == 0 || peer[0].DNSNames[0] != nodetls.DefaultServerName {
		t.Fatalf("the accepted stream did not verify the dialer's certificate: %v", peer)
	}

	// Plain TCP with a well-formed header is closed before any group.
	expectClosedByPeer(t, rawDial(t, b, header(magic, 7)), "plain TCP")

	// A client that trusts the CA but shows no certificate.
	caPool := x509.NewCertPool()
	pem, err := os.ReadFile(issue(t, ca, "x").CA)
	if err != nil {
		t.Fatal(err)
	}
	caPool.AppendCertsFromPEM(pem)
	anon := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool, ServerName: nodetls.DefaultServerName}
	if c, err := tlsDial(t, b, anon, 7); err == nil {
		expectClosedByPeer(t, c, "client without a certificate")
	}

	// A client that trusts the CA but shows a certificate of another.
	other := newCA(t, "another CA")
	of := issue(t, other, nodetls.DefaultServerName)
	cert, err := tls.LoadX509KeyPair(of.Cert, of.Key)
	if err != nil {
		t.Fatal(err)
	}
	forged := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool, ServerName: nodetls.DefaultServerName, Certificates: []tls.Certificate{cert}}
	if c, err := tlsDial(t, b, forged, 7); err == nil {
		expectClosedByPeer(t, c, "client with another CA's certificate")
	}

	// A node of another CA cannot dial in: it does not trust b either.
	o := tlsMux(t, load(t, of))
	if c, err := mustGroup(t, o, 7).Dial(raft.ServerAddress(b.Addr().String()), 3*time.Second); err == nil {
		c.Close()
		t.Fatal("a node of another CA completed a handshake")
	}

	// A server of the CA whose certificate lacks the cluster's name is
	// not a node: a dialer refuses it.
	nf := issue(t, ca, "not-a-node.example")
	ncert, err := tls.LoadX509KeyPair(nf.Cert, nf.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodetls.Load(nf); err == nil {
		t.Fatal("Load accepted a certificate without the cluster's name")
	}
	imp := tlsMux(t, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{ncert}})
	mustGroup(t, imp, 7)
	if c, err := ga.Dial(raft.ServerAddress(imp.Addr().String()), 3*time.Second); err == nil {
		c.Close()
		t.Fatal("dialed a server whose certificate lacks the cluster's name")
	}

	// None of the refused connections reached the group.
	if n := len(gb.conns); n != 0 {
		t.Fatalf("group has %d queued conns from refused peers", n)
	}
}
