package crash

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
)

// The chains test: one shard, so that every linked chain is applied in one
// Raft entry, and two-phase transfers whose posts, voids and expiries race
// the kills.
const (
	chainCycles    = 3 // kill -9 and restart this many times
	chainWorkers   = 4
	chainWallets   = 24 // limited: debits must not exceed credits
	chainMerchants = 8
	chainEscrows   = 4 // limited, and always back to zero: a chain funds one and spends from it
	chainBank      = "bank"
	chainFees      = "fees"
	// Pending transfers get one of these timeouts (seconds). The short ones
	// expire while the test runs, some while the process is down; the long
	// one never does.
	shortTimeoutMax = 2
	longTimeout     = 3600
	retriedMax      = 60 // applied chains sent again after each restart
	expiryGuard     = 30 * time.Second
)

// TestLinkedChainsAndTwoPhaseTransfersAreAllOrNothingAcrossKill9 kills the
// real binary with SIGKILL while clients send linked chains (payment and fee
// legs, some built to fail on a limit) and two-phase transfers (pending with
// and without timeouts, full and partial posts, voids, racing resolutions),
// all on one shard, three times, and once more while it recovers from the
// second kill. After each restart it checks that every chain sent is
// entirely present or entirely absent, whether or not its reply arrived;
// that every chain acknowledged is present with its timestamps; that resent
// chains answer exists on each leg; that each pending transfer ends at most
// once, as its acknowledged posts and voids say; that the balances are
// exactly the sums of the transfers found, with debits equal to credits;
// and that each account's transfer and balance history holds a row for
// each of those transfers (and expiries) and no other.
func TestLinkedChainsAndTwoPhaseTransfersAreAllOrNothingAcrossKill9(t *testing.T) {
	rng := crashRNG(t, 0x9e3779b97f4a7c15)

	cl := newCluster(t, 1, 1, snapshotOften...)
	cl.Start(0)
	nc, c := cl.Connect()
	b := setupChains(t, c)

	for cycle := 1; cycle <= chainCycles; cycle++ {
		killAfter := 8 + rng.IntN(20)                               // acknowledged batches
		killDelay := time.Duration(rng.IntN(15)) * time.Millisecond // lands the kill mid-batch
		unknown := runChainLoad(t, cl, c, b, cycle, rng, killAfter, killDelay)
		nc.Close()
		t.Logf("cycle %d: killed after %d acknowledged batches (+%v); %d chains in flight", cycle, killAfter, killDelay, countChains(unknown))
		if t.Failed() {
			t.FailNow()
		}

		cl.Start(0)
		if cycle == 2 {
			// Once, kill it again while it recovers: right after ready,
			// when it proposes the expiries that fell due while it was
			// down.
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
			cl.Kill(0)
			cl.Start(0)
		}
		nc, c = cl.Connect()
		cl.WaitQuiet(c)
		found := b.verify(t, c, "after restart")
		b.resend(t, c, unknown, found)
		b.retryApplied(t, c, rng)
		b.waitExpiries(t, c)
		found = b.verify(t, c, "after resend")
		b.checkPending(t, found)
		b.checkBalances(t, c, cl, found)
		b.checkHistory(t, c, found)
		b.reopen(found)
		t.Logf("cycle %d: %s", cycle, b.summary(found))
		if t.Failed() {
			t.FailNow()
		}
	}
	nc.Close()
	cl.Stop(0)
	restored := 0
	for _, p := range cl.Nodes[0].Runs[1:] {
		if p.Log.Contains("restored from snapshot") {
			restored++
		}
	}
	if restored == 0 {
		t.Fatalf("no restart of %d restored a snapshot: the test did not reach the snapshot path", len(cl.Nodes[0].Runs)-1)
	}
	t.Logf("%d of %d restarts restored a snapshot", restored, len(cl.Nodes[0].Runs)-1)
}

// ---------------------------------------------------------------------------
// What the clients sent and what they were told.

// leg is one transfer of a chain as sent.
type leg struct {
	tr   transport.Transfer
	huge bool // built to fail on a limit: exceeds_credits whatever the state
}

func (l *leg) resolves() bool {
	return l.tr.Flags&(transport.TransferPostPendingTransfer|transport.TransferVoidPendingTransfer) != 0
}

type chainOutcome int

const (
	chainUnknown chainOutcome = iota // no reply: in flight at a kill
	chainApplied                     // every leg answered ok, or every leg exists
	chainRefused                     // one leg answered a refusal, the others linked_event_failed
)

// chain is a linked chain; a chain of one leg is a lone transfer.
type chain struct {
	id       string
	kind     string
	legs     []leg
	mustFail bool // one leg is huge
	outcome  chainOutcome
	ts       []uint64 // the timestamp of each leg, once applied
	failLeg  int      // once refused: the leg that answered the refusal
	failCode transport.Code
}

func (ch *chain) transfers() []transport.Transfer {
	out := make([]transport.Transfer, len(ch.legs))
	for k, l := range ch.legs {
		out[k] = l.tr
		if k < len(ch.legs)-1 {
			out[k].Flags |= transport.TransferLinked
		}
	}
	return out
}

func flatten(chains []*chain) []transport.Transfer {
	var out []transport.Transfer
	for _, ch := range chains {
		out = append(out, ch.transfers()...)
	}
	return out
}

