package sim

import (
	"fmt"
	"slices"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/saga"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Term is what one replica holds while it leads its shard for one term: the
// volatile leader-side state of production, lost when the term ends. It
// models raftfsm's actor (mailbox, batching, entries in flight) and
// node/shardserver.go and node/dispatcher.go (waiters, the dispatcher),
// keeping their structure so the two can be read side by side.
type Term struct {
	g *Group
	r *Replica
	n uint64
	// serving: subscribed to the shard's subject (after the barrier).
	serving bool
	// zombie: deposed but still acting as leader (it has not noticed);
	// nothing it proposes commits. dead: the term is over.
	zombie, dead bool

	mailbox      []*proposal
	inflight     []*pendingEntry
	actorPending bool

	waiters saga.Waiters[func(*wire.Reply)]
	d       *dispatcher
	// expiring: the expire loop waits in ProposeWait for its KindExpire.
	expiring bool
	// verifying: reads waiting in VerifyLeader, which a deposed leader
	// fails once it notices.
	verifying []func()
}

type proposal struct {
	cmd  shard.Command
	done func(out *shard.Output, err error)
}

type pendingEntry struct {
	e     shard.Entry
	props []*proposal
}

type attemptKey struct {
	id      string
	attempt uint64
}

func newTerm(g *Group, r *Replica, n uint64) *Term {
	t := &Term{g: g, r: r, n: n}
	t.d = &dispatcher{t: t, ds: saga.Dispatch{Shard: g.id, ResendAfter: g.w.p.ResendAfter, AbortAfter: g.w.p.AbortAfter, PerMessage: g.w.p.CreditsPerMessageMax}}
	return t
}

// serve: shardServer.serve, after the leader barrier.
func (t *Term) serve() {
	t.serving = true
	t.expireLoop()
	t.sweepWaiters()
	t.d.run()
}

// expireLoop is shardServer.expireLoop: on every tick of its ticker, if the
// leader's clock has passed the state's NextExpiry, propose KindExpire and
// wait for it (a ticker drops the ticks missed meanwhile), then hand the
// settlements of expiries across shards to the dispatcher. Apply decides
// what expires with the entry's timestamp; the leader's clock may be
// skewed, and a deposed leader goes on proposing what never commits.
func (t *Term) expireLoop() {
	w := t.g.w
	var tick func()
	tick = func() {
		if t.dead {
			return
		}
		w.after(w.p.ExpireEvery, tick)
		if t.expiring {
			return
		}
		next, due := t.r.st.NextExpiry()
		now := t.r.clock()
		if w.mut == MutExpireClockSeconds {
			now /= second // the bug: Unix seconds against nanoseconds
		}
		if !due || now < next {
			return
		}
		if w.tracing() {
			w.tracef("%s t%d: propose expiry (next at %d)", t.g.name(), t.n, rel(next))
		}
		t.expiring = true
		err := t.propose(shard.Command{Kind: shard.KindExpire}, func(out *shard.Output, err error) {
			t.expiring = false
			// Expiries of pending transfers across shards are settled on
			// their credit shards: their rows go to the dispatcher at once.
			if err == nil && len(out.Reserved) > 0 {
				t.d.enqueue(out.Reserved)
			}
		})
		if err != nil {
			t.expiring = false // tried again next tick
		}
	}
	w.after(w.p.ExpireEvery, tick)
}

// end: the term is over. Queued and in-flight proposals fail; waiters are
// dropped (their requests time out at the router, which retries).
func (t *Term) end() {
	if t.dead {
		return
	}
	t.dead, t.serving = true, false
	var props []*proposal
	for _, pe := range t.inflight {
		props = append(props, pe.props...)
	}
	props = append(props, t.mailbox...)
	t.inflight, t.mailbox = nil, nil
	for _, p := range props {
		p.done(nil, errLeadershipLost)
	}
	// Every waiting request is told to retry, at the new leader, rather
	// than sit out its deadline.
	for _, p := range t.waiters.End() {
		p.To(&wire.Reply{Retry: "leadership lost", Unknown: true})
	}
	reads := t.verifying
	t.verifying = nil
	for _, fail := range reads {
		fail()
	}
}

// sweepWaiters drops replies older than the waiter TTL (the router has
// given up on them; a retry registers a waiter of its own).
func (t *Term) sweepWaiters() {
	w := t.g.w
	every := w.p.WaiterTTL / 4
	var tick func()
	tick = func() {
		if t.dead {
			return
		}
		t.waiters.Sweep(w.now)
		w.after(every, tick)
	}
	w.after(every, tick)
}

// propose is raftfsm.Group.Propose: queue for the next entry, or refuse.
func (t *Term) propose(cmd shard.Command, done func(*shard.Output, error)) error {
	w := t.g.w
	if t.dead {
		w.after(0, func() { done(nil, errNotLeader) })
		return nil
	}
	if len(t.mailbox) >= w.p.MailboxMax {
		return errBusy
	}
	t.mailbox = append(t.mailbox, &proposal{cmd: cmd, done: done})
	t.kickActor()
	return nil
}

func (t *Term) kickActor() {
	if t.actorPending || t.dead || len(t.mailbox) == 0 {
		return
	}
	t.actorPending = true
	t.g.w.after(0, t.actor)
}

// actor batches whatever is queued into one entry stamped with the leader's
// clock, with at most EntriesInFlightMax entries proposed and not applied.
func (t *Term) actor() {
	w := t.g.w
	t.actorPending = false
	for !t.dead && len(t.mailbox) > 0 && len(t.inflight) < w.p.EntriesInFlightMax {
		batch := t.mailbox
		t.mailbox = nil
		e := shard.Entry{Timestamp: t.r.clock(), Commands: make([]shard.Command, len(batch))}
		for i, p := range batch {
			e.Commands[i] = p.cmd
		}
		pe := &pendingEntry{e: e, props: batch}
		t.inflight = append(t.inflight, pe)
		if !t.zombie {
			t.g.schedule(t, pe)
		}
	}
}

// handleCommand is shardServer.handleCommand.
func (t *Term) handleCommand(cmd *shard.Command, respond func(*wire.Reply)) {
	w := t.g.w
	if cmd.Kind == shard.KindCreateTransfers && t.r.st.OutboxLen() >= w.p.OutboxRowsMax {
		respond(&wire.Reply{Retry: "outbox full"})
		return
	}
	err := t.propose(*cmd, func(out *shard.Output, err error) {
		if err != nil {
			// errNotLeader comes before the entry is proposed (the actor
			// checks); anything else may follow a proposal.
			respond(&wire.Reply{Retry: err.Error(), Unknown: err != errNotLeader})
			return
		}
		t.applied(cmd, out, respond)
	})
	if err != nil {
		respond(&wire.Reply{Retry: err.Error()})
	}
}

func (t *Term) applied(cmd *shard.Command, out *shard.Output, respond func(*wire.Reply)) {
	switch cmd.Kind {
	case shard.KindCreateAccounts:
		respond(&wire.Reply{Results: saga.Results(out.Events[0])})
	case shard.KindCreateTransfers:
		t.transfersApplied(cmd, out, respond)
	case shard.KindCredit, shard.KindAbort:
		respond(&wire.Reply{Answers: out.Answers[0]})
	case shard.KindResolve:
		t.resolved(out.Resolved)
		respond(&wire.Reply{})
	default:
		respond(&wire.Reply{})
	}
}

// transfersApplied: reply now, or wait for the in-flight transfers (a
// reservation's credit, a post's or void's settlement): saga.Waiters, as
// in production.
func (t *Term) transfersApplied(cmd *shard.Command, out *shard.Output, respond func(*wire.Reply)) {
	w := t.g.w
	events := out.Events[0]
	if w.mut == MutPostOKBeforeSettlement || w.mut == MutRetryAnswersOK {
		events = slices.Clone(events)
		for i, e := range events {
			switch {
			case !e.InFlight:
			case w.mut == MutRetryAnswersOK:
				// The bug: a retried event answers as its first try did.
				events[i].Retry = false
			case !e.Retry && cmd.Transfers[i].Flags&resolves != 0:
				// The bug: a settlement cannot be refused, so the post or
				// void is answered as soon as its debit side applied.
				events[i] = shard.EventResult{Code: transport.CodeOK, Timestamp: e.Attempt}
			}
		}
	}
	p, waits := t.waiters.Wait(respond, events, w.now+w.p.WaiterTTL)
	switch {
	case p == nil: // the term ended: the router retries elsewhere
		respond(&wire.Reply{Retry: "leadership lost", Unknown: true})
		return
	case !waits:
		respond(&p.Reply)
		return
	}
	if len(out.Reserved) > 0 {
		t.d.enqueue(out.Reserved)
	}
}

// resolved completes the replies waiting for these transfers.
func (t *Term) resolved(rs []shard.Resolved) {
	for _, p := range t.waiters.Resolve(rs) {
		p.To(&p.Reply)
	}
}

// dispatcher is node/dispatcher.go: it sends the outbox's credits while the
// term lasts, re-sends what is unanswered, sends aborts for rows older than
// AbortAfter, proposes the answers as resolves, and announces the forget
// watermark. Production runs it as a loop selecting over newly reserved rows
// and the scan ticker, one goroutine per message in flight (holding a
// semaphore slot until its answers are proposed as a resolve), and the
// forget announcements in their own goroutine. The model keeps that blocking
// structure: while the loop waits for a slot inside send, it does not scan.
type dispatcher struct {
	t  *Term
	ds saga.Dispatch // production's decisions

	sems     int               // slots of the semaphore taken
	msgs     []outMsg          // the rest of the send the loop is blocked in
	queue    []shard.OutboxRow // d.queue
	queued   int
	scanTick bool // the ticker's buffered tick
	stepping bool

	// Only with MutAnswersThroughLoop (the design before 0454b70): answers
	// go to the loop through a channel of SendsInFlightMax, and a sender
	// keeps its slot until it has pushed them.
	answersCh [][]shard.Answer
	pushers   [][]shard.Answer

	forgetting, forgetTick bool
}

type outMsg struct {
	to  uint32
	cmd shard.Command
}

func (d *dispatcher) w() *World { return d.t.g.w }

// run is dispatcher.run: a scan at once, then the loop; and the forget loop.
func (d *dispatcher) run() {
	w := d.w()
	d.scan()
	var scan, forget func()
	scan = func() {
		if d.t.dead {
			return
		}
		d.scanTick = true
		d.poke()
		w.after(w.p.ScanEvery, scan)
	}
	forget = func() {
		if d.t.dead {
			return
		}
		if d.forgetting {
			d.forgetTick = true
		} else {
			d.announceForget()
		}
		w.after(w.p.ForgetEvery, forget)
	}
	w.after(w.p.ScanEvery, scan)
	w.after(w.p.ForgetEvery, forget)
}

// poke lets the loop run once whatever it waits for may be ready.
func (d *dispatcher) poke() {
	if d.stepping || d.t.dead {
		return
	}
	d.stepping = true
	d.w().after(0, d.step)
}

// step is one turn of the loop: finish the send it is blocked in, else
// take one ready case (Go's select picks at random among ready ones).
func (d *dispatcher) step() {
	w := d.w()
	d.stepping = false
	if d.t.dead {
		return
	}
	for len(d.msgs) > 0 {
		if d.sems >= w.p.SendsInFlightMax {
			d.checkDeadlock()
			return // blocked on the semaphore; a released slot pokes
		}
		m := d.msgs[0]
		d.msgs = d.msgs[1:]
		d.sendOne(m)
	}
	if len(d.answersCh) > 0 && w.rngRaft.IntN(2) == 0 {
		var ans []shard.Answer
		for len(d.answersCh) > 0 && len(ans) < w.p.CreditsPerMessageMax {
			ans = append(ans, d.answersCh[0]...)
			d.answersCh = d.answersCh[1:]
			for len(d.pushers) > 0 && len(d.answersCh) < w.p.SendsInFlightMax {
				d.answersCh = append(d.answersCh, d.pushers[0])
				d.pushers = d.pushers[1:]
				d.release()
			}
		}
		d.resolve(ans)
		d.poke()
		return
	}
	queued, tick := len(d.queue) > 0, d.scanTick
	switch {
	case queued && (!tick || w.rngRaft.IntN(2) == 0):
		rows := d.queue
		d.queue, d.queued = nil, 0
		d.send(rows, d.t.r.clock())
	case tick:
		d.scanTick = false
		d.scan()
	default:
		return
	}
	d.poke()
}

func (d *dispatcher) release() {
	d.sems--
	d.poke()
}

// enqueue hands newly reserved rows to the loop (a buffered channel; when
// full they wait for the next scan).
func (d *dispatcher) enqueue(rows []shard.OutboxRow) {
	if d.queued < 1024 {
		d.queue = append(d.queue, rows...)
		d.queued++
	}
	d.poke()
}

// scan resends every row not sent recently, and forgets rows resolved.
func (d *dispatcher) scan() {
	now := d.t.r.clock()
	d.send(d.ds.Due(d.t.r.st.Outbox(), now), now)
}

// send is dispatcher.send: production's messages (saga.Dispatch), credits
// by credit shard, and aborts for rows older than AbortAfter on this node's
// clock, which the credit shard decides. The loop then sends them one by
// one, blocking while every slot is taken.
func (d *dispatcher) send(rows []shard.OutboxRow, now uint64) {
	w := d.w()
	var voids []shard.Answer
	for _, r := range rows {
		switch {
		case w.mut == MutSettlementFireAndForget && r.Transfer.Flags&resolves != 0:
			// The bug: a settlement cannot be refused, so it is taken as
			// landed once sent; a lost message is never sent again.
			voids = append(voids, shard.Answer{ID: r.Transfer.ID, Attempt: r.Transfer.Timestamp, Outcome: shard.OutcomeCredited})
		case w.mut == MutVoidOnTimer && now > r.Transfer.Timestamp && now-r.Transfer.Timestamp > w.p.AbortAfter:
			// The bug docs/design.md rules out: giving up on this node's
			// clock instead of where the credit would land.
			voids = append(voids, shard.Answer{ID: r.Transfer.ID, Attempt: r.Transfer.Timestamp, Outcome: shard.OutcomeAborted})
		}
	}
	for _, m := range d.ds.Messages(rows, now) {
		if m.Cmd.Kind == shard.KindAbort {
			if w.mut == MutVoidOnTimer {
				continue // voided above instead
			}
			w.stats.Aborts += uint64(len(m.Cmd.Credits))
		}
		d.msgs = append(d.msgs, outMsg{m.To, m.Cmd})
	}
	if len(voids) > 0 {
		d.resolve(voids)
	}
	d.poke()
}

func sortedKeys[V any](m map[uint32]V) []uint32 {
	ks := make([]uint32, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// sendOne takes a slot and sends one message from its own goroutine: the
// request ends with a reply or after SagaTimeout; errors and retries are
// dropped (the row stays, the scan resends); non-stale answers are proposed
// as a resolve by the goroutine itself, then the slot is released.
func (d *dispatcher) sendOne(m outMsg) {
	w := d.w()
	d.sems++
	finished := false
	what := "credit"
	if m.cmd.Kind == shard.KindAbort {
		what = "abort"
	}
	if w.tracing() {
		w.tracef("%s t%d: send %s to shard%d: %d rows (%d slots taken)", d.t.g.name(), d.t.n, what, m.to, len(m.cmd.Credits), d.sems)
	}
	w.net.request(shardEP(d.t.g.id), m.to, &m.cmd, what, func(rep reply) {
		if finished || d.t.dead {
			return
		}
		finished = true
		var ans []shard.Answer
		if !rep.noResponders && rep.r.Retry == "" && rep.r.Invalid == "" {
			ans = saga.Answers(rep.r.Answers)
		}
		switch {
		case len(ans) == 0:
		case w.mut != MutAnswersThroughLoop:
			d.resolve(ans)
		case len(d.answersCh) < w.p.SendsInFlightMax:
			d.answersCh = append(d.answersCh, ans)
			d.poke()
		default:
			d.pushers = append(d.pushers, ans) // blocks, holding its slot
			d.checkDeadlock()
			return
		}
		d.release()
	})
	w.after(w.p.SagaTimeout, func() {
		if !finished && !d.t.dead {
			finished = true
			d.release()
		}
	})
}

// resolve proposes the answers; the completer wakes the waiting replies.
func (d *dispatcher) resolve(ans []shard.Answer) {
	w := d.w()
	if w.mut == MutResolveAnyAttempt {
		// The bug: match answers to outbox rows by id alone, so a late
		// answer for an earlier attempt resolves the current one.
		current := map[string]uint64{}
		for _, r := range d.t.r.st.Outbox() {
			current[r.Transfer.ID] = r.Transfer.Timestamp
		}
		ans = slices.Clone(ans)
		for i := range ans {
			if at, ok := current[ans[i].ID]; ok {
				ans[i].Attempt = at
			}
		}
	}
	err := d.t.propose(saga.Resolve(ans), func(out *shard.Output, err error) {
		if err == nil {
			d.t.resolved(out.Resolved)
			if len(out.Reserved) > 0 && !d.t.dead {
				d.enqueue(out.Reserved) // the next parts of chains go out at once
			}
		}
	})
	_ = err // the scan resends
}

// announceForget (its own goroutine in production) tells every shard, itself
// included (it holds parts of the chains it coordinates),
// one after the other, the watermark below which all of this shard's
// attempts are resolved, so their inbox rows can go.
func (d *dispatcher) announceForget() {
	w := d.w()
	g := d.t.g
	below := d.t.r.st.ForgetBelow()
	if w.mut == MutForgetAboveInflight {
		// The bug: announce past the newest in-flight attempt.
		if rows := d.t.r.st.Outbox(); len(rows) > 0 {
			below = rows[len(rows)-1].Transfer.Timestamp + 1
		}
	}
	d.forgetting = true
	ids := make([]uint32, len(w.groups))
	for i, gr := range w.groups {
		ids[i] = gr.id
	}
	msgs := d.ds.Forgets(ids, below) // itself too: it holds parts of its own chains
	var next func(i int)
	next = func(i int) {
		for ; i < len(msgs); i++ {
			m := msgs[i]
			finished := false
			w.net.request(shardEP(g.id), m.To, &m.Cmd, "forget", func(rep reply) {
				if finished || d.t.dead {
					return
				}
				finished = true
				if !rep.noResponders && rep.r.Retry == "" && rep.r.Invalid == "" {
					d.ds.Forgot(m.To, below)
				}
				next(i + 1)
			})
			w.after(w.p.SagaTimeout, func() {
				if !finished && !d.t.dead {
					finished = true
					next(i + 1)
				}
			})
			return
		}
		d.forgetting = false
		if d.forgetTick {
			d.forgetTick = false
			d.announceForget()
		}
	}
	next(0)
}

func (d *dispatcher) state() string {
	return fmt.Sprintf("dispatcher: %d of %d slots taken, %d messages waiting for a slot", d.sems, d.w().p.SendsInFlightMax, len(d.msgs))
}

// checkDeadlock (MutAnswersThroughLoop): the loop waits for a slot inside
// send, and every slot is held by a sender blocked pushing answers into the
// full channel that only the loop drains. Nothing wakes any of them.
func (d *dispatcher) checkDeadlock() {
	w := d.w()
	if len(d.msgs) > 0 && d.sems >= w.p.SendsInFlightMax && len(d.pushers) == d.sems {
		w.fail("deadlock", "%s t%d: %s, %d answer sets buffered, %d senders blocked pushing answers: the loop waits for a slot in send(), every slot is held by a sender waiting for the loop",
			d.t.g.name(), d.t.n, d.state(), len(d.answersCh), len(d.pushers))
	}
}
