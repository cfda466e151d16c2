package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/router/plan"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// The in-process hand-off (Node.Command) answers every command exactly as
// the shard's subject does. Three real nodes (real Raft on disk, one real
// NATS server) with two shards; each case sends the same command bytes both
// ways and compares the replies: a re-send of a request is answered as its
// first application was (shard/requests.go), so they must be equal. The
// e2e tests run every client scenario through the hand-off too (server
// wires it on).
func TestLocalCommandAnswersAsTheShardSubject(t *testing.T) {
	lc := startLocalCluster(t)
	bank, far := lc.accountOn("bank", 1), lc.accountOn("far", 2)
	if rep := lc.both(t, 1, lc.accounts(t, bank)); !answeredOK(rep) {
		t.Fatalf("create %s: %+v", bank, rep)
	}
	if rep := lc.both(t, 2, lc.accounts(t, far)); !answeredOK(rep) {
		t.Fatalf("create %s: %+v", far, rep)
	}

	t.Run("not led here", func(t *testing.T) {
		leader := lc.leader(t, 1)
		for _, n := range lc.nodes {
			if n != leader && n.Command(1, nil, func(*wire.Reply) { t.Error("a follower answered") }) {
				t.Fatalf("%s took a command of a shard it does not lead", n.cfg.NodeID)
			}
		}
		if leader.Command(99, nil, func(*wire.Reply) { t.Error("a shard that does not exist answered") }) {
			t.Fatal("a command of a shard that does not exist was taken")
		}
	})

	t.Run("invalid", func(t *testing.T) {
		freeze, _ := transport.Marshal(&shard.Command{Kind: shard.KindFreeze, Slots: &shard.SlotCommand{}})
		tooMany := make([]transport.Transfer, transport.BatchEventsMax+1)
		for i := range tooMany {
			tooMany[i] = testTransfer(fmt.Sprintf("big-%d", i), bank, bank, 1)
		}
		over, _ := transport.Marshal(&shard.Command{Kind: shard.KindCreateTransfers, Transfers: tooMany})
		for name, body := range map[string][]byte{"undecodable": {0xc1}, "freeze": freeze, "over the bounds": over} {
			if rep := lc.both(t, 1, body); rep.Invalid == "" {
				t.Fatalf("%s: %+v", name, rep)
			}
		}
	})

	t.Run("a batch", func(t *testing.T) {
		body := lc.transfers(t, 1, testTransfer("b1", bank, bank+"-x", 1), testTransfer("b2", bank, bank, 1), testTransfer("b3", bank, far, 1))
		rep := lc.both(t, 1, body)
		if len(rep.Results) != 3 || rep.Results[0].Code != transport.CodeCreditAccountNotFound ||
			rep.Results[1].Code != transport.CodeAccountsMustBeDifferent || rep.Results[2].Code != transport.CodeOK {
			t.Fatalf("batch: %+v", rep)
		}
	})

	t.Run("a cross-shard transfer waits for its saga", func(t *testing.T) {
		body := lc.transfers(t, 1, testTransfer("x1", bank, far, 5))
		lc.holdCredits()
		answered := lc.sendLocal(t, lc.leader(t, 1), 1, body)
		select {
		case rep := <-answered:
			t.Fatalf("answered before its credit shard: %+v", rep)
		case <-time.After(300 * time.Millisecond):
		}
		lc.releaseCredits()
		first := receiveReply(t, answered)
		rep := lc.both(t, 1, body) // answered as the first application
		if !answeredOK(rep) {
			t.Fatalf("after its credit: %+v", rep)
		}
		// Unless the balancer moved the leadership meanwhile (retry).
		if first.Retry == "" && !reflect.DeepEqual(first, rep) {
			t.Fatalf("first %+v, re-sent %+v", first, rep)
		}
	})

	t.Run("leadership lost while waiting", func(t *testing.T) {
		viaLocal := lc.transfers(t, 1, testTransfer("l1", bank, far, 7))
		viaNATS := lc.transfers(t, 1, testTransfer("l2", bank, far, 11))
		lc.holdCredits()
		old := lc.leader(t, 1)
		local := lc.sendLocal(t, old, 1, viaLocal)
		remote := lc.sendNATSAsync(t, 1, viaNATS)
		time.Sleep(300 * time.Millisecond) // both applied, waiting for their credits
		// (The balancer may have moved it first: the same for this test.)
		if err := old.member(1).Raft().LeadershipTransfer().Error(); err != nil && !errors.Is(err, raft.ErrNotLeader) {
			t.Fatal(err)
		}
		want := &wire.Reply{Retry: "leadership lost", Unknown: true}
		if rep := receiveReply(t, local); !reflect.DeepEqual(rep, want) {
			t.Fatalf("hand-off: %+v", rep)
		}
		if rep := receiveReply(t, remote); !reflect.DeepEqual(rep, want) {
			t.Fatalf("NATS: %+v", rep)
		}
		lc.releaseCredits()
		// The router's re-sends, at the new leader: each answered once, as
		// the first application was.
		for _, body := range [][]byte{viaLocal, viaNATS} {
			if rep := lc.both(t, 1, body); !answeredOK(rep) {
				t.Fatalf("re-sent after the new leader: %+v", rep)
			}
		}
	})

	t.Run("moved after a split", func(t *testing.T) {
		leaving := lc.split(t)
		var mover string
		for i := 0; mover == ""; i++ {
			if id := fmt.Sprintf("mover-%d", i); leaving.Has(transport.Slot(id)) {
				mover = id
			}
		}
		// Routed by the map before the split: to shard 1.
		c := shard.Command{Kind: shard.KindCreateAccounts, Accounts: []transport.Account{{ID: mover, Ledger: 1, Code: 1}}, Request: testRequestID()}
		body, _ := transport.Marshal(&c)
		rep := lc.both(t, 1, body)
		if rep.Moved == nil || rep.Moved.Frozen || rep.Moved.Epoch == 0 {
			t.Fatalf("moved: %+v", rep)
		}
	})
}

