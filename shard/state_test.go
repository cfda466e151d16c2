package shard

import (
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// accountFixture is a shard with one account, "a-1", carrying metadata.
func accountFixture(t *testing.T) (*State, *clock, uint64) {
	t.Helper()
	c := &clock{}
	s := New(1, nil)
	a := acct("a-1", 1, transport.AccountHistory)
	a.Metadata = map[string]string{"owner": "alice"}
	res := c.createAccounts(s, a)
	if res[0].Code != transport.CodeOK {
		t.Fatalf("fixture: %v", res[0].Code)
	}
	return s, c, res[0].Timestamp
}

func TestCreateAccountResultCodes(t *testing.T) {
	valid := acct("new-account", 1, 0)
	with := func(f func(a *transport.Account)) transport.Account {
		a := valid
		f(&a)
		return a
	}
	existing := func(f func(a *transport.Account)) transport.Account {
		a := acct("a-1", 1, transport.AccountHistory)
		a.Metadata = map[string]string{"owner": "alice"}
		f(&a)
		return a
	}
	cases := []struct {
		name string
		a    transport.Account
		want transport.Code
	}{
		{"valid", valid, transport.CodeOK},
		{"id of 64 bytes", with(func(a *transport.Account) { a.ID = strings.Repeat("x", 64) }), transport.CodeOK},
		{"id of every allowed char", with(func(a *transport.Account) { a.ID = "AZaz09_.:@-" }), transport.CodeOK},
		{"id empty", with(func(a *transport.Account) { a.ID = "" }), transport.CodeIDInvalid},
		{"id of 65 bytes", with(func(a *transport.Account) { a.ID = strings.Repeat("x", 65) }), transport.CodeIDInvalid},
		{"id with space", with(func(a *transport.Account) { a.ID = "a b" }), transport.CodeIDInvalid},
		{"id with slash", with(func(a *transport.Account) { a.ID = "a/b" }), transport.CodeIDInvalid},
		{"id with star", with(func(a *transport.Account) { a.ID = "a*" }), transport.CodeIDInvalid},
		{"id with NUL", with(func(a *transport.Account) { a.ID = "a\x00" }), transport.CodeIDInvalid},
		{"id non-ASCII", with(func(a *transport.Account) { a.ID = "caf\u00e9" }), transport.CodeIDInvalid},
		{"flag linked, last of its batch", with(func(a *transport.Account) { a.Flags = transport.AccountLinked }), transport.CodeLinkedEventChainOpen},
		{"flag unknown bit 5", with(func(a *transport.Account) { a.Flags = 1 << 5 }), transport.CodeFlagsInvalid},
		{"flag unknown bit 31", with(func(a *transport.Account) { a.Flags = 1 << 31 }), transport.CodeFlagsInvalid},
		{"both limit flags", with(func(a *transport.Account) {
			a.Flags = transport.AccountDebitsMustNotExceedCredits | transport.AccountCreditsMustNotExceedDebits
		}), transport.CodeFlagsInvalid},
		{"flag debits limit", with(func(a *transport.Account) { a.Flags = transport.AccountDebitsMustNotExceedCredits }), transport.CodeOK},
		{"flag credits limit", with(func(a *transport.Account) { a.Flags = transport.AccountCreditsMustNotExceedDebits }), transport.CodeOK},
		{"flags history and closed", with(func(a *transport.Account) { a.Flags = transport.AccountHistory | transport.AccountClosed }), transport.CodeOK},
		{"ledger 0", with(func(a *transport.Account) { a.Ledger = 0 }), transport.CodeLedgerInvalid},
		{"code 0", with(func(a *transport.Account) { a.Code = 0 }), transport.CodeCodeInvalid},
		{"metadata 16 pairs", with(func(a *transport.Account) { a.Metadata = metadataPairs(16) }), transport.CodeOK},
		{"metadata 17 pairs", with(func(a *transport.Account) { a.Metadata = metadataPairs(17) }), transport.CodeMetadataInvalid},
		{"metadata 1024 bytes", with(func(a *transport.Account) { a.Metadata = metadataBytes(1024) }), transport.CodeOK},
		{"metadata 1025 bytes", with(func(a *transport.Account) { a.Metadata = metadataBytes(1025) }), transport.CodeMetadataInvalid},
		{"metadata bytes summed over pairs", with(func(a *transport.Account) {
			a.Metadata = map[string]string{"a": strings.Repeat("v", 600), "b": strings.Repeat("v", 600)}
		}), transport.CodeMetadataInvalid},
		{"metadata empty key", with(func(a *transport.Account) { a.Metadata = map[string]string{"": "v"} }), transport.CodeMetadataInvalid},
		{"timestamp set", with(func(a *transport.Account) { a.Timestamp = 1 }), transport.CodeTimestampMustBeZero},
		{"debits_pending set", with(func(a *transport.Account) { a.DebitsPending = 1 }), transport.CodeBalancesMustBeZero},
		{"debits_posted set", with(func(a *transport.Account) { a.DebitsPosted = 1 }), transport.CodeBalancesMustBeZero},
		{"credits_pending set", with(func(a *transport.Account) { a.CreditsPending = 1 }), transport.CodeBalancesMustBeZero},
		{"credits_posted set", with(func(a *transport.Account) { a.CreditsPosted = 1 }), transport.CodeBalancesMustBeZero},
		{"exists", existing(func(*transport.Account) {}), transport.CodeExists},
		{"exists, other ledger", existing(func(a *transport.Account) { a.Ledger = 2 }), transport.CodeExistsWithDifferentFields},
		{"exists, other code", existing(func(a *transport.Account) { a.Code = 2 }), transport.CodeExistsWithDifferentFields},
		{"exists, other flags", existing(func(a *transport.Account) { a.Flags = 0 }), transport.CodeExistsWithDifferentFields},
		{"exists, other metadata value", existing(func(a *transport.Account) { a.Metadata = map[string]string{"owner": "bob"} }), transport.CodeExistsWithDifferentFields},
		{"exists, extra metadata", existing(func(a *transport.Account) { a.Metadata["x"] = "y" }), transport.CodeExistsWithDifferentFields},
		{"exists, no metadata", existing(func(a *transport.Account) { a.Metadata = nil }), transport.CodeExistsWithDifferentFields},
		{"exists, but timestamp set", existing(func(a *transport.Account) { a.Timestamp = 5 }), transport.CodeTimestampMustBeZero},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, c, fixtureTS := accountFixture(t)
			before := s.Hash()
			res := c.createAccounts(s, tc.a)
			if len(res) != 1 {
				t.Fatalf("%d results for 1 event", len(res))
			}
			r := res[0]
			if r.Code != tc.want {
				t.Fatalf("code %v, want %v", r.Code, tc.want)
			}
			if r.InFlight || r.Retry {
				t.Fatalf("account event flagged in flight: %+v", r)
			}
			switch r.Code {
			case transport.CodeOK:
				if r.Timestamp <= fixtureTS {
					t.Fatalf("timestamp %d not after the fixture's %d", r.Timestamp, fixtureTS)
				}
				got := account(t, s, tc.a.ID)
				want := tc.a
				want.Timestamp = r.Timestamp
				if got.ID != want.ID || got.Ledger != want.Ledger || got.Code != want.Code || got.Flags != want.Flags ||
					got.Timestamp != want.Timestamp || len(got.Metadata) != len(want.Metadata) {
					t.Fatalf("stored %+v, want %+v", got, want)
				}
			case transport.CodeExists:
				if r.Timestamp != fixtureTS {
					t.Fatalf("exists with timestamp %d, want the original %d", r.Timestamp, fixtureTS)
				}
				fallthrough
			default:
				if r.Code != transport.CodeExists && r.Timestamp != 0 {
					t.Fatalf("refusal with timestamp %d", r.Timestamp)
				}
				if after := s.Hash(); after != before {
					t.Fatalf("%v changed the state", r.Code)
				}
			}
		})
	}
}

