// Package router is the stateless front end: it serves the client subjects
// of docs/protocol.md as the NATS micro service "ledger" (any number of copies in
// one queue group), hashes account ids to shards with the meta group's slot
// map, forwards each shard its part of a batch, retries with the same
// command while shards are unavailable, and answers every request.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ledgerd/ledgerd/auth"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Defaults and limits.
const (
	// DefaultRequestDeadline is how long a client request may take before
	// the router answers timeout.
	DefaultRequestDeadline = 5 * time.Second
	// requestsInFlightMax bounds the requests one router works on at once;
	// past it a request is answered unavailable at once (a NATS handler
	// must never block).
	requestsInFlightMax = 4096
	// slotMapRefresh is how often the slot map is fetched again.
	slotMapRefresh = 5 * time.Second
)

// Config configures a router.
type Config struct {
	Conn            *nats.Conn
	Prefix          string
	RequestDeadline time.Duration
	Logger          *slog.Logger
	// Policy, if set, returns the providers policy in force: every request
	// must then carry the identity the NATS server verified (auth), and a
	// provider is confined to what it owns. Without it every client is an
	// operator.
	Policy func() *auth.Policy
	// Metrics, if set, counts the requests (metrics.go).
	Metrics *Metrics
	// Local, if set, is the shard servers of the router's own process:
	// a command for a shard led here is handed to it without NATS.
	Local Local
}

// Local hands commands to the shards the router's process leads (node.Node
// is one; server wires it). The router sends everything else on NATS, and
// everything when there is no Local.
type Local interface {
	// Command hands shard id a command (the body of a wire.OpCommand) if
	// this process leads the shard now, and reports whether it took it.
	// Taken, answer gets at most once the Reply that the shard's subject
	// would have carried back; it runs on the shard's own goroutines and
	// must not block.
	Command(id uint32, body []byte, answer func(*wire.Reply)) bool
}

// Router serves the client protocol.
type Router struct {
	nc       *nats.Conn
	subjects transport.Subjects
	deadline time.Duration
	log      *slog.Logger
	svc      micro.Service
	sem      chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc

	mu    sync.RWMutex
	slots slotMap

	policy func() *auth.Policy
	local  Local
	// inFlight counts each provider's requests being worked on here, by
	// name, against its Limits.RequestsInFlight.
	inFlight sync.Map // string → *atomic.Int64
	metrics  *Metrics
}

type slotMap struct {
	Epoch uint64   `msgpack:"epoch"`
	Slots []uint32 `msgpack:"slots"`
}

// Start registers the micro service and returns once it serves.
func Start(cfg Config) (*Router, error) {
	if cfg.RequestDeadline == 0 {
		cfg.RequestDeadline = DefaultRequestDeadline
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Prefix == "" {
		cfg.Prefix = transport.DefaultPrefix
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		nc: cfg.Conn, subjects: transport.Subjects{Prefix: cfg.Prefix}, deadline: cfg.RequestDeadline,
		log: cfg.Logger, sem: make(chan struct{}, requestsInFlightMax), ctx: ctx, cancel: cancel,
		policy: cfg.Policy, metrics: cfg.Metrics, local: cfg.Local,
	}
	svc, err := micro.AddService(cfg.Conn, micro.Config{
		Name:        "ledger",
		Version:     transport.Version,
		Description: "ledgerd client API (PROTOCOL.md v1)",
		QueueGroup:  "ledger-router",
	})
	if err != nil {
		cancel()
		return nil, err
	}
	r.svc = svc
	endpoints := []struct {
		name, subject string
		h             handler
	}{
		{"accounts_create", r.subjects.AccountsCreate(), r.createAccounts},
		{"transfers_create", r.subjects.TransfersCreate(), r.createTransfers},
		{"accounts_lookup", r.subjects.AccountsLookup(), r.lookupAccounts},
		{"transfers_lookup", r.subjects.TransfersLookup(), r.lookupTransfers},
		{"accounts_transfers", r.subjects.AccountsTransfers(), r.accountTransfers},
		{"accounts_balances", r.subjects.AccountsBalances(), r.accountBalances},
		{"cluster_status", r.subjects.ClusterStatus(), r.status},
	}
	for _, e := range endpoints {
		if err := svc.AddEndpoint(e.name, r.async(r.metrics.endpoint(e.name), e.h), micro.WithEndpointSubject(e.subject)); err != nil {
			r.Stop()
			return nil, err
		}
	}
	go r.refreshSlots()
	return r, nil
}

// Stop unregisters the service; requests being worked on still finish.
func (r *Router) Stop() error {
	r.cancel()
	return r.svc.Stop()
}

// handler serves one request of a verified caller.
type handler func(ctx context.Context, caller *auth.Identity, body []byte) any

// operator is every caller when there is no policy.
var operator = &auth.Identity{Name: "operator"}

// async identifies the caller, then hands the request to its own goroutine
// so the endpoint's subscription keeps reading. It answers unauthorized at
// once to a caller without a verified identity, and unavailable when too
// many requests are in flight: in all, or of this caller (a provider
// flooding the router takes only its own share). em counts every answer.
func (r *Router) async(em *endpointMetrics, h handler) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		start := time.Now()
		caller, err := r.caller(req)
		if err != nil {
			em.observe(respond(req, &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrUnauthorizedCode, Message: err.Error()}}), start)
			return
		}
		release, ok := r.admit(caller)
		if !ok {
			em.observe(respond(req, &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrUnavailableCode,
				Message: fmt.Sprintf("over the limit of %d requests in flight: wait for replies before sending more", caller.Limits.RequestsInFlight)}}), start)
			return
		}
		select {
		case r.sem <- struct{}{}:
		default:
			release()
			em.observe(respond(req, &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrUnavailableCode, Message: "router overloaded"}}), start)
			return
		}
		go func() {
			defer func() { <-r.sem; release() }()
			ctx, cancel := context.WithTimeout(r.ctx, r.deadline)
			defer cancel()
			em.observe(respond(req, h(ctx, caller, req.Data())), start)
		}()
	})
}

