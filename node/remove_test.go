package node

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/transport"
)

// A node that answers again within the grace period is not gone: a pause
// of a moment must not get it removed. One that stays silent passes.
func TestWatchSilentRefusesANodeHeardWithinTheGrace(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	n := &Node{nc: nc, subjects: transport.Subjects{Prefix: "test"}, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// node-x is paused: it answers again 1.5 s into the watch.
	resume := time.AfterFunc(1500*time.Millisecond, func() {
		_, _ = nc.Subscribe(n.subjects.NodesStatus(), func(m *nats.Msg) {
			b, _ := transport.Marshal(&transport.NodeStatus{ID: "node-x", Health: "up"})
			_ = m.Respond(b)
		})
	})
	defer resume.Stop()
	if n.answers(ctx, "node-x") {
		t.Fatal("node-x answers before it resumed")
	}
	if err := n.watchSilent(ctx, "node-x", 10*time.Second); !errors.Is(err, ErrHeardFrom) {
		t.Fatalf("watching a node that resumed: %v, want ErrHeardFrom", err)
	}
	if err := n.watchSilent(ctx, "node-y", 1500*time.Millisecond); err != nil {
		t.Fatalf("watching a silent node: %v", err)
	}
}
