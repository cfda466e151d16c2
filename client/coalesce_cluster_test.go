package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// relay stands between a client and a real ledgerd: the client connects
// to the relay's own NATS server, and every request it sends there is
// handed to the test, which forwards it to the cluster's router on the
// same subject (and the router's reply back) or answers it with a
// request-level error itself. So a test decides when each request goes on
// and sees what it holds, while the answers come from the real cluster.
type relay struct {
	url     string     // the relay's NATS, for the client under test
	cluster *nats.Conn // to the ledgerd
	arrived chan *relayed
	wg      sync.WaitGroup
}

// relayed is one request the relay holds, and the test that handles it.
type relayed struct {
	t   *testing.T
	msg *nats.Msg
	r   *relay
}

func newRelay(t *testing.T, clusterURL string) *relay {
	r := &relay{url: runNATS(t), cluster: connect(t, clusterURL), arrived: make(chan *relayed, 64)}
	sub, err := connect(t, r.url).Subscribe(transport.DefaultPrefix+".v1.>", func(m *nats.Msg) { r.arrived <- &relayed{msg: m, r: r} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		r.wg.Wait()
	})
	return r
}

// client returns a client of the relay. Its attempts wait a minute before
// a retry, so that a request the test holds is not sent again meanwhile.
func (r *relay) client(t *testing.T, opts ...Option) *Client {
	return New(connect(t, r.url), append([]Option{WithRequestTimeout(time.Minute)}, opts...)...)
}

// next waits for the next request; t handles it.
func (r *relay) next(t *testing.T) *relayed {
	t.Helper()
	select {
	case m := <-r.arrived:
		m.t = t
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no request reached the relay")
		return nil
	}
}

// forward sends the request on to the router and its reply back.
func (m *relayed) forward() {
	m.r.wg.Go(func() {
		reply, err := m.r.cluster.Request(m.msg.Subject, m.msg.Data, 20*time.Second)
		if err != nil {
			m.t.Errorf("forward %s: %v", m.msg.Subject, err)
			return
		}
		if err := m.msg.Respond(reply.Data); err != nil {
			m.t.Error(err)
		}
	})
}

// refuse answers the request with a request-level error.
func (m *relayed) refuse(code string) {
	b, err := transport.Marshal(&transport.ResultsReply{Error: &transport.Error{Code: code, Message: "from the relay"}})
	if err != nil {
		m.t.Fatal(err)
	}
	if err := m.msg.Respond(b); err != nil {
		m.t.Error(err)
	}
}

// ids returns the ids of the events of a create request. It decodes with
// msgpack alone, not transport.Unmarshal: it reads malformed requests too.
func (m *relayed) ids() []string {
	var req struct {
		Transfers []struct {
			ID string `msgpack:"id"`
		} `msgpack:"transfers"`
	}
	if err := msgpack.Unmarshal(m.msg.Data, &req); err != nil {
		m.t.Fatal(err)
	}
	var ids []string
	for _, tr := range req.Transfers {
		ids = append(ids, tr.ID)
	}
	return ids
}

// startLedgerd starts a single-node ledgerd of 2 shards, data in a test
// directory; it stops when the test ends.
func startLedgerd(t *testing.T) *server.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{
		NodeID: "n1", DataDir: t.TempDir(), NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", Shards: 2,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("start ledgerd: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	})
	return srv
}

// book is the accounts the tests move money between: bank (no limit),
// wallet (may not go below 0, and holds nothing) and shop.
var book = []transport.Account{
	{ID: "bank", Ledger: 1, Code: 1},
	{ID: "wallet", Ledger: 1, Code: 1, Flags: transport.AccountDebitsMustNotExceedCredits},
	{ID: "shop", Ledger: 1, Code: 1},
}

func pay(id, debit string) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: "shop", Amount: 1, Ledger: 1, Code: 1}
}

// codes returns the codes of rs, and fails unless each indexes its own
// event in order.
func codes(t *testing.T, who string, rs []transport.Result) []transport.Code {
	t.Helper()
	var cs []transport.Code
	for i, r := range rs {
		if int(r.Index) != i {
			t.Errorf("%s: result %d has index %d", who, i, r.Index)
		}
		if (r.Code == transport.CodeOK) != (r.Timestamp != 0) {
			t.Errorf("%s: result %d: code %v with timestamp %d", who, i, r.Code, r.Timestamp)
		}
		cs = append(cs, r.Code)
	}
	return cs
}

