// Package crash holds the crash-recovery end-to-end test: the real ledgerd
// binary, SIGKILLed under load and restarted on the same data directory.
package crash

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
)

const (
	shardCount    = 3
	walletCount   = 200
	fundingAmount = 1_000_000
	ledgerID      = 1
	operatorID    = "operator"
	workers       = 4
	cycles        = 2
	// hugeAmount exceeds all the money in the system, so a limited wallet
	// can never pay it: such a transfer must be refused with exceeds_credits.
	hugeAmount = 1 << 40

	// Hang guards, not performance bounds.
	readyGuard   = 60 * time.Second
	quietGuard   = 60 * time.Second
	requestGuard = 30 * time.Second
	triggerGuard = 60 * time.Second
)

// TestAcknowledgedTransfersSurviveKill9 runs the real binary, kills it with
// SIGKILL while several clients send transfers, restarts it on the same data
// directory and checks that everything acknowledged survived, that requests
// in flight at the kill were applied at most once, and that the balances are
// exactly what the applied transfers say.
func TestAcknowledgedTransfersSurviveKill9(t *testing.T) {
	rng := crashRNG(t, 0x9e3779b97f4a7c15)

	cl := newCluster(t, 1, shardCount)
	cl.Start(0)

	m := &model{accounts: map[string]transport.Account{}, applied: map[string]transport.Transfer{}}
	nc, c := cl.Connect()
	topo := setup(t, c, m)
	t.Logf("accounts per shard: %v", topo.counts())

	for cycle := 1; cycle <= cycles; cycle++ {
		killAfter := 10 + rng.IntN(30)                              // acknowledged transfer batches
		killDelay := time.Duration(rng.IntN(15)) * time.Millisecond // lands the kill mid-batch
		load := runLoad(t, cl, c, topo, cycle, rng, killAfter, killDelay)
		nc.Close()
		t.Logf("cycle %d: killed after %d acked batches (+%v): %d transfers acked (%d exists on retry), %d refused, %d unknown; %d accounts acked, %d unknown",
			cycle, load.batches, killDelay, len(load.ackedT), load.existsT, len(load.refusedT), len(load.unknownT), len(load.ackedA), len(load.unknownA))
		if t.Failed() {
			t.FailNow()
		}

		cl.Start(0)
		nc, c = cl.Connect()
		cl.WaitQuiet(c)
		verifyAfterRestart(t, c, m, topo, load)
		cl.WaitQuiet(c)
		checkBalances(t, c, m, cl)
		if t.Failed() {
			t.FailNow()
		}
	}
	nc.Close()
	cl.Stop(0)
}

// ---------------------------------------------------------------------------
// The processes.

// newCluster returns n ledgerd nodes (not started) of a cluster of shards
// shards, every node started with args too. LEDGERD_CRASH_LOGS=1 prints
// every process's last lines when the test ends.
func newCluster(t *testing.T, n, shards int, args ...string) *testnet.Cluster {
	cl := testnet.NewCluster(t, buildLedgerd(t), n, shards)
	cl.ReadyGuard, cl.QuietGuard = readyGuard, quietGuard
	cl.DumpLogs = os.Getenv("LEDGERD_CRASH_LOGS") == "1"
	cl.Args = slices.Clone(args)
	// One node, no reconnect: when the process is killed, requests in
	// flight fail at once with ErrConnectionClosed instead of being
	// retried against the restarted process by the client.
	cl.NATSOptions = []nats.Option{nats.NoReconnect(), nats.Timeout(5 * time.Second)}
	if n > 1 {
		// Every node holds every shard, as these tests check: a shard has
		// a voter on each of up to 5 nodes (a node that joins receives a
		// replica of every shard through replica moves).
		cl.Args = append(cl.Args, "--replicas", "5")
		// The client reconnects to another node when one dies.
		cl.NATSOptions = []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond), nats.Timeout(5 * time.Second)}
	}
	return cl
}

// buildLedgerd builds ./cmd/ledgerd (LEDGERD_CRASH_RACE=1: with the race
// detector).
func buildLedgerd(t *testing.T) string {
	return testnet.BuildLedgerd(t, os.Getenv("LEDGERD_CRASH_RACE") == "1")
}

