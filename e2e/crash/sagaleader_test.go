package crash

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

// The burst of cross-shard transfers sent while the credit shard is away.
const (
	sagaClients   = 6  // requests in flight at once, one batch each
	sagaBatch     = 40 // transfers per batch
	sagaWallets   = 12 // limited wallets on the debit shard
	sagaReceivers = 8  // accounts on the credit shard
	sagaGhosts    = 4  // ids on the credit shard's slots never created
	sagaFunding   = 1000
	sagaAmountMax = 250 // about twice a wallet's funding is asked of it in all

	// killAfterPause is when the debit shard's leader is killed at the
	// latest, after the credit shard's leader was paused. It is short of hashicorp/raft's
	// default heartbeat timeout (1 s, counted from the last heartbeat): no
	// follower of the credit shard campaigns before then, so no credit can
	// be decided and every saga reserved by then is still in flight.
	killAfterPause = 700 * time.Millisecond
)

// TestNewLeaderFinishesSagasOfAKilledLeader: three ledgerd processes, two
// shards, each group led by a different node. Shard S holds a bank and
// wallets limited to their credits (debits_must_not_exceed_credits),
// funded, all keeping balance history; shard T holds receivers, and some
// ids on T's slots are never created. The node leading T is paused
// (SIGSTOP), so credits stall; a burst of transfers from S to T is sent,
// some from wallets beyond their funds (refused by S: exceeds_credits), some
// to missing accounts (refused by T: credit_account_not_found, refunded on
// S). Once S has reserved some (its bank's balance history, read from S's
// leader, shows a reservation), the node leading S is killed
// (SIGKILL) and T's leader resumed (SIGCONT). The clients retry with the
// same ids until answered. Then: S's new leader, another node, drains the
// outbox; every transfer answered ok or exists is there once, with its
// fields, in both accounts' histories; the refused ones are nowhere;
// balances replay the applied transfers, debits equal credits and nothing
// is left pending; S's balance history shows how many sagas were in flight
// at the kill and when the new leader settled them. The killed node
// restarts and catches up.
func TestNewLeaderFinishesSagasOfAKilledLeader(t *testing.T) {
	rng := crashRNG(t, 0x5a6a1ead)
	mc := newCluster(t, 3, 2)
	mc.StartAll()
	nc0, c0 := mc.Connect()
	st := mc.WaitLeadersSpread(c0)
	nc0.Close()
	si := rng.IntN(2)
	sID, tID := st.Shards[si].ID, st.Shards[1-si].ID
	x, y := mc.Index(st.Shards[si].Leader), mc.Index(st.Shards[1-si].Leader)
	z := 3 - x - y // leads the meta group; neither paused nor killed
	xID := mc.Nodes[x].ID
	t.Logf("shard %d (debits) led by %s, shard %d (credits) by %s, meta by %s", sID, xID, tID, mc.Nodes[y].ID, mc.Nodes[z].ID)

	// The clients talk to the node that no fault touches, so that every
	// request reaches a router; the faults are the shards' leaders'.
	nc, _ := mc.ConnectTo(z)
	defer nc.Close()
	// Six requests in flight at once, as six providers would send them:
	// coalesced, the first batch goes alone and the five others wait for
	// its answer, which the paused credit shard holds back, so whether
	// anything is reserved before the kill hangs on one request's latency.
	c := client.New(nc, client.WithCoalescing(false))
	b := setupSagas(t, c, st, si)
	batches := b.burst(rng)

	mc.Pause(y)
	pausedAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*quietGuard)
	defer cancel()
	outcomes := make([]sagaOutcome, len(batches))
	var wg sync.WaitGroup
	for w, batch := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.CreateTransfers(ctx, batch) // retries the same ids until answered
			outcomes[w] = sagaOutcome{res: res, err: err, at: time.Now()}
		}()
	}
	answered := make(chan struct{})
	go func() { wg.Wait(); close(answered) }()
	// Kill x as soon as its shard has reserved a transfer of the burst (the
	// bank's balance history, read from x through the router, shows a
	// reservation after the pause), and at the latest at killAfterPause:
	// before Raft's heartbeat timeout, so T has no new leader and nothing
	// reserved can have been credited yet. A fixed moment alone was not
	// enough on a loaded machine.
	for time.Now().Before(pausedAt.Add(killAfterPause)) && !reservedSince(c, b.bank, pausedAt) {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-answered:
		t.Fatalf("every client answered before the kill: no saga was in flight")
	default:
	}
	mc.Kill(x)
	killedAt := time.Now()
	mc.Resume(y)

	// The status until S has a new leader with an empty outbox.
	var newLeader string
	var firstAt, drainedAt time.Time
	var firstDepth uint64
	for drainedAt.IsZero() {
		st := mc.WaitLed(c)
		now := time.Now()
		for _, s := range st.Shards {
			if s.ID != sID || s.Leader == xID {
				continue
			}
			if firstAt.IsZero() {
				firstAt, firstDepth = now, s.OutboxDepth
			}
			newLeader = s.Leader
			if s.OutboxDepth == 0 {
				drainedAt = now
			}
		}
		if drainedAt.IsZero() && now.Sub(killedAt) > quietGuard {
			t.Fatalf("shard %d: no new leader with an empty outbox %v after the kill: %+v", sID, quietGuard, st.Shards)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-answered:
	case <-time.After(2 * quietGuard):
		t.Fatalf("clients not answered %v after the kill", 2*quietGuard)
	}
	lastAt, late := killedAt, 0
	for _, o := range outcomes {
		if o.at.After(killedAt) {
			late++
		}
		if o.at.After(lastAt) {
			lastAt = o.at
		}
	}
	t.Logf("status: shard %d led by %s %v after the kill, outbox %d; empty %v after the kill; %d of %d clients answered after the kill, the last %v after it",
		sID, newLeader, firstAt.Sub(killedAt).Round(time.Millisecond), firstDepth, drainedAt.Sub(killedAt).Round(time.Millisecond),
		late, len(outcomes), lastAt.Sub(killedAt).Round(time.Millisecond))

	// The router's status at rest: S led by another node, nothing in flight.
	st = mc.WaitQuiet(c)
	for _, s := range st.Shards {
		if s.ID == sID && (s.Leader == xID || s.OutboxDepth != 0) {
			t.Errorf("status of shard %d at rest: leader %s, outbox %d", sID, s.Leader, s.OutboxDepth)
		}
	}
	// The killed node restarts from its data now, and catches up while the
	// cluster is checked: leaders back off from a peer they cannot reach
	// (hashicorp/raft: up to about 10 s between tries), so the shorter it
	// was away, the sooner they try it again.
	mc.Launch(x)

	sg := b.check(t, c, batches, outcomes, killedAt)
	since := func(ts uint64) time.Duration {
		return time.Duration(int64(ts) - killedAt.UnixNano()).Round(time.Millisecond)
	}
	settled, reserved := sg.settledAfter()
	t.Logf("shard %d's balance history: %d sagas reserved before the kill, %d settled before it: %d in flight at the kill; after it %d settled, %d begun by retries",
		sID, sg.reservedBefore, sg.settledBefore, sg.inFlight(), settled, reserved)
	if sg.inFlight() <= 0 {
		t.Errorf("shard %d's balance history shows no saga in flight at the kill", sID)
	}
	if settled != sg.inFlight()+reserved {
		t.Errorf("shard %d's balance history: %d settlements after the kill, for %d sagas in flight then and %d begun after", sID, settled, sg.inFlight(), reserved)
	}
	if first, last, ok := sg.finished(); ok {
		t.Logf("the new leader settled the %d sagas in flight %v to %v after the kill (in %v)",
			sg.inFlight(), since(first), since(last), time.Duration(last-first))
	} else {
		t.Logf("the new leader's first settlement %v after the kill; sagas begun by retries interleave with the last ones in flight (status: outbox empty %v after the kill)",
			since(first), drainedAt.Sub(killedAt).Round(time.Millisecond))
	}
	checkBalances(t, c, b.m, mc)
	if t.Failed() {
		t.FailNow()
	}

	// The killed node has caught up.
	mc.WaitReady(x)
	st = mc.WaitCaughtUp(c)
	for _, s := range st.Shards {
		t.Logf("shard %d led by %s: replicas %+v", s.ID, s.Leader, s.Replicas)
	}
	for i := range mc.Nodes {
		mc.Stop(i)
	}
}