// caller returns who sent req: with a policy, the identity the NATS server
// put in the request's header; without, an operator.
func (r *Router) caller(req micro.Request) (*auth.Identity, error) {
	if r.policy == nil {
		return operator, nil
	}
	return r.policy().Requester(req.Headers().Get(auth.RequestInfoHeader))
}

// admit counts a provider's request in flight, if under its limit, and
// returns how to release it.
func (r *Router) admit(caller *auth.Identity) (release func(), ok bool) {
	if caller.Operator() {
		return func() {}, true
	}
	v, _ := r.inFlight.LoadOrStore(caller.Name, new(atomic.Int64))
	n := v.(*atomic.Int64)
	if n.Add(1) > int64(caller.Limits.RequestsInFlight) {
		n.Add(-1)
		return nil, false
	}
	return func() { n.Add(-1) }, true
}

// respond sends reply, or the error that replaces it, and returns what it
// sent.
func respond(req micro.Request, reply any) any {
	b, err := transport.Marshal(reply)
	if err != nil {
		reply = &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrUnavailableCode, Message: err.Error()}}
		b, _ = transport.Marshal(reply)
	}
	if len(b) > transport.MessageBytesMax {
		// A lookup of many records with large metadata: NATS would refuse
		// the reply, and the client would only see a timeout.
		reply = &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrTooManyEventsCode,
			Message: fmt.Sprintf("the reply would be %d bytes, over the %d a message may carry: ask for fewer ids", len(b), transport.MessageBytesMax)}}
		b, _ = transport.Marshal(reply)
	}
	var opts []micro.RespondOpt
	if e := replyError(reply); e != nil {
		opts = append(opts, micro.WithHeaders(micro.Headers{
			"Nats-Service-Error":      []string{e.Message},
			"Nats-Service-Error-Code": []string{errorStatus(e.Code)},
		}))
	}
	_ = req.Respond(b, opts...)
	return reply
}

func replyError(reply any) *transport.Error {
	switch r := reply.(type) {
	case *transport.ResultsReply:
		return r.Error
	case *transport.AccountsReply:
		return r.Error
	case *transport.TransfersReply:
		return r.Error
	case *transport.BalancesReply:
		return r.Error
	case *transport.StatusReply:
		return r.Error
	}
	return nil
}

func errorStatus(code string) string {
	switch code {
	case transport.ErrMalformedCode, transport.ErrTooManyEventsCode:
		return "400"
	case transport.ErrUnauthorizedCode:
		return "403"
	case transport.ErrTimeoutCode:
		return "504"
	}
	return "503"
}

