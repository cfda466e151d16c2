// Package client is the Go client of a ledgerd cluster: what a payment
// provider links to create and look up accounts and transfers over NATS.
//
// A Client wraps a *nats.Conn the caller owns (Connect opens one with the
// caller's Credentials, or use nats.Connect). Every call retries on its own
// until ctx is done when the cluster answers `timeout` or `unavailable`, or
// when NATS reports a timeout or no responders: it sends the same batch with
// the same ids again. That is safe because creation is idempotent: an event
// that was applied by an earlier attempt whose reply was lost answers
// `exists` instead of being applied twice. So a caller should treat `exists`
// on a retried batch as applied.
//
// A create returns one result per event, in order (ok included, unlike
// TigerBeetle, which reports only failures).
//
// Batches longer than transport.BatchEventsMax, or whose encoding would not
// fit in transport.MessageBytesMax, are split into several requests sent one
// after the other, in order. Result indexes are rebased: Result.Index always
// indexes the caller's own slice. A split never cuts a linked chain (an event
// flagged linked and its successors), so a chain still succeeds or fails as
// one; a chain too long for one request is refused before anything is sent.
// Splitting does make the batch as a whole non-atomic across requests: if a
// later request fails, the earlier ones stay applied, and calling again with
// the same batch is the way to finish it.
//
// Concurrent creates of one kind on one Client are coalesced (unless
// WithCoalescing(false)): while a request is in flight, the calls made
// meanwhile queue, and as soon as it is answered they go together as one
// request, as many as it holds; each caller gets exactly its own results,
// indexed into its own slice. So 64 goroutines each creating one transfer
// send a few requests, not 64. A call that does not fit in one request, or
// whose last event is flagged linked (its chain open: alone it answers
// linked_event_chain_open, which another caller's events after it would
// change), or that the cluster would refuse as malformed, is sent alone as
// above. A request-level error reaches every caller of the request, and it
// is retried for all of them while any of them waits (so a caller may get
// exists for events another shard's timeout made the request resend); a
// caller whose ctx ends gets ctx's error, and the others' request goes on.
// At most CoalesceCallsMax calls of a kind wait in a Client; more wait for
// room. Close refuses new calls and waits for those under way.
//
//	nc, err := client.Connect(nats.DefaultURL, client.Credentials{User: "acme", Password: pw})
//	if err != nil { ... }
//	c := client.New(nc)
//	results, err := c.CreateTransfers(ctx, []transport.Transfer{{
//		ID: "t1", DebitAccountID: "alice", CreditAccountID: "bob",
//		Amount: 100, Ledger: 1, Code: 1,
//	}})
//	var reqErr *transport.Error
//	switch {
//	case errors.As(err, &reqErr): // the request failed as a whole: reqErr.Code
//	case err != nil: // ctx done, connection closed, ...
//	case results[0].Code == transport.CodeOK, results[0].Code == transport.CodeExists:
//	}
package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/transport"
)

// Defaults of the options.
const (
	// RequestTimeoutDefault is one attempt's timeout: a little more than the
	// server's default request deadline (5 s), by which the server answers
	// `timeout` itself; waiting longer only adds latency to the retry.
	RequestTimeoutDefault = 6 * time.Second
	backoffMin            = 10 * time.Millisecond
	backoffMax            = 1 * time.Second
)

// ErrClosed is returned by the calls made after Close.
var ErrClosed = errors.New("client: closed")

// Client sends requests to a ledgerd cluster. It is safe for concurrent use.
type Client struct {
	subjects       transport.Subjects
	requestTimeout time.Duration
	coalescing     bool
	// send makes one request attempt. It is nc.RequestWithContext except in
	// tests, which check splitting and rebasing without a NATS server.
	send func(ctx context.Context, subject string, body []byte) ([]byte, error)
	// accounts and transfers coalesce concurrent creates; nil without
	// coalescing.
	accounts, transfers *coalescer
	requests            atomic.Uint64 // attempts sent, for Stats

	// mu guards closed against calls that start while Close waits for calls.
	mu     sync.RWMutex
	closed bool
	calls  sync.WaitGroup
}

// Stats are what a Client has sent.
type Stats struct {
	// Requests counts the requests sent, every attempt of a retry included.
	Requests uint64
}

// Option configures a Client.
type Option func(*Client)

// WithPrefix sets the subject prefix (default transport.DefaultPrefix).
func WithPrefix(prefix string) Option {
	return func(c *Client) { c.subjects.Prefix = prefix }
}

// WithCoalescing turns the coalescing of concurrent creates on (the
// default) or off: off, every call is sent as its own request(s).
func WithCoalescing(on bool) Option {
	return func(c *Client) { c.coalescing = on }
}

// WithRequestTimeout sets how long one attempt waits for its reply before it
// is retried (default RequestTimeoutDefault).
func WithRequestTimeout(d time.Duration) Option {
	return func(c *Client) { c.requestTimeout = d }
}

