package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// faults is a SagaFault hook whose decisions are deterministic per message:
// the n-th message of a kind that the cluster sends (counted under a mutex)
// gets a generator seeded with (seed, kind, n). Which message is the n-th
// depends on scheduling; the sequence of decisions does not.
type faults struct {
	seed   uint64
	decide func(kind shard.Kind, to uint32, n int, r *rand.Rand) node.Fault

	mu    sync.Mutex
	stats map[shard.Kind]*faultStats
}

type faultStats struct{ sent, dropped, lostReplies, duplicated, delayed int }

func newFaults(t *testing.T, seed uint64, decide func(kind shard.Kind, to uint32, n int, r *rand.Rand) node.Fault) *faults {
	t.Logf("fault seed %#x", seed)
	f := &faults{seed: seed, decide: decide, stats: map[shard.Kind]*faultStats{}}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for k, s := range f.stats {
			t.Logf("saga messages of kind %d: %+v", k, *s)
		}
	})
	return f
}

func (f *faults) hook(to uint32, cmd *shard.Command) node.Fault {
	kind := cmd.Kind
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats[kind]
	if s == nil {
		s = &faultStats{}
		f.stats[kind] = s
	}
	n := s.sent
	s.sent++
	d := f.decide(kind, to, n, rand.New(rand.NewPCG(f.seed, uint64(kind)<<48|uint64(n))))
	if d.Drop {
		s.dropped++
	}
	if d.LoseReply {
		s.lostReplies++
	}
	if d.Duplicate {
		s.duplicated++
	}
	if d.Delay > 0 {
		s.delayed++
	}
	return d
}

func (f *faults) get(kind shard.Kind) faultStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.stats[kind]; s != nil {
		return *s
	}
	return faultStats{}
}

// crossShardLoad creates perShard accounts on each of shards shards (no
// limits, so every transfer between them is valid) and n transfers, each
// between accounts on different shards, with seeded amounts.
func crossShardLoad(c *cluster, shards uint32, perShard, n int, prefix string, seed uint64) (*ledgerModel, []transport.Transfer) {
	c.t.Helper()
	byShard := map[uint32][]string{}
	var ids []string
	var accounts []transport.Account
	for s := uint32(1); s <= shards; s++ {
		for i := range perShard {
			id := c.accountOn(fmt.Sprintf("%s-acct%d", prefix, i), s)
			byShard[s] = append(byShard[s], id)
			ids = append(ids, id)
			accounts = append(accounts, acct(id, 0))
		}
	}
	c.mustCreateAccounts(accounts...)
	r := rand.New(rand.NewPCG(seed, 1))
	transfers := make([]transport.Transfer, n)
	for i := range transfers {
		ds := 1 + r.Uint32N(shards)
		cs := 1 + (ds+r.Uint32N(shards-1))%shards // any other shard
		debit := byShard[ds][r.IntN(perShard)]
		credit := byShard[cs][r.IntN(perShard)]
		transfers[i] = xfer(fmt.Sprintf("%s-%03d", prefix, i), debit, credit, 1+r.Uint64N(1000))
	}
	return newModel(ids...), transfers
}

// sendConcurrently sends the transfers in batches of batch, all at once, and
// records them in m. A batch answered on its first attempt must answer ok
// for every transfer (each is new). A batch the cluster answered timeout
// first (the saga outlived the request deadline) is sent again with the
// same ids, and then each transfer answers ok or exists (docs/protocol.md). It
// returns how many batches needed a retry.
func sendConcurrently(c *cluster, m *ledgerModel, transfers []transport.Transfer, batch int) int {
	c.t.Helper()
	type answer struct {
		batch    []transport.Transfer
		results  []transport.Result
		attempts int
		err      error
	}
	var wg sync.WaitGroup
	answers := make(chan answer, len(transfers)/batch+1)
	for start := 0; start < len(transfers); start += batch {
		b := transfers[start:min(start+batch, len(transfers))]
		wg.Go(func() {
			rs, attempts, err := c.sendTransfers(b)
			answers <- answer{b, rs, attempts, err}
		})
	}
	wg.Wait()
	close(answers)
	retried := 0
	for a := range answers {
		if a.err != nil {
			c.t.Fatalf("batch from %s: %v", a.batch[0].ID, a.err)
		}
		if a.attempts > 1 {
			retried++
		}
		for i, r := range a.results {
			ok := r.Code == transport.CodeOK || (a.attempts > 1 && r.Code == transport.CodeExists)
			if !ok || int(r.Index) != i {
				c.t.Fatalf("transfer %s (attempt %d of its batch): %+v", a.batch[i].ID, a.attempts, r)
			}
			m.applied(c.t, a.batch[i], r.Timestamp)
		}
	}
	c.t.Logf("%d batches of %d needed a retry after the request deadline", retried, batch)
	return retried
}

