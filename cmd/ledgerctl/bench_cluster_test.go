package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/server"
)

// startServer starts a single-node cluster of the given shards, data in a
// test directory, stopped when the test ends.
func startServer(t *testing.T, shards uint32) *server.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{
		NodeID: "n1", DataDir: t.TempDir(), NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", Shards: shards,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	})
	return srv
}

// A mix of two-phase transfers (posted whole, posted in part, voided) among
// single-phase ones, some across shards, passes the audit: every pending
// transfer was resolved and the posted balances equal the replay.
func TestBenchTwoPhaseMixPassesTheAudit(t *testing.T) {
	srv := startServer(t, 2)
	r := runBench(t, srv, "--accounts", "200", "--transfers", "2000", "--batch", "100", "--clients", "4", "--amount", "10",
		"--cross-shard", "0.5", "--two-phase", "0.6", "--void", "0.25", "--partial", "0.5")
	// 1200 two-phase transfers: 300 voided, 450 of the 900 posts in part;
	// 400 of the 800 single-phase ones across shards.
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.Shards != 2 ||
		r.TwoPhase != 1200 || r.TwoPhaseVoid != 300 || r.TwoPhasePartial != 450 || r.TransfersCrossShard != 400 ||
		r.Events != 3200 || r.OK != 3200 || r.PairsResolved != 1200 || r.PairsPerSecond <= 0 || r.TransfersPerSecond <= r.PairsPerSecond {
		t.Fatalf("report %+v", r)
	}

	nothingPending(t, srv)

	// Two-phase transfers across shards: the audit replays them too.
	r = runBench(t, srv, "--accounts", "200", "--transfers", "1000", "--batch", "100", "--clients", "4", "--amount", "10",
		"--two-phase", "1", "--two-phase-cross-shard", "0.5", "--void", "0.25", "--partial", "0.5")
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.TwoPhase != 1000 || r.TwoPhaseCrossShard != 500 ||
		r.OK != 2000 || r.PairsResolved != 1000 {
		t.Fatalf("cross-shard two-phase report %+v", r)
	}
	nothingPending(t, srv)
}

// runBench runs `ledgerctl bench` against srv with args and returns its
// report, failing the test if the run fails.
func runBench(t *testing.T, srv *server.Server, args ...string) benchReport {
	t.Helper()
	var out, progress bytes.Buffer
	root := newRootCmd(&app{stdout: &out, stderr: &progress})
	root.SetArgs(append([]string{"bench", "--server", srv.ClientURL(), "-o", "json", "--timeout", "20s"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("bench %q: %v\n%s\n%s", args, err, out.String(), progress.String())
	}
	var r benchReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, out.String())
	}
	return r
}

// nothingPending fails the test if any shard of srv holds a pending
// balance or a cross-shard transfer in its outbox.
func nothingPending(t *testing.T, srv *server.Server) {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := client.New(nc).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			if l.DebitsPending != 0 || l.CreditsPending != 0 || s.OutboxDepth != 0 {
				t.Errorf("shard %d ledger %d: %+v, outbox %d; want nothing pending", s.ID, l.Ledger, l, s.OutboxDepth)
			}
		}
	}
}

// Chains of legs on one shard of a 2-shard cluster are all served: every leg
// answers ok, chains/s counts them, and the audit finds each chain applied
// whole. Alone, and mixed with two-phase and cross-shard transfers, with a
// --batch that is no multiple of --legs: a sender that took --batch
// transfers rather than whole blocks of legs would cut chains.
func TestBenchLinkedMixAppliesEveryChainWhole(t *testing.T) {
	srv := startServer(t, 2)

	r := runBench(t, srv, "--accounts", "100", "--transfers", "1000", "--batch", "50", "--clients", "4", "--linked", "1")
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.Shards != 2 ||
		r.Chains != 500 || r.Legs != 2 || r.Events != 1000 || r.OK != 1000 || r.ChainsApplied != 500 ||
		r.ChainsPerSecond <= 0 || r.LegsPerSecond != 2*r.ChainsPerSecond || r.TransfersCrossShard != 0 {
		t.Fatalf("2-leg chains: report %+v", r)
	}

	// 667 blocks of 3: 333 chains, 999 legs; of the 1002 other transfers, 501
	// two-phase and 250 of the 501 single-phase across shards.
	r = runBench(t, srv, "--accounts", "100", "--transfers", "2001", "--batch", "100", "--clients", "4", "--amount", "10",
		"--linked", "0.5", "--legs", "3", "--two-phase", "0.5", "--partial", "0.5", "--cross-shard", "0.5")
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 ||
		r.Chains != 333 || r.Legs != 3 || r.TwoPhase != 501 || r.TransfersCrossShard != 250 ||
		r.Events != 2502 || r.OK != 2502 || r.ChainsApplied != 333 || r.PairsResolved != 501 {
		t.Fatalf("mixed: report %+v", r)
	}
	nothingPending(t, srv)
}