func sameCodes(a, b []transport.Code) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// Coalescing against a real ledgerd: each behaviour the contract requires
// of concurrent calls that share requests, one cluster for all.
func TestCoalescingAgainstLedgerd(t *testing.T) {
	srv := startLedgerd(t)
	url := srv.ClientURL()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if rs, err := New(connect(t, url)).CreateAccounts(ctx, book); err != nil || len(rs) != len(book) || rs[2].Code != transport.CodeOK {
		t.Fatalf("create the book: %v %+v", err, rs)
	}
	rl := newRelay(t, url)
	t.Run("ConcurrentCallsShareRequestsWithExactResults", func(t *testing.T) { concurrentCallsShareRequests(t, ctx, url, rl) })
	t.Run("FewerRequestsThanCallsWithoutARelay", func(t *testing.T) { fewerRequestsThanCalls(t, ctx, srv) })
	t.Run("OpenChainIsSentAloneAndAnsweredAsAlone", func(t *testing.T) { openChainIsSentAlone(t, ctx, rl) })
	t.Run("MalformedCallDoesNotFailTheOthers", func(t *testing.T) { malformedCallIsSentAlone(t, ctx, rl) })
	t.Run("RequestErrorReachesEveryCallerOfTheRequest", func(t *testing.T) { requestErrorReachesEveryCaller(t, ctx, rl) })
	t.Run("CancelledCallerLeavesTheOthersUnaffected", func(t *testing.T) { cancelledCallerLeavesOthers(t, ctx, rl) })
	t.Run("CloseDrainsTheCallsUnderWay", func(t *testing.T) { closeDrains(t, ctx, rl) })
}

// plug sends one call through the relay and holds it there, so that the
// calls made next queue behind it; it returns the held request and the
// plug call's outcome.
func plug(t *testing.T, ctx context.Context, c *Client, rl *relay, id string) (*relayed, chan outcome) {
	t.Helper()
	out := goCreate(ctx, c, []transport.Transfer{pay(id, "bank")})
	return rl.next(t), out
}

// 64 callers, each with its own events (some refused, one a chain that
// fails), made while a request is in flight, go as one request; each gets
// the codes of its own events, indexed into its own slice, exactly those
// the cluster gives each alone (checked by sending the same shapes alone).
func concurrentCallsShareRequests(t *testing.T, ctx context.Context, url string, rl *relay) {
	const callers = 64
	c := rl.client(t)
	held, plugged := plug(t, ctx, c, rl, "share-plug")
	shape := func(prefix string, i int) []transport.Transfer {
		id := prefix + strconv.Itoa(i)
		switch i % 4 {
		case 0:
			return []transport.Transfer{pay(id+"-a", "bank"), pay(id+"-b", "wallet")} // ok, exceeds_credits
		case 1:
			tr := pay(id, "bank")
			tr.CreditAccountID = "nobody" // credit_account_not_found
			return []transport.Transfer{tr}
		case 2:
			first := pay(id+"-a", "bank")
			first.Flags = transport.TransferLinked // a chain that fails on its second leg
			return []transport.Transfer{first, pay(id+"-b", "wallet"), pay(id+"-c", "bank")}
		default:
			return []transport.Transfer{pay(id, "bank")}
		}
	}
	outs := make([]chan outcome, callers)
	for i := range outs {
		outs[i] = goCreate(ctx, c, shape("share-", i))
	}
	waitQueued(t, c.transfers, callers)
	held.forward()
	together := rl.next(t)
	if n, want := len(together.ids()), 64/4*(2+1+3+1); n != want {
		t.Fatalf("the second request holds %d events, want all %d", n, want)
	}
	together.forward()
	if o := wait(t, plugged); o.err != nil {
		t.Fatal(o.err)
	}

	alone := New(connect(t, url), WithCoalescing(false))
	for i, out := range outs {
		o := wait(t, out)
		if o.err != nil {
			t.Fatalf("caller %d: %v", i, o.err)
		}
		got := codes(t, fmt.Sprint("caller ", i), o.results)
		rs, err := alone.CreateTransfers(ctx, shape("alone-", i))
		if err != nil {
			t.Fatal(err)
		}
		if want := codes(t, "alone", rs); !sameCodes(got, want) {
			t.Errorf("caller %d: codes %v coalesced, %v alone", i, got, want)
		}
	}
	if n := c.Stats().Requests; n != 2 {
		t.Fatalf("%d requests for %d calls, want 2", n, callers+1)
	}
}

