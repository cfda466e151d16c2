package crash

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/transport"
)

// TestChainsAcrossShardsAtEveryStepOfKill9: linked chains whose legs cross
// two shards, with the process killed (SIGKILL, by the test hook
// LEDGERD_TEST_CRASH_AT) at each step of the two-phase commit in turn:
// chain logged, a part held, the decision logged, a part finished, the
// credit sides committed, every leg final. 4 clients send chains of 2-3
// legs, some built to fail on a debit limit or on the credit side, until
// the hook kills the process; it restarts, the clients resend every chain
// whose answer they never got, and once the cluster is quiet: every chain
// is whole (every leg stored as sent, posted) or absent, as its answer
// says; nothing is left pending; every account's balances are the sum of
// the legs found; debits equal credits.
func TestChainsAcrossShardsAtEveryStepOfKill9(t *testing.T) {
	rng := crashRNG(t, 0xc4a1)
	cl := newCluster(t, 1, 2, snapshotOften...)
	cl.Start(0)
	nc, c := cl.Connect()
	b := setupCrossChains(t, c)
	for step, point := range node.CrashPoints {
		n := 1 + rng.IntN(4)
		nc.Close()
		cl.Stop(0)
		cl.Nodes[0].Env = []string{fmt.Sprintf("LEDGERD_TEST_CRASH_AT=%s:%d", point, n)}
		cl.Start(0)
		nc, c = cl.Connect()
		run := cl.Nodes[0].Cur
		unknown := b.load(t, c, rng, step, run.Exited)
		cl.ReapKilled(0, 2*quietGuard)
		nc.Close()
		if !run.Log.Contains("test crash point reached") {
			t.Fatalf("%s: the process died without reaching its crash point", point)
		}
		cl.Nodes[0].Env = nil
		cl.Start(0)
		nc, c = cl.Connect()
		for _, ch := range unknown {
			b.send(t, c, ch, true)
		}
		cl.WaitQuiet(c)
		b.check(t, c, point)
		if t.Failed() {
			t.FailNow()
		}
	}
	nc.Close()
	cl.Stop(0)
}

type xChain struct {
	legs   []transport.Transfer
	answer []transport.Code // nil while unknown
}

type xBook struct {
	mu      sync.Mutex
	wallets [2][]string // per shard, each funded with xFund and not to be overdrawn
	shops   [2][]string // per shard; shops[i][0] may not be credited past its debits
	chains  []*xChain
	next    int
}

func setupCrossChains(t *testing.T, c *client.Client) *xBook {
	ctx, cancel := reqCtx()
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || len(st.Shards) != 2 {
		t.Fatalf("status: %v (%d shards)", err, len(st.Shards))
	}
	index := map[uint16]int{}
	for i, s := range st.Shards {
		for _, slot := range s.Slots {
			index[slot] = i
		}
	}
	b := &xBook{}
	accounts := []transport.Account{newAccount(operatorID+"-x", 0)}
	var funding []transport.Transfer
	for i := 0; len(b.wallets[0]) < 4 || len(b.wallets[1]) < 4 || len(b.shops[0]) < 3 || len(b.shops[1]) < 3; i++ {
		id := fmt.Sprintf("xa-%d", i)
		s := index[transport.Slot(id)]
		switch {
		case len(b.wallets[s]) < 4:
			b.wallets[s] = append(b.wallets[s], id)
			accounts = append(accounts, newAccount(id, transport.AccountDebitsMustNotExceedCredits))
			funding = append(funding, newTransfer("xfund-"+id, operatorID+"-x", id, xFund))
		case len(b.shops[s]) < 3:
			flags := uint32(0)
			if len(b.shops[s]) == 0 {
				flags = transport.AccountCreditsMustNotExceedDebits
			}
			b.shops[s] = append(b.shops[s], id)
			accounts = append(accounts, newAccount(id, flags))
		}
	}
	if res, err := c.CreateAccounts(ctx, accounts); err != nil || !allOK(res) {
		t.Fatalf("accounts: %v %v", err, res)
	}
	if res, err := c.CreateTransfers(ctx, funding); err != nil || !allOK(res) {
		t.Fatalf("funding: %v %v", err, res)
	}
	return b
}

// xFund is each wallet's funding: enough for every chain of a run, but for
// the legs built to overdraw it.
const xFund = 1_000_000