// crashRNG skips the test in -short mode (it builds and kills the real
// binary), and returns its random source: seeded from the clock, or from
// LEDGERD_CRASH_SEED to replay a run; stream tells the tests apart.
func crashRNG(t *testing.T, stream uint64) *rand.Rand {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and kills the real binary; skipped in -short mode")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LEDGERD_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("LEDGERD_CRASH_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (rerun with LEDGERD_CRASH_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^stream))
}

// snapshotOften makes every group snapshot each 16 entries and keep 4
// behind, so a restart restores a snapshot, checks that the history store
// covers it, and replays the few entries after it.
var snapshotOften = []string{"--snapshot-threshold", "16", "--snapshot-interval", "100ms", "--snapshot-trailing-logs", "4"}

// ---------------------------------------------------------------------------
// The model: what the cluster must hold.

type model struct {
	accounts map[string]transport.Account  // every account known created
	applied  map[string]transport.Transfer // every transfer known applied
}

func (m *model) addTransfer(tr transport.Transfer) {
	if _, dup := m.applied[tr.ID]; dup {
		panic("transfer recorded twice: " + tr.ID)
	}
	m.applied[tr.ID] = tr
}

// expected replays every applied transfer onto zero balances.
func (m *model) expected() map[string]*transport.Account {
	exp := make(map[string]*transport.Account, len(m.accounts))
	for id, a := range m.accounts {
		a := a
		exp[id] = &a
	}
	for _, tr := range m.applied {
		exp[tr.DebitAccountID].DebitsPosted += tr.Amount
		exp[tr.CreditAccountID].CreditsPosted += tr.Amount
	}
	return exp
}

// topology is the wallets grouped by shard.
type topology struct {
	shards  []uint32
	byShard map[uint32][]string
	limited map[string]bool
}

func (tp *topology) counts() map[uint32]int {
	out := map[uint32]int{}
	for s, ids := range tp.byShard {
		out[s] = len(ids)
	}
	return out
}

func newAccount(id string, flags uint32) transport.Account {
	return transport.Account{ID: id, Ledger: ledgerID, Code: 10, Flags: flags}
}

func newTransfer(id, debit, credit string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: amount, Ledger: ledgerID, Code: 1}
}

func reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), requestGuard)
}

// setup creates the operator and the wallets, half of them limited, and
// funds every wallet from the operator.
func setup(t *testing.T, c *client.Client, m *model) *topology {
	t.Helper()
	ctx, cancel := reqCtx()
	defer cancel()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if len(st.Shards) != shardCount {
		t.Fatalf("%d shards, want %d", len(st.Shards), shardCount)
	}
	slotShard := make(map[uint16]uint32, transport.SlotCount)
	tp := &topology{byShard: map[uint32][]string{}, limited: map[string]bool{}}
	for _, s := range st.Shards {
		tp.shards = append(tp.shards, s.ID)
		for _, slot := range s.Slots {
			slotShard[slot] = s.ID
		}
	}
	if len(slotShard) != transport.SlotCount {
		t.Fatalf("status covers %d slots, want %d", len(slotShard), transport.SlotCount)
	}

	accounts := []transport.Account{newAccount(operatorID, 0)}
	for i := range walletCount {
		id := fmt.Sprintf("wallet-%03d", i)
		var flags uint32
		if i%2 == 0 {
			flags = transport.AccountDebitsMustNotExceedCredits
			tp.limited[id] = true
		}
		accounts = append(accounts, newAccount(id, flags))
		s := slotShard[transport.Slot(id)]
		tp.byShard[s] = append(tp.byShard[s], id)
	}
	for _, s := range tp.shards {
		if len(tp.byShard[s]) < 2 {
			t.Fatalf("shard %d has %d wallets; the test needs two per shard", s, len(tp.byShard[s]))
		}
	}
	res, err := c.CreateAccounts(ctx, accounts)
	if err != nil {
		t.Fatalf("create accounts: %v", err)
	}
	for i, r := range res {
		if r.Code != transport.CodeOK {
			t.Fatalf("create account %s: %v", accounts[i].ID, r.Code)
		}
		m.accounts[accounts[i].ID] = accounts[i]
	}

	var funding []transport.Transfer
	for _, a := range accounts[1:] {
		funding = append(funding, newTransfer("fund-"+a.ID, operatorID, a.ID, fundingAmount))
	}
	res, err = c.CreateTransfers(ctx, funding)
	if err != nil {
		t.Fatalf("funding: %v", err)
	}
	for i, r := range res {
		if r.Code != transport.CodeOK {
			t.Fatalf("funding %s: %v", funding[i].ID, r.Code)
		}
		m.addTransfer(funding[i])
	}
	return tp
}