// transferFixture builds a shard whose accounts make every transfer result
// code reachable. Ledger 1 is small amounts, ledger 2 is a second currency,
// ledger 3 holds balances near 2^64.
func transferFixture(t *testing.T) (*State, *clock, uint64) {
	t.Helper()
	c := &clock{}
	s := New(1, nil)
	const dLimit, cLimit = transport.AccountDebitsMustNotExceedCredits, transport.AccountCreditsMustNotExceedDebits
	mustCreateAccounts(t, c, s,
		acct("op", 1, 0), acct("op2", 1, 0),
		acct("wallet", 1, dLimit), acct("cap", 1, cLimit),
		acct("closed", 1, transport.AccountClosed),
		acct("hist", 1, transport.AccountHistory),
		acct("eur", 2, 0), acct("eur2", 2, 0),
		acct("m1", 3, 0), acct("m2", 3, 0), acct("m3", 3, 0), acct("m4", 3, 0),
		acct("m5", 3, 0), acct("m6", 3, 0), acct("m7", 3, 0),
		acct("wmax", 3, dLimit), acct("cmax", 3, cLimit),
	)
	l3 := func(x transport.Transfer) transport.Transfer { x.Ledger = 3; return x }
	mustTransfer(t, c, s,
		xfer("fund-wallet", "op", "wallet", 100),  // wallet: credits 100
		xfer("fund-cap", "cap", "op", 50),         // cap: debits 50
		l3(xfer("m-big", "m1", "m2", maxU64-5)),   // m1 debits, m2 credits near max
		l3(xfer("w-in", "m4", "wmax", maxU64-5)),  // wmax may spend max-5 ...
		l3(xfer("w-out", "wmax", "m3", maxU64-5)), // ... and has: debits == credits == max-5
		l3(xfer("c-out", "cmax", "m6", maxU64-5)), // cmax may receive max-5 ...
		l3(xfer("c-in", "m7", "cmax", maxU64-5)),  // ... and has: credits == debits == max-5
	)
	ex := xfer("t-exists", "op", "op2", 7)
	ex.Metadata = map[string]string{"invoice": "42"}
	res := c.createTransfers(s, 0, ex)
	if res[0].Code != transport.CodeOK {
		t.Fatalf("fixture: %v", res[0].Code)
	}
	return s, c, res[0].Timestamp
}