// requestError maps a failure to the protocol's request-level error.
func requestError(ctx context.Context, err error) *transport.Error {
	switch {
	case errors.Is(err, transport.ErrTooManyEvents):
		return &transport.Error{Code: transport.ErrTooManyEventsCode, Message: err.Error()}
	case errors.Is(err, transport.ErrMalformed):
		return &transport.Error{Code: transport.ErrMalformedCode, Message: err.Error()}
	case errors.Is(err, errNoLeader):
		return &transport.Error{Code: transport.ErrUnavailableCode, Message: "no shard leader took the request before the deadline; retry with the same ids"}
	case errors.Is(err, errShardTimeout) || ctx.Err() != nil:
		return &transport.Error{Code: transport.ErrTimeoutCode, Message: "request deadline passed; retry with the same ids"}
	}
	return &transport.Error{Code: transport.ErrUnavailableCode, Message: err.Error()}
}

var (
	// errShardTimeout: a shard may have applied part of the request.
	errShardTimeout = errors.New("shard outcome unknown at the deadline")
	// errNoLeader: no shard leader took the request at all.
	errNoLeader = errors.New("no shard leader before the deadline")
	// errOverLimit: a shard refused the request's part by a provider's
	// limit; that part changed nothing.
	errOverLimit = errors.New("over a limit of the provider")
)

// movedError: a shard answered that its slots changed after the map the
// request was routed with (a split): nothing of the command was applied.
type movedError struct {
	shard uint32
	epoch uint64
}

func (e *movedError) Error() string {
	return fmt.Sprintf("shard %d: slots moved at epoch %d", e.shard, e.epoch)
}

// withSlots runs fn with the current slot map and, each time fn finds the
// map older than a shard's slots (movedError), fetches it again until it
// is that new and runs fn again: a split stays invisible to the client.
// fn must be safe to run again: commands carry their request id, and what
// the first run applied is answered as first.
func (r *Router) withSlots(ctx context.Context, fn func(m slotMap) error) error {
	for {
		m, err := r.slotMap(ctx)
		if err != nil {
			return err
		}
		err = fn(m)
		var moved *movedError
		if !errors.As(err, &moved) {
			return err
		}
		if err := r.awaitEpoch(ctx, moved.epoch); err != nil {
			return err
		}
	}
}

// awaitEpoch fetches the slot map until the meta leader's is at least
// epoch (it records a split done just after the parent made it).
func (r *Router) awaitEpoch(ctx context.Context, epoch uint64) error {
	for {
		m, err := r.fetchSlots(ctx)
		if err == nil && m.Epoch >= epoch {
			return nil
		}
		if !sleep(ctx, 10*time.Millisecond) {
			return fmt.Errorf("no slot map of epoch %d yet: %w", epoch, errors.Join(err, ctx.Err()))
		}
	}
}

// refreshSlots keeps the slot map fresh.
func (r *Router) refreshSlots() {
	t := time.NewTicker(slotMapRefresh)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(r.ctx, time.Second)
		_, _ = r.fetchSlots(ctx)
		cancel()
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Router) fetchSlots(ctx context.Context) (slotMap, error) {
	resp, err := r.nc.RequestWithContext(ctx, r.subjects.Meta(), nil)
	if err != nil {
		return slotMap{}, err
	}
	var m slotMap
	if err := transport.Unmarshal(resp.Data, &m); err != nil {
		return slotMap{}, err
	}
	if len(m.Slots) != transport.SlotCount {
		return slotMap{}, fmt.Errorf("slot map has %d slots", len(m.Slots))
	}
	r.mu.Lock()
	if m.Epoch >= r.slots.Epoch {
		r.slots = m
	}
	r.mu.Unlock()
	return m, nil
}

// slotMap returns the current map, fetching it if there is none yet.
func (r *Router) slotMap(ctx context.Context) (slotMap, error) {
	r.mu.RLock()
	m := r.slots
	r.mu.RUnlock()
	for len(m.Slots) == 0 {
		var err error
		if m, err = r.fetchSlots(ctx); err == nil {
			break
		}
		if !sleep(ctx, 50*time.Millisecond) {
			return slotMap{}, fmt.Errorf("no slot map: %w", err)
		}
	}
	return m, nil
}

func (m slotMap) shardOf(accountID string) uint32 { return m.Slots[transport.Slot(accountID)] }

