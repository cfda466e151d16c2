package crash

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
)

// TestTwoPhaseAcrossShardsSurvivesKill9: pending transfers whose accounts
// live on two shards, and their posts and voids, under SIGKILL at random
// moments (snapshots every few entries, so restarts restore them). After
// each restart and once every saga has drained: every acknowledged pending
// transfer, post and void is there; each pending transfer ends in at most
// one of posted, voided or expired, as its acknowledged resolution says; and
// both sides of every pending transfer agree: the debit shard's wallets and
// the credit shard's shops hold exactly the open pending amounts, and
// exactly the posted ones, with debits = credits per ledger.
func TestTwoPhaseAcrossShardsSurvivesKill9(t *testing.T) {
	rng := crashRNG(t, 0x51ed2)
	cl := newCluster(t, 1, 2, snapshotOften...)
	cl.Start(0)
	nc, c := cl.Connect()
	b := setupTwoPhase(t, c)
	for cycle := 1; cycle <= 3; cycle++ {
		unknown := b.load(t, cl, c, rng, cycle, 20+rng.IntN(40), time.Duration(rng.IntN(15))*time.Millisecond)
		nc.Close()
		cl.Start(0)
		nc, c = cl.Connect()
		for _, batch := range unknown { // the clients retry with the same ids
			b.send(t, c, batch, true)
		}
		b.waitExpiries(t, c)
		cl.WaitQuiet(c)
		b.check(t, c, cycle)
		if t.Failed() {
			t.FailNow()
		}
	}
	nc.Close()
	cl.Stop(0)
}

type tpHold struct {
	x        transport.Transfer
	acked    bool
	resolved string // the id of the acknowledged post or void
}

type tpBook struct {
	mu      sync.Mutex
	wallets []string // shard 1
	shops   []string // shard 2
	holds   map[string]*tpHold
	order   []string                      // hold ids in the order sent
	res     map[string]transport.Transfer // posts and voids sent, by id
	acked   map[string]bool               // posts and voids acknowledged
	next    int
}

func setupTwoPhase(t *testing.T, c *client.Client) *tpBook {
	ctx, cancel := reqCtx()
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || len(st.Shards) != 2 {
		t.Fatalf("status: %v (%d shards)", err, len(st.Shards))
	}
	shardOf := map[uint16]uint32{}
	for _, s := range st.Shards {
		for _, slot := range s.Slots {
			shardOf[slot] = s.ID
		}
	}
	b := &tpBook{holds: map[string]*tpHold{}, res: map[string]transport.Transfer{}, acked: map[string]bool{}}
	for i := 0; len(b.wallets) < 8 || len(b.shops) < 8; i++ {
		id := fmt.Sprintf("acct-%d", i)
		switch s := shardOf[transport.Slot(id)]; {
		case s == st.Shards[0].ID && len(b.wallets) < 8:
			b.wallets = append(b.wallets, id)
		case s == st.Shards[1].ID && len(b.shops) < 8:
			b.shops = append(b.shops, id)
		}
	}
	accounts := []transport.Account{newAccount(operatorID+"-tp", 0)}
	for _, w := range b.wallets {
		accounts = append(accounts, newAccount(w, transport.AccountDebitsMustNotExceedCredits))
	}
	for _, s := range b.shops {
		accounts = append(accounts, newAccount(s, 0))
	}
	if res, err := c.CreateAccounts(ctx, accounts); err != nil || !allOK(res) {
		t.Fatalf("accounts: %v %v", err, res)
	}
	var funding []transport.Transfer
	for _, w := range b.wallets {
		funding = append(funding, newTransfer("fund-"+w, operatorID+"-tp", w, 1000))
	}
	if res, err := c.CreateTransfers(ctx, funding); err != nil || !allOK(res) {
		t.Fatalf("funding: %v %v", err, res)
	}
	return b
}

func allOK(res []transport.Result) bool {
	for _, r := range res {
		if r.Code != transport.CodeOK {
			return false
		}
	}
	return true
}