// ---------------------------------------------------------------------------
// The load and the kill.

type ackedTransfer struct {
	tr transport.Transfer
	ts uint64
}

type loadResult struct {
	mu       sync.Mutex
	batches  int                      // acknowledged transfer batches
	ackedT   map[string]ackedTransfer // ok or exists
	existsT  int                      // of which exists (a client retry)
	refusedT map[string]transport.Transfer
	unknownT []transport.Transfer // in flight at the kill
	mustFail map[string]bool      // transfers that can only be refused
	ackedA   []transport.Account
	unknownA []transport.Account
}

func runLoad(t *testing.T, cl *testnet.Cluster, c *client.Client, tp *topology, cycle int, rng *rand.Rand, killAfter int, killDelay time.Duration) *loadResult {
	t.Helper()
	lr := &loadResult{
		ackedT:   map[string]ackedTransfer{},
		refusedT: map[string]transport.Transfer{},
		mustFail: map[string]bool{},
	}
	var killed atomic.Bool
	trigger := make(chan struct{})
	var triggerOnce sync.Once
	var wg sync.WaitGroup
	done := make(chan struct{})

	for w := range workers {
		wrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; !killed.Load(); b++ {
				batch, mustFail := genBatch(wrng, tp, fmt.Sprintf("c%d-w%d-b%d", cycle, w, b))
				ctx, cancel := reqCtx()
				res, err := c.CreateTransfers(ctx, batch)
				cancel()
				lr.mu.Lock()
				for id := range mustFail {
					lr.mustFail[id] = true
				}
				for i, r := range res { // on error, the results of a completed prefix
					tr := batch[i]
					switch {
					case r.Code == transport.CodeOK || r.Code == transport.CodeExists:
						if mustFail[tr.ID] {
							t.Errorf("transfer %s of %d from limited %s answered %v", tr.ID, tr.Amount, tr.DebitAccountID, r.Code)
						}
						if r.Timestamp == 0 {
							t.Errorf("transfer %s answered %v with timestamp 0", tr.ID, r.Code)
						}
						if r.Code == transport.CodeExists {
							lr.existsT++
						}
						lr.ackedT[tr.ID] = ackedTransfer{tr: tr, ts: r.Timestamp}
					case r.Code == transport.CodeExceedsCredits && tp.limited[tr.DebitAccountID]:
						lr.refusedT[tr.ID] = tr
					default:
						t.Errorf("transfer %+v answered %v", tr, r.Code)
						lr.refusedT[tr.ID] = tr
					}
				}
				if err != nil {
					lr.unknownT = append(lr.unknownT, batch[len(res):]...)
				} else if len(res) != len(batch) {
					t.Errorf("%d results for %d transfers", len(res), len(batch))
				} else {
					lr.batches++
					if lr.batches >= killAfter {
						triggerOnce.Do(func() { close(trigger) })
					}
				}
				lr.mu.Unlock()
				if err != nil {
					if !killed.Load() {
						t.Errorf("create transfers before the kill: %v", err)
					}
					return
				}
			}
		}()
	}

	// Accounts are created during the load too, a few at a time.
	arng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for b := 0; !killed.Load(); b++ {
			var batch []transport.Account
			for i := range 4 {
				var flags uint32
				if arng.IntN(2) == 0 {
					flags = transport.AccountDebitsMustNotExceedCredits
				}
				batch = append(batch, newAccount(fmt.Sprintf("c%d-late-%d-%d", cycle, b, i), flags))
			}
			ctx, cancel := reqCtx()
			res, err := c.CreateAccounts(ctx, batch)
			cancel()
			lr.mu.Lock()
			for i, r := range res {
				if r.Code == transport.CodeOK || r.Code == transport.CodeExists {
					lr.ackedA = append(lr.ackedA, batch[i])
				} else {
					t.Errorf("create account %+v: %v", batch[i], r.Code)
				}
			}
			if err != nil {
				lr.unknownA = append(lr.unknownA, batch[len(res):]...)
			}
			lr.mu.Unlock()
			if err != nil {
				if !killed.Load() {
					t.Errorf("create accounts before the kill: %v", err)
				}
				return
			}
			time.Sleep(time.Duration(arng.IntN(5)) * time.Millisecond)
		}
	}()
	go func() { wg.Wait(); close(done) }()

	killWhenTriggered(t, cl, trigger, done, &killed, killAfter, killDelay)
	return lr
}

