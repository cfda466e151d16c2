package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/saga"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// outboxRowsMax bounds the cross-shard transfers in flight per shard. Past
// it new transfer commands are refused with Retry (backpressure): the
// outbox must not grow without bound while a credit shard is away.
const outboxRowsMax = 100_000

// shardServer serves one shard's subject while this node leads the shard:
// it proposes commands, holds replies for cross-shard transfers until they
// resolve, and runs the outbox dispatcher.
type shardServer struct {
	n   *Node
	id  uint32
	g   *raftfsm.Group
	m   *raftfsm.ShardMachine
	log *slog.Logger

	mu sync.Mutex
	// waiters: the replies waiting for in-flight transfers, for the term
	// being served; nil or ended outside a term (saga.Waiters). Each is
	// answered through its request's answer func: a NATS reply subject's,
	// or the router's of this process (local.go).
	waiters *saga.Waiters[answerFunc]
	disp    *dispatcher
	// serving is set while a term serves the shard's subject: commands
	// handed over in-process (local.go) are taken only then.
	serving bool

	// reads bounds the lookups and status requests served at once, off the
	// subscription's goroutine so that they never delay a command.
	reads chan struct{}
	hash  hashCache
	// history serves copies of the history store (historycopy.go).
	history *nats.Subscription
	// cancel ends what the shard runs besides its group: a copy of the
	// history that a restore waits for.
	cancel context.CancelFunc
	// snapshotAsked: when this replica last asked its leader for a newer
	// snapshot (snapshotask.go), in Unix nanoseconds.
	snapshotAsked atomic.Int64
}

// close stops the shard on this node, then closes its history store once
// nothing reads it: not its Raft (apply, snapshots, a restore's copy), nor
// the history copies it serves, nor a read in flight (it waits for their
// slots; a request that finds none answers retry). The leader's term ends
// with the group, and with it the shard's subject (serve).
func (s *shardServer) close() error {
	s.cancel()
	_ = s.history.Unsubscribe()
	err := s.g.Shutdown()
	for range cap(s.reads) {
		s.reads <- struct{}{}
	}
	return errors.Join(err, s.m.History().Close())
}

// readsInFlightMax bounds the lookups and status requests a leader serves
// at once; past it they are answered retry.
const readsInFlightMax = 8

// hashCache keeps the state hash of one applied index: it costs O(state).
type hashCache struct {
	mu      sync.Mutex
	applied uint64
	hash    string
}

// waiterTTL bounds how long a reply waits for in-flight transfers: the
// router gives up after its 5 s deadline, and a client's retry registers a
// waiter of its own, so a stuck transfer never pins requests for long.
const waiterTTL = 10 * time.Second

// serve runs for one term: it subscribes to the shard's subject and
// dispatches the outbox until ctx ends.
func (s *shardServer) serve(ctx context.Context) {
	s.mu.Lock()
	s.waiters = &saga.Waiters[answerFunc]{}
	s.disp = newDispatcher(s)
	s.mu.Unlock()
	sub, err := s.n.nc.QueueSubscribe(s.n.subjects.Shard(s.id), "shard", s.handle)
	if err != nil {
		s.log.Error("subscribe shard subject", "err", err)
		return
	}
	_ = sub.SetPendingLimits(-1, 256<<20)
	s.setServing(true)
	s.log.Debug("serving shard")
	go s.expireLoop(ctx)
	go s.sweepWaiters(ctx)
	s.disp.run(ctx)
	s.setServing(false)
	_ = sub.Unsubscribe()
	// The term is over: tell every waiting request to retry, at the new
	// leader, rather than let it sit out its deadline.
	s.mu.Lock()
	waiting := s.waiters.End()
	s.mu.Unlock()
	for _, p := range waiting {
		p.To(&wire.Reply{Retry: "leadership lost", Unknown: true})
	}
}

func (s *shardServer) setServing(on bool) {
	s.mu.Lock()
	s.serving = on
	s.mu.Unlock()
}

