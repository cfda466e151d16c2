package client

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/ledgerd/ledgerd/transport/nodetls"
)

func startNATS(t *testing.T, o *server.Options) string {
	t.Helper()
	o.Host, o.Port, o.NoLog, o.NoSigs = "127.0.0.1", -1, true, true
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// Each kind of credential reaches a server that asks for it, and the
// connection fails without it.
func TestConnectPresentsTheCredentials(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	url := startNATS(t, &server.Options{
		Users: []*server.User{{Username: "alice", Password: "s3cret"}},
		Nkeys: []*server.NkeyUser{{Nkey: pub}},
	})
	for _, c := range []struct {
		name  string
		creds Credentials
		ok    bool
	}{
		{"user and password", Credentials{User: "alice", Password: "s3cret"}, true},
		{"a wrong password", Credentials{User: "alice", Password: "guess"}, false},
		{"nkey", Credentials{NKeySeedFile: seedFile}, true},
		{"nothing", Credentials{}, false},
	} {
		nc, err := Connect(url, c.creds)
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok %v", c.name, err, c.ok)
		}
		if nc != nil {
			nc.Close()
		}
	}
}

func TestConnectWithTLSClientCertificate(t *testing.T) {
	ca, err := nodetls.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvFiles, err := ca.Issue(t.TempDir(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := ca.Issue(t.TempDir(), "provider-1")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvFiles.Cert, KeyFile: srvFiles.Key, CaFile: srvFiles.CA, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	url := startNATS(t, &server.Options{TLSConfig: tc, TLSVerify: true, TLSTimeout: 2})
	url = strings.Replace(url, "127.0.0.1", "localhost", 1) // the name the certificate carries
	nc, err := Connect(url, Credentials{TLSCA: cliFiles.CA, TLSCert: cliFiles.Cert, TLSKey: cliFiles.Key})
	if err != nil {
		t.Fatalf("with the client certificate: %v", err)
	}
	nc.Close()
	if nc, err := Connect(url, Credentials{TLSCA: cliFiles.CA}); err == nil {
		nc.Close()
		t.Fatal("connected without the client certificate the server requires")
	}
}

func TestCredentialsRefuseMixes(t *testing.T) {
	for _, c := range []Credentials{
		{User: "a", NKeySeedFile: "x"},
		{NKeySeedFile: "x", CredsFile: "y"},
		{Password: "p"},
		{TLSCert: "c"},
		{TLSKey: "k"},
		{NKeySeedFile: filepath.Join(t.TempDir(), "missing")},
	} {
		if _, err := c.Options(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if opts, err := (Credentials{CredsFile: "c", TLSCA: "ca"}).Options(); err != nil || len(opts) != 2 {
		t.Errorf("creds file and CA: %d options, %v", len(opts), err)
	}
}
