package shard

import (
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func pending(id, debit, credit string, amount uint64, timeout uint32) transport.Transfer {
	x := xfer(id, debit, credit, amount)
	x.Flags, x.Timeout = transport.TransferPending, timeout
	return x
}

func post(id, pendingID string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, PendingID: pendingID, Amount: amount, Flags: transport.TransferPostPendingTransfer}
}

func void(id, pendingID string) transport.Transfer {
	return transport.Transfer{ID: id, PendingID: pendingID, Flags: transport.TransferVoidPendingTransfer}
}

func balances(t *testing.T, s *State, id string) [4]uint64 {
	t.Helper()
	a := account(t, s, id)
	return [4]uint64{a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted}
}

func state(t *testing.T, s *State, id string) string {
	t.Helper()
	ts := s.LookupTransfers([]string{id})
	if len(ts) != 1 {
		t.Fatalf("transfer %q not found", id)
	}
	return ts[0].State
}

func twoPhaseFixture(t *testing.T) (*State, *clock) {
	t.Helper()
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("op", 1, 0), acct("wallet", 1, transport.AccountDebitsMustNotExceedCredits),
		acct("shop", 1, 0), acct("cap", 1, transport.AccountCreditsMustNotExceedDebits))
	mustTransfer(t, c, s, xfer("fund", "op", "wallet", 100))
	return s, c
}

func TestPendingReservesBothSidesAndPostMovesToPosted(t *testing.T) {
	s, c := twoPhaseFixture(t)
	mustTransfer(t, c, s, pending("hold", "wallet", "shop", 60, 0))
	if got := balances(t, s, "wallet"); got != [4]uint64{60, 0, 0, 100} {
		t.Fatalf("wallet after hold: %v", got)
	}
	if got := balances(t, s, "shop"); got != [4]uint64{0, 0, 60, 0} {
		t.Fatalf("shop after hold: %v", got)
	}
	if state(t, s, "hold") != transport.StatePending {
		t.Fatal("hold is not pending")
	}
	// The hold counts against the limit: only 40 more may go.
	if r := c.createTransfers(s, 0, xfer("spend", "wallet", "shop", 41)); r[0].Code != transport.CodeExceedsCredits {
		t.Fatalf("spend over the hold: %v", r[0].Code)
	}
	// A partial post: 45 posted, the other 15 released.
	mustTransfer(t, c, s, post("capture", "hold", 45))
	if got := balances(t, s, "wallet"); got != [4]uint64{0, 45, 0, 100} {
		t.Fatalf("wallet after capture: %v", got)
	}
	if got := balances(t, s, "shop"); got != [4]uint64{0, 0, 0, 45} {
		t.Fatalf("shop after capture: %v", got)
	}
	if state(t, s, "hold") != transport.StatePosted || state(t, s, "capture") != transport.StatePosted {
		t.Fatal("states after capture")
	}
	got := s.LookupTransfers([]string{"capture"})[0]
	if got.DebitAccountID != "wallet" || got.CreditAccountID != "shop" || got.Amount != 45 || got.Ledger != 1 {
		t.Fatalf("the post takes the pending transfer's fields: %+v", got)
	}
	// It resolves once.
	for _, x := range []transport.Transfer{post("again", "hold", 0), void("undo", "hold")} {
		if r := c.createTransfers(s, 0, x); r[0].Code != transport.CodePendingTransferAlreadyPosted {
			t.Fatalf("%s after post: %v", x.ID, r[0].Code)
		}
	}
	// A retry of the post is exists.
	if r := c.createTransfers(s, 0, post("capture", "hold", 45)); r[0].Code != transport.CodeExists {
		t.Fatalf("retry of the post: %v", r[0].Code)
	}
}

func TestVoidReleasesAndPostOfWholeAmount(t *testing.T) {
	s, c := twoPhaseFixture(t)
	mustTransfer(t, c, s, pending("h1", "wallet", "shop", 30, 0), pending("h2", "wallet", "shop", 70, 0))
	before := balances(t, s, "shop")
	mustTransfer(t, c, s, void("v1", "h1"))
	if got := balances(t, s, "wallet"); got != [4]uint64{70, 0, 0, 100} {
		t.Fatalf("wallet after void: %v", got)
	}
	if state(t, s, "h1") != transport.StateVoided || state(t, s, "v1") != transport.StateVoided {
		t.Fatal("states after void")
	}
	if r := c.createTransfers(s, 0, post("p1", "h1", 0)); r[0].Code != transport.CodePendingTransferAlreadyVoided {
		t.Fatalf("post after void: %v", r[0].Code)
	}
	mustTransfer(t, c, s, post("p2", "h2", 0)) // 0: the whole amount
	if got := balances(t, s, "shop"); got != [4]uint64{0, 0, before[2] - 100, 70} {
		t.Fatalf("shop: %v", got)
	}
}

