package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/transport"
)

// heldRequest is one request attempt that a gated client has sent and the
// test answers.
type heldRequest struct {
	body  []byte
	reply chan []byte
}

// gatedClient returns a Client whose every request attempt is handed to
// the test on the channel, and answered with what the test sends back: the
// test decides when each request is answered. No NATS.
func gatedClient(opts ...Option) (*Client, chan *heldRequest) {
	arrived := make(chan *heldRequest)
	c := New(nil, append([]Option{WithRequestTimeout(time.Minute)}, opts...)...)
	c.send = func(ctx context.Context, _ string, body []byte) ([]byte, error) {
		h := &heldRequest{body: body, reply: make(chan []byte, 1)}
		select {
		case arrived <- h:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		select {
		case b := <-h.reply:
			return b, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return c, arrived
}

// next waits for the next request attempt.
func next(t *testing.T, arrived chan *heldRequest) *heldRequest {
	t.Helper()
	select {
	case h := <-arrived:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no request sent")
		return nil
	}
}

// byAmount answers a create-transfers body as a cluster would, with the
// code each transfer's amount names: amount%100 == 7 is exceeds_credits,
// anything else ok with timestamp 1000+index.
func byAmount(t *testing.T, body []byte) []byte {
	t.Helper()
	var req transport.CreateTransfersRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		t.Error(err)
	}
	var reply transport.ResultsReply
	for i, tr := range req.Transfers {
		r := transport.Result{Index: uint32(i), Code: transport.CodeOK, Timestamp: uint64(1000 + i)}
		if tr.Amount%100 == 7 {
			r.Code, r.Timestamp = transport.CodeExceedsCredits, 0
		}
		reply.Results = append(reply.Results, r)
	}
	return mustMarshal(t, &reply)
}

func requestTransfers(t *testing.T, body []byte) []transport.Transfer {
	t.Helper()
	var req transport.CreateTransfersRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	return req.Transfers
}

// queued returns how many calls wait in q's queue.
func queued(q *coalescer) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}

// waitQueued waits until n calls wait in q's queue.
func waitQueued(t *testing.T, q *coalescer, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for queued(q) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued, want %d", queued(q), n)
		}
		time.Sleep(time.Millisecond)
	}
}

type outcome struct {
	results []transport.Result
	err     error
}

func (o outcome) String() string { return fmt.Sprintf("results %+v, error %v", o.results, o.err) }

// goCreate runs CreateTransfers on its own goroutine; its outcome arrives
// on the channel.
func goCreate(ctx context.Context, c *Client, ts []transport.Transfer) chan outcome {
	out := make(chan outcome, 1)
	go func() {
		rs, err := c.CreateTransfers(ctx, ts)
		out <- outcome{rs, err}
	}()
	return out
}

func wait(t *testing.T, out chan outcome) outcome {
	t.Helper()
	select {
	case o := <-out:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not return")
		return outcome{}
	}
}