// New returns a Client that sends its requests over nc.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{
		subjects:       transport.Subjects{Prefix: transport.DefaultPrefix},
		requestTimeout: RequestTimeoutDefault,
		coalescing:     true,
		send: func(ctx context.Context, subject string, body []byte) ([]byte, error) {
			msg, err := nc.RequestWithContext(ctx, subject, body)
			if err != nil {
				return nil, err
			}
			return msg.Data, nil
		},
	}
	for _, o := range opts {
		o(c)
	}
	if c.coalescing {
		c.accounts = newCoalescer(c, kind{subject: c.subjects.AccountsCreate(), field: "accounts",
			valid: decodes[transport.CreateAccountsRequest]}, CoalesceCallsMax)
		c.transfers = newCoalescer(c, kind{subject: c.subjects.TransfersCreate(), field: "transfers",
			valid: decodes[transport.CreateTransfersRequest]}, CoalesceCallsMax)
	}
	return c
}

// decodes reports whether the router would decode body as an R, by the
// router's own decoder, so the two cannot disagree. Values made from Go
// types have no wrong type or out-of-range integer; what the check catches
// is a container over transport.BatchEventsMax (metadata of 8191 pairs),
// which the router refuses as too_many_events.
func decodes[R any](body []byte) bool {
	return transport.Unmarshal(body, new(R)) == nil
}

// Stats returns what c has sent so far.
func (c *Client) Stats() Stats { return Stats{Requests: c.requests.Load()} }

// Close refuses the calls made from now on (ErrClosed) and waits for those
// under way to return, coalesced ones included: each returns when it is
// answered or its ctx ends. Then no goroutine of c runs. It does not close
// the NATS connection, which the caller owns: close that after.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.calls.Wait()
	for _, q := range []*coalescer{c.accounts, c.transfers} {
		if q != nil {
			q.close()
		}
	}
	return nil
}

// enter counts a call under way, or refuses it after Close; the caller
// calls c.calls.Done when it returns.
func (c *Client) enter() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	c.calls.Add(1)
	return nil
}

// CreateAccounts creates accounts and returns one result per account, in
// order, with Index into accounts. On error, results holds those of the
// requests that completed: a prefix of the batch.
func (c *Client) CreateAccounts(ctx context.Context, accounts []transport.Account) ([]transport.Result, error) {
	events, err := encodeEvents(accounts, func(a *transport.Account) bool { return a.Flags&transport.AccountLinked != 0 })
	if err != nil {
		return nil, err
	}
	return c.create(ctx, c.accounts, c.subjects.AccountsCreate(), "accounts", events)
}

// CreateTransfers creates transfers and returns one result per transfer, in
// order, with Index into transfers. On error, results holds those of the
// requests that completed: a prefix of the batch.
func (c *Client) CreateTransfers(ctx context.Context, transfers []transport.Transfer) ([]transport.Result, error) {
	events, err := encodeEvents(transfers, func(t *transport.Transfer) bool { return t.Flags&transport.TransferLinked != 0 })
	if err != nil {
		return nil, err
	}
	return c.create(ctx, c.transfers, c.subjects.TransfersCreate(), "transfers", events)
}

// create sends events through q (nil: no coalescing) if it admits them,
// else as requests of their own.
func (c *Client) create(ctx context.Context, q *coalescer, subject, field string, events *encoded) ([]transport.Result, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	spans, err := events.split(transport.BatchEventsMax)
	if err != nil {
		return nil, err
	}
	if q != nil && q.admits(events, spans) {
		return q.do(ctx, events)
	}
	results := make([]transport.Result, 0, events.len())
	for _, s := range spans {
		n := s.end - s.start
		reply, err := call(ctx, c, subject, events.body(field, s), func(r *transport.ResultsReply) *transport.Error { return r.Error })
		if err != nil {
			return results, err
		}
		if len(reply.Results) != n {
			return results, fmt.Errorf("%s: %d results for %d events", subject, len(reply.Results), n)
		}
		for _, r := range reply.Results {
			if int(r.Index) >= n {
				return results, fmt.Errorf("%s: result index %d out of a batch of %d", subject, r.Index, n)
			}
			r.Index += uint32(s.start)
			results = append(results, r)
		}
	}
	return results, nil
}

// LookupAccounts returns the accounts with the given ids, in the order of
// ids; unknown ids are left out.
func (c *Client) LookupAccounts(ctx context.Context, ids []string) ([]transport.Account, error) {
	return lookup(ctx, c, c.subjects.AccountsLookup(), ids, func(r *transport.AccountsReply) ([]transport.Account, *transport.Error) {
		return r.Accounts, r.Error
	})
}

// LookupTransfers returns the transfers with the given ids, in the order of
// ids; unknown ids are left out.
func (c *Client) LookupTransfers(ctx context.Context, ids []string) ([]transport.Transfer, error) {
	return lookup(ctx, c, c.subjects.TransfersLookup(), ids, func(r *transport.TransfersReply) ([]transport.Transfer, *transport.Error) {
		return r.Transfers, r.Error
	})
}

// lookupIDsMax bounds the ids of one lookup request so that its reply fits
// in a message even when every account or transfer found carries the largest
// metadata allowed: replyEventBytesMax bounds one encoded account or
// transfer (checked by a test).
const (
	replyEventBytesMax = 2048
	lookupIDsMax       = transport.MessageBytesMax / replyEventBytesMax
)

