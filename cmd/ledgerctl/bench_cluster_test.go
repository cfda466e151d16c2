package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
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
	var out, progress bytes.Buffer
	a := &app{stdout: &out, stderr: &progress}
	root := newRootCmd(a)
	root.SetArgs([]string{"bench", "--server", srv.ClientURL(), "-o", "json", "--timeout", "20s",
		"--accounts", "200", "--transfers", "2000", "--batch", "100", "--clients", "4", "--amount", "10",
		"--cross-shard", "0.5", "--two-phase", "0.6", "--void", "0.25", "--partial", "0.5"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("bench: %v\n%s\n%s", err, out.String(), progress.String())
	}
	var r benchReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, out.String())
	}
	// 1200 two-phase transfers: 300 voided, 450 of the 900 posts in part;
	// 400 of the 800 single-phase ones across shards.
	if r.Conservation != "PASS" || len(r.Errors) != 0 || len(r.Failed) != 0 || r.Shards != 2 ||
		r.TwoPhase != 1200 || r.TwoPhaseVoid != 300 || r.TwoPhasePartial != 450 || r.TransfersCrossShard != 400 ||
		r.Events != 3200 || r.OK != 3200 || r.PairsResolved != 1200 || r.PairsPerSecond <= 0 || r.TransfersPerSecond <= r.PairsPerSecond {
		t.Fatalf("report %+v", r)
	}

	// Nothing is left pending in the cluster either.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
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