// sweepWaiters drops replies older than waiterTTL.
func (s *shardServer) sweepWaiters(ctx context.Context) {
	t := time.NewTicker(waiterTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			s.waiters.Sweep(uint64(now.UnixNano()))
			s.mu.Unlock()
		}
	}
}

// answerFunc answers one command, once: on the completer goroutine, or
// later when the transfers it waits for resolve. It must not block.
type answerFunc func(*wire.Reply)

// replyTo answers on a NATS reply subject; a request without one (a
// publish) is answered nothing.
func (s *shardServer) replyTo(to string) answerFunc {
	return func(r *wire.Reply) {
		if to == "" {
			return
		}
		b, err := transport.Marshal(r)
		if err != nil {
			b, _ = transport.Marshal(&wire.Reply{Invalid: err.Error()})
		}
		_ = s.n.nc.Publish(to, b)
	}
}

// expireEvery is how often the leader looks for pending transfers whose
// timeout has passed. Timeouts are whole seconds.
const expireEvery = 250 * time.Millisecond

// expireLoop proposes KindExpire when the leader's clock passes the earliest
// expiry; apply decides with the entry's timestamp, never a replica's clock.
func (s *shardServer) expireLoop(ctx context.Context) {
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	cmd, _ := transport.Marshal(&shard.Command{Kind: shard.KindExpire})
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var next uint64
		var due bool
		s.m.Read(func(st *shard.State, _ uint64) { next, due = st.NextExpiry() })
		if due && uint64(time.Now().UnixNano()) >= next {
			res, err := s.g.ProposeWait(ctx, cmd)
			if err != nil && ctx.Err() == nil {
				s.log.Warn("propose expiry", "err", err) // tried again next tick
			}
			// Expiries of pending transfers across shards are settled on
			// their credit shards: send those at once.
			s.mu.Lock()
			disp := s.disp
			s.mu.Unlock()
			if out, ok := res.(*shard.Output); ok && err == nil && len(out.Reserved) > 0 && disp != nil {
				disp.enqueue(out.Reserved)
			}
		}
	}
}

// handle runs on the subscription's goroutine: decode, enqueue, return.
func (s *shardServer) handle(msg *nats.Msg) {
	switch op := msg.Header.Get(wire.OpHeader); op {
	case wire.OpCommand:
		s.command(msg.Data, s.replyTo(msg.Reply))
	case wire.OpLookupAccounts, wire.OpLookupTransfers, wire.OpAccountTransfers, wire.OpAccountBalances, wire.OpStatus, wire.OpPendingHeld:
		select {
		case s.reads <- struct{}{}:
		default:
			respond(msg, &wire.Reply{Retry: "too many reads in flight"})
			return
		}
		go func() {
			defer func() { <-s.reads }()
			switch op {
			case wire.OpStatus:
				st := s.n.shardStatus(s)
				respond(msg, &wire.Reply{Status: &st})
			case wire.OpAccountTransfers, wire.OpAccountBalances:
				s.handleHistory(msg, op)
			case wire.OpPendingHeld:
				s.handlePendingHeld(msg)
			default:
				s.handleLookup(msg)
			}
		}()
	case wire.OpJoin:
		go func() { respond(msg, joinReply(s.g, msg.Data)) }()
	case wire.OpRemove:
		go func() { respond(msg, removeReply(s.g, msg.Data)) }()
	case wire.OpSplit:
		go s.handleSplit(msg)
	case wire.OpSnapshot:
		go s.handleSnapshot(msg)
	case opMembers:
		go respondMembers(msg, s.g)
	default:
		respond(msg, &wire.Reply{Invalid: "unknown op"})
	}
}