func TestTwoPhaseResultCodes(t *testing.T) {
	with := func(x transport.Transfer, f func(*transport.Transfer)) transport.Transfer { f(&x); return x }
	cases := []struct {
		name string
		x    transport.Transfer
		want transport.Code
	}{
		{"pending and post", with(pending("x", "wallet", "shop", 1, 0), func(x *transport.Transfer) { x.Flags |= transport.TransferPostPendingTransfer }), transport.CodeFlagsInvalid},
		{"post and void", with(post("x", "open", 0), func(x *transport.Transfer) { x.Flags |= transport.TransferVoidPendingTransfer }), transport.CodeFlagsInvalid},
		{"timeout on a post", with(post("x", "open", 0), func(x *transport.Transfer) { x.Timeout = 5 }), transport.CodeTimeoutInvalid},
		{"post without pending_id", post("x", "", 0), transport.CodePendingIDInvalid},
		{"post naming itself", post("x", "x", 0), transport.CodePendingIDInvalid},
		{"pending_id not an id", post("x", "a b", 0), transport.CodePendingIDInvalid},
		{"post of an unknown transfer", post("x", "nope", 0), transport.CodePendingTransferNotFound},
		{"post of a plain transfer", post("x", "fund", 0), transport.CodePendingTransferNotPending},
		{"post with another debit account", with(post("x", "open", 0), func(x *transport.Transfer) { x.DebitAccountID = "op" }), transport.CodePendingTransferMismatch},
		{"post with another credit account", with(post("x", "open", 0), func(x *transport.Transfer) { x.CreditAccountID = "op" }), transport.CodePendingTransferMismatch},
		{"post with another ledger", with(post("x", "open", 0), func(x *transport.Transfer) { x.Ledger = 2 }), transport.CodePendingTransferMismatch},
		{"post with another code", with(post("x", "open", 0), func(x *transport.Transfer) { x.Code = 9 }), transport.CodePendingTransferMismatch},
		{"post with the same fields", with(post("x", "open", 10), func(x *transport.Transfer) {
			x.DebitAccountID, x.CreditAccountID, x.Ledger, x.Code = "wallet", "shop", 1, 1
		}), transport.CodeOK},
		{"post of more than pending", post("x", "open", 11), transport.CodeExceedsPendingTransferAmount},
		{"void of part", with(void("x", "open"), func(x *transport.Transfer) { x.Amount = 4 }), transport.CodePendingTransferMismatch},
		{"void of the whole amount named", with(void("x", "open"), func(x *transport.Transfer) { x.Amount = 10 }), transport.CodeOK},
		{"void of more", with(void("x", "open"), func(x *transport.Transfer) { x.Amount = 11 }), transport.CodeExceedsPendingTransferAmount},
		{"pending over the limit", pending("x", "wallet", "shop", 91, 0), transport.CodeExceedsCredits},
		{"pending into a capped account", pending("x", "op", "cap", 1, 0), transport.CodeExceedsDebits},
		{"pending with zero amount", pending("x", "wallet", "shop", 0, 0), transport.CodeAmountInvalid},
		{"pending to itself", pending("x", "wallet", "wallet", 1, 0), transport.CodeAccountsMustBeDifferent},
		{"post with the same accounts given", with(post("x", "open", 0), func(x *transport.Transfer) { x.DebitAccountID, x.CreditAccountID = "shop", "shop" }), transport.CodeAccountsMustBeDifferent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, c := twoPhaseFixture(t)
			mustTransfer(t, c, s, pending("open", "wallet", "shop", 10, 0))
			before := s.Hash()
			r := c.createTransfers(s, 0, tc.x)[0]
			if r.Code != tc.want {
				t.Fatalf("code %v, want %v", r.Code, tc.want)
			}
			if r.Code != transport.CodeOK && s.Hash() != before {
				t.Fatal("a refused event changed the state")
			}
		})
	}
}