func TestCreateTransferResultCodes(t *testing.T) {
	valid := xfer("new-transfer", "op", "op2", 10)
	with := func(f func(x *transport.Transfer)) transport.Transfer {
		x := valid
		f(&x)
		return x
	}
	l3 := func(id, dr, cr string, amount uint64) transport.Transfer {
		x := xfer(id, dr, cr, amount)
		x.Ledger = 3
		return x
	}
	existing := func(f func(x *transport.Transfer)) transport.Transfer {
		x := xfer("t-exists", "op", "op2", 7)
		x.Metadata = map[string]string{"invoice": "42"}
		f(&x)
		return x
	}
	type tcase struct {
		name string
		x    transport.Transfer
		want transport.Code
	}
	cases := []tcase{
		{"valid", valid, transport.CodeOK},
		{"to an account with history", with(func(x *transport.Transfer) { x.CreditAccountID = "hist" }), transport.CodeOK},
		{"id of 64 bytes", with(func(x *transport.Transfer) { x.ID = strings.Repeat("t", 64) }), transport.CodeOK},
		{"id empty", with(func(x *transport.Transfer) { x.ID = "" }), transport.CodeIDInvalid},
		{"id of 65 bytes", with(func(x *transport.Transfer) { x.ID = strings.Repeat("t", 65) }), transport.CodeIDInvalid},
		{"id with space", with(func(x *transport.Transfer) { x.ID = "t 1" }), transport.CodeIDInvalid},
		{"id with comma", with(func(x *transport.Transfer) { x.ID = "t,1" }), transport.CodeIDInvalid},
		{"id with newline", with(func(x *transport.Transfer) { x.ID = "t\n" }), transport.CodeIDInvalid},
		{"id with byte 0xff", with(func(x *transport.Transfer) { x.ID = "t\xff" }), transport.CodeIDInvalid},
		{"flags unknown bit 8", with(func(x *transport.Transfer) { x.Flags = 1 << 8 }), transport.CodeFlagsInvalid},
		{"flags unknown bit 31", with(func(x *transport.Transfer) { x.Flags = 1 << 31 }), transport.CodeFlagsInvalid},
		{"ledger 0", with(func(x *transport.Transfer) { x.Ledger = 0 }), transport.CodeLedgerInvalid},
		{"code 0", with(func(x *transport.Transfer) { x.Code = 0 }), transport.CodeCodeInvalid},
		{"amount 0", with(func(x *transport.Transfer) { x.Amount = 0 }), transport.CodeAmountInvalid},
		{"timeout on a plain transfer", with(func(x *transport.Transfer) { x.Timeout = 1 }), transport.CodeTimeoutInvalid},
		{"metadata 16 pairs", with(func(x *transport.Transfer) { x.Metadata = metadataPairs(16) }), transport.CodeOK},
		{"metadata 17 pairs", with(func(x *transport.Transfer) { x.Metadata = metadataPairs(17) }), transport.CodeMetadataInvalid},
		{"metadata 1024 bytes", with(func(x *transport.Transfer) { x.Metadata = metadataBytes(1024) }), transport.CodeOK},
		{"metadata 1025 bytes", with(func(x *transport.Transfer) { x.Metadata = metadataBytes(1025) }), transport.CodeMetadataInvalid},
		{"metadata empty key", with(func(x *transport.Transfer) { x.Metadata = map[string]string{"": ""} }), transport.CodeMetadataInvalid},
		{"timestamp set", with(func(x *transport.Transfer) { x.Timestamp = 1 }), transport.CodeTimestampMustBeZero},
		{"pending_id on a plain transfer", with(func(x *transport.Transfer) { x.PendingID = "p-1" }), transport.CodePendingIDInvalid},
		{"same accounts", with(func(x *transport.Transfer) { x.CreditAccountID = "op" }), transport.CodeAccountsMustBeDifferent},
		{"same missing accounts", with(func(x *transport.Transfer) { x.DebitAccountID, x.CreditAccountID = "nope", "nope" }), transport.CodeAccountsMustBeDifferent},
		{"exists", existing(func(*transport.Transfer) {}), transport.CodeExists},
		{"exists, other amount", existing(func(x *transport.Transfer) { x.Amount = 8 }), transport.CodeExistsWithDifferentFields},
		{"exists, other debit", existing(func(x *transport.Transfer) { x.DebitAccountID = "hist" }), transport.CodeExistsWithDifferentFields},
		{"exists, other credit", existing(func(x *transport.Transfer) { x.CreditAccountID = "hist" }), transport.CodeExistsWithDifferentFields},
		{"exists, other code", existing(func(x *transport.Transfer) { x.Code = 9 }), transport.CodeExistsWithDifferentFields},
		{"exists, other ledger", existing(func(x *transport.Transfer) { x.Ledger = 2 }), transport.CodeExistsWithDifferentFields},
		{"exists, other metadata", existing(func(x *transport.Transfer) { x.Metadata["invoice"] = "43" }), transport.CodeExistsWithDifferentFields},
		{"exists, no metadata", existing(func(x *transport.Transfer) { x.Metadata = nil }), transport.CodeExistsWithDifferentFields},
		{"exists, missing debit account", existing(func(x *transport.Transfer) { x.DebitAccountID = "nope" }), transport.CodeExistsWithDifferentFields},
		{"exists, but amount 0", existing(func(x *transport.Transfer) { x.Amount = 0 }), transport.CodeAmountInvalid},
		{"debit account missing", with(func(x *transport.Transfer) { x.DebitAccountID = "nope" }), transport.CodeDebitAccountNotFound},
		{"both accounts missing", with(func(x *transport.Transfer) { x.DebitAccountID, x.CreditAccountID = "nope", "nope2" }), transport.CodeDebitAccountNotFound},
		{"credit account missing", with(func(x *transport.Transfer) { x.CreditAccountID = "nope" }), transport.CodeCreditAccountNotFound},
		{"credit account on another ledger", with(func(x *transport.Transfer) { x.CreditAccountID = "eur" }), transport.CodeLedgerMismatch},
		{"debit account on another ledger", with(func(x *transport.Transfer) { x.DebitAccountID = "eur" }), transport.CodeLedgerMismatch},
		{"transfer on another ledger", with(func(x *transport.Transfer) { x.Ledger = 2 }), transport.CodeLedgerMismatch},
		{"on ledger 2", with(func(x *transport.Transfer) { x.Ledger, x.DebitAccountID, x.CreditAccountID = 2, "eur", "eur2" }), transport.CodeOK},
		{"credit account closed", with(func(x *transport.Transfer) { x.CreditAccountID = "closed" }), transport.CodeAccountClosed},
		{"debit account closed", with(func(x *transport.Transfer) { x.DebitAccountID = "closed" }), transport.CodeAccountClosed},
		{"wallet spends all it has", xfer("spend", "wallet", "op", 100), transport.CodeOK},
		{"wallet spends more than it has", xfer("spend", "wallet", "op", 101), transport.CodeExceedsCredits},
		{"cap receives all it may", xfer("recv", "op", "cap", 50), transport.CodeOK},
		{"cap receives more than it may", xfer("recv", "op", "cap", 51), transport.CodeExceedsDebits},
		{"wallet may receive without limit", xfer("recv", "op", "wallet", 1000), transport.CodeOK},
		{"cap may spend without limit", xfer("spend", "cap", "op", 1000), transport.CodeOK},
		{"credits reach 2^64-1", l3("max", "m5", "m2", 5), transport.CodeOK},
		{"credits overflow", l3("over", "m5", "m2", 6), transport.CodeOverflow},
		{"debits reach 2^64-1", l3("max", "m1", "m5", 5), transport.CodeOK},
		{"debits overflow", l3("over", "m1", "m5", 6), transport.CodeOverflow},
		{"amount 2^64-1 into a used account", l3("over", "m5", "m3", maxU64), transport.CodeOverflow},
		{"amount 2^64-1 between fresh accounts", l3("max", "m5", "m4", maxU64), transport.CodeOK},
		{"debit limit with overflow", l3("over", "wmax", "m5", 10), transport.CodeExceedsCredits},
		{"credit limit with overflow", l3("over", "m5", "cmax", 10), transport.CodeExceedsDebits},
	}
	for _, bit := range []int{6, 7} {
		cases = append(cases, tcase{
			"closing without pending: bit " + string(rune('0'+bit)),
			with(func(x *transport.Transfer) { x.Flags = 1 << bit }),
			transport.CodeFlagsInvalid,
		})
	}
	cases = append(cases,
		tcase{"linked, last of its batch", with(func(x *transport.Transfer) { x.Flags = transport.TransferLinked }), transport.CodeLinkedEventChainOpen},
		tcase{"balancing_debit from an account without credits", with(func(x *transport.Transfer) { x.Flags = transport.TransferBalancingDebit }), transport.CodeExceedsCredits},
		tcase{"balancing_credit to an account without debits", with(func(x *transport.Transfer) { x.Flags = transport.TransferBalancingCredit }), transport.CodeExceedsDebits},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, c, fixtureTS := transferFixture(t)
			before := s.Hash()
			beforeAccounts := s.LookupAccounts([]string{tc.x.DebitAccountID, tc.x.CreditAccountID})
			res := c.createTransfers(s, 0, tc.x)
			if len(res) != 1 {
				t.Fatalf("%d results for 1 event", len(res))
			}
			r := res[0]
			if r.Code != tc.want {
				t.Fatalf("code %v, want %v", r.Code, tc.want)
			}
			if r.InFlight || r.Retry {
				t.Fatalf("same-shard transfer flagged in flight: %+v", r)
			}
			switch r.Code {
			case transport.CodeOK:
				if r.Timestamp <= fixtureTS {
					t.Fatalf("timestamp %d not after the fixture's %d", r.Timestamp, fixtureTS)
				}
				after := s.LookupAccounts([]string{tc.x.DebitAccountID, tc.x.CreditAccountID})
				if after[0].DebitsPosted != beforeAccounts[0].DebitsPosted+tc.x.Amount ||
					after[1].CreditsPosted != beforeAccounts[1].CreditsPosted+tc.x.Amount ||
					after[0].CreditsPosted != beforeAccounts[0].CreditsPosted ||
					after[1].DebitsPosted != beforeAccounts[1].DebitsPosted {
					t.Fatalf("balances %+v -> %+v for amount %d", beforeAccounts, after, tc.x.Amount)
				}
				got := s.LookupTransfers([]string{tc.x.ID})
				if len(got) != 1 || got[0].Timestamp != r.Timestamp || got[0].State != transport.StatePosted || got[0].Amount != tc.x.Amount {
					t.Fatalf("lookup %+v", got)
				}
			case transport.CodeExists:
				if r.Timestamp != fixtureTS {
					t.Fatalf("exists with timestamp %d, want the original %d", r.Timestamp, fixtureTS)
				}
				if s.Hash() != before {
					t.Fatal("exists changed the state")
				}
			default:
				if r.Timestamp != 0 {
					t.Fatalf("refusal with timestamp %d", r.Timestamp)
				}
				if s.Hash() != before {
					t.Fatalf("%v changed the state", r.Code)
				}
				// The id stays free: the same id, made valid, applies.
				if tc.x.ID == valid.ID {
					if r := c.createTransfers(s, 0, valid)[0]; r.Code != transport.CodeOK {
						t.Fatalf("id not free after %v: %v", tc.want, r.Code)
					}
				}
			}
			assertBalanced(t, s)
		})
	}
}

