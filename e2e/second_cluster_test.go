package e2e

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/ledgerd/ledgerd/server"
)

// Two single-node clusters on one NATS would share the queue groups, and a
// retry could be applied by the other one. Until nodes can join a cluster,
// the second refuses to start. The NATS here has no permissions, as an
// operator's might, so only this check stands in the way.
func TestSecondClusterOnTheSameNATSRefusesToStart(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats did not start")
	}
	defer ns.Shutdown()
	start := func(id string) (*server.Server, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return server.Start(ctx, server.Config{NodeID: id, DataDir: t.TempDir(), NATSURL: ns.ClientURL(),
			RaftListen: "127.0.0.1:0", Shards: 1, Logger: slog.New(slog.DiscardHandler)})
	}
	first, err := start("n1")
	if err != nil {
		t.Fatalf("first cluster: %v", err)
	}
	defer first.Close()
	second, err := start("n2")
	if err == nil {
		second.Close()
		t.Fatal("a second cluster started on the same NATS and prefix")
	}
	if !strings.Contains(err.Error(), "already serves") {
		t.Fatalf("refused for another reason: %v", err)
	}
}