// sagaOutcome is what one client's CreateTransfers returned, and when.
type sagaOutcome struct {
	res []transport.Result
	err error
	at  time.Time
}

// sagaBook is the accounts of the test and what the cluster must hold.
type sagaBook struct {
	// bank and wallets keep balance history (sagaCounts reads it).
	m         *model
	bank      string   // on S, no limit: its transfers fail only at T
	wallets   []string // on S, debits_must_not_exceed_credits, funded
	receivers []string // on T
	ghosts    []string // on T's slots, never created
	limited   map[string]bool
	ghost     map[string]bool
}

// setupSagas creates the bank and wallets on shard si (status order), the
// receivers on the other, and funds every wallet from the bank (on one
// shard: no saga).
func setupSagas(t *testing.T, c *client.Client, st *transport.StatusReply, si int) *sagaBook {
	t.Helper()
	const per = 1 + sagaWallets + sagaReceivers + sagaGhosts
	ids := accountsPerShard(t, st, per)
	onS, onT := ids[si*per:(si+1)*per], ids[(1-si)*per:(2-si)*per]
	b := &sagaBook{
		m:    &model{accounts: map[string]transport.Account{}, applied: map[string]transport.Transfer{}},
		bank: onS[0], wallets: onS[1 : 1+sagaWallets],
		receivers: onT[:sagaReceivers], ghosts: onT[sagaReceivers : sagaReceivers+sagaGhosts],
		limited: map[string]bool{}, ghost: map[string]bool{},
	}
	accounts := []transport.Account{newAccount(b.bank, transport.AccountHistory)}
	for _, w := range b.wallets {
		accounts = append(accounts, newAccount(w, transport.AccountDebitsMustNotExceedCredits|transport.AccountHistory))
		b.limited[w] = true
	}
	for _, r := range b.receivers {
		accounts = append(accounts, newAccount(r, 0))
	}
	for _, g := range b.ghosts {
		b.ghost[g] = true
	}
	ctx, cancel := reqCtx()
	defer cancel()
	if res, err := c.CreateAccounts(ctx, accounts); err != nil || !allOK(res) {
		t.Fatalf("accounts: %v %v", err, res)
	}
	for _, a := range accounts {
		b.m.accounts[a.ID] = a
	}
	var funding []transport.Transfer
	for _, w := range b.wallets {
		funding = append(funding, newTransfer("fund-"+w, b.bank, w, sagaFunding))
	}
	if res, err := c.CreateTransfers(ctx, funding); err != nil || !allOK(res) {
		t.Fatalf("funding: %v %v", err, res)
	}
	for _, f := range funding {
		b.m.addTransfer(f)
	}
	return b
}