func lookup[R, T any](ctx context.Context, c *Client, subject string, ids []string, fields func(*R) ([]T, *transport.Error)) ([]T, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	events, err := encodeEvents(ids, func(*string) bool { return false })
	if err != nil {
		return nil, err
	}
	spans, err := events.split(min(transport.BatchEventsMax, lookupIDsMax))
	if err != nil {
		return nil, err
	}
	found := make([]T, 0, len(ids)) // not nil: an empty lookup is [] in JSON
	for _, s := range spans {
		reply, err := call(ctx, c, subject, events.body("ids", s), func(r *R) *transport.Error { _, e := fields(r); return e })
		if err != nil {
			return found, err
		}
		items, _ := fields(reply)
		found = append(found, items...)
	}
	return found, nil
}

// AccountTransfers returns the account's transfers that the filter selects,
// oldest first (newest first with Reverse). Fewer than Limit come back when
// the reply would pass the message size: page on from the last timestamp.
func (c *Client) AccountTransfers(ctx context.Context, f transport.AccountFilter) ([]transport.Transfer, error) {
	return history(ctx, c, c.subjects.AccountsTransfers(), &f, func(r *transport.TransfersReply) ([]transport.Transfer, *transport.Error) {
		return r.Transfers, r.Error
	})
}

// AccountBalances returns the balance history of an account flagged history:
// its balances right after each event, as the filter selects them.
func (c *Client) AccountBalances(ctx context.Context, f transport.AccountFilter) ([]transport.Balance, error) {
	return history(ctx, c, c.subjects.AccountsBalances(), &f, func(r *transport.BalancesReply) ([]transport.Balance, *transport.Error) {
		return r.Balances, r.Error
	})
}

func history[R, T any](ctx context.Context, c *Client, subject string, f *transport.AccountFilter, fields func(*R) ([]T, *transport.Error)) ([]T, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	body, err := transport.Marshal(f)
	if err != nil {
		return nil, err
	}
	reply, err := call(ctx, c, subject, body, func(r *R) *transport.Error { _, e := fields(r); return e })
	if err != nil {
		return nil, err
	}
	rows, _ := fields(reply)
	return rows, nil
}

// Status returns the cluster's nodes and shards.
func (c *Client) Status(ctx context.Context) (*transport.StatusReply, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.calls.Done()
	// 0x80 is the msgpack empty map: the request has no fields.
	return call(ctx, c, c.subjects.ClusterStatus(), []byte{0x80}, func(r *transport.StatusReply) *transport.Error { return r.Error })
}

// call sends body until it gets a reply that is not a retryable error or ctx
// is done. replyErr returns the decoded reply's request-level error.
func call[R any](ctx context.Context, c *Client, subject string, body []byte, replyErr func(*R) *transport.Error) (*R, error) {
	return callObserved(ctx, c, subject, body, replyErr, func(error) {})
}

// callObserved is call that also passes each failed attempt's error to
// observe before it retries.
func callObserved[R any](ctx context.Context, c *Client, subject string, body []byte, replyErr func(*R) *transport.Error, observe func(error)) (*R, error) {
	for attempt := 0; ; attempt++ {
		reply, err := request[R](ctx, c, subject, body)
		if err == nil {
			e := replyErr(reply)
			if e == nil {
				return reply, nil
			}
			err = e // not err = replyErr(reply): a nil *Error is a non-nil error
		}
		if !retryable(err) {
			return nil, err
		}
		observe(err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w (last attempt: %w)", subject, ctx.Err(), err)
		case <-time.After(backoff(attempt)):
		}
	}
}

// request makes one attempt and decodes its reply into a fresh R, so that
// nothing of an earlier attempt's reply leaks into this one.
func request[R any](ctx context.Context, c *Client, subject string, body []byte) (*R, error) {
	actx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	c.requests.Add(1)
	data, err := c.send(actx, subject, body)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// The attempt's own deadline, not the caller's: retryable.
			return nil, fmt.Errorf("%s: %w", subject, nats.ErrTimeout)
		}
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	reply := new(R)
	if err := transport.Unmarshal(data, reply); err != nil {
		return nil, fmt.Errorf("%s: bad reply: %w", subject, err)
	}
	return reply, nil
}

// retryable reports whether sending the same request again may succeed.
// The cluster changed nothing for these, or the outcome is unknown and
// idempotency makes a second try safe.
func retryable(err error) bool {
	var e *transport.Error
	if errors.As(err, &e) {
		return e.Code == transport.ErrTimeoutCode || e.Code == transport.ErrUnavailableCode
	}
	// ErrDisconnected: the connection dropped with our request in flight and
	// nats.go is reconnecting.
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrDisconnected)
}

// backoff is capped exponential with jitter: a random wait in [d/2, d) so
// that clients that failed together do not retry together.
func backoff(attempt int) time.Duration {
	d := backoffMax
	if attempt < 16 {
		d = min(backoffMin<<attempt, backoffMax)
	}
	return d/2 + rand.N(d/2)
}