func assertBalanced(t testing.TB, states ...*State) {
	t.Helper()
	for ledger, v := range ledgerSums(states...) {
		if v[0] != v[1] {
			t.Fatalf("ledger %d: debits_posted %d != credits_posted %d", ledger, v[0], v[1])
		}
	}
}

// TestTransferCodePrecedence starts from a transfer that breaks every rule at
// once and repairs one rule at a time, in the protocol's order: each step
// must report exactly the next code.
func TestTransferCodePrecedence(t *testing.T) {
	s, c, _ := transferFixture(t)
	x := transport.Transfer{
		ID: "bad id!", DebitAccountID: "nope", CreditAccountID: "nope",
		Flags: 1 << 9, Timeout: 5, Metadata: metadataPairs(17), Timestamp: 1, PendingID: "p",
	}
	steps := []struct {
		want transport.Code
		fix  func(x *transport.Transfer)
	}{
		{transport.CodeIDInvalid, func(x *transport.Transfer) { x.ID = "t-exists" }},
		{transport.CodeFlagsInvalid, func(x *transport.Transfer) { x.Flags = 0 }},
		{transport.CodeLedgerInvalid, func(x *transport.Transfer) { x.Ledger = 1 }},
		{transport.CodeCodeInvalid, func(x *transport.Transfer) { x.Code = 1 }},
		{transport.CodeAmountInvalid, func(x *transport.Transfer) { x.Amount = 110 }},
		{transport.CodeTimeoutInvalid, func(x *transport.Transfer) { x.Timeout = 0 }},
		{transport.CodeMetadataInvalid, func(x *transport.Transfer) { x.Metadata = nil }},
		{transport.CodeTimestampMustBeZero, func(x *transport.Transfer) { x.Timestamp = 0 }},
		{transport.CodePendingIDInvalid, func(x *transport.Transfer) { x.PendingID = "" }},
		{transport.CodeAccountsMustBeDifferent, func(x *transport.Transfer) { x.CreditAccountID = "nope2" }},
		{transport.CodeExistsWithDifferentFields, func(x *transport.Transfer) { x.ID = "t-new" }},
		{transport.CodeDebitAccountNotFound, func(x *transport.Transfer) { x.DebitAccountID = "eur" }},
		{transport.CodeCreditAccountNotFound, func(x *transport.Transfer) { x.CreditAccountID = "closed" }},
		// eur is on ledger 2, closed on ledger 1 and closed.
		{transport.CodeLedgerMismatch, func(x *transport.Transfer) { x.DebitAccountID = "wallet" }},
		// wallet (100 credits) would exceed by 110, cap (50 debits) too.
		{transport.CodeAccountClosed, func(x *transport.Transfer) { x.CreditAccountID = "cap" }},
		{transport.CodeExceedsCredits, func(x *transport.Transfer) { x.DebitAccountID = "op" }},
		{transport.CodeExceedsDebits, func(x *transport.Transfer) {
			x.Ledger, x.DebitAccountID, x.CreditAccountID, x.Amount = 3, "m1", "m2", 6
		}},
		// m1's debits and m2's credits would both pass 2^64.
		{transport.CodeOverflow, func(x *transport.Transfer) { x.Amount = 5 }},
		{transport.CodeOK, nil},
	}
	for i, step := range steps {
		before := s.Hash()
		r := c.createTransfers(s, 0, x)[0]
		if r.Code != step.want {
			t.Fatalf("step %d: code %v, want %v (transfer %+v)", i, r.Code, step.want, x)
		}
		if step.fix == nil {
			break
		}
		if s.Hash() != before {
			t.Fatalf("step %d: %v changed the state", i, r.Code)
		}
		step.fix(&x)
	}
}

