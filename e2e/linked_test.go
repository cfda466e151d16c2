package e2e

import (
	"reflect"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func link(xs ...transport.Transfer) []transport.Transfer {
	for i := range xs[:len(xs)-1] {
		xs[i].Flags |= transport.TransferLinked
	}
	return xs
}

func wantCodes(t *testing.T, res []transport.Result, want ...transport.Code) {
	t.Helper()
	if got := codes(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	for i, r := range res {
		if r.Index != uint32(i) {
			t.Fatalf("result %d has index %d", i, r.Index)
		}
	}
}

// Linked chains through the router on two shards: a chain whose accounts
// all live on one shard is applied as one there; one that spans shards is
// coordinated by its first debit account's shard, all or nothing; a chain
// left open is refused; a retry answers exists.
func TestLinkedChainsThroughTheCluster(t *testing.T) {
	c := startCluster(t, 2)
	var bank, wallet, shop [3]string
	for s := uint32(1); s <= 2; s++ {
		bank[s], wallet[s], shop[s] = c.accountOn("bank", s), c.accountOn("wallet", s), c.accountOn("shop", s)
		c.mustCreateAccounts(acct(bank[s], 0), acct(wallet[s], limitDebits), acct(shop[s], 0))
		c.transfer(xfer("fund-"+wallet[s], bank[s], wallet[s], 100))
	}
	// One chain per shard in one batch, and a plain transfer between them.
	batch := append(link(xfer("pay-1", wallet[1], shop[1], 70), xfer("fee-1", wallet[1], bank[1], 30)),
		xfer("plain", bank[2], shop[2], 1))
	batch = append(batch, link(xfer("pay-2", wallet[2], shop[2], 70), xfer("fee-2", wallet[2], bank[2], 31))...)
	res := c.transfer(batch...)
	wantCodes(t, res, transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeLinkedEventFailed, transport.CodeExceedsCredits)
	if a := c.account(wallet[1]); a.DebitsPosted != 100 {
		t.Fatalf("wallet 1: %+v", a)
	}
	if a := c.account(wallet[2]); a.DebitsPosted != 0 || a.DebitsPending != 0 {
		t.Fatalf("wallet 2 after its chain failed: %+v", a)
	}
	if ts, err := c.c.LookupTransfers(c.ctx(), []string{"pay-2", "fee-2"}); err != nil || len(ts) != 0 {
		t.Fatalf("a failed chain left transfers: %+v %v", ts, err)
	}
	// The retry of a chain that held answers exists for each event.
	res = c.transfer(link(xfer("pay-1", wallet[1], shop[1], 70), xfer("fee-1", wallet[1], bank[1], 30))...)
	wantCodes(t, res, transport.CodeExists, transport.CodeExists)
	// Chains across shards: legs on each shard, and legs that cross.
	res = c.transfer(link(xfer("x-1", bank[2], shop[2], 5), xfer("x-2", bank[1], shop[1], 5), xfer("x-3", bank[2], shop[1], 5))...)
	wantCodes(t, res, transport.CodeOK, transport.CodeOK, transport.CodeOK)
	if a := c.account(shop[1]); a.CreditsPosted != 70+10 || a.CreditsPending != 0 {
		t.Fatalf("shop 1 after the chain across shards: %+v", a)
	}
	res = c.transfer(link(xfer("x-1", bank[2], shop[2], 5), xfer("x-2", bank[1], shop[1], 5), xfer("x-3", bank[2], shop[1], 5))...)
	wantCodes(t, res, transport.CodeExists, transport.CodeExists, transport.CodeExists)
	// One failing across shards: wallet 2 holds 100, and its first leg is
	// held while the second is refused: nothing stays.
	res = c.transfer(link(xfer("y-1", wallet[2], shop[1], 60), xfer("y-2", wallet[1], shop[2], 1))...)
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeExceedsCredits)
	for _, w := range []string{wallet[2], wallet[1], shop[1], shop[2]} {
		if a := c.account(w); a.DebitsPending != 0 || a.CreditsPending != 0 {
			t.Fatalf("%s after a failed chain across shards: %+v", w, a)
		}
	}
	if ts, err := c.c.LookupTransfers(c.ctx(), []string{"y-1", "y-2"}); err != nil || len(ts) != 0 {
		t.Fatalf("a failed chain across shards left transfers: %+v %v", ts, err)
	}
	// A chain open at the end of the batch.
	open := link(xfer("o-1", bank[1], shop[1], 5), xfer("o-2", bank[1], shop[1], 5))
	open[1].Flags |= transport.TransferLinked
	res = c.transfer(append([]transport.Transfer{xfer("before-open", bank[1], shop[1], 1)}, open...)...)
	wantCodes(t, res, transport.CodeOK, transport.CodeLinkedEventChainOpen, transport.CodeLinkedEventChainOpen)
	// The ids of refused events stay free.
	res = c.transfer(xfer("y-1", bank[2], shop[2], 5), xfer("pay-2", wallet[2], shop[2], 70))
	wantCodes(t, res, transport.CodeOK, transport.CodeOK)
	c.quiesce()
}

func TestLinkedAccountsThroughTheCluster(t *testing.T) {
	c := startCluster(t, 2)
	a1, a2, b := c.accountOn("a1", 1), c.accountOn("a2", 1), c.accountOn("b", 2)
	first := acct(a1, transport.AccountLinked)
	bad := acct(a2, 0)
	bad.Ledger = 0
	res, err := c.c.CreateAccounts(c.ctx(), []transport.Account{first, bad})
	if err != nil {
		t.Fatal(err)
	}
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeLedgerInvalid)
	if as, _ := c.c.LookupAccounts(c.ctx(), []string{a1}); len(as) != 0 {
		t.Fatal("an account of a failed chain was created")
	}
	res, err = c.c.CreateAccounts(c.ctx(), []transport.Account{first, acct(a2, 0)})
	if err != nil {
		t.Fatal(err)
	}
	wantCodes(t, res, transport.CodeOK, transport.CodeOK)
	// A chain of accounts on two shards is refused whole.
	res, err = c.c.CreateAccounts(c.ctx(), []transport.Account{acct(c.accountOn("c", 1), transport.AccountLinked), acct(b, 0)})
	if err != nil {
		t.Fatal(err)
	}
	wantCodes(t, res, transport.CodeLinkedEventFailed, transport.CodeFlagsInvalid)
}