// While one request is in flight the calls made meanwhile queue and go as
// one request; each caller gets its own results, indexed from 0 into its
// own slice, in order.
func TestCoalescedCallsShareOneRequestAndGetTheirOwnResults(t *testing.T) {
	c, arrived := gatedClient()
	ctx := context.Background()
	plug := goCreate(ctx, c, transfers(1))
	first := next(t, arrived)

	const callers = 10
	calls := make([][]transport.Transfer, callers)
	outs := make([]chan outcome, callers)
	for i := range calls {
		calls[i] = transfers(1 + i%3)
		for j := range calls[i] {
			calls[i][j].ID = calls[i][j].ID + "-" + string(rune('a'+i))
			calls[i][j].Amount = uint64(100*i + j + 6 + i%2) // every odd caller's first event: exceeds_credits
		}
		outs[i] = goCreate(ctx, c, calls[i])
	}
	waitQueued(t, c.transfers, callers)
	first.reply <- byAmount(t, first.body)
	second := next(t, arrived)
	sent := requestTransfers(t, second.body)
	second.reply <- byAmount(t, second.body)

	if o := wait(t, plug); o.err != nil || len(o.results) != 1 {
		t.Fatalf("plug: %+v", o)
	}
	pos := map[string]int{}
	for i, tr := range sent {
		pos[tr.ID] = i
	}
	for i, out := range outs {
		o := wait(t, out)
		if o.err != nil || len(o.results) != len(calls[i]) {
			t.Fatalf("caller %d: %d results, err %v; want %d", i, len(o.results), o.err, len(calls[i]))
		}
		for j, r := range o.results {
			want := transport.CodeOK
			if calls[i][j].Amount%100 == 7 {
				want = transport.CodeExceedsCredits
			}
			if int(r.Index) != j || r.Code != want {
				t.Errorf("caller %d result %d = %+v, want index %d code %v", i, j, r, j, want)
			}
			if p, ok := pos[calls[i][j].ID]; !ok || (want == transport.CodeOK && r.Timestamp != uint64(1000+p)) {
				t.Errorf("caller %d result %d: timestamp %d, not that of its own event at %d in the request", i, j, r.Timestamp, p)
			}
		}
	}
	events := 0
	for _, call := range calls {
		events += len(call)
	}
	if len(pos) != events || c.Stats().Requests != 2 {
		t.Fatalf("%d events in the second request, %d requests; want all %d in 2", len(pos), c.Stats().Requests, events)
	}
}

// A reply that does not answer the events in order is the whole request's
// failure: every caller of it gets the error, none gets another's result.
func TestCoalescedReplyOutOfOrderFailsEveryCaller(t *testing.T) {
	c, arrived := gatedClient()
	ctx := context.Background()
	plug := goCreate(ctx, c, transfers(1))
	first := next(t, arrived)
	a, b := goCreate(ctx, c, transfers(2)), goCreate(ctx, c, transfers(1))
	waitQueued(t, c.transfers, 2)
	first.reply <- byAmount(t, first.body)
	second := next(t, arrived)
	reply := transport.ResultsReply{Results: []transport.Result{{Index: 1}, {Index: 0}, {Index: 2}}}
	second.reply <- mustMarshal(t, &reply)
	wait(t, plug)
	for _, out := range []chan outcome{a, b} {
		if o := wait(t, out); o.err == nil || !strings.Contains(o.err.Error(), "out of order") || o.results != nil {
			t.Errorf("outcome %+v, want the reply out of order", o)
		}
	}
}

// A caller whose ctx ends while its call is queued gets ctx's error at
// once, and its events are not sent; the others' request goes on.
func TestCallerLeavingBeforeItsCallIsSentIsLeftOut(t *testing.T) {
	c, arrived := gatedClient()
	plug := goCreate(context.Background(), c, transfers(1))
	first := next(t, arrived)
	ctx, cancel := context.WithCancel(context.Background())
	stay1 := goCreate(context.Background(), c, []transport.Transfer{{ID: "stay1", Amount: 1}})
	waitQueued(t, c.transfers, 1)
	leave := goCreate(ctx, c, []transport.Transfer{{ID: "leave", Amount: 1}})
	waitQueued(t, c.transfers, 2)
	stay2 := goCreate(context.Background(), c, []transport.Transfer{{ID: "stay2", Amount: 1}})
	waitQueued(t, c.transfers, 3)
	cancel()
	if o := wait(t, leave); !errors.Is(o.err, context.Canceled) {
		t.Fatalf("cancelled caller: %+v, want context.Canceled", o)
	}
	first.reply <- byAmount(t, first.body)
	second := next(t, arrived)
	sent := requestTransfers(t, second.body)
	second.reply <- byAmount(t, second.body)
	if len(sent) != 2 || sent[0].ID != "stay1" || sent[1].ID != "stay2" {
		t.Fatalf("second request sent %+v, want stay1 and stay2 only", sent)
	}
	wait(t, plug)
	for _, out := range []chan outcome{stay1, stay2} {
		if o := wait(t, out); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK {
			t.Errorf("outcome %+v, want ok", o)
		}
	}
}