// burst draws one batch per client, every transfer from S to T. Each
// batch opens with one transfer of each outcome: the bank to a ghost
// (refused by T, refunded), a wallet beyond its funding (refused by S), the
// bank to a receiver (applied); the rest are drawn: mostly from a wallet
// (about half beyond its funds in all), one in eight from the bank, one in
// eight to a ghost.
func (b *sagaBook) burst(rng *rand.Rand) [][]transport.Transfer {
	batches := make([][]transport.Transfer, sagaClients)
	for w := range batches {
		add := func(debit, credit string, amount uint64) {
			id := fmt.Sprintf("saga-%d-%d", w, len(batches[w]))
			batches[w] = append(batches[w], newTransfer(id, debit, credit, amount))
		}
		add(b.bank, pick(rng, b.ghosts), 1+uint64(rng.IntN(sagaAmountMax)))
		add(pick(rng, b.wallets), pick(rng, b.receivers), sagaFunding+1)
		add(b.bank, pick(rng, b.receivers), 1+uint64(rng.IntN(sagaAmountMax)))
		for len(batches[w]) < sagaBatch {
			debit, credit := pick(rng, b.wallets), pick(rng, b.receivers)
			if rng.IntN(8) == 0 {
				debit = b.bank
			}
			if rng.IntN(8) == 0 {
				credit = pick(rng, b.ghosts)
			}
			add(debit, credit, 1+uint64(rng.IntN(sagaAmountMax)))
		}
	}
	return batches
}

