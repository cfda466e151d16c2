// Package saga holds the shard leader's decisions about cross-shard
// transfers as pure types with an injected clock: which outbox rows to send
// (again) and how, as credits or aborts; which answers to propose; whom to
// tell the forget watermark; and which client replies wait for which
// in-flight transfers, and what they answer once resolved. node runs them
// with goroutines, NATS and the wall clock; sim runs the same decisions in
// its deterministic world, so its schedules test production's logic.
//
// Clocks are nanoseconds (Unix time in node, the simulated clock in sim).
package saga

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Dispatch is the leader's view of its outbox for one term: when each row
// was last sent (Due, Messages), and the forget watermark each shard
// acknowledged (Forgets, Forgot). Each of the two is not safe for
// concurrent use, but they share nothing: each may have its own goroutine.
type Dispatch struct {
	// Shard is the debit shard this leader serves.
	Shard uint32
	// ResendAfter: an unanswered row is sent again after this long (the
	// credit shard answers duplicates from its inbox).
	ResendAfter uint64
	// AbortAfter: a row older than this (from its attempt's timestamp) is
	// sent as an abort instead of a credit. The credit shard decides
	// (first writer wins), so nothing is voided on this leader's clock.
	AbortAfter uint64
	// PerMessage bounds the credits of one message.
	PerMessage int

	sentAt map[string]uint64 // transfer id → last send, while unresolved
	forgot map[uint32]uint64 // watermark acknowledged per shard
}

// Message is one saga message to send: a credit, abort or forget command
// to shard To.
type Message struct {
	To  uint32
	Cmd shard.Command
}

// Due returns the rows of a full outbox scan to send now: those never
// sent, or sent at least ResendAfter ago (or "after" now: a clock that went
// back). Rows no longer in the outbox are forgotten.
func (d *Dispatch) Due(rows []shard.OutboxRow, now uint64) []shard.OutboxRow {
	if d.sentAt == nil {
		d.sentAt = map[string]uint64{}
	}
	live := make(map[string]bool, len(rows))
	var due []shard.OutboxRow
	for _, r := range rows {
		live[r.Transfer.ID] = true
		if at, ok := d.sentAt[r.Transfer.ID]; !ok || now-at >= d.ResendAfter || now < at {
			due = append(due, r)
		}
	}
	for id := range d.sentAt {
		if !live[id] {
			delete(d.sentAt, id)
		}
	}
	return due
}

// Messages marks rows sent at now and groups them by credit shard into
// messages of at most PerMessage credits: credits first, then aborts (rows
// older than AbortAfter), each by shard id.
func (d *Dispatch) Messages(rows []shard.OutboxRow, now uint64) []Message {
	if d.sentAt == nil {
		d.sentAt = map[string]uint64{}
	}
	credits, aborts := map[uint32][]shard.Credit{}, map[uint32][]shard.Credit{}
	for _, r := range rows {
		d.sentAt[r.Transfer.ID] = now
		c := shard.Credit{Transfer: r.Transfer, DebitShard: d.Shard, Part: r.Part, Origin: r.Origin}
		if now > r.Transfer.Timestamp && now-r.Transfer.Timestamp > d.AbortAfter {
			aborts[r.CreditShard] = append(aborts[r.CreditShard], c)
		} else {
			credits[r.CreditShard] = append(credits[r.CreditShard], c)
		}
	}
	var out []Message
	for _, g := range []struct {
		kind   shard.Kind
		groups map[uint32][]shard.Credit
	}{{shard.KindCredit, credits}, {shard.KindAbort, aborts}} {
		for _, to := range slices.Sorted(maps.Keys(g.groups)) {
			for cs := range slices.Chunk(g.groups[to], max(d.PerMessage, 1)) {
				out = append(out, Message{To: to, Cmd: shard.Command{Kind: g.kind, Credits: cs}})
			}
		}
	}
	return out
}

// Answers returns the answers of a credit shard's reply to propose as a
// resolve: all but the stale ones (late duplicates of attempts resolved
// long ago).
func Answers(reply []shard.Answer) []shard.Answer {
	var out []shard.Answer
	for _, a := range reply {
		if a.Outcome != shard.OutcomeStale && a.Outcome != shard.OutcomeMoved {
			out = append(out, a)
		}
	}
	return out
}

// Moved returns what to send again at once of a message sent to shard to:
// the credits answered OutcomeMoved (a split took their account away before
// anything was decided there), grouped by the shard that now owns their
// account (ownerOf: the slot map). A credit whose owner is still to (a map
// older than the split) waits for the next scan, which sends it to its
// recorded credit shard, is answered moved again, and looks again.
func Moved(to uint32, sent shard.Command, answers []shard.Answer, ownerOf func(account string) uint32) []Message {
	byShard := map[uint32][]shard.Credit{}
	for i, a := range answers {
		if a.Outcome != shard.OutcomeMoved || i >= len(sent.Credits) {
			continue
		}
		c := sent.Credits[i]
		account := c.Transfer.CreditAccountID
		if c.Part != nil && c.Part.Debit {
			account = c.Transfer.DebitAccountID
		}
		if owner := ownerOf(account); owner != 0 && owner != to {
			byShard[owner] = append(byShard[owner], c)
		}
	}
	var out []Message
	for _, id := range slices.Sorted(maps.Keys(byShard)) {
		out = append(out, Message{To: id, Cmd: shard.Command{Kind: sent.Kind, Credits: byShard[id]}})
	}
	return out
}