// killWhenTriggered kills the node (SIGKILL) killDelay after the load
// closes trigger, telling its clients first (killed), and waits until they
// stop (done). Every client stopping before the trigger, or no trigger
// within triggerGuard, fails the test.
func killWhenTriggered(t *testing.T, cl *testnet.Cluster, trigger, done <-chan struct{}, killed *atomic.Bool, killAfter int, killDelay time.Duration) {
	t.Helper()
	select {
	case <-trigger:
	case <-done:
		t.Fatalf("every client stopped before the kill")
	case <-time.After(triggerGuard):
		// Stop the clients before failing: none may log after the test ends.
		killed.Store(true)
		_ = cl.Nodes[0].Cur.Cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(2 * requestGuard):
		}
		t.Fatalf("%d acknowledged batches not reached after %v", killAfter, triggerGuard)
	}
	time.Sleep(killDelay)
	killed.Store(true)
	cl.Kill(0)
	select {
	case <-done:
	case <-time.After(2 * requestGuard):
		t.Fatalf("clients did not stop after the kill")
	}
}

// genBatch makes 20 to 60 transfers with ids prefix-i: same-shard and
// cross-shard moves between wallets, and about one in ten from a limited
// wallet for more money than exists (those are returned in mustFail).
func genBatch(rng *rand.Rand, tp *topology, prefix string) ([]transport.Transfer, map[string]bool) {
	n := 20 + rng.IntN(41)
	batch := make([]transport.Transfer, 0, n)
	mustFail := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		s1 := tp.shards[rng.IntN(len(tp.shards))]
		s2 := s1
		if rng.IntN(2) == 0 { // cross-shard
			for s2 == s1 {
				s2 = tp.shards[rng.IntN(len(tp.shards))]
			}
		}
		debit := tp.byShard[s1][rng.IntN(len(tp.byShard[s1]))]
		credit := debit
		for credit == debit {
			credit = tp.byShard[s2][rng.IntN(len(tp.byShard[s2]))]
		}
		amount := uint64(1 + rng.IntN(5000))
		if rng.IntN(10) == 0 {
			for !tp.limited[debit] {
				debit = tp.byShard[s1][rng.IntN(len(tp.byShard[s1]))]
			}
			if debit == credit {
				continue
			}
			amount = hugeAmount
			mustFail[id] = true
		}
		batch = append(batch, newTransfer(id, debit, credit, amount))
	}
	return batch, mustFail
}

// ---------------------------------------------------------------------------
// Verification.

func sameTransfer(got, want transport.Transfer) bool {
	return got.ID == want.ID && got.DebitAccountID == want.DebitAccountID && got.CreditAccountID == want.CreditAccountID &&
		got.Amount == want.Amount && got.Ledger == want.Ledger && got.Code == want.Code && got.Flags == want.Flags &&
		got.PendingID == "" && got.Timeout == 0 && got.State == transport.StatePosted && got.Timestamp != 0
}

func lookupTransfers(t *testing.T, c *client.Client, ids []string) map[string]transport.Transfer {
	t.Helper()
	ctx, cancel := reqCtx()
	defer cancel()
	found, err := c.LookupTransfers(ctx, ids)
	if err != nil {
		t.Fatalf("lookup transfers: %v", err)
	}
	out := make(map[string]transport.Transfer, len(found))
	for _, tr := range found {
		out[tr.ID] = tr
	}
	return out
}

