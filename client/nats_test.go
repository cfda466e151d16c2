package client

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/transport"
)

// runNATS starts an embedded nats-server and returns its client URL.
func runNATS(t *testing.T) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, MaxPayload: transport.MessageBytesMax})
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

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// standInRouter is NOT the router: it stands in for it only to drive the
// client's retry. It answers `unavailable` to the first two requests and ok
// for every event of the next ones, and records every body.
type standInRouter struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (r *standInRouter) handle(t *testing.T) nats.MsgHandler {
	return func(m *nats.Msg) {
		r.mu.Lock()
		r.bodies = append(r.bodies, bytes.Clone(m.Data))
		attempt := len(r.bodies)
		r.mu.Unlock()
		var reply transport.ResultsReply
		if attempt <= 2 {
			reply.Error = &transport.Error{Code: transport.ErrUnavailableCode, Message: "no leader"}
		} else {
			var req transport.CreateTransfersRequest
			if err := transport.Unmarshal(m.Data, &req); err != nil {
				t.Error(err)
			}
			for i := range req.Transfers {
				reply.Results = append(reply.Results, transport.Result{Index: uint32(i), Code: transport.CodeOK, Timestamp: uint64(i + 1)})
			}
		}
		if err := m.Respond(mustMarshal(t, &reply)); err != nil {
			t.Error(err)
		}
	}
}

func TestCreateTransfersRetriesSameBatchAfterUnavailable(t *testing.T) {
	url := runNATS(t)
	router, nc := connect(t, url), connect(t, url)
	subject := transport.Subjects{Prefix: transport.DefaultPrefix}.TransfersCreate()
	var stand standInRouter
	// The stand-in subscribes a little after the first attempt, so the client
	// also meets NATS "no responders" and retries through it.
	time.AfterFunc(50*time.Millisecond, func() {
		if _, err := router.Subscribe(subject, stand.handle(t)); err != nil {
			t.Error(err)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, err := New(nc, WithRequestTimeout(time.Second)).CreateTransfers(ctx, transfers(3))
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 3 || results[2].Code != transport.CodeOK || results[2].Index != 2 {
		t.Fatalf("results %+v, want 3 ok", results)
	}
	stand.mu.Lock()
	defer stand.mu.Unlock()
	if len(stand.bodies) != 3 {
		t.Fatalf("stand-in saw %d requests, want 3", len(stand.bodies))
	}
	for i := range stand.bodies {
		if !bytes.Equal(stand.bodies[i], stand.bodies[0]) {
			t.Errorf("attempt %d sent a different body: a retry must resend the same batch", i)
		}
	}
}