// Chains whose every leg credits an account on the other shard of a 2-shard
// cluster are coordinated across shards by two-phase commit: every chain is
// applied whole, every leg answers ok, and the audit finds nothing left
// pending (no hold, no outbox row).
func TestBenchLinkedCrossShardAppliesEveryChainWhole(t *testing.T) {
	srv := startServer(t, 2)

	r := runBench(t, srv, "--accounts", "100", "--transfers", "600", "--batch", "60", "--clients", "4",
		"--linked", "1", "--linked-cross-shard", "1", "--legs", "3")
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.Shards != 2 ||
		r.Chains != 200 || r.Legs != 3 || r.Events != 600 || r.OK != 600 || r.ChainsApplied != r.Chains ||
		r.ChainsPerSecond <= 0 || r.TransfersCrossShard != 600 {
		t.Fatalf("chains across shards: report %+v", r)
	}
	nothingPending(t, srv)
}

// One request per call from 64 clients: coalescing (the default) sends the
// same transfers in fewer NATS requests than calls; --coalesce=false sends
// one per call. Both pass the audit.
func TestBenchUnbatchedCoalescesCallsUnlessTurnedOff(t *testing.T) {
	srv := startServer(t, 1)
	on := runBench(t, srv, "--accounts", "100", "--transfers", "1000", "--batch", "1", "--clients", "64")
	off := runBench(t, srv, "--accounts", "100", "--transfers", "1000", "--batch", "1", "--clients", "64", "--coalesce=false")
	for _, r := range []benchReport{on, off} {
		if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.OK != 1000 || r.Requests != 1000 {
			t.Fatalf("report %+v", r)
		}
	}
	if !on.Coalesce || on.NATSRequests >= on.Requests {
		t.Errorf("coalescing: %d calls in %d NATS requests, want fewer requests", on.Requests, on.NATSRequests)
	}
	if off.Coalesce || off.NATSRequests < off.Requests {
		t.Errorf("without coalescing: %d calls in %d NATS requests, want one or more each", off.Requests, off.NATSRequests)
	}
	t.Logf("1000 calls: %d NATS requests coalesced, %d without", on.NATSRequests, off.NATSRequests)
}

// providersFile has the operator and one provider, acme, on ledger 7 with
// the prefix "acme-".
const providersFile = `
operators:
  - {user: ops, password: ops-pw}
providers:
  - {user: acme, password: acme-pw, ledgers: [7], accounts: ["acme-"]}
`

// A provider runs the bench confined to its prefix and ledger: every id
// starts with --provider-prefix, the cluster status it is refused leaves
// the shards unknown, and the run passes the audit. Options that need the
// shards are refused, and a provider outside its prefix is refused the ids.
func TestBenchRunsAsAProviderConfinedToItsPrefix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "providers.yaml")
	if err := os.WriteFile(path, []byte(providersFile), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{
		NodeID: "n1", DataDir: filepath.Join(dir, "data"), NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", Shards: 2,
		Providers: path, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	acme := []string{"--user", "acme", "--password", "acme-pw", "--ledger", "7"}

	r := runBench(t, srv, append(acme, "--provider-prefix", "acme-", "--accounts", "50", "--transfers", "400", "--batch", "2",
		"--clients", "16", "--two-phase", "0.2", "--linked", "0.2")...)
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.Shards != 0 || !strings.HasPrefix(r.RunID, "acme-bench-") ||
		r.OK != 400+r.TwoPhase {
		t.Fatalf("provider's report %+v", r)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--provider-prefix", "acme-", "--cross-shard", "0.5"}, "need the cluster's shards"},
		{[]string{"--provider-prefix", "acme-", "--id-prefix", "globex-1"}, `does not start with --provider-prefix "acme-"`},
		{[]string{"--id-prefix", "globex-1"}, "account globex-1-a0: unauthorized"},
	} {
		code, out, errOut := ctl(t, ctx, append(append([]string{"bench", "--server", srv.ClientURL(), "--accounts", "10", "--transfers", "10"}, acme...), c.args...)...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, %q %q; want it refused: %q", c.args, code, out, errOut, c.want)
		}
	}
}