func countChains(batches [][]*chain) int {
	n := 0
	for _, b := range batches {
		n += len(b)
	}
	return n
}

// chainBook holds every chain the clients sent, with its outcome.
type chainBook struct {
	mu        sync.Mutex
	chains    []*chain
	pending   map[string]transport.Transfer // every pending transfer sent, as its leg (no linked bit)
	resolvers map[string][]resolver         // posts and voids sent, by the pending id they name
	open      []transport.Transfer          // pending transfers acknowledged, maybe still open: what posts and voids pick
	batches   int                           // acknowledged batches in the current cycle
	accounts  []string
	wallets   []string
	merchants []string
	escrows   []string
	limited   map[string]bool

	// Counters for the log.
	unknownFound, unknownApplied, unknownRefused, retried, existsOnRetry int
}

type resolver struct {
	ch *chain
	k  int
}

func (b *chainBook) add(ch *chain) {
	for k := range ch.legs {
		tr := ch.legs[k].tr
		switch {
		case tr.Flags&transport.TransferPending != 0:
			b.pending[tr.ID] = tr
		case ch.legs[k].resolves():
			b.resolvers[tr.PendingID] = append(b.resolvers[tr.PendingID], resolver{ch, k})
		}
	}
	b.chains = append(b.chains, ch)
}

// setupChains creates the accounts and funds the wallets from the bank.
func setupChains(t *testing.T, c *client.Client) *chainBook {
	t.Helper()
	b := &chainBook{
		pending:   map[string]transport.Transfer{},
		resolvers: map[string][]resolver{},
		limited:   map[string]bool{},
	}
	// Every account keeps its balance history: a chain undone must leave
	// no row there either.
	const history = transport.AccountHistory
	accounts := []transport.Account{newAccount(chainBank, history), newAccount(chainFees, history)}
	limited := func(id string) transport.Account {
		b.limited[id] = true
		return newAccount(id, transport.AccountDebitsMustNotExceedCredits|history)
	}
	for i := range chainWallets {
		b.wallets = append(b.wallets, fmt.Sprintf("wallet-%02d", i))
		accounts = append(accounts, limited(b.wallets[i]))
	}
	for i := range chainMerchants {
		b.merchants = append(b.merchants, fmt.Sprintf("merchant-%02d", i))
		accounts = append(accounts, newAccount(b.merchants[i], history))
	}
	for i := range chainEscrows {
		b.escrows = append(b.escrows, fmt.Sprintf("escrow-%02d", i))
		accounts = append(accounts, limited(b.escrows[i]))
	}
	ctx, cancel := reqCtx()
	defer cancel()
	res, err := c.CreateAccounts(ctx, accounts)
	if err != nil || len(res) != len(accounts) {
		t.Fatalf("create accounts: %v (%d results)", err, len(res))
	}
	for i, r := range res {
		if r.Code != transport.CodeOK {
			t.Fatalf("create account %s: %v", accounts[i].ID, r.Code)
		}
		b.accounts = append(b.accounts, accounts[i].ID)
	}
	var funding []*chain
	for _, w := range b.wallets {
		funding = append(funding, &chain{id: "fund-" + w, kind: "fund", legs: []leg{{tr: newTransfer("fund-"+w, chainBank, w, fundingAmount)}}})
	}
	res, err = c.CreateTransfers(ctx, flatten(funding))
	if err != nil || len(res) != len(funding) {
		t.Fatalf("funding: %v (%d results)", err, len(res))
	}
	for i, ch := range funding {
		if res[i].Code != transport.CodeOK {
			t.Fatalf("funding %s: %v", ch.id, res[i].Code)
		}
		ch.outcome, ch.ts = chainApplied, []uint64{res[i].Timestamp}
		b.add(ch)
	}
	return b
}

// ---------------------------------------------------------------------------
// The load.

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

func pendingTransfer(id, debit, credit string, amount uint64, timeout uint32) transport.Transfer {
	tr := newTransfer(id, debit, credit, amount)
	tr.Flags, tr.Timeout = transport.TransferPending, timeout
	return tr
}

// resolution posts (amount 0: all of it) or voids p, naming p's accounts,
// ledger and code or leaving them out.
func resolution(rng *rand.Rand, id string, p transport.Transfer, post bool, amount uint64) transport.Transfer {
	tr := transport.Transfer{ID: id, PendingID: p.ID, Amount: amount, Flags: transport.TransferVoidPendingTransfer}
	if post {
		tr.Flags = transport.TransferPostPendingTransfer
	}
	if rng.IntN(2) == 0 {
		tr.DebitAccountID, tr.CreditAccountID, tr.Ledger, tr.Code = p.DebitAccountID, p.CreditAccountID, p.Ledger, p.Code
	}
	return tr
}

// randomResolution posts all of p (amount 0 or p's), part of it, or voids
// it (amount 0 or p's).
func randomResolution(rng *rand.Rand, id string, p transport.Transfer) transport.Transfer {
	switch r := rng.IntN(5); {
	case r == 0 && p.Amount > 1:
		return resolution(rng, id, p, true, 1+rng.Uint64N(p.Amount-1))
	case r <= 2:
		return resolution(rng, id, p, true, pick(rng, []uint64{0, p.Amount}))
	default:
		return resolution(rng, id, p, false, pick(rng, []uint64{0, p.Amount}))
	}
}