// Straight to the router, with a NATS subscription of the cluster's own
// account counting the requests on its subject (a client may not subscribe
// to it): 64 concurrent calls take fewer requests than calls, and as many
// without coalescing.
func fewerRequestsThanCalls(t *testing.T, ctx context.Context, srv *server.Server) {
	const callers = 64
	url := srv.ClientURL()
	counter, err := srv.ConnectInternal()
	if err != nil {
		t.Fatal(err)
	}
	defer counter.Close()
	var seen atomic.Int64
	sub, err := counter.Subscribe(transport.Subjects{Prefix: transport.DefaultPrefix}.TransfersCreate(), func(*nats.Msg) { seen.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := counter.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, coalescing := range []bool{true, false} {
		c := New(connect(t, url), WithCoalescing(coalescing))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				rs, err := c.CreateTransfers(ctx, []transport.Transfer{pay(fmt.Sprintf("count-%v-%d", coalescing, i), "bank")})
				if err != nil || len(rs) != 1 || rs[0].Code != transport.CodeOK || rs[0].Index != 0 {
					t.Errorf("caller %d: %v %+v", i, err, rs)
				}
			})
		}
		seen.Store(0)
		close(start)
		wg.Wait()
		if err := counter.Flush(); err != nil {
			t.Fatal(err)
		}
		sent := c.Stats().Requests
		if n := seen.Load(); n != int64(sent) {
			t.Errorf("coalescing %v: the subject saw %d requests, the client says it sent %d", coalescing, n, sent)
		}
		switch {
		case coalescing && sent >= callers:
			t.Errorf("coalescing: %d requests for %d calls, want fewer", sent, callers)
		case !coalescing && sent != callers:
			t.Errorf("without coalescing: %d requests for %d calls, want one each", sent, callers)
		}
		t.Logf("coalescing %v: %d calls in %d requests", coalescing, callers, sent)
	}
}

// A call whose last event is flagged linked is sent alone, not after the
// calls queued before it nor before those after it: it answers
// linked_event_chain_open on each of its events, and the others are ok.
func openChainIsSentAlone(t *testing.T, ctx context.Context, rl *relay) {
	c := rl.client(t)
	held, plugged := plug(t, ctx, c, rl, "open-plug")
	before := goCreate(ctx, c, []transport.Transfer{pay("open-before", "bank")})
	waitQueued(t, c.transfers, 1)
	chain := []transport.Transfer{pay("open-1", "bank"), pay("open-2", "bank")}
	chain[0].Flags, chain[1].Flags = transport.TransferLinked, transport.TransferLinked
	open := goCreate(ctx, c, chain)
	alone := rl.next(t) // sent at once, while the plug is held
	if ids := alone.ids(); fmt.Sprint(ids) != "[open-1 open-2]" {
		t.Fatalf("the open chain went in a request of %v", ids)
	}
	alone.forward()
	after := goCreate(ctx, c, []transport.Transfer{pay("open-after", "bank")})
	waitQueued(t, c.transfers, 2)
	held.forward()
	rest := rl.next(t)
	if ids := rest.ids(); fmt.Sprint(ids) != "[open-before open-after]" {
		t.Fatalf("the queued calls went as %v", ids)
	}
	rest.forward()
	o := wait(t, open)
	if got := codes(t, "open chain", o.results); o.err != nil ||
		!sameCodes(got, []transport.Code{transport.CodeLinkedEventChainOpen, transport.CodeLinkedEventChainOpen}) {
		t.Fatalf("open chain: %v %v, want linked_event_chain_open twice", got, o.err)
	}
	for _, out := range []chan outcome{plugged, before, after} {
		if o := wait(t, out); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK {
			t.Errorf("outcome %+v, want ok", o)
		}
	}
}

// A call the router would refuse as a whole (metadata of more pairs than a
// container may hold: too_many_events) is sent alone, so it alone gets the
// refusal, from the real router, and the calls queued with it are ok.
func malformedCallIsSentAlone(t *testing.T, ctx context.Context, rl *relay) {
	c := rl.client(t)
	held, plugged := plug(t, ctx, c, rl, "bad-plug")
	good1 := goCreate(ctx, c, []transport.Transfer{pay("bad-good1", "bank")})
	waitQueued(t, c.transfers, 1)
	bad := pay("bad-bad", "bank")
	bad.Metadata = map[string]string{}
	for i := range transport.BatchEventsMax + 1 {
		bad.Metadata["k"+strconv.Itoa(i)] = "v"
	}
	refused := goCreate(ctx, c, []transport.Transfer{bad})
	alone := rl.next(t)
	if ids := alone.ids(); len(ids) != 1 {
		t.Fatalf("the malformed call went with %v", ids)
	}
	alone.forward()
	good2 := goCreate(ctx, c, []transport.Transfer{pay("bad-good2", "bank")})
	waitQueued(t, c.transfers, 2)
	held.forward()
	rl.next(t).forward()
	var e *transport.Error
	if o := wait(t, refused); !errors.As(o.err, &e) || e.Code != transport.ErrTooManyEventsCode {
		t.Fatalf("malformed call: %+v, want too_many_events", o)
	}
	for _, out := range []chan outcome{plugged, good1, good2} {
		if o := wait(t, out); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK {
			t.Errorf("outcome %+v, want ok", o)
		}
	}
}