// command proposes a command's bytes as they came, from the shard's
// subject or handed over in-process (local.go): only its kind is read here,
// and its bounds checked; the FSM decodes it once. answer gets the reply.
func (s *shardServer) command(data []byte, answer answerFunc) {
	if err := transport.CheckBounds(data, transport.BatchEventsMax); err != nil {
		answer(&wire.Reply{Invalid: err.Error()})
		return
	}
	kind, err := shard.PeekKind(data)
	if err != nil {
		answer(&wire.Reply{Invalid: err.Error()})
		return
	}
	if kind == shard.KindFreeze || kind == shard.KindSplit {
		answer(&wire.Reply{Invalid: "slots are frozen and split by the shard's leader itself (OpSplit)"})
		return
	}
	if kind == shard.KindCreateTransfers {
		full := false
		s.m.Read(func(st *shard.State, _ uint64) { full = st.OutboxLen() >= outboxRowsMax })
		if full {
			answer(&wire.Reply{Retry: "outbox full"})
			return
		}
	}
	err = s.g.Propose(data, func(res any, err error) {
		if err != nil {
			// ErrNotLeader comes before the entry is proposed (the actor
			// checks); anything else may follow a proposal.
			answer(&wire.Reply{Retry: err.Error(), Unknown: !errors.Is(err, raft.ErrNotLeader)})
			return
		}
		out, ok := res.(*shard.Output)
		if !ok { // the machine refused the command as a whole
			answer(&wire.Reply{Invalid: fmt.Sprint(res)})
			return
		}
		s.applied(data, answer, kind, out)
	})
	if err != nil {
		answer(&wire.Reply{Retry: err.Error()})
	}
}

// applied runs on the group's completer goroutine, in log order.
func (s *shardServer) applied(data []byte, answer answerFunc, kind shard.Kind, out *shard.Output) {
	crashPoints(kind, data, out)
	if m, moved := out.Moved[0]; moved {
		answer(&wire.Reply{Moved: &wire.Moved{Epoch: m.Epoch, Frozen: m.Frozen}})
		return
	}
	switch kind {
	case shard.KindCreateAccounts:
		answer(&wire.Reply{Results: saga.Results(out.Events[0])})
	case shard.KindCreateTransfers:
		if why, refused := out.Refused[0]; refused {
			answer(&wire.Reply{Refused: why})
			return
		}
		s.transfersApplied(answer, out)
	case shard.KindCredit, shard.KindAbort:
		answer(&wire.Reply{Answers: out.Answers[0]})
	case shard.KindResolve:
		s.resolved(out.Resolved)
		answer(&wire.Reply{})
	default:
		answer(&wire.Reply{})
	}
}

// transfersApplied replies at once unless some transfers are in flight to
// other shards; those wait for their resolution. Waiters are registered here,
// on the completer, before any later entry (a resolve) completes.
func (s *shardServer) transfersApplied(answer answerFunc, out *shard.Output) {
	s.mu.Lock()
	p, waits := s.term().Wait(answer, out.Events[0], uint64(time.Now().Add(waiterTTL).UnixNano()))
	disp := s.disp
	s.mu.Unlock()
	switch {
	case p == nil: // the term ended: the router retries elsewhere
		answer(&wire.Reply{Retry: "leadership lost", Unknown: true})
		return
	case !waits:
		answer(&p.Reply)
		return
	}
	if len(out.Reserved) > 0 && disp != nil {
		disp.enqueue(out.Reserved)
	}
}

// term returns the waiters of the term being served; outside a term, ended
// ones (a reply with events in flight is then told to retry). Under mu.
func (s *shardServer) term() *saga.Waiters[answerFunc] {
	if s.waiters == nil {
		s.waiters = &saga.Waiters[answerFunc]{}
		s.waiters.End()
	}
	return s.waiters
}

// resolved completes the replies waiting for these transfers.
func (s *shardServer) resolved(rs []shard.Resolved) {
	s.mu.Lock()
	done := s.term().Resolve(rs)
	s.mu.Unlock()
	for _, p := range done {
		p.To(&p.Reply)
	}
}

