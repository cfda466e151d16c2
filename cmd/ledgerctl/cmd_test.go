package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// ctl runs ledgerctl with args in-process and returns its exit status,
// stdout and stderr.
func ctl(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := execute(ctx, &app{stdout: &out, stderr: &errOut}, args)
	return code, out.String(), errOut.String()
}

// An unknown command at any depth is a usage mistake: exit 2 with the
// error, not the help and 0.
func TestUnknownCommandsExit2(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus" for "ledgerctl"`},
		{[]string{"account", "bogus"}, `unknown command "bogus" for "ledgerctl account"`},
		{[]string{"transfer", "gte", "t1"}, `unknown command "gte" for "ledgerctl transfer"; did you mean get?`},
		{[]string{"account", "get"}, "requires at least 1 arg"},
		{[]string{"status", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"account", "create", "--id", "a"}, `required flag(s) "code", "ledger" not set`},
		{[]string{"status", "-o", "yaml"}, `--output "yaml": want table or json`},
		{[]string{"account", "history", "a", "--from", "10", "--to", "5"}, "--from 10 is after --to 5"},
		{[]string{"account", "transfers", "a", "--limit", "0"}, "--limit 0: want 1 to 8190"},
		{[]string{"account", "transfers", "a", "--from", "yesterday"}, `invalid argument "yesterday" for "--from" flag: want RFC 3339`},
		{[]string{"status", "--user", "u", "--nkey", "f"}, "give one of a user and password, an NKey seed file or a creds file"},
	} {
		code, out, errOut := ctl(t, ctx, append(c.args, "--server", "nats://127.0.0.1:1")...)
		if code != exitUsage || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, "--help' for usage") || out != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", c.args, code, out, errOut, c.want)
		}
	}
	if code, out, _ := ctl(t, ctx, "account"); code != 0 || !strings.Contains(out, "Available Commands:") {
		t.Errorf("account alone: exit %d, output %q; want its help", code, out)
	}
}

func TestVersionNamesTheBuild(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, _ := ctl(t, context.Background(), args...)
		if code != 0 || !regexp.MustCompile(`^ledgerctl (version )?`+regexp.QuoteMeta(transport.Version)+`, commit \S+, go1\.`).MatchString(out) {
			t.Errorf("%q: exit %d, %q", args, code, out)
		}
	}
}

