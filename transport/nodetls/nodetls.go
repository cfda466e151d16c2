// Package nodetls loads the certificate a node proves to the other nodes,
// and the cluster CA it checks theirs against. One configuration serves
// both directions of mutual TLS: the Raft port (raftmux) and the embedded
// NATS servers' cluster routes.
//
// Every node's certificate is issued by the cluster's CA, allows both
// server and client authentication, and names ServerName among its DNS
// names: peers dial addresses that may be IPs, proxies or Kubernetes
// service names, so they check that one fixed name rather than the address.
package nodetls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// DefaultServerName is the DNS name every node certificate carries.
const DefaultServerName = "ledgerd"

// Files names a node's PEM files.
type Files struct {
	Cert, Key  string // this node's certificate (chain) and private key
	CA         string // the cluster CA's certificate(s)
	ServerName string // the DNS name peers' certificates must carry ("": DefaultServerName)
}

// Enabled reports whether any file is named.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Load reads the files into a configuration for both ends of mutual TLS
// (TLS 1.3): it presents the node's certificate, requires and verifies the
// peer's against the CA, and, dialing, expects ServerName.
func Load(f Files) (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return nil, errors.New("node TLS needs a certificate, its key and the cluster CA (--tls-cert, --tls-key, --tls-ca)")
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("node TLS: %w", err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("node TLS: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("node TLS: no PEM certificate in %s", f.CA)
	}
	name := f.ServerName
	if name == "" {
		name = DefaultServerName
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("node TLS: %w", err)
	}
	// Checked here, once, with a clear message, rather than as a handshake
	// failure on every peer. A node is both ends of connections: its
	// certificate must allow each (Verify accepts any one of KeyUsages).
	for _, use := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{use}}
		if _, err := leaf.Verify(opts); err != nil {
			return nil, fmt.Errorf("node TLS: %s is not a node certificate of this CA for %q (it needs server and client auth): %w", f.Cert, name, err)
		}
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ServerName:   name,
	}, nil
}