// checkExactlyOnce checks that the cluster holds exactly the model's
// transfers, once each, and the balances they make.
func checkExactlyOnce(c *cluster, m *ledgerModel, st *transport.StatusReply) {
	c.t.Helper()
	if x := totals(st); x.transfers != uint64(len(m.transfers)) || x.accounts != uint64(len(m.accounts)) {
		c.t.Errorf("cluster holds %d transfers and %d accounts, want %d and %d", x.transfers, x.accounts, len(m.transfers), len(m.accounts))
	}
	c.check(m)
}

func TestCrossShardTransferSurvivesLostCreditsAndReplies(t *testing.T) {
	// Message 0 is dropped and message 1 loses its reply, so both faults
	// happen whatever the seed; then ~30% are dropped and ~30% of the rest
	// are applied but their answers lost.
	f := newFaults(t, 0x5eed0a, func(kind shard.Kind, _ uint32, n int, r *rand.Rand) node.Fault {
		if kind != shard.KindCredit {
			return node.Fault{}
		}
		u := r.Float64()
		switch {
		case n == 0 || (n > 1 && u < 0.3):
			return node.Fault{Drop: true}
		case n == 1 || (n > 1 && u < 0.6):
			return node.Fault{LoseReply: true}
		}
		return node.Fault{}
	})
	const shards = 3
	c := startClusterWith(t, t.TempDir(), shards, f.hook)
	m, transfers := crossShardLoad(c, shards, 4, 200, "lost", 0xa)
	sendConcurrently(c, m, transfers, 10)
	st := c.quiesce()
	checkExactlyOnce(c, m, st)
	if s := f.get(shard.KindCredit); s.dropped == 0 || s.lostReplies == 0 {
		t.Fatalf("faults not exercised: %+v", s)
	}
}

func TestDuplicatedAndDelayedCreditsApplyOnce(t *testing.T) {
	// Every credit and every forget is sent twice; about half the credits
	// wait 50-300 ms first.
	f := newFaults(t, 0x5eed0b, func(kind shard.Kind, _ uint32, n int, r *rand.Rand) node.Fault {
		switch kind {
		case shard.KindCredit:
			d := node.Fault{Duplicate: true}
			if n == 0 || r.IntN(2) == 0 {
				d.Delay = time.Duration(50+r.IntN(251)) * time.Millisecond
			}
			return d
		case shard.KindForget:
			return node.Fault{Duplicate: true}
		}
		return node.Fault{}
	})
	const shards = 3
	c := startClusterWith(t, t.TempDir(), shards, f.hook)
	m, transfers := crossShardLoad(c, shards, 4, 150, "dup", 0xb)
	sendConcurrently(c, m, transfers, 10)
	st := c.quiesce()
	checkExactlyOnce(c, m, st)
	// The inboxes drained, so forgets were delivered, and each was doubled.
	if s := f.get(shard.KindCredit); s.duplicated == 0 || s.delayed == 0 {
		t.Fatalf("credit faults not exercised: %+v", s)
	}
	if s := f.get(shard.KindForget); s.duplicated == 0 {
		t.Fatalf("forget faults not exercised: %+v", s)
	}
}

