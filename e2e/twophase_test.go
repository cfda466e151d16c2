package e2e

import (
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/transport"
)

func pendingXfer(id, debit, credit string, amount uint64, timeout uint32) transport.Transfer {
	x := xfer(id, debit, credit, amount)
	x.Flags, x.Timeout = transport.TransferPending, timeout
	return x
}

func resolveXfer(id, pendingID string, flags uint32, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, PendingID: pendingID, Flags: flags, Amount: amount}
}

func (c *cluster) transferState(id string) string {
	c.t.Helper()
	ts, err := c.c.LookupTransfers(c.ctx(), []string{id})
	if err != nil || len(ts) != 1 {
		c.t.Fatalf("lookup %s: %v (%d found)", id, err, len(ts))
	}
	return ts[0].State
}

// Two shards, accounts of each pending transfer on one of them: the router
// finds where a post or void that names only the pending id must go.
func TestTwoPhaseTransfersThroughTheCluster(t *testing.T) {
	c := startCluster(t, 2)
	var bank, wallet, shop [3]string
	for s := uint32(1); s <= 2; s++ {
		bank[s], wallet[s], shop[s] = c.accountOn("bank", s), c.accountOn("wallet", s), c.accountOn("shop", s)
		c.mustCreateAccounts(acct(bank[s], 0), acct(wallet[s], limitDebits), acct(shop[s], 0))
		c.transfer(xfer("fund-"+wallet[s], bank[s], wallet[s], 100))
	}
	res := c.transfer(pendingXfer("hold-1", wallet[1], shop[1], 60, 0), pendingXfer("hold-2", wallet[2], shop[2], 30, 0))
	if res[0].Code != transport.CodeOK || res[1].Code != transport.CodeOK {
		t.Fatalf("holds: %v", codes(res))
	}
	if a := c.account(wallet[1]); a.DebitsPending != 60 || a.DebitsPosted != 0 {
		t.Fatalf("wallet during hold: %+v", a)
	}
	// The hold counts against the wallet's limit.
	if r := c.transfer(xfer("too-much", wallet[1], shop[1], 41)); r[0].Code != transport.CodeExceedsCredits {
		t.Fatalf("spending held money: %v", r[0].Code)
	}
	// Post part of hold-1 and void hold-2, in one batch, naming only the ids.
	res = c.transfer(resolveXfer("capture-1", "hold-1", transport.TransferPostPendingTransfer, 45),
		resolveXfer("release-2", "hold-2", transport.TransferVoidPendingTransfer, 0),
		resolveXfer("ghost", "no-such-hold", transport.TransferPostPendingTransfer, 0))
	want := []transport.Code{transport.CodeOK, transport.CodeOK, transport.CodePendingTransferNotFound}
	for i := range want {
		if res[i].Code != want[i] {
			t.Fatalf("resolutions: %v, want %v", codes(res), want)
		}
	}
	if a := c.account(wallet[1]); a.DebitsPending != 0 || a.DebitsPosted != 45 {
		t.Fatalf("wallet 1 after capture: %+v", a)
	}
	if a := c.account(shop[2]); a.CreditsPending != 0 || a.CreditsPosted != 0 {
		t.Fatalf("shop 2 after release: %+v", a)
	}
	for id, st := range map[string]string{"hold-1": transport.StatePosted, "capture-1": transport.StatePosted,
		"hold-2": transport.StateVoided, "release-2": transport.StateVoided} {
		if got := c.transferState(id); got != st {
			t.Fatalf("%s is %s, want %s", id, got, st)
		}
	}
	// A hold and its capture in one batch, on the second shard: the router
	// sends the capture where the hold goes, though it names only the id.
	res = c.transfer(pendingXfer("hold-3", wallet[2], shop[2], 10, 0),
		resolveXfer("capture-3", "hold-3", transport.TransferPostPendingTransfer, 0))
	if res[0].Code != transport.CodeOK || res[1].Code != transport.CodeOK {
		t.Fatalf("hold and capture in one batch: %v", codes(res))
	}
	// A retried post is exists; another resolution of the same hold is refused.
	res = c.transfer(resolveXfer("capture-1", "hold-1", transport.TransferPostPendingTransfer, 45),
		resolveXfer("capture-again", "hold-1", transport.TransferPostPendingTransfer, 0))
	if res[0].Code != transport.CodeExists || res[1].Code != transport.CodePendingTransferAlreadyPosted {
		t.Fatalf("repeats: %v", codes(res))
	}
	c.quiesce()
}