// TestAccountCodePrecedence does the same for accounts.
func TestAccountCodePrecedence(t *testing.T) {
	s, c, ts := accountFixture(t)
	a := transport.Account{
		ID: "", Flags: 1 << 5, Metadata: map[string]string{"": "x"},
		Timestamp: 9, DebitsPosted: 1, CreditsPending: 2,
	}
	steps := []struct {
		want transport.Code
		fix  func(a *transport.Account)
	}{
		{transport.CodeIDInvalid, func(a *transport.Account) { a.ID = "a-1" }},
		{transport.CodeFlagsInvalid, func(a *transport.Account) { a.Flags = transport.AccountHistory }},
		{transport.CodeLedgerInvalid, func(a *transport.Account) { a.Ledger = 1 }},
		{transport.CodeCodeInvalid, func(a *transport.Account) { a.Code = 1 }},
		{transport.CodeMetadataInvalid, func(a *transport.Account) { a.Metadata = map[string]string{"owner": "bob"} }},
		{transport.CodeTimestampMustBeZero, func(a *transport.Account) { a.Timestamp = 0 }},
		{transport.CodeBalancesMustBeZero, func(a *transport.Account) { a.DebitsPosted, a.CreditsPending = 0, 0 }},
		{transport.CodeExistsWithDifferentFields, func(a *transport.Account) { a.Metadata["owner"] = "alice" }},
		{transport.CodeExists, func(a *transport.Account) { a.ID = "a-2" }},
		{transport.CodeOK, nil},
	}
	for i, step := range steps {
		before := s.Hash()
		r := c.createAccounts(s, a)[0]
		if r.Code != step.want {
			t.Fatalf("step %d: code %v, want %v (account %+v)", i, r.Code, step.want, a)
		}
		if step.want == transport.CodeExists && r.Timestamp != ts {
			t.Fatalf("exists with timestamp %d, want %d", r.Timestamp, ts)
		}
		if step.fix == nil {
			break
		}
		if s.Hash() != before {
			t.Fatalf("step %d: %v changed the state", i, r.Code)
		}
		step.fix(&a)
	}
}