// localCluster is three in-process nodes on one NATS server, each shard
// on every node.
type localCluster struct {
	nodes []*Node
	nc    *nats.Conn
	// held, while not nil, holds every credit a node sends until closed.
	mu   sync.Mutex
	held chan struct{}
}

func startLocalCluster(t *testing.T) *localCluster {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT,
		NoLog: true, NoSigs: true, MaxPayload: transport.MessageBytesMax, MaxPending: 4 * transport.MessageBytesMax})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	t.Cleanup(ns.Shutdown)
	lc := &localCluster{}
	lc.nc = lc.connect(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lc.nodes = make([]*Node, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range lc.nodes {
		cfg := Config{
			NodeID: fmt.Sprintf("n%d", i+1), DataDir: t.TempDir(), RaftListen: "127.0.0.1:0", Shards: 2, Replicas: 3,
			BootstrapExpect: 3, Conn: lc.connect(t, ns), Prefix: transport.DefaultPrefix, SagaFault: lc.fault,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lc.nodes[i], errs[i] = Start(ctx, cfg)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		lc.releaseCredits()
		for _, n := range lc.nodes {
			if n != nil {
				_ = n.Close()
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range lc.nodes {
		for !n.Ready() {
			if ctx.Err() != nil {
				t.Fatal("no leader of every group")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return lc
}

func (lc *localCluster) connect(t *testing.T, ns *natsserver.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// fault holds credits while holdCredits is in force.
func (lc *localCluster) fault(_ uint32, cmd *shard.Command) Fault {
	lc.mu.Lock()
	held := lc.held
	lc.mu.Unlock()
	if held != nil && cmd.Kind == shard.KindCredit {
		<-held
	}
	return Fault{}
}

func (lc *localCluster) holdCredits() {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.held = make(chan struct{})
}

func (lc *localCluster) releaseCredits() {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.held != nil {
		close(lc.held)
		lc.held = nil
	}
}

// leader returns the node whose term serves shard id.
func (lc *localCluster) leader(t *testing.T, id uint32) *Node {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, n := range lc.nodes {
			n.mu.Lock()
			s := n.shards[id]
			n.mu.Unlock()
			if s != nil && s.takes() && s.g.Raft().State() == raft.Leader {
				return n
			}
		}
	}
	t.Fatalf("no node serves shard %d", id)
	return nil
}

// shardOf routes by the slot map the nodes hold now.
func (lc *localCluster) shardOf(id string) uint32 {
	return lc.nodes[0].metaM.SlotMap().Slots[transport.Slot(id)]
}

func (lc *localCluster) accountOn(prefix string, id uint32) string {
	for i := 0; ; i++ {
		if a := fmt.Sprintf("%s-%d", prefix, i); lc.shardOf(a) == id {
			return a
		}
	}
}

// accounts is the command creating account a, as the router makes it.
func (lc *localCluster) accounts(t *testing.T, a string) []byte {
	t.Helper()
	p := plan.Accounts([]transport.Account{{ID: a, Ledger: 1, Code: 1}}, lc.shardOf, nil)
	return lc.only(t, p, lc.shardOf(a))
}

// transfers is the command of shard id's transfers, as the router makes it.
func (lc *localCluster) transfers(t *testing.T, id uint32, ts ...transport.Transfer) []byte {
	t.Helper()
	debitOf, _ := plan.Locate(ts)
	return lc.only(t, plan.Transfers(ts, lc.shardOf, debitOf, nil), id)
}

// only encodes the plan's one part, for shard id, with a request id.
func (lc *localCluster) only(t *testing.T, p *plan.Plan, id uint32) []byte {
	t.Helper()
	if len(p.Parts) != 1 || p.Parts[0].Shard != id {
		t.Fatalf("plan %+v, want one part for shard %d", p.Parts, id)
	}
	p.Parts[0].Cmd.Request = testRequestID()
	b, err := transport.Marshal(&p.Parts[0].Cmd)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// both sends body to shard id's leader in-process, then the same bytes on
// the shard's subject, each again while answered retry, as the router does
// (the balancer may move a leadership meanwhile), and returns the reply
// once both are equal.
func (lc *localCluster) both(t *testing.T, id uint32, body []byte) *wire.Reply {
	t.Helper()
	local := untilServed(t, func() *wire.Reply {
		n := lc.leader(t, id)
		answered := make(chan *wire.Reply, 1)
		if !n.Command(id, body, func(r *wire.Reply) { answered <- r }) {
			return &wire.Reply{Retry: "not taken"}
		}
		return receiveReply(t, answered)
	})
	remote := untilServed(t, func() *wire.Reply { return lc.sendNATS(t, id, body) })
	if !reflect.DeepEqual(local, remote) {
		t.Fatalf("hand-off %+v, NATS %+v", local, remote)
	}
	return local
}

// untilServed sends again while the answer is retry.
func untilServed(t *testing.T, send func() *wire.Reply) *wire.Reply {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r := send()
		if r.Retry == "" || time.Now().After(deadline) {
			return r
		}
	}
}

func (lc *localCluster) sendLocal(t *testing.T, n *Node, id uint32, body []byte) <-chan *wire.Reply {
	t.Helper()
	answered := make(chan *wire.Reply, 1)
	if !n.Command(id, body, func(r *wire.Reply) { answered <- r }) {
		t.Fatalf("%s did not take a command of shard %d, which it leads", n.cfg.NodeID, id)
	}
	return answered
}

func (lc *localCluster) sendNATSAsync(t *testing.T, id uint32, body []byte) <-chan *wire.Reply {
	t.Helper()
	answered := make(chan *wire.Reply, 1)
	go func() {
		msg := &nats.Msg{Subject: transport.Subjects{Prefix: transport.DefaultPrefix}.Shard(id), Data: body,
			Header: nats.Header{wire.OpHeader: []string{wire.OpCommand}}}
		resp, err := lc.nc.RequestMsg(msg, 30*time.Second)
		if errors.Is(err, nats.ErrNoResponders) { // an election
			answered <- &wire.Reply{Retry: err.Error()}
			return
		}
		if err != nil {
			t.Errorf("shard %d on NATS: %v", id, err)
			close(answered)
			return
		}
		var r wire.Reply
		if err := transport.Unmarshal(resp.Data, &r); err != nil {
			t.Errorf("shard %d's reply: %v", id, err)
		}
		answered <- &r
	}()
	return answered
}

func (lc *localCluster) sendNATS(t *testing.T, id uint32, body []byte) *wire.Reply {
	t.Helper()
	return receiveReply(t, lc.sendNATSAsync(t, id, body))
}

// split adds a third shard and returns the slots shard 1 gave it.
func (lc *localCluster) split(t *testing.T) shard.SlotSet {
	t.Helper()
	st := lc.nodes[0].MetaState()
	sp, planned := raftfsm.NextSplit(&raftfsm.MetaState{SlotMap: st.SlotMap, Replicas: st.Replicas, Placement: st.Placement, ShardsWanted: 3})
	if !planned || sp.Parent != 1 {
		t.Fatalf("planned split %+v, %v", sp, planned)
	}
	body, _ := transport.Marshal(&nodeops.ShardsAddRequest{To: 3})
	subject := nodeops.ShardsAddSubject(transport.Subjects{Prefix: transport.DefaultPrefix})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		var p nodeops.ShardsProgress
		msg, err := lc.nc.Request(subject, body, 10*time.Second)
		if err == nil {
			err = transport.Unmarshal(msg.Data, &p)
		}
		if err == nil && p.Done {
			return shard.SetOf(sp.Slots)
		}
		if time.Now().After(deadline) {
			t.Fatalf("split not done: %+v, %v", p, err)
		}
	}
}

func receiveReply(t *testing.T, answered <-chan *wire.Reply) *wire.Reply {
	t.Helper()
	select {
	case r, open := <-answered:
		if !open {
			t.FailNow()
		}
		return r
	case <-time.After(30 * time.Second): // a hang guard
		t.Fatal("no answer")
		return nil
	}
}

func answeredOK(r *wire.Reply) bool {
	if r.Retry != "" || r.Invalid != "" || r.Refused != "" || r.Moved != nil || len(r.Results) == 0 {
		return false
	}
	for _, res := range r.Results {
		if res.Code != transport.CodeOK {
			return false
		}
	}
	return true
}

func testTransfer(id, debit, credit string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: amount, Ledger: 1, Code: 1}
}

func testRequestID() []byte {
	b := make([]byte, shard.RequestIDBytes)
	_, _ = rand.Read(b)
	return b
}