// batch draws 1-4 events: holds from a wallet to a shop (some expiring
// within the run), posts (whole or part) and voids of acknowledged holds,
// sometimes a second resolution of an already resolved one.
func (b *tpBook) batch(rng *rand.Rand, cycle int) []transport.Transfer {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []transport.Transfer
	for range 1 + rng.IntN(4) {
		b.next++
		id := fmt.Sprintf("c%d-%d", cycle, b.next)
		var open []*tpHold
		for _, hid := range b.order {
			if h := b.holds[hid]; h.acked && (h.resolved == "" || rng.IntN(10) == 0) {
				open = append(open, h)
			}
		}
		if len(open) == 0 || rng.IntN(2) == 0 {
			x := newTransfer("h-"+id, b.wallets[rng.IntN(len(b.wallets))], b.shops[rng.IntN(len(b.shops))], 1+uint64(rng.IntN(30)))
			x.Flags = transport.TransferPending
			x.Timeout = []uint32{0, 0, 1, 2, 3600}[rng.IntN(5)]
			b.holds[x.ID] = &tpHold{x: x}
			b.order = append(b.order, x.ID)
			out = append(out, x)
			continue
		}
		h := open[rng.IntN(len(open))]
		r := transport.Transfer{ID: "r-" + id, PendingID: h.x.ID, Flags: transport.TransferVoidPendingTransfer}
		if rng.IntN(3) != 0 {
			r.Flags = transport.TransferPostPendingTransfer
			r.Amount = uint64(rng.IntN(int(h.x.Amount) + 1)) // 0: all of it
		}
		b.res[r.ID] = r
		out = append(out, r)
	}
	return out
}