// TestLateDuplicateAfterForgetCreatesNoMoney replays, by hand, the credit of
// a refused cross-shard attempt after its credit account was created: the
// credit shard must answer from its record while it has one, and Stale once
// the record is forgotten, never credit it (its reservation was voided).
func TestLateDuplicateAfterForgetCreatesNoMoney(t *testing.T) {
	const debitShard, creditShard = 1, 2
	// forgetsTo[s]: forgets addressed to shard s go through; until then
	// they are dropped, so inbox rows and watermarks stay put.
	var forgetsTo [3]atomic.Bool
	fault := func(to uint32, cmd *shard.Command) node.Fault {
		if cmd.Kind != shard.KindForget {
			return node.Fault{}
		}
		if cmd.Forget.DebitShard == to {
			// A shard's forget to itself moves its own watermark whenever
			// it has ticked (the ghost account's creation did), at any
			// moment: it would change the state hashes compared below.
			// Nothing in this test needs it.
			return node.Fault{Drop: true}
		}
		if !forgetsTo[to].Load() {
			return node.Fault{Drop: true}
		}
		return node.Fault{}
	}
	c := startClusterWith(t, t.TempDir(), 2, fault)
	bank := c.accountOn("bank", debitShard)
	ghost := c.accountOn("ghost", creditShard)
	c.mustCreateAccounts(acct(bank, 0))

	// Watch the credit shard's subject (a plain subscription sees every
	// message, beside the shard's queue subscription) for the credit.
	const id = "to-ghost"
	shardSubject := transport.Subjects{Prefix: transport.DefaultPrefix}.Shard(creditShard)
	var mu sync.Mutex
	var captured []byte
	sub, err := c.internal().Subscribe(shardSubject, func(msg *nats.Msg) {
		if msg.Header.Get(wire.OpHeader) != wire.OpCommand {
			return
		}
		var cmd shard.Command
		if msgpack.Unmarshal(msg.Data, &cmd) != nil || cmd.Kind != shard.KindCredit {
			return
		}
		for _, cr := range cmd.Credits {
			if cr.Transfer.ID == id {
				mu.Lock()
				if captured == nil {
					captured = bytes.Clone(msg.Data)
				}
				mu.Unlock()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := c.internal().Flush(); err != nil {
		t.Fatal(err)
	}

	if r := c.transfer(xfer(id, bank, ghost, 40))[0]; r.Code != transport.CodeCreditAccountNotFound {
		t.Fatalf("transfer to a missing account on another shard: %+v", r)
	}
	var old []byte
	for deadline := time.Now().Add(10 * time.Second); old == nil; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		old = captured
		mu.Unlock()
		if old == nil && time.Now().After(deadline) {
			t.Fatal("the credit message was never seen on the credit shard's subject")
		}
	}
	var oldCmd shard.Command
	if err := msgpack.Unmarshal(old, &oldCmd); err != nil {
		t.Fatal(err)
	}
	var attempt uint64
	for _, cr := range oldCmd.Credits {
		if cr.Transfer.ID == id {
			attempt = cr.Transfer.Timestamp
			if cr.DebitShard != debitShard || attempt == 0 {
				t.Fatalf("captured credit: %+v", cr)
			}
		}
	}
	replay := func() shard.Answer {
		t.Helper()
		msg := &nats.Msg{Subject: shardSubject, Data: old, Header: nats.Header{wire.OpHeader: []string{wire.OpCommand}}}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			resp, err := c.internal().RequestMsg(msg, 10*time.Second)
			if err != nil {
				t.Fatalf("replay the old credit: %v", err)
			}
			var reply wire.Reply
			if err := msgpack.Unmarshal(resp.Data, &reply); err != nil {
				t.Fatal(err)
			}
			if reply.Invalid != "" {
				t.Fatalf("replayed credit refused as invalid: %s", reply.Invalid)
			}
			if reply.Retry != "" && time.Now().Before(deadline) {
				continue
			}
			for _, a := range reply.Answers {
				if a.ID == id {
					if a.Attempt != attempt {
						t.Fatalf("answer for attempt %d, replayed attempt %d", a.Attempt, attempt)
					}
					return a
				}
			}
			t.Fatalf("no answer for %s in %+v", id, reply)
		}
	}
	checkUntouched := func(ghostCredits uint64) {
		t.Helper()
		if a := c.account(ghost); a.CreditsPosted != ghostCredits || a.CreditsPending != 0 {
			t.Fatalf("ghost: %+v, want credits_posted %d", a, ghostCredits)
		}
		if a := c.account(bank); a.DebitsPosted != ghostCredits || a.DebitsPending != 0 {
			t.Fatalf("bank: %+v, want debits_posted %d", a, ghostCredits)
		}
	}

	// 1. The account now exists, but the refusal is still recorded: the
	// replay gets the recorded refusal and changes nothing.
	c.mustCreateAccounts(acct(ghost, 0))
	if s := shardStatus(t, c.status(), creditShard); s.InboxDepth != 1 {
		t.Fatalf("credit shard's inbox before any forget: %+v", s)
	}
	before := c.hashes()
	if a := replay(); a.Outcome != shard.OutcomeRefused || a.Code != transport.CodeCreditAccountNotFound {
		t.Fatalf("replay while the refusal is recorded: %+v", a)
	}
	if after := c.hashes(); !mapsEqual(before, after) {
		t.Fatalf("replay with the refusal recorded changed state: %v -> %v", before, after)
	}
	checkUntouched(0)

	// 2. Let the debit shard's forget reach the credit shard: the record
	// goes, the watermark stays. The replay is stale and creates nothing.
	forgetsTo[creditShard].Store(true)
	c.waitStatus("the credit shard to forget the refusal", func(st *transport.StatusReply) bool {
		x := totals(st)
		return x.inbox == 0 && x.outbox == 0
	})
	before = c.hashes()
	if a := replay(); a.Outcome != shard.OutcomeStale {
		t.Fatalf("replay after forget: %+v, want stale", a)
	}
	if after := c.hashes(); !mapsEqual(before, after) {
		t.Fatalf("late replay changed state: %v -> %v", before, after)
	}
	checkUntouched(0)

	// 3. A new attempt with the same id is credited once; the old credit
	// replayed after it still creates nothing.
	forgetsTo[debitShard].Store(true)
	r := c.transfer(xfer(id, bank, ghost, 40))[0]
	if r.Code != transport.CodeOK {
		t.Fatalf("new attempt once the account exists: %+v", r)
	}
	if a := replay(); a.Outcome != shard.OutcomeStale {
		t.Fatalf("replay after a new attempt: %+v, want stale", a)
	}
	checkUntouched(40)
	c.quiesce()
	checkUntouched(40)
}

func mapsEqual(a, b map[uint32]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || v != w {
			return false
		}
	}
	return true
}

// TestRouterLossAfterDebitCommitted: the provider gives up on its request
// (its reply is lost) while the saga is under way. The saga completes
// without the router, and the provider's retry answers exists with the
// timestamps the transfers were given.
func TestRouterLossAfterDebitCommitted(t *testing.T) {
	fault := func(_ uint32, cmd *shard.Command) node.Fault {
		if cmd.Kind == shard.KindCredit {
			return node.Fault{Delay: time.Second}
		}
		return node.Fault{}
	}
	c := startClusterWith(t, t.TempDir(), 2, fault)
	a1, a2 := c.accountOn("a", 1), c.accountOn("a", 2)
	b1, b2 := c.accountOn("b", 1), c.accountOn("b", 2)
	m := newModel(a1, a2, b1, b2)
	c.mustCreateAccounts(acct(a1, 0), acct(a2, 0), acct(b1, 0), acct(b2, 0))
	batch := []transport.Transfer{
		xfer("lost-1", a1, a2, 11), // cross-shard: credits wait 1 s
		xfer("lost-2", a2, b1, 12),
		xfer("lost-3", a1, b1, 13), // same shard, in the same request
		xfer("lost-4", b2, a1, 14),
		xfer("lost-5", b1, b2, 15),
	}
	body, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: batch})
	if err != nil {
		t.Fatal(err)
	}
	// Every part waits for a credit delayed by 1 s (or shares the request
	// with one), so no reply can come within 200 ms: the provider gives up.
	_, err = c.nc.Request(transport.Subjects{Prefix: transport.DefaultPrefix}.TransfersCreate(), body, 200*time.Millisecond)
	if !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("request with a 200 ms timeout: %v, want a timeout", err)
	}
	// No retry: the sagas complete on their own.
	c.waitStatus("every transfer to be posted", func(st *transport.StatusReply) bool {
		x := totals(st)
		return x.transfers == uint64(len(batch)) && x.outbox == 0
	})
	c.quiesce()
	ids := make([]string, len(batch))
	for i, tr := range batch {
		ids[i] = tr.ID
	}
	found, err := c.c.LookupTransfers(c.ctx(), ids)
	if err != nil || len(found) != len(batch) {
		t.Fatalf("lookup: %v (%d of %d found)", err, len(found), len(batch))
	}
	stamp := map[string]uint64{}
	for _, tr := range found {
		stamp[tr.ID] = tr.Timestamp
	}
	// The provider's retry, same ids: each exists, with its timestamp.
	for i, r := range c.transfer(batch...) {
		if r.Code != transport.CodeExists || r.Timestamp != stamp[batch[i].ID] || r.Timestamp == 0 {
			t.Fatalf("retry of %s: %+v, lookup timestamp %d", batch[i].ID, r, stamp[batch[i].ID])
		}
		m.applied(t, batch[i], r.Timestamp)
	}
	checkExactlyOnce(c, m, c.quiesce())
}