// Lookups of what does not exist fail alike, with no table before the
// error; the history of an account that keeps none says why; tables show
// timestamps as RFC 3339 and JSON as integers.
func TestLookupsOfWhatIsMissing(t *testing.T) {
	srv := startServer(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(args ...string) (int, string, string) {
		return ctl(t, ctx, append(args, "--server", srv.ClientURL())...)
	}
	if code, _, errOut := run("account", "create", "--id", "bank", "--ledger", "1", "--code", "1"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{{"account", "get", "nosuch"}, {"account", "history", "nosuch"}, {"account", "transfers", "nosuch"}, {"transfer", "get", "nosuch"}} {
		if code, out, errOut := run(args...); code != exitFailed || out != "" || errOut != "ledgerctl: not found: nosuch\n" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1, no output and not found", args, code, out, errOut)
		}
	}
	if code, out, errOut := run("account", "history", "bank"); code != exitFailed || out != "" || !strings.Contains(errOut, "account bank keeps no balance history: it was created without --history") {
		t.Errorf("history of an account without it: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := run("account", "transfers", "bank"); code != 0 || !strings.HasPrefix(out, "ID ") || errOut != "" {
		t.Errorf("transfers of an account without any: exit %d, stdout %q, stderr %q; want an empty table", code, out, errOut)
	}
	code, out, _ := run("account", "get", "bank")
	if code != 0 || !regexp.MustCompile(`\s\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z\s`).MatchString(out) {
		t.Errorf("account get: exit %d, want an RFC 3339 timestamp:\n%s", code, out)
	}
	code, out, _ = run("account", "get", "bank", "-o", "json")
	var accounts []transport.Account
	if err := json.Unmarshal([]byte(out), &accounts); code != 0 || err != nil || len(accounts) != 1 || accounts[0].Timestamp == 0 {
		t.Errorf("account get -o json: exit %d, %v:\n%s", code, err, out)
	}
}

// A prefix nothing serves is said once and at once, not after --timeout.
func TestWrongPrefixIsSaidOnce(t *testing.T) {
	srv := startServer(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	code, out, errOut := ctl(t, ctx, "--prefix", "wrong", "status", "--server", srv.ClientURL(), "--timeout", "30s")
	if code != exitFailed || out != "" || !strings.Contains(errOut, `nothing serves prefix "wrong"`) ||
		strings.Count(errOut, "permissions violation") != 1 || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q; want one line saying nothing serves the prefix", code, out, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("took %v: waited for --timeout", took)
	}

	// A NATS where nothing serves any prefix: no responders, said at once.
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	defer ns.Shutdown()
	start = time.Now()
	code, out, errOut = ctl(t, ctx, "account", "get", "a", "--server", ns.ClientURL(), "--timeout", "30s")
	if code != exitFailed || out != "" || !strings.Contains(errOut, `nothing answers on prefix "ledger"`) || time.Since(start) > 10*time.Second {
		t.Fatalf("no cluster: exit %d after %v, stdout %q, stderr %q", code, time.Since(start), out, errOut)
	}
}

// Ctrl-C during bench prints the summary of what ran.
func TestBenchInterruptedPrintsWhatRan(t *testing.T) {
	srv := startServer(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	var progress syncBuffer
	a := &app{stdout: &out, stderr: &progress}
	interrupt, stop := context.WithCancel(ctx)
	go func() {
		// Once the transfers are under way: the first progress line.
		for !strings.Contains(progress.String(), " transfers ") && interrupt.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		stop()
	}()
	code := execute(interrupt, a, []string{"bench", "--server", srv.ClientURL(), "-o", "json", "--accounts", "100", "--transfers", "1000000", "--batch", "100"})
	var r benchReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || code != exitFailed || r.Conservation != "not checked (interrupted)" || r.Requests == 0 || r.OK == 0 {
		t.Fatalf("exit %d, %v, report %+v\n%s\n%s", code, err, r, out.String(), progress.String())
	}
	if !strings.Contains(progress.String(), "ledgerctl: interrupted after") {
		t.Fatalf("no interruption message:\n%s", progress.String())
	}
}

// syncBuffer is a buffer the bench writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A shard without a quorum answers unavailable until --timeout: ledgerctl
// says which shard has no leader rather than only the deadline.
func TestNoQuorumNamesTheShard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	clusterPorts := []string{testnet.FreePort(t), testnet.FreePort(t)}
	servers := make([]*server.Server, 2)
	errs := make(chan error, 2)
	for i := range servers {
		go func() {
			srv, err := server.Start(ctx, server.Config{
				NodeID: []string{"n1", "n2"}[i], DataDir: t.TempDir(), NATSListen: "127.0.0.1:0", RaftListen: testnet.FreePort(t),
				NATSClusterListen: clusterPorts[i], NATSRoutes: clusterPorts, BootstrapExpect: 2, Insecure: true, Shards: 1,
				RequestDeadline: time.Second,
				Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 1})),
			})
			servers[i] = srv
			errs <- err
		}()
	}
	for range servers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	defer servers[0].Close()
	if err := servers[1].Close(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := ctl(t, ctx, "transfer", "create", "--id", "t1", "--debit", "a", "--credit", "b", "--amount", "1", "--ledger", "1", "--code", "1",
		"--server", servers[0].ClientURL(), "--timeout", "3s")
	if code != exitFailed || out != "" || !strings.Contains(errOut, "no answer within --timeout 3s") ||
		!strings.Contains(errOut, "shard 1 has no leader") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want the leaderless shard named", code, out, errOut)
	}
}