// A request-level error reaches every caller of the request: unavailable
// is retried for all of them with the same body (then ok from the
// cluster), malformed_request is returned to all of them.
func requestErrorReachesEveryCaller(t *testing.T, ctx context.Context, rl *relay) {
	c := rl.client(t, WithRequestTimeout(20*time.Second))
	for _, code := range []string{transport.ErrUnavailableCode, transport.ErrMalformedCode} {
		held, plugged := plug(t, ctx, c, rl, "err-plug-"+code)
		var outs []chan outcome
		for i := range 3 {
			outs = append(outs, goCreate(ctx, c, []transport.Transfer{pay(fmt.Sprintf("err-%s-%d", code, i), "bank")}))
		}
		waitQueued(t, c.transfers, 3)
		held.forward()
		together := rl.next(t)
		together.refuse(code)
		if code == transport.ErrUnavailableCode {
			retry := rl.next(t)
			if !bytes.Equal(retry.msg.Data, together.msg.Data) {
				t.Fatal("the retry sent another body")
			}
			retry.forward()
		}
		wait(t, plugged)
		for i, out := range outs {
			o := wait(t, out)
			var e *transport.Error
			switch {
			case code == transport.ErrUnavailableCode && (o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK):
				t.Errorf("%s, caller %d: %+v, want ok after the retry", code, i, o)
			case code == transport.ErrMalformedCode && (!errors.As(o.err, &e) || e.Code != code || o.results != nil):
				t.Errorf("%s, caller %d: %+v, want the request's error", code, i, o)
			}
		}
	}
}

// A caller cancelled while its request is in flight gets context.Canceled;
// the request goes on for the others, who get their results; the cancelled
// caller's event was applied all the same, and its retry answers exists.
func cancelledCallerLeavesOthers(t *testing.T, ctx context.Context, rl *relay) {
	c := rl.client(t)
	held, plugged := plug(t, ctx, c, rl, "cancel-plug")
	cctx, cancel := context.WithCancel(ctx)
	stay := goCreate(ctx, c, []transport.Transfer{pay("cancel-stay", "bank")})
	waitQueued(t, c.transfers, 1)
	leave := goCreate(cctx, c, []transport.Transfer{pay("cancel-leave", "bank")})
	waitQueued(t, c.transfers, 2)
	held.forward()
	inFlight := rl.next(t)
	cancel()
	if o := wait(t, leave); !errors.Is(o.err, context.Canceled) {
		t.Fatalf("cancelled caller: %+v, want context.Canceled", o)
	}
	inFlight.forward()
	wait(t, plugged)
	if o := wait(t, stay); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK {
		t.Fatalf("the other caller: %+v, want ok", o)
	}
	again := goCreate(ctx, c, []transport.Transfer{pay("cancel-leave", "bank")})
	rl.next(t).forward()
	if o := wait(t, again); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeExists {
		t.Fatalf("retry of the cancelled call: %+v, want exists", o)
	}
}

// Close refuses new calls at once and returns once the calls under way
// were answered; then no sender of the client runs.
func closeDrains(t *testing.T, ctx context.Context, rl *relay) {
	c := rl.client(t)
	held, plugged := plug(t, ctx, c, rl, "close-plug")
	queuedCall := goCreate(ctx, c, []transport.Transfer{pay("close-queued", "bank")})
	waitQueued(t, c.transfers, 1)
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for !isClosed(c) {
		if time.Now().After(deadline) {
			t.Fatal("Close did not refuse new calls")
		}
		time.Sleep(time.Millisecond)
	}
	if o := wait(t, goCreate(ctx, c, transfers(1))); !errors.Is(o.err, ErrClosed) {
		t.Fatalf("a call after Close: %+v, want ErrClosed", o)
	}
	if _, err := c.LookupAccounts(ctx, []string{"bank"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("a lookup after Close: %v, want ErrClosed", err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with calls under way", err)
	case <-time.After(50 * time.Millisecond):
	}
	held.forward()
	rl.next(t).forward()
	for _, out := range []chan outcome{plugged, queuedCall} {
		if o := wait(t, out); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK {
			t.Errorf("outcome %+v, want ok", o)
		}
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return once every call was answered")
	}
	c.transfers.mu.Lock()
	defer c.transfers.mu.Unlock()
	if c.transfers.senders != 0 || len(c.transfers.queue) != 0 {
		t.Fatalf("after Close: %d senders, %d queued", c.transfers.senders, len(c.transfers.queue))
	}
}

func isClosed(c *Client) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.closed
}