// chain draws 2-3 legs from wallets to shops, each leg crossing shards or
// not at random, the chain crossing at least once. One leg in 15 asks for
// more than a wallet ever holds (refused on the debit side), and one in 12
// goes to a capped shop (refused on the credit side).
func (b *xBook) chain(rng *rand.Rand, step int) *xChain {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	ch := &xChain{}
	crossed := false
	n := 2 + rng.IntN(2)
	for k := range n {
		from := rng.IntN(2)
		to := rng.IntN(2)
		if k == n-1 && !crossed {
			to = 1 - from
		}
		crossed = crossed || to != from
		shop := b.shops[to][1+rng.IntN(2)]
		if rng.IntN(12) == 0 {
			shop = b.shops[to][0]
		}
		amount := 1 + uint64(rng.IntN(40))
		if rng.IntN(15) == 0 {
			amount = 2 * xFund
		}
		x := newTransfer(fmt.Sprintf("x%d-%d-%d", step, b.next, k), pick(rng, b.wallets[from]), shop, amount)
		if k < n-1 {
			x.Flags = transport.TransferLinked
		}
		ch.legs = append(ch.legs, x)
	}
	b.chains = append(b.chains, ch)
	return ch
}

// send sends a chain and records its answer; untilAnswered resends it
// until the cluster answers (a timeout answer is retried too).
func (b *xBook) send(t *testing.T, c *client.Client, ch *xChain, untilAnswered bool) bool {
	for {
		ctx, cancel := reqCtx()
		res, err := c.CreateTransfers(ctx, ch.legs)
		cancel()
		if err != nil {
			if untilAnswered {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return false
		}
		b.mu.Lock()
		ch.answer = ch.answer[:0]
		for _, r := range res {
			ch.answer = append(ch.answer, r.Code)
		}
		b.mu.Unlock()
		return true
	}
}

// load runs 4 clients until the process dies (or a minute passed: a hang
// guard, the caller then finds it alive), and returns the chains whose
// answer is unknown.
func (b *xBook) load(t *testing.T, c *client.Client, rng *rand.Rand, step int, died <-chan struct{}) []*xChain {
	deadline := time.Now().Add(time.Minute)
	var mu sync.Mutex
	var unknown []*xChain
	var wg sync.WaitGroup
	for w := range 4 {
		wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-died:
					return
				default:
				}
				if time.Now().After(deadline) {
					return
				}
				ch := b.chain(wrng, step)
				if !b.send(t, c, ch, false) {
					mu.Lock()
					unknown = append(unknown, ch)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return unknown
}

func (b *xBook) check(t *testing.T, c *client.Client, point string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for _, ch := range b.chains {
		for _, x := range ch.legs {
			ids = append(ids, x.ID)
		}
	}
	found := lookupTransfers(t, c, ids)
	want := map[string][2]uint64{} // debits_posted, credits_posted from the legs found
	whole, absent := 0, 0
	for _, ch := range b.chains {
		n := 0
		for _, x := range ch.legs {
			got, ok := found[x.ID]
			if !ok {
				continue
			}
			n++
			if !sameTransfer(got, x) || got.State != transport.StatePosted {
				t.Errorf("%s: leg %s stored as %+v", point, x.ID, got)
			}
			d, cr := want[x.DebitAccountID], want[x.CreditAccountID]
			d[0] += x.Amount
			cr[1] += x.Amount
			want[x.DebitAccountID], want[x.CreditAccountID] = d, cr
		}
		okAnswer := ch.answer != nil && (ch.answer[0] == transport.CodeOK || ch.answer[0] == transport.CodeExists)
		switch {
		case n != 0 && n != len(ch.legs):
			t.Errorf("%s: chain %s is in part: %d of %d legs (answer %v)", point, ch.legs[0].ID, n, len(ch.legs), ch.answer)
		case okAnswer && n == 0:
			t.Errorf("%s: chain %s answered %v is absent", point, ch.legs[0].ID, ch.answer)
		case ch.answer != nil && !okAnswer && n > 0:
			t.Errorf("%s: chain %s answered %v is there", point, ch.legs[0].ID, ch.answer)
		case n > 0:
			whole++
		default:
			absent++
		}
	}
	t.Logf("%s: %d chains, %d whole, %d absent", point, len(b.chains), whole, absent)
	var all []string
	for s := range 2 {
		all = append(append(all, b.wallets[s]...), b.shops[s]...)
	}
	accounts := lookupAccounts(t, c, all)
	for _, id := range all {
		a := accounts[id]
		fund := uint64(xFund)
		if a.Flags&transport.AccountDebitsMustNotExceedCredits == 0 {
			fund = 0
		}
		w := want[id]
		if a.DebitsPending != 0 || a.CreditsPending != 0 || a.DebitsPosted != w[0] || a.CreditsPosted != w[1]+fund {
			t.Errorf("%s: %s balances %+v, the legs found give debits %d, credits %d (+%d funding)", point, id, a, w[0], w[1], fund)
		}
	}
}