// The leader proposes the expiry with its clock; the test only waits.
func TestPendingTransferExpiresAfterItsTimeout(t *testing.T) {
	c := startCluster(t, 1)
	c.mustCreateAccounts(acct("bank", 0), acct("shop", 0))
	if r := c.transfer(pendingXfer("short-hold", "bank", "shop", 9, 1)); r[0].Code != transport.CodeOK {
		t.Fatalf("hold: %v", r[0].Code)
	}
	deadline := time.Now().Add(30 * time.Second) // a hang guard, not a bound on the expiry
	for c.transferState("short-hold") != transport.StateExpired {
		if time.Now().After(deadline) {
			t.Fatal("the pending transfer never expired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a := c.account("bank"); a.DebitsPending != 0 || a.DebitsPosted != 0 {
		t.Fatalf("bank after expiry: %+v", a)
	}
	if r := c.transfer(resolveXfer("too-late", "short-hold", transport.TransferPostPendingTransfer, 0)); r[0].Code != transport.CodePendingTransferExpired {
		t.Fatalf("post after expiry: %v", r[0].Code)
	}
}

// Two-phase transfers whose accounts live on two shards: the hold reserves
// on both, a post or void settles the credit shard before it is answered,
// and an expiry settles it too.
func TestTwoPhaseTransfersAcrossShards(t *testing.T) {
	c := startCluster(t, 2)
	bank, wallet, shop := c.accountOn("bank", 1), c.accountOn("wallet", 1), c.accountOn("shop", 2)
	c.mustCreateAccounts(acct(bank, 0), acct(wallet, limitDebits), acct(shop, 0))
	c.transfer(xfer("fund", bank, wallet, 100))
	res := c.transfer(pendingXfer("hold-a", wallet, shop, 60, 0), pendingXfer("hold-b", wallet, shop, 30, 0),
		pendingXfer("hold-c", wallet, shop, 10, 1))
	wantCodes(t, res, transport.CodeOK, transport.CodeOK, transport.CodeOK)
	if a := c.account(shop); a.CreditsPending != 100 || a.CreditsPosted != 0 {
		t.Fatalf("shop while held: %+v", a)
	}
	if r := c.transfer(xfer("too-much", wallet, shop, 1)); r[0].Code != transport.CodeExceedsCredits {
		t.Fatalf("spending held money: %v", r[0].Code)
	}
	res = c.transfer(resolveXfer("capture-a", "hold-a", transport.TransferPostPendingTransfer, 45),
		resolveXfer("release-b", "hold-b", transport.TransferVoidPendingTransfer, 0))
	wantCodes(t, res, transport.CodeOK, transport.CodeOK)
	// Answered ok: the credit shard has settled both.
	if a := c.account(shop); a.CreditsPosted != 45 || a.CreditsPending != 10 {
		t.Fatalf("shop after capture and release: %+v", a)
	}
	if a := c.account(wallet); a.DebitsPosted != 45 || a.DebitsPending != 10 {
		t.Fatalf("wallet after capture and release: %+v", a)
	}
	res = c.transfer(resolveXfer("capture-a", "hold-a", transport.TransferPostPendingTransfer, 45))
	wantCodes(t, res, transport.CodeExists)
	deadline := time.Now().Add(30 * time.Second) // a hang guard, not a bound on the expiry
	for c.transferState("hold-c") != transport.StateExpired || c.account(shop).CreditsPending != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hold-c never expired on both shards: %+v", c.account(shop))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for id, st := range map[string]string{"hold-a": transport.StatePosted, "capture-a": transport.StatePosted,
		"hold-b": transport.StateVoided, "release-b": transport.StateVoided} {
		if got := c.transferState(id); got != st {
			t.Fatalf("%s is %s, want %s", id, got, st)
		}
	}
	c.quiesce()
}
