package node

import (
	"context"
	"errors"
	"time"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/saga"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// Dispatcher limits and periods.
const (
	// creditsPerMessageMax bounds the credits sent to a shard in one message.
	creditsPerMessageMax = 4096
	// sendsInFlightMax bounds the credit messages awaiting answers.
	sendsInFlightMax = 16
	// resendAfter is how long an unanswered credit waits before it is sent
	// again (the credit shard answers duplicates from its inbox).
	resendAfter = 2 * time.Second
	// scanEvery is how often the whole outbox is rescanned, which resumes
	// rows after a leader change or a lost message.
	scanEvery = 500 * time.Millisecond
	// abortAfter: a row older than this is sent as an abort instead of a
	// credit. The credit shard decides (first writer wins), so a credit
	// already applied still posts; nothing is voided on this node's clock.
	abortAfter = time.Minute
	// forgetEvery is how often the forget watermark is announced.
	forgetEvery = time.Second
)

// dispatcher sends the outbox's credits while this node leads the shard,
// and proposes the answers as resolves. It is the only sender, per term.
// What it sends, when, and what it proposes are saga.Dispatch's decisions
// (the simulator runs the same); this is their goroutines, NATS and clock.
type dispatcher struct {
	s     *shardServer
	queue chan []shard.OutboxRow
	sem   chan struct{}
	// ds: the run loop calls Due and Messages, the forget loop Forgets and
	// Forgot; the two touch separate state.
	ds saga.Dispatch
}

func newDispatcher(s *shardServer) *dispatcher {
	return &dispatcher{
		s:     s,
		queue: make(chan []shard.OutboxRow, 1024),
		sem:   make(chan struct{}, sendsInFlightMax),
		ds: saga.Dispatch{Shard: s.id, ResendAfter: uint64(resendAfter), AbortAfter: uint64(abortAfter),
			PerMessage: creditsPerMessageMax},
	}
}

// enqueue hands newly reserved rows over without blocking; if the queue is
// full they wait for the next scan.
func (d *dispatcher) enqueue(rows []shard.OutboxRow) {
	select {
	case d.queue <- rows:
	default:
	}
}

func (d *dispatcher) run(ctx context.Context) {
	scan := time.NewTicker(scanEvery)
	defer scan.Stop()
	go d.forgetLoop(ctx)
	d.scan(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case rows := <-d.queue:
			// Coalesce whatever else is queued: one message per credit
			// shard instead of one per reserving entry.
			for more := true; more; {
				select {
				case r := <-d.queue:
					rows = append(rows, r...)
				default:
					more = false
				}
			}
			d.send(ctx, rows, time.Now())
		case <-scan.C:
			d.scan(ctx)
		}
	}
}

// scan resends every row not sent recently, and forgets rows resolved.
func (d *dispatcher) scan(ctx context.Context) {
	var rows []shard.OutboxRow
	d.s.m.Read(func(st *shard.State, _ uint64) { rows = st.Outbox() })
	now := time.Now()
	d.send(ctx, d.ds.Due(rows, uint64(now.UnixNano())), now)
}

// send sends rows as saga.Dispatch groups them: credits (and aborts, for
// rows older than abortAfter) by credit shard, creditsPerMessageMax a
// message.
func (d *dispatcher) send(ctx context.Context, rows []shard.OutboxRow, now time.Time) {
	for _, m := range d.ds.Messages(rows, uint64(now.UnixNano())) {
		d.sendOne(ctx, m.To, m.Cmd)
	}
}

// sendOne sends one credit message from its own goroutine, which proposes
// the answers as a resolve itself: a sender never waits on the run loop, so
// the run loop waiting for a free slot cannot deadlock with it. Errors are
// dropped: the rows stay in the outbox and the scan resends.
func (d *dispatcher) sendOne(ctx context.Context, to uint32, cmd shard.Command) {
	d.sendAttempt(ctx, to, cmd, 0)
}

// Sends to a shard without a leader (no responders: nothing delivered) are
// tried again this often, this many times, before the rows wait for the
// scan to resend them (resendAfter): a split's new shard, a failover, take
// well under a second to elect.
const (
	noLeaderRetryEvery = 25 * time.Millisecond
	noLeaderRetries    = 40
)