// pickOpen takes a pending transfer that may still be open; most are taken
// out of the pool, some left for a second, competing resolution.
func (b *chainBook) pickOpen(rng *rand.Rand) (transport.Transfer, bool) {
	if len(b.open) == 0 {
		return transport.Transfer{}, false
	}
	i := rng.IntN(len(b.open))
	p := b.open[i]
	if rng.IntN(100) < 85 {
		b.open[i] = b.open[len(b.open)-1]
		b.open = b.open[:len(b.open)-1]
	}
	return p, true
}

// genBatch makes 3 to 10 operations with ids prefix-oN-lK. Call with b.mu held.
func (b *chainBook) genBatch(rng *rand.Rand, prefix string) []*chain {
	var out []*chain
	for i := range 3 + rng.IntN(8) {
		for _, ch := range b.genOp(rng, fmt.Sprintf("%s-o%d", prefix, i)) {
			b.add(ch)
			out = append(out, ch)
		}
	}
	return out
}

// genOp makes one operation: usually one chain, two for competing
// resolutions of one pending transfer.
func (b *chainBook) genOp(rng *rand.Rand, id string) []*chain {
	w, m, e := pick(rng, b.wallets), pick(rng, b.merchants), pick(rng, b.escrows)
	amount := 1 + rng.Uint64N(2000)
	fee := 1 + rng.Uint64N(200)
	timeout := pick(rng, []uint32{0, 0, 1, shortTimeoutMax, longTimeout})
	lid := func(k int) string { return fmt.Sprintf("%s-l%d", id, k) }
	plain := func(k int, debit, credit string, amount uint64) leg {
		return leg{tr: newTransfer(lid(k), debit, credit, amount)}
	}
	one := func(kind string, legs ...leg) []*chain {
		ch := &chain{id: id, kind: kind, legs: legs}
		for _, l := range legs {
			ch.mustFail = ch.mustFail || l.huge
		}
		if rng.IntN(4) == 0 { // metadata must survive too
			ch.legs[0].tr.Metadata = map[string]string{"chain": id, "kind": kind}
		}
		return []*chain{ch}
	}
	// Posts and voids need a pending transfer already acknowledged.
	r := rng.IntN(100)
	var p transport.Transfer
	if r >= 74 {
		var ok bool
		if p, ok = b.pickOpen(rng); !ok {
			r = 0
		}
	}
	switch {
	case r < 18: // payment and fee
		return one("pay", plain(0, w, m, amount), plain(1, w, chainFees, fee))
	case r < 28: // payment, fee, and the merchant's commission
		return one("pay3", plain(0, w, m, amount), plain(1, w, chainFees, fee), plain(2, m, chainFees, fee))
	case r < 34: // fund an escrow and spend it all, in the same chain
		if rng.IntN(2) == 0 {
			return one("relay", plain(0, chainBank, e, amount), plain(1, e, m, amount))
		}
		return one("relay3", plain(0, chainBank, e, amount+fee), plain(1, e, m, amount), plain(2, e, chainFees, fee))
	case r < 44: // built to fail on a limit: must leave nothing
		switch rng.IntN(3) {
		case 0:
			return one("fail-relay", plain(0, chainBank, e, amount), leg{tr: newTransfer(lid(1), e, m, amount+1), huge: true})
		case 1:
			legs := []leg{plain(0, w, m, amount), plain(1, w, chainFees, fee), plain(2, m, chainFees, fee)}
			k := rng.IntN(3)
			legs[k] = leg{tr: newTransfer(lid(k), w, chainFees, hugeAmount), huge: true}
			return one("fail-pay3", legs...)
		default:
			return one("fail-hold", leg{tr: pendingTransfer(lid(0), w, m, amount, timeout)},
				leg{tr: newTransfer(lid(1), w, chainFees, hugeAmount), huge: true})
		}
	case r < 56: // a pending transfer alone
		return one("hold", leg{tr: pendingTransfer(lid(0), w, m, amount, timeout)})
	case r < 66: // a pending transfer and its fee
		return one("hold-fee", leg{tr: pendingTransfer(lid(0), w, m, amount, timeout)}, plain(1, w, chainFees, fee))
	case r < 74: // a pending transfer resolved in its own chain
		hold := pendingTransfer(lid(0), w, m, amount, timeout)
		return one("hold-resolve", leg{tr: hold}, leg{tr: randomResolution(rng, lid(1), hold)}, plain(2, w, chainFees, fee))
	case r < 88: // resolve an open pending transfer
		return one("resolve", leg{tr: randomResolution(rng, lid(0), p)})
	case r < 95: // resolve one with a fee; some fail on a limit and must leave it open
		feeLeg := plain(1, p.DebitAccountID, chainFees, fee)
		if rng.IntN(3) == 0 {
			feeLeg = leg{tr: newTransfer(lid(1), p.DebitAccountID, chainFees, hugeAmount), huge: true}
		}
		return one("resolve-fee", leg{tr: resolution(rng, lid(0), p, true, 0)}, feeLeg)
	default: // a post and a void of one pending transfer in one batch: one at most wins
		post := &chain{id: id + "a", kind: "race", legs: []leg{{tr: resolution(rng, id+"a-l0", p, true, 0)}}}
		void := &chain{id: id + "b", kind: "race", legs: []leg{{tr: resolution(rng, id+"b-l0", p, false, 0)}}}
		if rng.IntN(2) == 0 {
			return []*chain{post, void}
		}
		return []*chain{void, post}
	}
}