// TestDebitLeaderRestartMidSagaResumesOutbox stops the whole cluster while
// cross-shard transfers are reserved but never credited, and restarts it
// on the same data: the new leaders resume their outboxes.
func TestDebitLeaderRestartMidSagaResumesOutbox(t *testing.T) {
	dropCredits := func(_ uint32, cmd *shard.Command) node.Fault {
		if cmd.Kind == shard.KindCredit || cmd.Kind == shard.KindAbort {
			return node.Fault{Drop: true}
		}
		return node.Fault{}
	}
	const shards = 3
	dir := t.TempDir()
	c := startClusterWith(t, dir, shards, dropCredits)
	m, batch := crossShardLoad(c, shards, 2, 30, "resume", 0xe)
	// Same-shard transfers in the same request commit at once.
	local := map[string]bool{}
	for s := uint32(1); s <= shards; s++ {
		var on []string
		for _, id := range m.accounts {
			if c.shardOf(id) == s {
				on = append(on, id)
			}
		}
		tr := xfer(fmt.Sprintf("resume-local-%d", s), on[0], on[1], uint64(100*s))
		local[tr.ID] = true
		batch = append(batch, tr)
	}
	body, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: batch})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		// Never answered: its credits are dropped, then the cluster stops.
		_, _ = c.nc.RequestWithContext(ctx, transport.Subjects{Prefix: transport.DefaultPrefix}.TransfersCreate(), body)
	})
	cross := uint64(len(batch) - len(local))
	c.waitStatus("every cross-shard transfer reserved", func(st *transport.StatusReply) bool {
		x := totals(st)
		return x.outbox == cross && x.transfers == uint64(len(local))
	})
	// In flight: the reservations show as debits_pending, the transfers are
	// not visible yet.
	pending := map[string]uint64{}
	var ids []string
	for _, tr := range batch {
		ids = append(ids, tr.ID)
		if !local[tr.ID] {
			pending[tr.DebitAccountID] += tr.Amount
		}
	}
	for _, id := range m.accounts {
		if a := c.account(id); a.DebitsPending != pending[id] || a.CreditsPending != 0 {
			t.Fatalf("account %s in flight: %+v, want debits_pending %d", id, a, pending[id])
		}
	}
	if found, err := c.c.LookupTransfers(c.ctx(), ids); err != nil || len(found) != len(local) {
		t.Fatalf("lookup while in flight: %v, %d found, want only the %d same-shard ones", err, len(found), len(local))
	}
	cancel()
	wg.Wait()
	c.stop()

	c = startClusterIn(t, dir, shards)
	// The provider's retry, same batch, at once: in-flight rows answer
	// once resolved, and every event was applied before the restart.
	// (ok would mean a second application: every event of the batch was
	// reserved or posted before the stop, so each answers exists.)
	for i, r := range c.transfer(batch...) {
		if r.Code != transport.CodeExists {
			t.Fatalf("retry of %s after the restart: %+v, want exists", batch[i].ID, r)
		}
		m.applied(t, batch[i], r.Timestamp)
	}
	st := c.quiesce()
	checkExactlyOnce(c, m, st)
}

func shardStatus(t *testing.T, st *transport.StatusReply, id uint32) transport.ShardStatus {
	t.Helper()
	for _, s := range st.Shards {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("no shard %d in status", id)
	return transport.ShardStatus{}
}