// TestBatchEventsAreIndependent: refusals inside a batch leave the other
// events alone, later events see earlier ones, and timestamps strictly grow
// even when the leader's clock goes backwards.
func TestBatchEventsAreIndependent(t *testing.T) {
	s := New(1, nil)
	out := s.Apply(&Entry{Timestamp: 5000, Commands: []Command{
		{Kind: KindCreateAccounts, Accounts: []transport.Account{
			acct("a", 1, 0), acct("a", 1, 0), acct("bad id", 1, 0), acct("b", 1, transport.AccountDebitsMustNotExceedCredits),
		}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{
			xfer("t1", "a", "b", 10), xfer("t1", "a", "b", 10), xfer("t2", "b", "a", 11), xfer("t3", "b", "a", 10),
		}},
	}})
	codes := func(rs []EventResult) []transport.Code {
		cs := make([]transport.Code, len(rs))
		for i, r := range rs {
			cs[i] = r.Code
		}
		return cs
	}
	wantA := []transport.Code{transport.CodeOK, transport.CodeExists, transport.CodeIDInvalid, transport.CodeOK}
	wantT := []transport.Code{transport.CodeOK, transport.CodeExists, transport.CodeExceedsCredits, transport.CodeOK}
	if got := codes(out.Events[0]); !equalCodes(got, wantA) {
		t.Fatalf("accounts %v, want %v", got, wantA)
	}
	if got := codes(out.Events[1]); !equalCodes(got, wantT) {
		t.Fatalf("transfers %v, want %v", got, wantT)
	}
	ts := []uint64{out.Events[0][0].Timestamp, out.Events[0][3].Timestamp, out.Events[1][0].Timestamp, out.Events[1][3].Timestamp}
	if ts[0] != 5000 {
		t.Fatalf("first timestamp %d, want the entry's 5000", ts[0])
	}
	for i := 1; i < len(ts); i++ {
		if ts[i] != ts[i-1]+1 {
			t.Fatalf("timestamps %v not consecutive within one entry", ts)
		}
	}
	if out.Events[0][1].Timestamp != ts[0] || out.Events[1][1].Timestamp != ts[2] {
		t.Fatal("exists inside a batch must carry the first event's timestamp")
	}
	// The leader's clock went backwards (a new leader): still increasing.
	r := s.Apply(&Entry{Timestamp: 10, Commands: []Command{{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("c", 1, 0)}}}})
	if got := r.Events[0][0].Timestamp; got != ts[3]+1 {
		t.Fatalf("timestamp after a clock step back %d, want %d", got, ts[3]+1)
	}
	assertBalanced(t, s)
	if a := account(t, s, "b"); a.DebitsPosted != 10 || a.CreditsPosted != 10 {
		t.Fatalf("b %+v", a)
	}
}