// sagaCounts are the sagas of the debit shard, read from its accounts'
// balance history: a reservation raises an account's debits_pending, its
// settlement (posted or refunded) lowers it, each at the timestamp of its
// entry, the leader's clock when it proposed it (the test's clock too: one
// host). Before the kill: entries of the killed leader; after: the new one's.
type sagaCounts struct {
	reservedBefore, settledBefore int
	after                         []sagaEvent // in timestamp order once sorted
}

type sagaEvent struct {
	ts       uint64
	reserved bool // else settled
}

func (sg *sagaCounts) add(rows []transport.Balance, killed uint64) {
	var pending uint64
	for _, r := range rows {
		switch {
		case r.DebitsPending == pending:
		case r.Timestamp > killed:
			sg.after = append(sg.after, sagaEvent{ts: r.Timestamp, reserved: r.DebitsPending > pending})
		case r.DebitsPending > pending:
			sg.reservedBefore++
		default:
			sg.settledBefore++
		}
		pending = r.DebitsPending
	}
}

func (sg *sagaCounts) inFlight() int { return sg.reservedBefore - sg.settledBefore }

// finished returns the timestamps of the first settlement after the kill
// and of the last settlement of the sagas in flight at the kill: exact
// (ok) when they all came before any saga begun after the kill (a client's
// retry of a transfer refused at first).
func (sg *sagaCounts) finished() (first, last uint64, ok bool) {
	slices.SortFunc(sg.after, func(a, b sagaEvent) int { return cmp.Compare(a.ts, b.ts) })
	n, begun := 0, false
	for _, e := range sg.after {
		if e.reserved {
			begun = true
			continue
		}
		if n++; n == 1 {
			first = e.ts
		}
		if n == sg.inFlight() && !begun {
			last, ok = e.ts, true
		}
	}
	return first, last, ok
}

func (sg *sagaCounts) settledAfter() (settled, reserved int) {
	for _, e := range sg.after {
		if e.reserved {
			reserved++
		} else {
			settled++
		}
	}
	return settled, reserved
}