// failCodes are the refusals a leg may answer: exceeds_credits for a huge
// leg; for a post or void, that its pending transfer is resolved or expired
// (the open pool is a guess, and resolutions race).
func failCodes(l *leg) []transport.Code {
	switch {
	case l.huge:
		return []transport.Code{transport.CodeExceedsCredits}
	case l.resolves():
		return []transport.Code{transport.CodePendingTransferAlreadyPosted, transport.CodePendingTransferAlreadyVoided, transport.CodePendingTransferExpired}
	}
	return nil
}

// settle records a chain's results. A chain is applied (every leg ok, or
// every leg exists: the client retried a request that had timed out after
// it was applied) or refused (one leg answers an allowed refusal, the
// others linked_event_failed). Call with b.mu held.
func (b *chainBook) settle(t *testing.T, ch *chain, res []transport.Result, when string) {
	t.Helper()
	var codes []transport.Code
	okLegs, existsLegs, failed := 0, 0, -1
	for k, r := range res {
		codes = append(codes, r.Code)
		switch {
		case r.Code == transport.CodeOK:
			okLegs++
		case r.Code == transport.CodeExists:
			existsLegs++
		case r.Code == transport.CodeLinkedEventFailed && len(res) > 1:
		case failed < 0:
			failed = k
		default:
			failed = len(res) // two refusals: fails the checks below
		}
	}
	switch {
	case okLegs == len(res) || existsLegs == len(res):
		if existsLegs > 0 {
			b.existsOnRetry++
		}
		if ch.mustFail {
			t.Errorf("%s: chain %s (%s) built to fail on a limit answered %v: %+v", when, ch.id, ch.kind, codes, ch.transfers())
		}
		ch.outcome, ch.ts = chainApplied, nil
		for _, r := range res {
			if r.Timestamp == 0 {
				t.Errorf("%s: chain %s answered %v with timestamp 0", when, ch.id, codes)
			}
			ch.ts = append(ch.ts, r.Timestamp)
		}
		for _, l := range ch.legs {
			if l.tr.Flags&transport.TransferPending != 0 && !slices.ContainsFunc(ch.legs, func(o leg) bool { return o.tr.PendingID == l.tr.ID }) {
				b.open = append(b.open, l.tr)
			}
		}
	case okLegs == 0 && existsLegs == 0 && failed >= 0 && failed < len(res) && slices.Contains(failCodes(&ch.legs[failed]), codes[failed]):
		ch.outcome, ch.failLeg, ch.failCode = chainRefused, failed, codes[failed]
	default:
		ch.outcome = chainRefused
		t.Errorf("%s: chain %s (%s) answered %v: %+v", when, ch.id, ch.kind, codes, ch.transfers())
	}
}

