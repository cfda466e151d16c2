package client

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ledgerd/ledgerd/transport"
)

// Limits of coalescing.
const (
	// CoalesceCallsMax bounds the create calls of one kind (accounts or
	// transfers) that a Client holds for coalescing, queued or in flight:
	// enough single-event calls to fill the request in flight and the next
	// one. A call past it waits for room, or until its ctx is done.
	CoalesceCallsMax = 2 * transport.BatchEventsMax
	// CoalesceRequestsMax bounds the coalesced requests of one kind a Client
	// has in flight at once. One, as TigerBeetle's client: while it is in
	// flight, the calls made meanwhile queue and go together in the next.
	// In `ledgerctl bench --batch 1 --clients 64` (4 clients), five rounds
	// alternated on a busy 2-core machine: 1 in flight, median 7,559
	// transfers/s at 64-79 µs of ledgerd CPU per transfer; 2 in flight,
	// 6,797/s at 75-102 µs (twice the requests); 4 and 8, in two rounds
	// each, were no faster than 1.
	CoalesceRequestsMax = 1
)

// coalescer sends the concurrent create calls of one kind on one Client as
// few requests: a call made while no request is in flight is sent at once;
// the calls made while one is in flight are queued and sent together as
// soon as it is answered, as many as one request holds, in the order they
// were made. There is no timer: an idle client adds no latency.
//
// Only calls whose events fit in one request and end with a closed linked
// chain are coalesced (admits), so a chain never spans two callers' events
// and each caller gets the answer it would get alone.
type coalescer struct {
	c *Client
	kind
	// slots holds a token per call held (queued or in flight): the bound
	// CoalesceCallsMax.
	slots chan struct{}

	mu      sync.Mutex
	queue   []*waiter
	senders int // goroutines sending queued calls, at most CoalesceRequestsMax
	wg      sync.WaitGroup
}

// kind is what differs between the creates of accounts and of transfers.
type kind struct {
	subject, field string
	// valid reports whether the cluster can decode body, a request of this
	// kind, exactly as the router does.
	valid func(body []byte) bool
}

// waiter is one call waiting for its results.
type waiter struct {
	ctx    context.Context
	events *encoded
	done   chan answer // buffered: the sender never blocks on a caller that left
	// last is the error of the last failed attempt of its request, for a
	// caller whose ctx ends while the request is retried.
	last atomic.Pointer[error]
}

// answer is what a waiter gets: its own results, or its request's error.
type answer struct {
	results []transport.Result
	err     error
}

// newCoalescer returns a coalescer that holds at most callsMax calls
// (CoalesceCallsMax but in tests).
func newCoalescer(c *Client, k kind, callsMax int) *coalescer {
	return &coalescer{c: c, kind: k, slots: make(chan struct{}, callsMax)}
}

// admits reports whether a call of events (cut into spans) may be
// coalesced: it fits in one request, its last event is not flagged linked
// (its chain open at the end: alone it answers linked_event_chain_open, so
// no other caller's events may follow it), and the cluster will decode it
// (alone, a malformed call is refused as a whole; coalesced, it would take
// the other callers' events down with it). An empty call is sent as today.
func (q *coalescer) admits(events *encoded, spans []span) bool {
	n := events.len()
	return len(spans) == 1 && n > 0 && !events.linked[n-1] && q.valid(events.body(q.field, spans[0]))
}

// do queues a call and waits for its results, or for ctx.
func (q *coalescer) do(ctx context.Context, events *encoded) ([]transport.Result, error) {
	select {
	case q.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w (waiting for room: the client held %d calls)", q.subject, ctx.Err(), cap(q.slots))
	}
	w := &waiter{ctx: ctx, events: events, done: make(chan answer, 1)}
	q.mu.Lock()
	q.queue = append(q.queue, w)
	if q.senders < CoalesceRequestsMax {
		q.senders++
		q.wg.Add(1)
		go q.send()
	}
	q.mu.Unlock()
	select {
	case a := <-w.done:
		if a.err != nil && ctx.Err() != nil {
			return w.leave(q.subject) // the request failed because its callers left
		}
		return a.results, a.err
	case <-ctx.Done():
		return w.leave(q.subject)
	}
}

