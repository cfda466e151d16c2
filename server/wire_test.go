package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// A cluster created by a release before the compact internal encoding
// (raftfsm/testdata/v1, written by 7f616d2) writes the old maps until every
// node says it reads the new ones; its one node does, so its meta leader
// raises the cluster's encoding, the node writes it, and the data written
// before still reads.
func TestAnOlderClusterMovesToTheCompactEncodingOnceEveryNodeReadsIt(t *testing.T) {
	t.Cleanup(func() { transport.SetWireV2(false) })
	transport.SetWireV2(false)
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.CopyFS(dir, os.DirFS("../raftfsm/testdata/v1/data")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := Start(ctx, Config{
		NodeID: "node-1", DataDir: dir, NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("start on the older release's data: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	for srv.Node().MetaState().Wire < transport.WireVersion || !transport.WireV2() {
		if ctx.Err() != nil {
			t.Fatalf("the cluster's encoding stays at %d (writes v2: %v)", srv.Node().MetaState().Wire, transport.WireV2())
		}
		time.Sleep(20 * time.Millisecond)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	rs, err := c.CreateTransfers(ctx, []transport.Transfer{{ID: "after-v2", DebitAccountID: "bank", CreditAccountID: "alice", Amount: 1, Ledger: 1, Code: 1}})
	if err != nil || rs[0].Code != transport.CodeOK {
		t.Fatalf("a transfer after the switch: %v %v", rs, err)
	}
	found, err := c.LookupTransfers(ctx, []string{"t1", "t99", "after-v2"})
	if err != nil || len(found) != 3 {
		t.Fatalf("transfers written before and after the switch: %+v %v", found, err)
	}
}