// send sends a batch and records what was acknowledged; untilAnswered
// retries a batch whose fate is unknown (after a restart) until answered.
func (b *tpBook) send(t *testing.T, c *client.Client, batch []transport.Transfer, untilAnswered bool) error {
	for {
		ctx, cancel := reqCtx()
		res, err := c.CreateTransfers(ctx, batch)
		cancel()
		if err != nil {
			if untilAnswered {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return err
		}
		b.mu.Lock()
		for i, r := range res {
			x := batch[i]
			ok := r.Code == transport.CodeOK || r.Code == transport.CodeExists
			switch {
			case x.Flags&transport.TransferPending != 0:
				b.holds[x.ID].acked = b.holds[x.ID].acked || ok
			case ok:
				b.acked[x.ID] = true
				if h := b.holds[x.PendingID]; h.resolved != "" && h.resolved != x.ID {
					t.Errorf("hold %s resolved by %s and by %s", h.x.ID, h.resolved, x.ID)
				}
				b.holds[x.PendingID].resolved = x.ID
			}
		}
		b.mu.Unlock()
		return nil
	}
}

// load runs 3 clients until killAfter batches were answered, kills the
// process killDelay later, and returns the batches whose fate is unknown.
func (b *tpBook) load(t *testing.T, cl *testnet.Cluster, c *client.Client, rng *rand.Rand, cycle, killAfter int, killDelay time.Duration) [][]transport.Transfer {
	var mu sync.Mutex
	answered, stop := 0, make(chan struct{})
	var unknown [][]transport.Transfer
	var wg sync.WaitGroup
	seeds := []uint64{rng.Uint64(), rng.Uint64(), rng.Uint64()}
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seeds[w], uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				batch := b.batch(r, cycle)
				if err := b.send(t, c, batch, false); err != nil {
					mu.Lock()
					unknown = append(unknown, batch)
					mu.Unlock()
					return
				}
				mu.Lock()
				answered++
				mu.Unlock()
			}
		}()
	}
	deadline := time.Now().Add(triggerGuard)
	for {
		mu.Lock()
		n := answered
		mu.Unlock()
		if n >= killAfter {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d batches answered", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(killDelay)
	cl.Kill(0)
	close(stop)
	wg.Wait()
	t.Logf("cycle %d: killed after %d answered batches (+%v); %d batches in flight", cycle, killAfter, killDelay, len(unknown))
	return unknown
}

// waitExpiries waits until no acknowledged hold with a timeout of a few
// seconds is still pending: the restarted leader expires what fell due.
func (b *tpBook) waitExpiries(t *testing.T, c *client.Client) {
	deadline := time.Now().Add(quietGuard)
	for {
		var ids []string
		for _, id := range b.order {
			if h := b.holds[id]; h.x.Timeout > 0 && h.x.Timeout < 10 {
				ids = append(ids, id)
			}
		}
		open := 0
		for _, x := range lookupTransfers(t, c, ids) {
			if x.State == transport.StatePending {
				open++
			}
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d short holds never expired", open)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (b *tpBook) check(t *testing.T, c *client.Client, cycle int) {
	ids := append([]string(nil), b.order...)
	for id := range b.res {
		ids = append(ids, id)
	}
	found := lookupTransfers(t, c, ids)
	type bal struct{ dPend, dPost, cPend, cPost uint64 }
	want := map[string]*bal{}
	for _, a := range append(append([]string(nil), b.wallets...), b.shops...) {
		want[a] = &bal{}
	}
	for _, w := range b.wallets {
		want[w].cPost = 1000
	}
	resolutions := map[string][]transport.Transfer{}
	for id, r := range b.res {
		if x, ok := found[id]; ok {
			resolutions[r.PendingID] = append(resolutions[r.PendingID], x)
		} else if b.acked[id] {
			t.Errorf("acknowledged %s of %s is gone", id, r.PendingID)
		}
	}
	states := map[string]int{}
	for _, id := range b.order {
		h := b.holds[id]
		x, ok := found[id]
		if !ok {
			if h.acked {
				t.Errorf("acknowledged hold %s is gone", id)
			}
			if len(resolutions[id]) > 0 {
				t.Errorf("hold %s is not there, but %d resolutions of it are", id, len(resolutions[id]))
			}
			continue
		}
		states[x.State]++
		rs := resolutions[id]
		switch {
		case len(rs) > 1:
			t.Errorf("hold %s resolved %d times", id, len(rs))
		case len(rs) == 1:
			r := rs[0]
			wantState := transport.StatePosted
			if r.Flags&transport.TransferVoidPendingTransfer != 0 {
				wantState = transport.StateVoided
			}
			if x.State != wantState || r.DebitAccountID != x.DebitAccountID || r.CreditAccountID != x.CreditAccountID {
				t.Errorf("hold %s is %s, resolved by %+v", id, x.State, r)
			}
			if h.resolved != "" && h.resolved != r.ID {
				t.Errorf("hold %s: %s acknowledged, %s stored", id, h.resolved, r.ID)
			}
			if wantState == transport.StatePosted {
				want[x.DebitAccountID].dPost += r.Amount
				want[x.CreditAccountID].cPost += r.Amount
			}
		case x.State == transport.StatePending:
			want[x.DebitAccountID].dPend += x.Amount
			want[x.CreditAccountID].cPend += x.Amount
		case x.State != transport.StateExpired || x.Timeout == 0:
			t.Errorf("hold %s is %s with no resolution stored (timeout %d)", id, x.State, x.Timeout)
		}
	}
	accounts := lookupAccounts(t, c, append(append([]string(nil), b.wallets...), b.shops...))
	for id, w := range want {
		a := accounts[id]
		if got := (bal{a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted}); got != *w {
			t.Errorf("account %s: {dp dP cp cP} %+v, the transfers found say %+v", id, got, *w)
		}
	}
	ctx, cancel := reqCtx()
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var dp, cp, dpend, cpend uint64
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			dp, cp, dpend, cpend = dp+l.DebitsPosted, cp+l.CreditsPosted, dpend+l.DebitsPending, cpend+l.CreditsPending
		}
	}
	if dp != cp || dpend != cpend {
		t.Errorf("status totals: debits %d/%d pending, credits %d/%d pending", dp, dpend, cp, cpend)
	}
	acked := 0
	for _, h := range b.holds {
		if h.acked {
			acked++
		}
	}
	t.Logf("cycle %d: %d holds sent (%d acknowledged), found by state %v; %d posts and voids sent, %d acknowledged",
		cycle, len(b.order), acked, states, len(b.res), len(b.acked))
}