func lookupAccounts(t *testing.T, c *client.Client, ids []string) map[string]transport.Account {
	t.Helper()
	ctx, cancel := reqCtx()
	defer cancel()
	found, err := c.LookupAccounts(ctx, ids)
	if err != nil {
		t.Fatalf("lookup accounts: %v", err)
	}
	out := make(map[string]transport.Account, len(found))
	for _, a := range found {
		out[a.ID] = a
	}
	return out
}

// verifyAfterRestart checks the load's acknowledged events against the
// restarted cluster, settles the unknown ones by lookup and resend, and adds
// everything applied to the model.
func verifyAfterRestart(t *testing.T, c *client.Client, m *model, tp *topology, lr *loadResult) {
	t.Helper()

	// Accounts: every acknowledged one exists with its fields.
	var ids []string
	for _, a := range lr.ackedA {
		ids = append(ids, a.ID)
	}
	found := lookupAccounts(t, c, ids)
	for _, a := range lr.ackedA {
		got, ok := found[a.ID]
		if !ok {
			t.Errorf("acknowledged account %s lost after kill -9", a.ID)
			continue
		}
		if got.Ledger != a.Ledger || got.Code != a.Code || got.Flags != a.Flags || got.Timestamp == 0 {
			t.Errorf("account %s after restart: %+v, created as %+v", a.ID, got, a)
		}
		m.accounts[a.ID] = a
	}
	// Unknown accounts: resent, each answers exists if it was created, ok if not.
	if len(lr.unknownA) > 0 {
		ids = ids[:0]
		for _, a := range lr.unknownA {
			ids = append(ids, a.ID)
		}
		before := lookupAccounts(t, c, ids)
		ctx, cancel := reqCtx()
		res, err := c.CreateAccounts(ctx, lr.unknownA)
		cancel()
		if err != nil || len(res) != len(lr.unknownA) {
			t.Fatalf("resend unknown accounts: %v (%d results)", err, len(res))
		}
		for i, r := range res {
			a := lr.unknownA[i]
			_, was := before[a.ID]
			if (was && r.Code != transport.CodeExists) || (!was && r.Code != transport.CodeOK) {
				t.Errorf("resent account %s (present before: %v) answered %v", a.ID, was, r.Code)
			}
			m.accounts[a.ID] = a
		}
		t.Logf("unknown accounts: %d of %d had been created", len(before), len(lr.unknownA))
	}

	// Acknowledged transfers: every one found, same fields, same timestamp.
	ids = ids[:0]
	for id := range lr.ackedT {
		ids = append(ids, id)
	}
	foundT := lookupTransfers(t, c, ids)
	lost := 0
	for id, at := range lr.ackedT {
		got, ok := foundT[id]
		switch {
		case !ok:
			lost++
			if lost <= 10 {
				t.Errorf("acknowledged transfer %+v (timestamp %d) lost after kill -9", at.tr, at.ts)
			}
		case !sameTransfer(got, at.tr):
			t.Errorf("acknowledged transfer %s after restart: %+v, sent %+v", id, got, at.tr)
		case got.Timestamp != at.ts:
			t.Errorf("acknowledged transfer %s: timestamp %d after restart, %d in its result", id, got.Timestamp, at.ts)
		}
		m.addTransfer(at.tr)
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged transfers lost", lost, len(lr.ackedT))
	}

	// Refused transfers changed nothing and recorded nothing.
	ids = ids[:0]
	for id := range lr.refusedT {
		ids = append(ids, id)
	}
	for id, got := range lookupTransfers(t, c, ids) {
		t.Errorf("refused transfer %s found after restart: %+v", id, got)
	}

	// Unknown transfers: see which were applied, resend all with the same
	// ids; applied ones must answer exists, the others ok or a refusal.
	if len(lr.unknownT) == 0 {
		return
	}
	ids = ids[:0]
	for _, tr := range lr.unknownT {
		ids = append(ids, tr.ID)
	}
	before := lookupTransfers(t, c, ids)
	for id, got := range before {
		var sent transport.Transfer
		for _, tr := range lr.unknownT {
			if tr.ID == id {
				sent = tr
			}
		}
		if !sameTransfer(got, sent) {
			t.Errorf("in-flight transfer %s after restart: %+v, sent %+v", id, got, sent)
		}
	}
	ctx, cancel := reqCtx()
	res, err := c.CreateTransfers(ctx, lr.unknownT)
	cancel()
	if err != nil || len(res) != len(lr.unknownT) {
		t.Fatalf("resend unknown transfers: %v (%d results)", err, len(res))
	}
	nowApplied := 0
	for i, r := range res {
		tr := lr.unknownT[i]
		old, was := before[tr.ID]
		switch {
		case was:
			if r.Code != transport.CodeExists {
				t.Errorf("in-flight transfer %s was applied, its resend answered %v", tr.ID, r.Code)
			} else if r.Timestamp != old.Timestamp {
				t.Errorf("in-flight transfer %s: resend's exists carries timestamp %d, lookup %d", tr.ID, r.Timestamp, old.Timestamp)
			}
			m.addTransfer(tr)
		case r.Code == transport.CodeOK:
			if lr.mustFail[tr.ID] {
				t.Errorf("resent transfer %s of %d from limited %s answered ok", tr.ID, tr.Amount, tr.DebitAccountID)
			}
			nowApplied++
			m.addTransfer(tr)
		case r.Code == transport.CodeExceedsCredits && tp.limited[tr.DebitAccountID]:
			// refused: applied neither then nor now
		default:
			t.Errorf("in-flight transfer %s was not applied, its resend answered %v", tr.ID, r.Code)
		}
	}
	t.Logf("unknown transfers: %d applied before the kill, %d applied on resend, %d refused",
		len(before), nowApplied, len(lr.unknownT)-len(before)-nowApplied)

	// And lookups now agree with what the model holds.
	after := lookupTransfers(t, c, ids)
	for _, tr := range lr.unknownT {
		_, inModel := m.applied[tr.ID]
		if _, found := after[tr.ID]; found != inModel {
			t.Errorf("in-flight transfer %s: found by lookup %v, applied per the results %v", tr.ID, found, inModel)
		}
	}
}