// check sorts the answers into applied and refused, adds the applied to the
// model, and checks the cluster against them: each applied transfer found
// with its fields and its answer's timestamp, once in each of its accounts'
// histories; each refused one found nowhere. It returns the debit shard's
// sagas as its balance history tells them.
func (b *sagaBook) check(t *testing.T, c *client.Client, batches [][]transport.Transfer, outcomes []sagaOutcome, killedAt time.Time) sagaCounts {
	t.Helper()
	acked := map[string]ackedTransfer{}
	refused := map[string]transport.Transfer{}
	codes := map[transport.Code]int{}
	for w, o := range outcomes {
		if o.err != nil || len(o.res) != len(batches[w]) {
			t.Fatalf("client %d: %v (%d results for %d transfers)", w, o.err, len(o.res), len(batches[w]))
		}
		for i, r := range o.res {
			tr := batches[w][i]
			codes[r.Code]++
			applied := r.Code == transport.CodeOK || r.Code == transport.CodeExists
			switch {
			case applied && b.limited[tr.DebitAccountID] && tr.Amount > sagaFunding:
				t.Errorf("transfer %+v, beyond all its debit account ever held, answered %v", tr, r.Code)
			case applied && !b.ghost[tr.CreditAccountID]:
				acked[tr.ID] = ackedTransfer{tr: tr, ts: r.Timestamp}
				b.m.addTransfer(tr)
			case r.Code == transport.CodeExceedsCredits && b.limited[tr.DebitAccountID],
				r.Code == transport.CodeCreditAccountNotFound && b.ghost[tr.CreditAccountID]:
				refused[tr.ID] = tr
			default:
				t.Errorf("transfer %+v answered %v", tr, r.Code)
			}
		}
	}
	t.Logf("answers: %d ok, %d exists, %d exceeds_credits, %d credit_account_not_found",
		codes[transport.CodeOK], codes[transport.CodeExists], codes[transport.CodeExceedsCredits], codes[transport.CodeCreditAccountNotFound])

	var ids []string
	for _, batch := range batches {
		for _, tr := range batch {
			ids = append(ids, tr.ID)
		}
	}
	found := lookupTransfers(t, c, ids)
	for id, at := range acked {
		got, ok := found[id]
		switch {
		case !ok:
			t.Errorf("transfer %+v answered ok (timestamp %d) is missing", at.tr, at.ts)
		case !sameTransfer(got, at.tr):
			t.Errorf("transfer %s: found %+v, sent %+v", id, got, at.tr)
		case got.Timestamp != at.ts:
			t.Errorf("transfer %s: timestamp %d, %d in its answer", id, got.Timestamp, at.ts)
		}
	}
	for id, tr := range refused {
		if got, ok := found[id]; ok {
			t.Errorf("refused transfer %+v found: %+v", tr, got)
		}
	}

	// Exactly once: every account's history names each of its applied
	// transfers once, and nothing else.
	var sg sagaCounts
	for id := range b.m.accounts {
		want := map[string]int{}
		for _, tr := range b.m.applied {
			if tr.DebitAccountID == id || tr.CreditAccountID == id {
				want[tr.ID] = 1
			}
		}
		transfers, balances := accountHistoryPage(t, c, id)
		if id == b.bank || b.limited[id] {
			sg.add(balances, uint64(killedAt.UnixNano()))
		}
		got := map[string]int{}
		for _, tr := range transfers {
			got[tr.ID]++
		}
		for tid, n := range got {
			if n != want[tid] {
				t.Errorf("account %s: transfer %s %d times in its history, want %d", id, tid, n, want[tid])
			}
		}
		for tid := range want {
			if got[tid] == 0 {
				t.Errorf("account %s: applied transfer %s not in its history", id, tid)
			}
		}
	}
	return sg
}

// accountHistoryPage reads an account's transfers and balances in one
// request each, and fails if a reply may have been cut. It does not page on
// from the last row's timestamp, as accountHistory does: accounts.transfers
// lists the credit half of a cross-shard transfer at the credit shard's
// timestamp but shows the transfer's own (the debit shard's, earlier), so
// that a next page from it returns the same row again.
func accountHistoryPage(t *testing.T, c *client.Client, id string) ([]transport.Transfer, []transport.Balance) {
	t.Helper()
	ctx, cancel := reqCtx()
	defer cancel()
	f := transport.AccountFilter{AccountID: id, Limit: transport.HistoryLimitMax}
	transfers, err := c.AccountTransfers(ctx, f)
	if err != nil || len(transfers) == int(f.Limit) {
		t.Fatalf("account %s transfers: %v (%d rows)", id, err, len(transfers))
	}
	balances, err := c.AccountBalances(ctx, f)
	if err != nil || len(balances) == int(f.Limit) {
		t.Fatalf("account %s balances: %v (%d rows)", id, err, len(balances))
	}
	return transfers, balances
}

// reservedSince tells whether account (on the debit shard, with balance
// history) has a balance row after since with an amount reserved: a saga
// its shard began and has not settled yet at that row.
func reservedSince(c *client.Client, account string, since time.Time) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	rows, err := c.AccountBalances(ctx, transport.AccountFilter{AccountID: account, TimestampMin: uint64(since.UnixNano()), Limit: 10})
	if err != nil {
		return false
	}
	for _, r := range rows {
		if r.DebitsPending > 0 {
			return true
		}
	}
	return false
}