func (m slotMap) shards() []uint32 {
	var ids []uint32
	seen := map[uint32]bool{}
	for _, id := range m.Slots {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// callShard sends one request to a shard's leader and retries it, with the
// same body, while the shard is unavailable, until ctx ends. Every command
// is idempotent, so a retry after an unknown outcome is safe.
func (r *Router) callShard(ctx context.Context, id uint32, op string, body []byte) (*wire.Reply, error) {
	backoff := 5 * time.Millisecond
	msg := &nats.Msg{Subject: r.subjects.Shard(id), Data: body, Header: nats.Header{wire.OpHeader: []string{op}}}
	unknown := false // whether an attempt may have been applied
	for {
		// One attempt may take the whole deadline: a shard answers late
		// while it waits for a cross-shard transfer to resolve, and a resend
		// would turn the first attempt's ok into exists. A leader that loses
		// its term answers retry at once.
		reply, err := r.send(ctx, id, msg)
		if errors.Is(err, nats.ErrMaxPayload) {
			return nil, fmt.Errorf("shard %d: command of %d bytes: %w", id, len(body), err)
		}
		if errors.Is(err, errBadReply) {
			return nil, fmt.Errorf("shard %d: %w", id, err)
		}
		if err != nil && !errors.Is(err, nats.ErrNoResponders) {
			unknown = true // sent, and no answer in time
		}
		if err == nil {
			if reply.Invalid != "" {
				return nil, fmt.Errorf("shard %d refused the request: %s", id, reply.Invalid)
			}
			if reply.Refused != "" {
				return nil, fmt.Errorf("%w: %s", errOverLimit, reply.Refused)
			}
			if reply.Moved != nil && !reply.Moved.Frozen {
				return nil, &movedError{shard: id, epoch: reply.Moved.Epoch}
			}
			if reply.Retry == "" && reply.Moved == nil {
				return reply, nil
			}
			// Frozen for a split: nothing applied; the split takes
			// milliseconds, so the backoff starts small.
			unknown = unknown || reply.Unknown
		}
		// No leader yet, queue full, leadership lost, or no answer in time.
		if !sleep(ctx, backoff) {
			if unknown {
				return nil, errShardTimeout
			}
			return nil, errNoLeader
		}
		backoff = min(2*backoff, backoffMax)
	}
}

// errBadReply: a shard's reply did not decode.
var errBadReply = errors.New("bad reply")

// send makes one attempt: a command for a shard this process leads is
// handed to it (Config.Local), anything else goes on NATS. Both ways give
// the same Reply and the same errors: nats.ErrMaxPayload for a body over
// what a message may carry, ctx's error when no answer came in time.
func (r *Router) send(ctx context.Context, id uint32, msg *nats.Msg) (*wire.Reply, error) {
	if r.local != nil && msg.Header.Get(wire.OpHeader) == wire.OpCommand {
		if int64(len(msg.Data)+commandHeaderBytes) > r.nc.MaxPayload() {
			return nil, nats.ErrMaxPayload // as NATS refuses it, whichever the leader
		}
		if reply, taken, err := r.sendLocal(ctx, id, msg.Data); taken {
			r.metrics.shardCall(pathLocal)
			return reply, err
		}
	}
	r.metrics.shardCall(pathNATS)
	resp, err := r.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, err
	}
	var reply wire.Reply
	if err := transport.Unmarshal(resp.Data, &reply); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadReply, err)
	}
	return &reply, nil
}

// commandHeaderBytes is what a command's op header adds to its message,
// which NATS counts against the largest payload.
const commandHeaderBytes = len("NATS/1.0\r\n" + wire.OpHeader + ": " + wire.OpCommand + "\r\n\r\n")

// sendLocal hands the command to this process's leader of the shard, if it
// leads it, and waits for the answer. The bytes and the reply are not
// copied or encoded: the leader proposes the bytes as they are (its Raft
// entry copies them), and neither side changes them or the reply
// afterwards.
func (r *Router) sendLocal(ctx context.Context, id uint32, body []byte) (reply *wire.Reply, taken bool, err error) {
	answered := make(chan *wire.Reply, 1) // never blocks the leader
	if !r.local.Command(id, body, func(rep *wire.Reply) { answered <- rep }) {
		return nil, false, nil
	}
	select {
	case reply = <-answered:
		return reply, true, nil
	case <-ctx.Done():
		return nil, true, ctx.Err()
	}
}

// backoffMax bounds the wait between a shard's retries. A shard without a
// leader answers at once (no responders), so retrying often costs little,
// and a client waits no longer than this past a new leader (a split's new
// shard, a failover).
const backoffMax = 50 * time.Millisecond

// scatter runs one call per shard in parallel and waits for all.
func scatter[T any](shards map[uint32]T, call func(id uint32, part T) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(shards))
	for id, part := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := call(id, part); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