// runChainLoad runs the clients until killAfter batches are acknowledged,
// then kills the process killDelay later. It returns each client's batch in
// flight at the kill.
func runChainLoad(t *testing.T, cl *testnet.Cluster, c *client.Client, b *chainBook, cycle int, rng *rand.Rand, killAfter int, killDelay time.Duration) [][]*chain {
	t.Helper()
	b.mu.Lock()
	b.batches = 0
	b.mu.Unlock()
	unknown := make([][]*chain, chainWorkers)
	var killed atomic.Bool
	trigger := make(chan struct{})
	var triggerOnce sync.Once
	var wg sync.WaitGroup
	for w := range chainWorkers {
		wrng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !killed.Load(); n++ {
				b.mu.Lock()
				chains := b.genBatch(wrng, fmt.Sprintf("c%d-w%d-b%d", cycle, w, n))
				b.mu.Unlock()
				batch := flatten(chains)
				ctx, cancel := reqCtx()
				res, err := c.CreateTransfers(ctx, batch)
				cancel()
				b.mu.Lock()
				off := 0
				for i, ch := range chains {
					if off+len(ch.legs) > len(res) { // on error, the results of a completed prefix
						unknown[w] = chains[i:]
						break
					}
					b.settle(t, ch, res[off:off+len(ch.legs)], "load")
					off += len(ch.legs)
				}
				if err == nil {
					if len(res) != len(batch) {
						t.Errorf("%d results for %d transfers", len(res), len(batch))
					}
					b.batches++
					if b.batches >= killAfter {
						triggerOnce.Do(func() { close(trigger) })
					}
				}
				b.mu.Unlock()
				if err != nil {
					if !killed.Load() {
						t.Errorf("create transfers before the kill: %v", err)
					}
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	killWhenTriggered(t, cl, trigger, done, &killed, killAfter, killDelay)
	return unknown
}

// ---------------------------------------------------------------------------
// Verification.

func (b *chainBook) allIDs() []string {
	var ids []string
	for _, ch := range b.chains {
		for _, l := range ch.legs {
			ids = append(ids, l.tr.ID)
		}
	}
	return ids
}

// checkLeg compares a leg found by lookup with what was sent; "" if it matches.
func (b *chainBook) checkLeg(l *leg, linked bool, got transport.Transfer) string {
	want := l.tr
	if linked {
		want.Flags |= transport.TransferLinked
	}
	switch {
	case got.ID != want.ID || got.Flags != want.Flags || got.PendingID != want.PendingID || got.Timeout != want.Timeout:
		return "id, flags, pending id or timeout differ"
	case !maps.Equal(got.Metadata, want.Metadata):
		return "metadata differs"
	case got.Timestamp == 0:
		return "timestamp 0"
	}
	if l.resolves() {
		// Stored with the pending transfer's accounts, ledger and code,
		// and the amount it posted or released.
		p := b.pending[want.PendingID]
		amount, state := want.Amount, transport.StatePosted
		if amount == 0 || want.Flags&transport.TransferVoidPendingTransfer != 0 {
			amount = p.Amount
		}
		if want.Flags&transport.TransferVoidPendingTransfer != 0 {
			state = transport.StateVoided
		}
		if got.DebitAccountID != p.DebitAccountID || got.CreditAccountID != p.CreditAccountID ||
			got.Ledger != p.Ledger || got.Code != p.Code || got.Amount != amount || got.State != state {
			return fmt.Sprintf("a resolution of %+v should be stored with amount %d, state %s", p, amount, state)
		}
		return ""
	}
	if got.DebitAccountID != want.DebitAccountID || got.CreditAccountID != want.CreditAccountID ||
		got.Amount != want.Amount || got.Ledger != want.Ledger || got.Code != want.Code {
		return "accounts, amount, ledger or code differ"
	}
	if want.Flags&transport.TransferPending == 0 {
		if got.State != transport.StatePosted {
			return "state is not posted"
		}
		return ""
	}
	switch got.State {
	case transport.StatePending, transport.StatePosted, transport.StateVoided:
	case transport.StateExpired:
		if want.Timeout == 0 {
			return "expired without a timeout"
		}
	default:
		return "unknown state"
	}
	return ""
}

// verify looks up every leg of every chain sent and checks that each chain
// is all or nothing, with the fields sent, that its legs took consecutive
// timestamps (one entry, applied one leg after another), and that every
// chain acknowledged is there with the timestamps of its results.
func (b *chainBook) verify(t *testing.T, c *client.Client, when string) map[string]transport.Transfer {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	found := lookupTransfers(t, c, b.allIDs())
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf(when+": "+format, args...)
		}
	}
	for _, ch := range b.chains {
		var legs []transport.Transfer
		for _, l := range ch.legs {
			if got, ok := found[l.tr.ID]; ok {
				legs = append(legs, got)
			}
		}
		switch {
		case len(legs) == 0:
			if ch.outcome == chainApplied {
				report("chain %s (%s) acknowledged with timestamps %v is lost: %+v", ch.id, ch.kind, ch.ts, ch.transfers())
			}
			continue
		case len(legs) < len(ch.legs):
			report("chain %s (%s, %v) half applied: %d of %d legs found: %+v; sent %+v", ch.id, ch.kind, ch.outcome, len(legs), len(ch.legs), legs, ch.transfers())
			continue
		case ch.mustFail:
			report("chain %s (%s) built to fail on a limit was applied: %+v", ch.id, ch.kind, legs)
		case ch.outcome == chainRefused:
			report("chain %s (%s) refused with %v on leg %d was applied: %+v", ch.id, ch.kind, ch.failCode, ch.failLeg, legs)
		}
		for k := range ch.legs {
			if msg := b.checkLeg(&ch.legs[k], k < len(ch.legs)-1, legs[k]); msg != "" {
				report("chain %s (%s) leg %d: %s: found %+v, sent %+v", ch.id, ch.kind, k, msg, legs[k], ch.legs[k].tr)
			}
			if k > 0 && legs[k].Timestamp != legs[k-1].Timestamp+1 {
				report("chain %s (%s): legs at timestamps %d then %d, not applied one after another in one entry", ch.id, ch.kind, legs[k-1].Timestamp, legs[k].Timestamp)
			}
			if ch.outcome == chainApplied && legs[k].Timestamp != ch.ts[k] {
				report("chain %s (%s) leg %d: timestamp %d, its result said %d", ch.id, ch.kind, k, legs[k].Timestamp, ch.ts[k])
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d problems over %d chains", when, bad, len(b.chains))
	}
	return found
}

// resend sends each client's batch that was in flight at the kill again,
// with the same ids: a chain applied before the kill answers exists on each
// leg with its timestamps; the others are applied or refused now.
func (b *chainBook) resend(t *testing.T, c *client.Client, unknown [][]*chain, found map[string]transport.Transfer) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, chains := range unknown {
		if len(chains) == 0 {
			continue
		}
		batch := flatten(chains)
		ctx, cancel := reqCtx()
		res, err := c.CreateTransfers(ctx, batch)
		cancel()
		if err != nil || len(res) != len(batch) {
			t.Fatalf("resend: %v (%d results for %d transfers)", err, len(res), len(batch))
		}
		for _, ch := range chains {
			r := res[:len(ch.legs)]
			res = res[len(ch.legs):]
			was := !slices.ContainsFunc(ch.legs, func(l leg) bool { _, ok := found[l.tr.ID]; return !ok })
			if !was { // absent (or half there: verify has said so)
				b.settle(t, ch, r, "resend")
				if ch.outcome == chainApplied {
					b.unknownApplied++
				} else {
					b.unknownRefused++
				}
				continue
			}
			b.unknownFound++
			ch.outcome, ch.ts = chainApplied, nil
			for k, l := range ch.legs {
				got := found[l.tr.ID]
				if r[k].Code != transport.CodeExists || r[k].Timestamp != got.Timestamp {
					t.Errorf("resend: chain %s (%s) applied before the kill: leg %d answered %v at %d, lookup has %d", ch.id, ch.kind, k, r[k].Code, r[k].Timestamp, got.Timestamp)
				}
				ch.ts = append(ch.ts, got.Timestamp)
			}
		}
	}
}

// retryApplied sends again, in one batch, a sample of the chains applied
// in any cycle: each leg answers exists with its original timestamp, from
// memory or from the history store.
func (b *chainBook) retryApplied(t *testing.T, c *client.Client, rng *rand.Rand) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var applied []*chain
	for _, ch := range b.chains {
		if ch.outcome == chainApplied {
			applied = append(applied, ch)
		}
	}
	rng.Shuffle(len(applied), func(i, j int) { applied[i], applied[j] = applied[j], applied[i] })
	applied = applied[:min(len(applied), retriedMax)]
	batch := flatten(applied)
	ctx, cancel := reqCtx()
	res, err := c.CreateTransfers(ctx, batch)
	cancel()
	if err != nil || len(res) != len(batch) {
		t.Fatalf("retry applied chains: %v (%d results for %d transfers)", err, len(res), len(batch))
	}
	for _, ch := range applied {
		for k := range ch.legs {
			if res[k].Code != transport.CodeExists || res[k].Timestamp != ch.ts[k] {
				t.Errorf("retry of applied chain %s (%s): leg %d answered %v at %d, applied at %d", ch.id, ch.kind, k, res[k].Code, res[k].Timestamp, ch.ts[k])
			}
		}
		res = res[len(ch.legs):]
	}
	b.retried += len(applied)
}

// waitExpiries waits until no pending transfer with a short timeout is
// still pending: the restarted leader proposes the expiries it missed.
func (b *chainBook) waitExpiries(t *testing.T, c *client.Client) {
	t.Helper()
	b.mu.Lock()
	var ids []string
	for id, p := range b.pending {
		if p.Timeout > 0 && p.Timeout <= shortTimeoutMax {
			ids = append(ids, id)
		}
	}
	b.mu.Unlock()
	deadline := time.Now().Add(expiryGuard)
	for {
		var open []string
		for id, got := range lookupTransfers(t, c, ids) {
			if got.State == transport.StatePending {
				open = append(open, id)
			}
		}
		if len(open) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pending transfers with a timeout of at most %d s still pending after %v, e.g. %s", len(open), shortTimeoutMax, expiryGuard, open[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkPending checks each pending transfer found against its posts and
// voids: at most one of them applied, the pending transfer's state is the
// one that applied (or pending or expired if none did), and every refusal of
// a post or void agrees with that state.
func (b *chainBook) checkPending(t *testing.T, found map[string]transport.Transfer) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, p := range b.pending {
		got, ok := found[id]
		var applied []transport.Transfer
		for _, r := range b.resolvers[id] {
			if tr, ok := found[r.ch.legs[r.k].tr.ID]; ok {
				applied = append(applied, tr)
			}
		}
		switch {
		case !ok:
			if len(applied) > 0 {
				t.Errorf("pending transfer %s not found, but resolved by %+v", id, applied)
			}
			continue
		case len(applied) > 1:
			t.Errorf("pending transfer %s (%s) resolved %d times: %+v", id, got.State, len(applied), applied)
		case len(applied) == 1:
			want := transport.StatePosted
			if applied[0].Flags&transport.TransferVoidPendingTransfer != 0 {
				want = transport.StateVoided
			}
			if got.State != want {
				t.Errorf("pending transfer %s is %s, but %s applied: %+v", id, got.State, want, applied[0])
			}
		case got.State == transport.StatePosted || got.State == transport.StateVoided:
			t.Errorf("pending transfer %s is %s, but none of its posts and voids is found", id, got.State)
		case got.State == transport.StatePending && p.Timeout > 0 && p.Timeout <= shortTimeoutMax:
			t.Errorf("pending transfer %s with timeout %d s still pending", id, p.Timeout)
		}
		for _, r := range b.resolvers[id] {
			if r.ch.outcome != chainRefused || r.ch.failLeg != r.k {
				continue
			}
			want := map[transport.Code]string{
				transport.CodePendingTransferAlreadyPosted: transport.StatePosted,
				transport.CodePendingTransferAlreadyVoided: transport.StateVoided,
				transport.CodePendingTransferExpired:       transport.StateExpired,
			}[r.ch.failCode]
			if got.State != want {
				t.Errorf("pending transfer %s is %s, but %s was refused with %v", id, got.State, r.ch.legs[r.k].tr.ID, r.ch.failCode)
			}
		}
	}
}

// checkBalances replays the transfers found onto zero balances and compares
// every account, then checks the limits and that debits equal credits, in
// the accounts and in the status totals.
func (b *chainBook) checkBalances(t *testing.T, c *client.Client, cl *testnet.Cluster, found map[string]transport.Transfer) {
	t.Helper()
	exp := map[string]*transport.Account{}
	for _, id := range b.accounts {
		exp[id] = &transport.Account{}
	}
	for _, tr := range found {
		d, cr := exp[tr.DebitAccountID], exp[tr.CreditAccountID]
		switch {
		case tr.Flags&transport.TransferPending != 0:
			if tr.State == transport.StatePending {
				d.DebitsPending += tr.Amount
				cr.CreditsPending += tr.Amount
			}
		case tr.Flags&transport.TransferVoidPendingTransfer != 0:
		default: // a transfer or a post, with the amount it posted
			d.DebitsPosted += tr.Amount
			cr.CreditsPosted += tr.Amount
		}
	}
	got := lookupAccounts(t, c, b.accounts)
	var sum transport.LedgerTotals
	for _, id := range b.accounts {
		a, ok := got[id]
		if !ok {
			t.Errorf("account %s missing", id)
			continue
		}
		want := exp[id]
		if a.DebitsPosted != want.DebitsPosted || a.CreditsPosted != want.CreditsPosted ||
			a.DebitsPending != want.DebitsPending || a.CreditsPending != want.CreditsPending {
			t.Errorf("account %s: debits %d posted %d pending, credits %d posted %d pending; the transfers found say %d/%d, %d/%d",
				id, a.DebitsPosted, a.DebitsPending, a.CreditsPosted, a.CreditsPending,
				want.DebitsPosted, want.DebitsPending, want.CreditsPosted, want.CreditsPending)
		}
		if b.limited[id] && a.DebitsPosted+a.DebitsPending > a.CreditsPosted {
			t.Errorf("limited account %s overdrawn: %+v", id, a)
		}
		sum.DebitsPosted += a.DebitsPosted
		sum.CreditsPosted += a.CreditsPosted
		sum.DebitsPending += a.DebitsPending
		sum.CreditsPending += a.CreditsPending
	}
	if sum.DebitsPosted != sum.CreditsPosted || sum.DebitsPending != sum.CreditsPending {
		t.Errorf("accounts sum to debits %d posted %d pending, credits %d posted %d pending",
			sum.DebitsPosted, sum.DebitsPending, sum.CreditsPosted, sum.CreditsPending)
	}
	st := cl.WaitQuiet(c)
	var tot transport.LedgerTotals
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			if l.Ledger != ledgerID {
				t.Errorf("shard %d reports ledger %d", s.ID, l.Ledger)
			}
			tot.DebitsPosted += l.DebitsPosted
			tot.CreditsPosted += l.CreditsPosted
			tot.DebitsPending += l.DebitsPending
			tot.CreditsPending += l.CreditsPending
		}
	}
	if tot != sum {
		t.Errorf("status totals %+v, accounts sum to %+v", tot, sum)
	}
}