func (d *dispatcher) sendAttempt(ctx context.Context, to uint32, cmd shard.Command, attempt int) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	go func() {
		defer func() { <-d.sem }()
		var reply wire.Reply
		err := d.s.n.sagaRequest(ctx, to, &cmd, &reply)
		if errors.Is(err, nats.ErrNoResponders) && attempt < noLeaderRetries {
			time.AfterFunc(noLeaderRetryEvery, func() { d.sendAttempt(ctx, to, cmd, attempt+1) })
			return
		}
		if err != nil || reply.Retry != "" || reply.Invalid != "" {
			return
		}
		if ans := saga.Answers(reply.Answers); len(ans) > 0 {
			d.resolve(ans)
		}
		for _, m := range saga.Moved(to, cmd, reply.Answers, d.s.n.shardOf) {
			go d.sendOne(ctx, m.To, m.Cmd) // once this one's slot is free
		}
	}()
}

// resolve proposes the answers; the completer wakes the waiting replies
// and the rows they wrote (the next parts of chains) go out at once.
func (d *dispatcher) resolve(ans []shard.Answer) {
	cmd := saga.Resolve(ans)
	b, err := transport.Marshal(&cmd)
	if err != nil {
		d.s.log.Error("encode resolve", "err", err)
		return
	}
	err = d.s.g.Propose(b, func(res any, err error) {
		if out, ok := res.(*shard.Output); ok && err == nil {
			crashPoints(shard.KindResolve, nil, out)
			d.s.resolved(out.Resolved)
			if len(out.Reserved) > 0 {
				d.enqueue(out.Reserved)
			}
		}
	})
	if err != nil {
		d.s.log.Warn("propose resolve", "err", err) // the scan resends
	}
}

// forgetLoop announces the watermark every forgetEvery, apart from the
// dispatcher's loop so that a shard that is away delays no credit.
func (d *dispatcher) forgetLoop(ctx context.Context) {
	t := time.NewTicker(forgetEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.announceForget(ctx)
		}
	}
}

// announceForget tells every other shard the watermark below which all of
// this shard's attempts are resolved, so their inbox rows can go.
func (d *dispatcher) announceForget(ctx context.Context) {
	var below uint64
	d.s.m.Read(func(st *shard.State, _ uint64) { below = st.ForgetBelow() })
	for _, m := range d.ds.Forgets(d.s.n.shardIDs(), below) { // itself too: it holds parts of its own chains
		var reply wire.Reply
		if err := d.s.n.sagaRequest(ctx, m.To, &m.Cmd, &reply); err == nil && reply.Retry == "" && reply.Invalid == "" {
			d.ds.Forgot(m.To, below)
		}
	}
}

// errInjected is the error of a message a test's SagaFault dropped.
var errInjected = errors.New("saga message lost (injected fault)")

// sagaRequest sends a saga message to another shard, through the test's
// fault hook when one is set.
func (n *Node) sagaRequest(ctx context.Context, to uint32, cmd *shard.Command, reply *wire.Reply) error {
	var f Fault
	if n.cfg.SagaFault != nil {
		f = n.cfg.SagaFault(to, cmd)
	}
	if f.Delay > 0 && !sleepCtx(ctx, f.Delay) {
		return ctx.Err()
	}
	if f.Drop {
		return errInjected
	}
	subject := n.subjects.Shard(to)
	if f.Duplicate {
		_ = n.request(ctx, subject, wire.OpCommand, cmd, nil)
	}
	err := n.request(ctx, subject, wire.OpCommand, cmd, reply)
	if err == nil && f.LoseReply {
		*reply = wire.Reply{}
		return errInjected
	}
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// request sends one internal request and decodes the reply.
func (n *Node) request(ctx context.Context, subject, op string, body any, reply any) error {
	var data []byte
	if body != nil {
		b, err := transport.Marshal(body)
		if err != nil {
			return err
		}
		data = b
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{wire.OpHeader: []string{op}}}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := n.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return err
	}
	if reply == nil {
		return nil
	}
	return transport.Unmarshal(resp.Data, reply)
}

// requestTimeout bounds one internal request.
const requestTimeout = 5 * time.Second