// leave is what a caller whose ctx ended gets: its results if they came
// meanwhile, else ctx's error and its request's last failure (not the
// request's own error, which may be the cancellation its callers' leaving
// caused). Its events may still be sent, or be in flight: as when a lone
// call's ctx ends, their outcome is unknown until looked up or sent again.
func (w *waiter) leave(subject string) ([]transport.Result, error) {
	select {
	case a := <-w.done:
		if a.err == nil {
			return a.results, nil
		}
	default:
	}
	if last := w.last.Load(); last != nil {
		return nil, fmt.Errorf("%s: %w (last attempt: %w)", subject, w.ctx.Err(), *last)
	}
	return nil, fmt.Errorf("%s: %w", subject, w.ctx.Err())
}

// send sends queued calls until the queue is empty.
func (q *coalescer) send() {
	defer q.wg.Done()
	for {
		batch := q.take()
		if batch == nil {
			return
		}
		q.flush(batch)
	}
}

// take removes from the queue the first calls that fit in one request
// together, dropping those whose caller has left. With nothing to send it
// returns nil and the sender ends (under the lock, so a call queued after
// it finds senders below the bound and starts one).
func (q *coalescer) take() []*waiter {
	const bytesMax = transport.MessageBytesMax - envelopeBytesMax
	q.mu.Lock()
	defer q.mu.Unlock()
	var batch []*waiter
	events, size, i := 0, 0, 0
	for ; i < len(q.queue); i++ {
		w := q.queue[i]
		if w.ctx.Err() != nil {
			<-q.slots // its caller left before it was sent: send nothing of it
			continue
		}
		if events+w.events.len() > transport.BatchEventsMax || size+len(w.events.buf) > bytesMax {
			break
		}
		events += w.events.len()
		size += len(w.events.buf)
		batch = append(batch, w)
	}
	clear(q.queue[:i])
	q.queue = q.queue[i:]
	if len(q.queue) == 0 {
		q.queue = nil // let the array of a burst go
	}
	if len(batch) == 0 {
		q.senders--
	}
	return batch
}

// flush sends batch as one request, retried as a lone call is, until it is
// answered or every one of its callers has left, and gives each caller its
// own results.
func (q *coalescer) flush(batch []*waiter) {
	defer func() {
		for range batch {
			<-q.slots
		}
	}()
	body := coalescedBody(q.field, batch)
	observe := func(err error) {
		for _, w := range batch {
			w.last.Store(&err)
		}
	}
	ctx, release := whileAnyWaits(batch)
	reply, err := callObserved(ctx, q.c, q.subject, body, func(r *transport.ResultsReply) *transport.Error { return r.Error }, observe)
	release() // before the callers are answered and cancel their contexts
	if err == nil {
		err = q.deliver(batch, reply.Results)
	}
	if err != nil {
		for _, w := range batch {
			w.done <- answer{err: err} // the whole request failed: each of its callers is told
		}
	}
}

// deliver gives each caller of batch its own slice of results, indexed
// into its own events. A reply that does not answer every event, in order,
// fails the whole request and delivers nothing.
func (q *coalescer) deliver(batch []*waiter, results []transport.Result) error {
	n := 0
	for _, w := range batch {
		n += w.events.len()
	}
	if len(results) != n {
		return fmt.Errorf("%s: %d results for %d events", q.subject, len(results), n)
	}
	off := 0
	for _, w := range batch {
		for j := range w.events.len() {
			if int(results[off+j].Index) != off+j {
				return fmt.Errorf("%s: result %d has index %d: the reply is out of order", q.subject, off+j, results[off+j].Index)
			}
		}
		off += w.events.len()
	}
	off = 0
	for _, w := range batch {
		k := w.events.len()
		own := results[off : off+k : off+k]
		for j := range own {
			own[j].Index = uint32(j)
		}
		w.done <- answer{results: own}
		off += k
	}
	return nil
}

// whileAnyWaits returns a context that is canceled once the ctx of every
// caller of batch is done: one caller's cancel does not stop the request
// the others wait for, and a request no one waits for is not retried.
func whileAnyWaits(batch []*waiter) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, w := range batch {
		stops[i] = context.AfterFunc(w.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// coalescedBody is the request {field: [every event of batch]}: the
// callers' encoded events back to back, in the order they were queued.
func coalescedBody(field string, batch []*waiter) []byte {
	n, size := 0, envelopeBytesMax
	for _, w := range batch {
		n += w.events.len()
		size += len(w.events.buf)
	}
	b := bytes.NewBuffer(make([]byte, 0, size))
	writeEnvelope(b, field, n)
	for _, w := range batch {
		b.Write(w.events.buf)
	}
	return b.Bytes()
}

// close waits for every queued and in-flight call to be answered (or its
// caller to leave) and the senders to end. The Client refuses new calls
// before it calls close.
func (q *coalescer) close() { q.wg.Wait() }