// checkHistory reads every account's history and checks it against the
// transfers found: accounts.transfers lists exactly those that name the
// account, once each, in timestamp order, as lookups show them; and
// accounts.balances has one row per event that changed the account (each of
// those transfers, and the expiry of each expired pending transfer), whose
// balances replay those events one after another. A chain undone, or an
// entry lost, would leave a row too many or too few.
func (b *chainBook) checkHistory(t *testing.T, c *client.Client, found map[string]transport.Transfer) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	byAccount := map[string][]transport.Transfer{}
	expired := map[string][]transport.Transfer{}
	for _, tr := range found {
		for _, id := range []string{tr.DebitAccountID, tr.CreditAccountID} {
			byAccount[id] = append(byAccount[id], tr)
			if tr.State == transport.StateExpired {
				expired[id] = append(expired[id], tr)
			}
		}
	}
	rows := 0
	for _, id := range b.accounts {
		want := byAccount[id]
		slices.SortFunc(want, func(x, y transport.Transfer) int { return cmp.Compare(x.Timestamp, y.Timestamp) })
		transfers, balances := accountHistory(t, c, id)
		rows += len(transfers) + len(balances)
		if len(transfers) != len(want) {
			t.Errorf("account %s: %d transfers in its history, %d found by lookup that name it", id, len(transfers), len(want))
		}
		for i := range min(len(transfers), len(want)) {
			got, w := transfers[i], want[i]
			if got.ID != w.ID || got.State != w.State || got.Amount != w.Amount || got.Timestamp != w.Timestamp || got.Flags != w.Flags {
				t.Errorf("account %s: history row %d is %+v, lookup in timestamp order says %+v", id, i, got, w)
				break
			}
		}
		b.replayBalances(t, id, want, expired[id], balances)
	}
	t.Logf("history: %d rows of %d accounts checked against the transfers found", rows, len(b.accounts))
}

