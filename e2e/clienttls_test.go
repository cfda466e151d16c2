package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

// TLS on the client port: a client without TLS is refused, one that trusts
// the CA connects; with --nats-tls-ca, only a client showing a certificate
// of that CA.
func TestClientTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := nodetls.NewCA("clients-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvDir, cliDir := filepath.Join(dir, "server"), filepath.Join(dir, "client")
	for _, d := range []string{srvDir, cliDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	srvFiles, err := ca.Issue(srvDir, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := ca.Issue(cliDir, "acme-client")
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(srvFiles.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	for _, requireCerts := range []bool{false, true} {
		cfg := server.Config{DataDir: filepath.Join(dir, "data", strconvBool(requireCerts)), Shards: 1,
			Providers: writeFile(t, dir, "providers.yaml", providersFile),
			ClientTLS: server.ClientTLS{Cert: srvFiles.Cert, Key: srvFiles.Key}}
		if requireCerts {
			cfg.ClientTLS.CA = srvFiles.CA
		}
		c := startClusterNATS(t, cfg, []nats.Option{nats.Secure(&tls.Config{ServerName: "localhost", RootCAs: pool, MinVersion: tls.VersionTLS12}),
			nats.ClientCert(cliFiles.Cert, cliFiles.Key)})
		url := c.srv.ClientURL()
		if !strings.HasPrefix(url, "tls://") {
			t.Fatalf("client URL %q", url)
		}
		plain := strings.Replace(url, "tls://", "nats://", 1)
		if nc, err := nats.Connect(plain, nats.UserInfo("acme", "acme-pw"), nats.MaxReconnects(0)); err == nil {
			nc.Close()
			t.Fatalf("certs %v: a client without TLS connected", requireCerts)
		}
		trusting := nats.Secure(&tls.Config{ServerName: "localhost", RootCAs: pool, MinVersion: tls.VersionTLS12})
		nc, err := nats.Connect(url, nats.UserInfo("acme", "acme-pw"), trusting, nats.MaxReconnects(0))
		if requireCerts {
			if err == nil {
				nc.Close()
				t.Fatal("a client without a certificate connected where one is required")
			}
			nc, err = nats.Connect(url, nats.UserInfo("acme", "acme-pw"), trusting, nats.ClientCert(cliFiles.Cert, cliFiles.Key), nats.MaxReconnects(0))
		}
		if err != nil {
			t.Fatalf("certs %v: acme over TLS: %v", requireCerts, err)
		}
		if _, err := client.New(nc).LookupAccounts(c.ctx(), []string{"acme-1"}); err != nil {
			t.Fatalf("certs %v: acme's lookup over TLS: %v", requireCerts, err)
		}
		nc.Close()
		c.stop()
	}
}

func strconvBool(b bool) string {
	if b {
		return "certs"
	}
	return "plain"
}
