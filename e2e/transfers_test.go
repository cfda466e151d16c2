package e2e

import (
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

const (
	limitDebits  = transport.AccountDebitsMustNotExceedCredits
	limitCredits = transport.AccountCreditsMustNotExceedDebits
)

func TestSameShardAndCrossShardTransfersPostOnBothSides(t *testing.T) {
	c := startCluster(t, 2)
	bank := c.accountOn("bank", 1)
	alice := c.accountOn("alice", 1) // same shard as bank
	bob := c.accountOn("bob", 2)     // the other shard
	c.mustCreateAccounts(acct(bank, 0), acct(alice, limitDebits), acct(bob, limitDebits))

	res := c.transfer(xfer("fund-alice", bank, alice, 1000), xfer("fund-bob", bank, bob, 500))
	if got := codes(res); !slices.Equal(got, []transport.Code{transport.CodeOK, transport.CodeOK}) {
		t.Fatalf("funding: %v", got)
	}
	if res[0].Timestamp == 0 || res[1].Timestamp == 0 {
		t.Fatalf("ok results carry timestamps: %+v", res)
	}
	// ok is sent only once both halves committed: the credit is visible now.
	if a := c.account(bob); a.CreditsPosted != 500 || a.DebitsPending != 0 {
		t.Fatalf("bob after cross-shard credit: %+v", a)
	}
	if a := c.account(bank); a.DebitsPosted != 1500 || a.DebitsPending != 0 {
		t.Fatalf("bank after both: %+v", a)
	}
	res = c.transfer(xfer("a-to-b", alice, bob, 300), xfer("b-to-a", bob, alice, 100))
	if got := codes(res); !slices.Equal(got, []transport.Code{transport.CodeOK, transport.CodeOK}) {
		t.Fatalf("cross-shard both ways: %v", got)
	}
	ts, err := c.c.LookupTransfers(c.ctx(), []string{"fund-alice", "fund-bob", "a-to-b", "b-to-a", "nope"})
	if err != nil || len(ts) != 4 {
		t.Fatalf("lookup transfers: %v, %d found", err, len(ts))
	}
	for _, tr := range ts {
		if tr.State != transport.StatePosted || tr.Timestamp == 0 {
			t.Fatalf("transfer %s: %+v", tr.ID, tr)
		}
	}
	if a := c.account(alice); a.CreditsPosted != 1100 || a.DebitsPosted != 300 {
		t.Fatalf("alice: %+v", a)
	}
	c.quiesce()
}

func TestDuplicateTransferAppliesOnce(t *testing.T) {
	c := startCluster(t, 2)
	bank, alice, bob := c.accountOn("bank", 1), c.accountOn("alice", 1), c.accountOn("bob", 2)
	c.mustCreateAccounts(acct(bank, 0), acct(alice, 0), acct(bob, 0))
	for _, tc := range []struct{ id, credit string }{{"same", alice}, {"cross", bob}} {
		first := c.transfer(xfer(tc.id, bank, tc.credit, 7))[0]
		again := c.transfer(xfer(tc.id, bank, tc.credit, 7))[0]
		if first.Code != transport.CodeOK || again.Code != transport.CodeExists || again.Timestamp != first.Timestamp {
			t.Fatalf("%s: first %+v, again %+v", tc.id, first, again)
		}
		changed := xfer(tc.id, bank, tc.credit, 8)
		if r := c.transfer(changed)[0]; r.Code != transport.CodeExistsWithDifferentFields {
			t.Fatalf("%s with another amount: %v", tc.id, r.Code)
		}
		meta := xfer(tc.id, bank, tc.credit, 7)
		meta.Metadata = map[string]string{"k": "v"}
		if r := c.transfer(meta)[0]; r.Code != transport.CodeExistsWithDifferentFields {
			t.Fatalf("%s with other metadata: %v", tc.id, r.Code)
		}
	}
	// The same id twice in one batch: the second is a duplicate.
	res := c.transfer(xfer("twice", bank, bob, 1), xfer("twice", bank, bob, 1))
	if res[0].Code != transport.CodeOK || res[1].Code != transport.CodeExists {
		t.Fatalf("twice in one batch: %v", codes(res))
	}
	if a := c.account(bank); a.DebitsPosted != 15 {
		t.Fatalf("bank debited %d, want 15 (7+7+1)", a.DebitsPosted)
	}
	c.quiesce()
}

func TestInsufficientFundsAndLimitsRefuseAndChangeNothing(t *testing.T) {
	c := startCluster(t, 2)
	bank, alice, bob := c.accountOn("bank", 1), c.accountOn("alice", 1), c.accountOn("bob", 2)
	capped := c.accountOn("capped", 2)
	c.mustCreateAccounts(acct(bank, 0), acct(alice, limitDebits), acct(bob, limitDebits), acct(capped, limitCredits))
	c.transfer(xfer("fund", bank, alice, 100))
	res := c.transfer(
		xfer("over-same", alice, c.accountOn("x", 1), 1), // unknown credit, same shard
		xfer("over-local", alice, bank, 101),
		xfer("over-cross", alice, bob, 101),
		xfer("cap-cross", bank, capped, 1), // capped has no debits: credit refused remotely
		xfer("fine", alice, bob, 100),
	)
	want := []transport.Code{transport.CodeCreditAccountNotFound, transport.CodeExceedsCredits,
		transport.CodeExceedsCredits, transport.CodeExceedsDebits, transport.CodeOK}
	if got := codes(res); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if a := c.account(alice); a.DebitsPosted != 100 || a.DebitsPending != 0 {
		t.Fatalf("alice: %+v", a)
	}
	// A refused id stays free: the same id succeeds once it can.
	if r := c.transfer(xfer("over-local", bank, alice, 5))[0]; r.Code != transport.CodeOK {
		t.Fatalf("reuse refused id: %v", r.Code)
	}
	c.quiesce()
}

func TestUnknownCreditAccountOnOtherShardVoidsReservation(t *testing.T) {
	c := startCluster(t, 2)
	bank := c.accountOn("bank", 1)
	ghost := c.accountOn("ghost", 2)
	c.mustCreateAccounts(acct(bank, 0))
	if r := c.transfer(xfer("to-ghost", bank, ghost, 40))[0]; r.Code != transport.CodeCreditAccountNotFound || r.Timestamp != 0 {
		t.Fatalf("to unknown account on other shard: %+v", r)
	}
	if a := c.account(bank); a.DebitsPending != 0 || a.DebitsPosted != 0 {
		t.Fatalf("reservation not voided: %+v", a)
	}
	if ts, _ := c.c.LookupTransfers(c.ctx(), []string{"to-ghost"}); len(ts) != 0 {
		t.Fatalf("refused transfer is visible: %+v", ts)
	}
	// Once the account exists, the same id is a new attempt and succeeds.
	c.mustCreateAccounts(acct(ghost, 0))
	if r := c.transfer(xfer("to-ghost", bank, ghost, 40))[0]; r.Code != transport.CodeOK {
		t.Fatalf("retry after creating the account: %v", r.Code)
	}
	if a := c.account(ghost); a.CreditsPosted != 40 {
		t.Fatalf("ghost: %+v", a)
	}
	c.quiesce()
}

func TestMixedBatchAnswersEachEventInOrder(t *testing.T) {
	c := startCluster(t, 3)
	a1, a2, a3 := c.accountOn("m", 1), c.accountOn("m", 2), c.accountOn("m", 3)
	poor := c.accountOn("poor", 2)
	c.mustCreateAccounts(acct(a1, 0), acct(a2, 0), acct(a3, 0), acct(poor, limitDebits))
	batch := []transport.Transfer{
		xfer("m-1", a1, a2, 10),         // cross
		xfer("m-2", a2, a2, 10),         // same account
		xfer("m-3", a3, a1, 0),          // zero amount
		xfer("m-4", poor, a3, 1),        // insufficient funds
		xfer("m-5", a1, "missing", 1),   // unknown credit account
		xfer("m-6", a2, a3, 5),          // cross
		xfer("m-1", a1, a2, 10),         // duplicate of m-1 in the same batch
		xfer("m-8", a3, a3+"x", 1),      // unknown credit
		xfer("m-9", a1, a1+"-other", 3), // unknown credit
		xfer("m-10", a3, a2, 2),         // cross
	}
	want := []transport.Code{transport.CodeOK, transport.CodeAccountsMustBeDifferent, transport.CodeAmountInvalid,
		transport.CodeExceedsCredits, transport.CodeCreditAccountNotFound, transport.CodeOK, transport.CodeExists,
		transport.CodeCreditAccountNotFound, transport.CodeCreditAccountNotFound, transport.CodeOK}
	res := c.transfer(batch...)
	if got := codes(res); !slices.Equal(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	for i, r := range res {
		if int(r.Index) != i {
			t.Fatalf("result %d has index %d", i, r.Index)
		}
	}
	c.quiesce()
}