// A call that finds the client holding its bound of calls waits for room,
// or for its ctx, and is not queued meanwhile.
func TestCoalescerBoundsTheCallsItHolds(t *testing.T) {
	c, arrived := gatedClient()
	c.transfers = newCoalescer(c, c.transfers.kind, 2)
	plug := goCreate(context.Background(), c, transfers(1))
	first := next(t, arrived)
	held := goCreate(context.Background(), c, transfers(1))
	waitQueued(t, c.transfers, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if o := wait(t, goCreate(ctx, c, transfers(1))); !errors.Is(o.err, context.DeadlineExceeded) || !strings.Contains(o.err.Error(), "waiting for room") {
		t.Fatalf("third call: %+v, want to have waited for room", o)
	}
	if n := queued(c.transfers); n != 1 {
		t.Fatalf("%d calls queued, want 1: the bound is 2 held", n)
	}
	first.reply <- byAmount(t, first.body)
	second := next(t, arrived)
	second.reply <- byAmount(t, second.body)
	wait(t, plug)
	if o := wait(t, held); o.err != nil {
		t.Fatal(o.err)
	}
}

// A coalesced request retried after `unavailable` sends the same body; a
// caller whose ctx ends meanwhile gets ctx's error and the last attempt's,
// and the others get their results from the retry.
func TestCoalescedRequestIsRetriedForThoseWhoWait(t *testing.T) {
	c, arrived := gatedClient()
	plug := goCreate(context.Background(), c, transfers(1))
	first := next(t, arrived)
	ctx, cancel := context.WithCancel(context.Background())
	leave := goCreate(ctx, c, []transport.Transfer{{ID: "leave", Amount: 1}})
	stay := goCreate(context.Background(), c, []transport.Transfer{{ID: "stay", Amount: 1}})
	waitQueued(t, c.transfers, 2)
	first.reply <- byAmount(t, first.body)
	second := next(t, arrived)
	second.reply <- mustMarshal(t, &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrUnavailableCode}})
	third := next(t, arrived) // the retry, in flight
	cancel()
	o := wait(t, leave)
	var e *transport.Error
	if !errors.Is(o.err, context.Canceled) || !errors.As(o.err, &e) || e.Code != transport.ErrUnavailableCode {
		t.Fatalf("leaving caller: %+v, want context.Canceled and the last attempt's unavailable", o)
	}
	if string(third.body) != string(second.body) {
		t.Fatal("the retry sent another body: it must resend the same batch")
	}
	third.reply <- byAmount(t, third.body)
	wait(t, plug)
	if o := wait(t, stay); o.err != nil || len(o.results) != 1 || o.results[0].Code != transport.CodeOK {
		t.Fatalf("staying caller: %+v, want ok", o)
	}
}

// WithCoalescing(false) sends each call as its own request.
func TestWithoutCoalescingEachCallIsItsOwnRequest(t *testing.T) {
	c, arrived := gatedClient(WithCoalescing(false))
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if _, err := c.CreateTransfers(context.Background(), transfers(1)); err != nil {
				t.Error(err)
			}
		})
	}
	var held []*heldRequest
	for range 3 {
		held = append(held, next(t, arrived)) // all three in flight at once
	}
	for _, h := range held {
		if n := len(requestTransfers(t, h.body)); n != 1 {
			t.Errorf("a request of %d events, want 1", n)
		}
		h.reply <- byAmount(t, h.body)
	}
	wg.Wait()
	if c.transfers != nil || c.Stats().Requests != 3 {
		t.Fatalf("coalescer %v, %d requests; want none and 3", c.transfers, c.Stats().Requests)
	}
}

// A caller whose deadline passes while its request is in flight gets the
// deadline, as a lone call does, not the cancellation its leaving caused
// to the request no one else waited for.
func TestCallerPastItsDeadlineGetsTheDeadline(t *testing.T) {
	c, arrived := gatedClient()
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		out := goCreate(ctx, c, transfers(1))
		next(t, arrived) // held: never answered
		o := wait(t, out)
		cancel()
		if !errors.Is(o.err, context.DeadlineExceeded) || o.results != nil {
			t.Fatalf("outcome %v, want the deadline", o)
		}
	}
}