func equalCodes(a, b []transport.Code) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestEmptyAndUnknownCommands: an entry of nothing, or of commands this
// version does not know, changes nothing and does not panic.
func TestEmptyAndUnknownCommands(t *testing.T) {
	s, c, _ := transferFixture(t)
	before := s.Hash()
	out := c.apply(s,
		Command{Kind: 0}, Command{Kind: 200},
		Command{Kind: KindCreateAccounts}, Command{Kind: KindCreateTransfers},
		Command{Kind: KindCredit}, Command{Kind: KindAbort}, Command{Kind: KindResolve},
		Command{Kind: KindForget}, // nil Forget
	)
	if s.Hash() != before {
		t.Fatal("empty commands changed the state")
	}
	if len(out.Events) != 8 || len(out.Resolved) != 0 || len(out.Reserved) != 0 {
		t.Fatalf("output %+v", out)
	}
}

// TestCrossShardDebitSideCodes: on the debit shard a cross-shard transfer is
// checked against its debit account only; the credit account is the credit
// shard's business.
func TestCrossShardDebitSideCodes(t *testing.T) {
	cases := []struct {
		name string
		x    transport.Transfer
		want transport.Code
	}{
		{"reserved", xfer("x", "op", "elsewhere", 10), transport.CodeOK},
		{"debit account missing", xfer("x", "nope", "elsewhere", 10), transport.CodeDebitAccountNotFound},
		{"debit account on another ledger", xfer("x", "eur", "elsewhere", 10), transport.CodeLedgerMismatch},
		{"debit account closed", xfer("x", "closed", "elsewhere", 10), transport.CodeAccountClosed},
		{"wallet reserves all it has", xfer("x", "wallet", "elsewhere", 100), transport.CodeOK},
		{"wallet reserves more", xfer("x", "wallet", "elsewhere", 101), transport.CodeExceedsCredits},
		{"debits overflow", func() transport.Transfer { x := xfer("x", "m1", "elsewhere", 6); x.Ledger = 3; return x }(), transport.CodeOverflow},
		{"exists, same-shard transfer of that id", xfer("t-exists", "op", "elsewhere", 7), transport.CodeExistsWithDifferentFields},
		{"field checks come first", xfer("x", "op", "op", 10), transport.CodeAccountsMustBeDifferent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, c, _ := transferFixture(t)
			before := s.Hash()
			r := c.createTransfers(s, 2, tc.x)[0]
			if r.Code != tc.want {
				t.Fatalf("code %v, want %v", r.Code, tc.want)
			}
			if tc.want != transport.CodeOK {
				if r.InFlight || s.Hash() != before {
					t.Fatalf("refusal %+v reserved or changed the state", r)
				}
				return
			}
			if !r.InFlight || r.Retry || r.Attempt == 0 || r.Timestamp != 0 {
				t.Fatalf("reservation %+v", r)
			}
			if a := account(t, s, tc.x.DebitAccountID); a.DebitsPending != tc.x.Amount {
				t.Fatalf("debits_pending %d, want %d", a.DebitsPending, tc.x.Amount)
			}
			if got := s.LookupTransfers([]string{tc.x.ID}); len(got) != 0 {
				t.Fatalf("in-flight transfer visible: %+v", got)
			}
			rows := s.Outbox()
			if len(rows) != 1 || rows[0].CreditShard != 2 || rows[0].Transfer.Timestamp != r.Attempt {
				t.Fatalf("outbox %+v", rows)
			}
		})
	}
}

// A wallet's reservation counts against what it may still spend, on either
// path.
func TestReservationCountsAgainstDebitLimit(t *testing.T) {
	s, c, _ := transferFixture(t)
	if r := c.createTransfers(s, 2, xfer("x1", "wallet", "elsewhere", 60))[0]; !r.InFlight {
		t.Fatalf("reserve: %+v", r)
	}
	if r := c.createTransfers(s, 2, xfer("x2", "wallet", "elsewhere", 41))[0]; r.Code != transport.CodeExceedsCredits {
		t.Fatalf("second reservation: %v", r.Code)
	}
	if r := c.createTransfers(s, 0, xfer("x3", "wallet", "op", 41))[0]; r.Code != transport.CodeExceedsCredits {
		t.Fatalf("same-shard transfer over the reservation: %v", r.Code)
	}
	if r := c.createTransfers(s, 0, xfer("x4", "wallet", "op", 40))[0]; r.Code != transport.CodeOK {
		t.Fatalf("same-shard transfer within: %v", r.Code)
	}
}
