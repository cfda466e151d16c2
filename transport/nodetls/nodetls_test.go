package nodetls

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	ca, err := NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	good, err := ca.Issue(t.TempDir(), DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ServerName != DefaultServerName || cfg.MinVersion != tls.VersionTLS13 || cfg.RootCAs == nil || cfg.ClientCAs == nil {
		t.Fatalf("not mutual TLS 1.3 for %q: %+v", DefaultServerName, cfg)
	}
	named, err := ca.Issue(t.TempDir(), "ledger.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Files{Cert: named.Cert, Key: named.Key, CA: named.CA, ServerName: "ledger.example"}); err != nil {
		t.Fatalf("a configured server name: %v", err)
	}
	foreign, err := other.Issue(t.TempDir(), DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	serverOnly, err := ca.issue(t.TempDir(), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{DefaultServerName})
	if err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    Files
		want string
	}{
		{"no key", Files{Cert: good.Cert, CA: good.CA}, "needs a certificate, its key and the cluster CA"},
		{"no CA", Files{Cert: good.Cert, Key: good.Key}, "needs a certificate, its key and the cluster CA"},
		{"missing file", Files{Cert: good.Cert + ".gone", Key: good.Key, CA: good.CA}, "no such file"},
		{"key of another certificate", Files{Cert: good.Cert, Key: foreign.Key, CA: good.CA}, "private key does not match"},
		{"CA without a certificate", Files{Cert: good.Cert, Key: good.Key, CA: empty}, "no PEM certificate"},
		{"certificate of another CA", Files{Cert: foreign.Cert, Key: foreign.Key, CA: good.CA}, "is not a node certificate of this CA"},
		{"certificate for servers only", serverOnly, "it needs server and client auth"},
		{"certificate without the cluster's name", Files{Cert: named.Cert, Key: named.Key, CA: named.CA}, "is not a node certificate of this CA"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Load(c.f); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
	if (Files{}).Enabled() || !(Files{CA: "x"}).Enabled() {
		t.Fatal("Enabled")
	}
}