func TestPendingExpiresByLogTimeOnly(t *testing.T) {
	s, c := twoPhaseFixture(t)
	mustTransfer(t, c, s, pending("h", "wallet", "shop", 50, 2), pending("keep", "wallet", "shop", 10, 0))
	at, ok := s.NextExpiry()
	hold := s.LookupTransfers([]string{"h"})[0]
	if !ok || at != hold.Timestamp+2e9 {
		t.Fatalf("next expiry %d %v, want %d", at, ok, hold.Timestamp+2e9)
	}
	// An expire entry before the deadline changes nothing.
	before := s.Hash()
	s.Apply(&Entry{Timestamp: at - 1, Commands: []Command{{Kind: KindExpire}}})
	if state(t, s, "h") != transport.StatePending || s.Hash() != before {
		t.Fatal("expired early")
	}
	// A post whose entry comes after the deadline is refused, even before
	// the expiry is applied.
	r := s.Apply(&Entry{Timestamp: at, Commands: []Command{{Kind: KindCreateTransfers, Transfers: []transport.Transfer{post("late", "h", 0)}}}})
	if code := r.Events[0][0].Code; code != transport.CodePendingTransferExpired {
		t.Fatalf("late post: %v", code)
	}
	s.Apply(&Entry{Timestamp: at + 1, Commands: []Command{{Kind: KindExpire}}})
	if state(t, s, "h") != transport.StateExpired || state(t, s, "keep") != transport.StatePending {
		t.Fatal("states after expiry")
	}
	if got := balances(t, s, "wallet"); got != [4]uint64{10, 0, 0, 100} {
		t.Fatalf("wallet after expiry: %v", got)
	}
	if _, ok := s.NextExpiry(); ok {
		t.Fatal("an expired transfer is still due to expire")
	}
	if r := c.createTransfers(s, 0, void("v", "h")); r[0].Code != transport.CodePendingTransferExpired {
		t.Fatalf("void after expiry: %v", r[0].Code)
	}
}

func TestExpiryIndexSurvivesSnapshot(t *testing.T) {
	s, c := twoPhaseFixture(t)
	mustTransfer(t, c, s, pending("h1", "wallet", "shop", 5, 7), pending("h2", "wallet", "shop", 5, 3))
	r := restored(t, s)
	a1, _ := s.NextExpiry()
	a2, ok := r.NextExpiry()
	if !ok || a1 != a2 || r.Hash() != s.Hash() {
		t.Fatalf("restored next expiry %d, original %d", a2, a1)
	}
	e := &Entry{Timestamp: a1 + 1, Commands: []Command{{Kind: KindExpire}}}
	s.Apply(e)
	r.Apply(e)
	if r.Hash() != s.Hash() {
		t.Fatal("original and restored state diverge on the same expiry")
	}
}

func TestRetriedResolutionIsExistsWhateverItOmitted(t *testing.T) {
	s, c := twoPhaseFixture(t)
	mustTransfer(t, c, s, pending("h", "wallet", "shop", 20, 0), pending("g", "wallet", "shop", 20, 0))
	mustTransfer(t, c, s, post("whole", "h", 0), post("part", "g", 5))
	full := post("whole", "h", 20)
	full.DebitAccountID, full.CreditAccountID, full.Ledger, full.Code = "wallet", "shop", 1, 1
	for _, tc := range []struct {
		x    transport.Transfer
		want transport.Code
	}{
		{post("whole", "h", 0), transport.CodeExists},
		{full, transport.CodeExists}, // named, the fields it resolved to
		{post("whole", "h", 19), transport.CodeExistsWithDifferentFields},
		{post("part", "g", 5), transport.CodeExists},
		{post("part", "g", 0), transport.CodeExistsWithDifferentFields}, // 0 means all 20, not 5
		{void("whole", "h"), transport.CodeExistsWithDifferentFields},
	} {
		if r := c.createTransfers(s, 0, tc.x); r[0].Code != tc.want {
			t.Fatalf("%s %+v: %v, want %v", tc.x.ID, tc.x, r[0].Code, tc.want)
		}
	}
}

// pending_transfer_mismatch comes before pending_transfer_not_pending in the
// protocol's order.
func TestPostMismatchPrecedesNotPending(t *testing.T) {
	s, c := twoPhaseFixture(t)
	x := post("x", "fund", 0) // fund is a plain transfer op -> wallet
	x.DebitAccountID = "shop"
	if r := c.createTransfers(s, 0, x); r[0].Code != transport.CodePendingTransferMismatch {
		t.Fatalf("mismatching post of a plain transfer: %v", r[0].Code)
	}
}