// Resolve is the command that proposes answers.
func Resolve(answers []shard.Answer) shard.Command {
	return shard.Command{Kind: shard.KindResolve, Answers: answers}
}

// Forgets returns the forget messages to send, one per shard of shards
// (this one included: it holds parts of the chains it coordinates) that
// has not acknowledged below yet.
func (d *Dispatch) Forgets(shards []uint32, below uint64) []Message {
	var out []Message
	for _, to := range shards {
		if d.forgot[to] >= below {
			continue
		}
		out = append(out, Message{To: to, Cmd: shard.Command{Kind: shard.KindForget, Forget: &shard.Forget{DebitShard: d.Shard, Below: below}}})
	}
	return out
}

// Forgot records that shard to acknowledged the watermark below.
func (d *Dispatch) Forgot(to uint32, below uint64) {
	if d.forgot == nil {
		d.forgot = map[uint32]uint64{}
	}
	d.forgot[to] = max(d.forgot[to], below)
}

// Pending is a client reply waiting for in-flight transfers. To is where
// it goes (a NATS reply subject, or the simulator's callback).
type Pending[T any] struct {
	To        T
	Reply     wire.Reply
	Expires   uint64
	remaining int
}

type attempt struct {
	id string
	at uint64
}

type waitRef[T any] struct {
	p     *Pending[T]
	index int
	retry bool
}

// Waiters maps in-flight transfers to the replies waiting for them, for one
// leadership term. It is not safe for concurrent use.
type Waiters[T any] struct {
	refs  map[attempt][]waitRef[T]
	ended bool
}

// Results are a create command's results as the client gets them.
func Results(events []shard.EventResult) []transport.Result {
	rs := make([]transport.Result, len(events))
	for i, e := range events {
		rs[i] = transport.Result{Index: uint32(i), Code: e.Code, Timestamp: e.Timestamp}
	}
	return rs
}

// Wait makes the reply of a create command that applied events, to go to
// to, and registers it for its in-flight events. It returns the reply and
// whether it waits; one that does not is answered at once. After End, a
// reply with events in flight is nil: the term is over, and the request is
// answered retry (leadership lost), for the new leader.
func (w *Waiters[T]) Wait(to T, events []shard.EventResult, expires uint64) (*Pending[T], bool) {
	p := &Pending[T]{To: to, Reply: wire.Reply{Results: Results(events)}, Expires: expires}
	for i, e := range events {
		if !e.InFlight {
			continue
		}
		if w.ended {
			return nil, false
		}
		if w.refs == nil {
			w.refs = map[attempt][]waitRef[T]{}
		}
		key := attempt{e.ID, e.Attempt}
		w.refs[key] = append(w.refs[key], waitRef[T]{p: p, index: i, retry: e.Retry})
		p.remaining++
	}
	return p, p.remaining > 0
}

// Resolve fills the waiting replies with the transfers that became final
// and returns those now complete, in order: an aborted transfer makes its
// reply a retry (the client's router sends the request again, which then
// finds it refused or applied), an ok one that the event had retried is
// exists, anything else is the transfer's own answer.
func (w *Waiters[T]) Resolve(rs []shard.Resolved) []*Pending[T] {
	var done []*Pending[T]
	for _, r := range rs {
		key := attempt{r.ID, r.Attempt}
		for _, ref := range w.refs[key] {
			res := &ref.p.Reply.Results[ref.index]
			switch {
			case r.Aborted:
				ref.p.Reply.Retry = "timeout"
			case r.Code == transport.CodeOK && ref.retry:
				res.Code, res.Timestamp = transport.CodeExists, r.Timestamp
			default:
				res.Code, res.Timestamp = r.Code, r.Timestamp
			}
			if ref.p.remaining--; ref.p.remaining == 0 {
				if ref.p.Reply.Retry != "" {
					ref.p.Reply.Results = nil
				}
				done = append(done, ref.p)
			}
		}
		delete(w.refs, key)
	}
	return done
}

// Sweep drops the replies that expired before now (their router gave up;
// a retry registers a reply of its own).
func (w *Waiters[T]) Sweep(now uint64) {
	for key, refs := range w.refs {
		refs = slices.DeleteFunc(refs, func(r waitRef[T]) bool { return now > r.p.Expires })
		if len(refs) == 0 {
			delete(w.refs, key)
		} else {
			w.refs[key] = refs
		}
	}
}

// End returns every reply still waiting, once each, in a deterministic
// order, and forgets them: the term is over, and they are told to retry at
// the new leader.
func (w *Waiters[T]) End() []*Pending[T] {
	keys := slices.SortedFunc(maps.Keys(w.refs), func(a, b attempt) int {
		return cmp.Or(cmp.Compare(a.at, b.at), strings.Compare(a.id, b.id))
	})
	seen := map[*Pending[T]]bool{}
	var out []*Pending[T]
	for _, k := range keys {
		for _, r := range w.refs[k] {
			if !seen[r.p] {
				seen[r.p] = true
				out = append(out, r.p)
			}
		}
	}
	w.refs, w.ended = nil, true
	return out
}

// Len is the number of in-flight transfers waited for.
func (w *Waiters[T]) Len() int { return len(w.refs) }