// replayBalances checks an account's balance rows against its transfers in
// timestamp order, and its expired pending transfers (expiries have
// timestamps of their own, which no lookup shows).
func (b *chainBook) replayBalances(t *testing.T, id string, transfers, expired []transport.Transfer, rows []transport.Balance) {
	t.Helper()
	var bal transport.Balance
	// effect applies to bal what tr did to the account.
	effect := func(tr transport.Transfer, expiry bool) transport.Balance {
		next := bal
		pendingDelta, postedDelta := uint64(0), uint64(0)
		release := false
		switch {
		case expiry:
			pendingDelta, release = tr.Amount, true
		case tr.Flags&transport.TransferPending != 0:
			pendingDelta = tr.Amount
		case tr.Flags&(transport.TransferPostPendingTransfer|transport.TransferVoidPendingTransfer) != 0:
			pendingDelta, release = b.pending[tr.PendingID].Amount, true
			if tr.Flags&transport.TransferPostPendingTransfer != 0 {
				postedDelta = tr.Amount
			}
		default:
			postedDelta = tr.Amount
		}
		if tr.DebitAccountID == id {
			if release {
				next.DebitsPending -= pendingDelta
			} else {
				next.DebitsPending += pendingDelta
			}
			next.DebitsPosted += postedDelta
		} else {
			if release {
				next.CreditsPending -= pendingDelta
			} else {
				next.CreditsPending += pendingDelta
			}
			next.CreditsPosted += postedDelta
		}
		return next
	}
	same := func(x, y transport.Balance) bool {
		return x.DebitsPending == y.DebitsPending && x.DebitsPosted == y.DebitsPosted &&
			x.CreditsPending == y.CreditsPending && x.CreditsPosted == y.CreditsPosted
	}
	expired = slices.Clone(expired)
	next := 0 // the next transfer to replay
	for i, row := range rows {
		if i > 0 && row.Timestamp <= rows[i-1].Timestamp {
			t.Errorf("account %s: balance rows at %d then %d", id, rows[i-1].Timestamp, row.Timestamp)
			return
		}
		if next < len(transfers) && transfers[next].Timestamp == row.Timestamp {
			if want := effect(transfers[next], false); !same(row, want) {
				t.Errorf("account %s: balance row %d %+v after %+v, replay says %+v", id, i, row, transfers[next], want)
				return
			}
			bal = row
			next++
			continue
		}
		// Not a transfer's own timestamp: the expiry of one of the
		// account's expired pending transfers, after its creation.
		k := slices.IndexFunc(expired, func(p transport.Transfer) bool {
			return p.Timestamp < row.Timestamp && same(row, effect(p, true))
		})
		if k < 0 {
			t.Errorf("account %s: balance row %d %+v matches no transfer found and no expiry (balances before it %+v)", id, i, row, bal)
			return
		}
		expired = slices.Delete(expired, k, k+1)
		bal = row
	}
	if next < len(transfers) || len(expired) > 0 {
		t.Errorf("account %s: %d balance rows; %d of %d transfers and %d expiries have none", id, len(rows), len(transfers)-next, len(transfers), len(expired))
	}
}