// checkBalances compares every account with the model's replay, then checks
// conservation and the limits, and the status totals.
func checkBalances(t *testing.T, c *client.Client, m *model, cl *testnet.Cluster) {
	t.Helper()
	exp := m.expected()
	ids := make([]string, 0, len(exp))
	for id := range exp {
		ids = append(ids, id)
	}
	got := lookupAccounts(t, c, ids)
	var sumD, sumC uint64
	bad := 0
	for id, want := range exp {
		a, ok := got[id]
		if !ok {
			t.Errorf("account %s missing", id)
			continue
		}
		sumD += a.DebitsPosted
		sumC += a.CreditsPosted
		if a.DebitsPosted != want.DebitsPosted || a.CreditsPosted != want.CreditsPosted || a.DebitsPending != 0 || a.CreditsPending != 0 {
			bad++
			if bad <= 10 {
				t.Errorf("account %s: debits %d/%d posted/pending, credits %d/%d; replay says debits %d, credits %d posted",
					id, a.DebitsPosted, a.DebitsPending, a.CreditsPosted, a.CreditsPending, want.DebitsPosted, want.CreditsPosted)
			}
		}
		if a.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && a.DebitsPosted > a.CreditsPosted {
			t.Errorf("limited account %s overdrawn: debits %d > credits %d", id, a.DebitsPosted, a.CreditsPosted)
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d accounts differ from the replay of %d applied transfers", bad, len(exp), len(m.applied))
	}
	if sumD != sumC {
		t.Errorf("Σ debits_posted %d != Σ credits_posted %d", sumD, sumC)
	}

	st := cl.WaitQuiet(c)
	var totD, totC, totDP, totCP uint64
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			if l.Ledger != ledgerID {
				t.Errorf("shard %d reports ledger %d", s.ID, l.Ledger)
			}
			totD += l.DebitsPosted
			totC += l.CreditsPosted
			totDP += l.DebitsPending
			totCP += l.CreditsPending
		}
	}
	if totD != sumD || totC != sumC || totDP != 0 || totCP != 0 {
		t.Errorf("status totals: debits %d posted %d pending, credits %d posted %d pending; accounts sum to %d / %d",
			totD, totDP, totC, totCP, sumD, sumC)
	}
	t.Logf("balances: %d accounts match the replay of %d transfers; Σ debits = Σ credits = %d", len(exp), len(m.applied), sumD)
}