// readable decodes a read request into req and confirms that this node
// still leads the shard. Reads are served by the leader after its term's
// barrier: every acknowledged write was applied here first. Otherwise it
// answers (invalid, or retry) and returns false.
func (s *shardServer) readable(msg *nats.Msg, req interface{ Check() error }) bool {
	if err := transport.Unmarshal(msg.Data, req); err != nil {
		respond(msg, &wire.Reply{Invalid: err.Error()})
		return false
	}
	if err := req.Check(); err != nil {
		respond(msg, &wire.Reply{Invalid: err.Error()})
		return false
	}
	if err := s.g.Raft().VerifyLeader().Error(); err != nil {
		respond(msg, &wire.Reply{Retry: err.Error()})
		return false
	}
	return true
}

func (s *shardServer) handleLookup(msg *nats.Msg) {
	var req transport.LookupRequest
	if !s.readable(msg, &req) {
		return
	}
	defer s.recoverDamage(msg)
	var reply wire.Reply
	s.m.Read(func(st *shard.State, _ uint64) {
		reply.Epoch = st.Epoch()
		if msg.Header.Get(wire.OpHeader) != wire.OpLookupAccounts {
			reply.Transfers = st.LookupTransfers(req.IDs)
			return
		}
		for _, id := range req.IDs {
			if !st.Serves(id) {
				reply.Moved = &wire.Moved{Epoch: reply.Epoch}
				return
			}
		}
		reply.Accounts = st.LookupAccounts(req.IDs)
	})
	respond(msg, &reply)
}

// damageNoticeMax bounds how long a lookup that met damage waits for its
// group to stop on it: the store told the group before the lookup panicked,
// and Raft stops in milliseconds.
const damageNoticeMax = 10 * time.Second

// recoverDamage answers a lookup that met damage in the history store. A
// transfer lookup has no error to return, so the store panics once it has
// recorded the damage and told the group, which stops on this node and is
// repaired (repair.go): the request is answered retry, for the replica that
// leads next. Anything else that panics is a bug, and goes on panicking.
func (s *shardServer) recoverDamage(msg *nats.Msg) {
	v := recover()
	if v == nil {
		return
	}
	stack := debug.Stack()
	select {
	case <-s.g.Halted():
	case <-time.After(damageNoticeMax):
		panic(fmt.Sprintf("%v\n%s", v, stack))
	}
	s.log.Warn("a lookup met damaged storage: answered retry", "err", v)
	respond(msg, &wire.Reply{Retry: fmt.Sprintf("storage damaged on this replica: %v", v)})
}

// historyReplyBytesMax bounds the transfers of one history reply, below the
// message size: a reply holds fewer than the limit asked for when its
// transfers carry much metadata, and the client pages on from the last one.
const historyReplyBytesMax = transport.MessageBytesMax - 64<<10

// handleHistory answers accounts.transfers and accounts.balances from the
// history store, which holds every entry applied here (the leader applied
// its term's barrier before serving).
func (s *shardServer) handleHistory(msg *nats.Msg, op string) {
	var f transport.AccountFilter
	if !s.readable(msg, &f) {
		return
	}
	var reply wire.Reply
	var serves bool
	s.m.Read(func(st *shard.State, _ uint64) { serves, reply.Epoch = st.Serves(f.AccountID), st.Epoch() })
	if !serves {
		respond(msg, &wire.Reply{Moved: &wire.Moved{Epoch: reply.Epoch}})
		return
	}
	var err error
	if op == wire.OpAccountTransfers {
		reply.Transfers, err = s.m.History().AccountTransfers(&f, historyReplyBytesMax)
	} else {
		reply.Balances, err = s.m.History().AccountBalances(&f)
	}
	if err != nil {
		s.log.Error("history read", "op", op, "err", err)
		respond(msg, &wire.Reply{Retry: "history read failed: " + err.Error()})
		return
	}
	respond(msg, &reply)
}

func respond(msg *nats.Msg, r *wire.Reply) {
	if msg == nil || msg.Reply == "" {
		return
	}
	b, err := transport.Marshal(r)
	if err != nil {
		b, _ = transport.Marshal(&wire.Reply{Invalid: err.Error()})
	}
	_ = msg.Respond(b)
}