// accountHistory pages through an account's transfers and balances.
func accountHistory(t *testing.T, c *client.Client, id string) ([]transport.Transfer, []transport.Balance) {
	t.Helper()
	ctx, cancel := reqCtx()
	defer cancel()
	var transfers []transport.Transfer
	var balances []transport.Balance
	f := transport.AccountFilter{AccountID: id, Limit: transport.HistoryLimitMax}
	for {
		page, err := c.AccountTransfers(ctx, f)
		if err != nil {
			t.Fatalf("account %s transfers: %v", id, err)
		}
		if len(page) == 0 {
			break
		}
		transfers = append(transfers, page...)
		f.TimestampMin = page[len(page)-1].Timestamp + 1
	}
	f.TimestampMin = 0
	for {
		page, err := c.AccountBalances(ctx, f)
		if err != nil {
			t.Fatalf("account %s balances: %v", id, err)
		}
		if len(page) == 0 {
			break
		}
		balances = append(balances, page...)
		f.TimestampMin = page[len(page)-1].Timestamp + 1
	}
	return transfers, balances
}

// reopen rebuilds the pool of open pending transfers from the lookups.
func (b *chainBook) reopen(found map[string]transport.Transfer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open = b.open[:0]
	for id, p := range b.pending {
		if got, ok := found[id]; ok && got.State == transport.StatePending {
			b.open = append(b.open, p)
		}
	}
	slices.SortFunc(b.open, func(x, y transport.Transfer) int { return cmp.Compare(x.ID, y.ID) })
}

// summary counts what the test has covered so far.
func (b *chainBook) summary(found map[string]transport.Transfer) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var applied, refused, mustFail, multi int
	for _, ch := range b.chains {
		switch ch.outcome {
		case chainApplied:
			applied++
		case chainRefused:
			refused++
		}
		if ch.mustFail {
			mustFail++
		}
		if len(ch.legs) > 1 {
			multi++
		}
	}
	states := map[string]int{}
	for id := range b.pending {
		if got, ok := found[id]; ok {
			states[got.State]++
		}
	}
	resolutions := 0
	for _, rs := range b.resolvers {
		resolutions += len(rs)
	}
	return fmt.Sprintf("%d chains (%d linked, %d built to fail): %d applied, %d refused; in flight at kills: %d applied before, %d on resend, %d refused; %d resent applied chains answered exists (and %d after a client's own retry); %d pending transfers sent, found by state %v; %d posts and voids sent",
		len(b.chains), multi, mustFail, applied, refused, b.unknownFound, b.unknownApplied, b.unknownRefused, b.retried, b.existsOnRetry, len(b.pending), states, resolutions)
}
