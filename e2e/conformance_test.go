package e2e

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/transport"
)

// The conformance table: for every operation, flag and result code of the
// protocol, the request, the codes it must answer and the balances after.
// The same table runs on one shard and on two; on two, every account whose
// name starts with "d" lives on shard 1 and every other on shard 2, so each
// transfer crosses shards, except in scenarios marked oneShard (served on
// one shard only, docs/protocol.md): there every account is on shard 1.

// step is one request: accounts or transfers, by logical account names.
type step struct {
	name      string
	accounts  []transport.Account
	transfers []transport.Transfer
	want      []transport.Code
	// after: balances {debits_pending, debits_posted, credits_pending,
	// credits_posted} of accounts after the step.
	after map[string][4]uint64
	// until waits for a state of a transfer before the step is sent.
	until [2]string
}

type scenario struct {
	name     string
	oneShard bool
	steps    []step
}

const maxAmount = ^uint64(0)

func ca(name string, flags uint32) transport.Account { return acct(name, flags) }

func tx(id, debit, credit string, amount uint64, flags uint32) transport.Transfer {
	x := xfer(id, debit, credit, amount)
	x.Flags = flags
	return x
}

func mod[T any](v T, f func(*T)) T { f(&v); return v }

func pairs(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

var (
	pend  = transport.TransferPending
	post  = transport.TransferPostPendingTransfer
	void  = transport.TransferVoidPendingTransfer
	lnk   = transport.TransferLinked
	lim   = transport.AccountDebitsMustNotExceedCredits
	climt = transport.AccountCreditsMustNotExceedDebits
)

func resolveOf(id, pendingID string, flags uint32, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, PendingID: pendingID, Flags: flags, Amount: amount}
}

var conformance = []scenario{
	{name: "accounts", steps: []step{
		{name: "create", accounts: []transport.Account{ca("da", 0)}, want: codes1(transport.CodeOK)},
		{name: "again", accounts: []transport.Account{ca("da", 0)}, want: codes1(transport.CodeExists)},
		{name: "again, other code", accounts: []transport.Account{mod(ca("da", 0), func(a *transport.Account) { a.Code = 2 })}, want: codes1(transport.CodeExistsWithDifferentFields)},
		{name: "field errors", accounts: []transport.Account{
			ca("raw:", 0), ca("raw:a*", 0), ca("db", lim|climt), ca("db", 1<<5),
			mod(ca("db", 0), func(a *transport.Account) { a.Ledger = 0 }),
			mod(ca("db", 0), func(a *transport.Account) { a.Code = 0 }),
			mod(ca("db", 0), func(a *transport.Account) { a.Metadata = pairs(17) }),
			mod(ca("db", 0), func(a *transport.Account) { a.Timestamp = 1 }),
			mod(ca("db", 0), func(a *transport.Account) { a.CreditsPosted = 1 }),
		}, want: []transport.Code{transport.CodeIDInvalid, transport.CodeIDInvalid, transport.CodeFlagsInvalid, transport.CodeFlagsInvalid,
			transport.CodeLedgerInvalid, transport.CodeCodeInvalid, transport.CodeMetadataInvalid, transport.CodeTimestampMustBeZero,
			transport.CodeBalancesMustBeZero}},
		{name: "linked chain", accounts: []transport.Account{ca("dc1", transport.AccountLinked), ca("dc2", 0)},
			want: codes1(transport.CodeOK, transport.CodeOK)},
		{name: "linked chain failing", accounts: []transport.Account{ca("dc3", transport.AccountLinked),
			mod(ca("dc4", 0), func(a *transport.Account) { a.Ledger = 0 })},
			want: codes1(transport.CodeLinkedEventFailed, transport.CodeLedgerInvalid)},
		{name: "linked chain open", accounts: []transport.Account{ca("dc3", 0), ca("dc4", transport.AccountLinked)},
			want: codes1(transport.CodeOK, transport.CodeLinkedEventChainOpen)},
		{name: "the failed chain's ids are free", accounts: []transport.Account{ca("dc4", 0)}, want: codes1(transport.CodeOK)},
	}},
	{name: "posted transfers", steps: []step{
		{name: "accounts", accounts: []transport.Account{ca("dbank", 0), ca("dwallet", lim), ca("dover", 0), ca("dover2", 0),
			mod(ca("deur", 0), func(a *transport.Account) { a.Ledger = 2 }), ca("dclosed", transport.AccountClosed),
			ca("shop", 0), ca("cap", climt), ca("closed", transport.AccountClosed), ca("big", 0)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK,
				transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK)},
		{name: "fund", transfers: []transport.Transfer{tx("fund", "dbank", "dwallet", 100, 0)}, want: codes1(transport.CodeOK),
			after: map[string][4]uint64{"dbank": {0, 100, 0, 0}, "dwallet": {0, 0, 0, 100}}},
		{name: "spend", transfers: []transport.Transfer{tx("spend", "dwallet", "shop", 60, 0)}, want: codes1(transport.CodeOK),
			after: map[string][4]uint64{"dwallet": {0, 60, 0, 100}, "shop": {0, 0, 0, 60}}},
		{name: "retry, other amount", transfers: []transport.Transfer{tx("spend", "dwallet", "shop", 60, 0), tx("spend", "dwallet", "shop", 61, 0)},
			want: codes1(transport.CodeExists, transport.CodeExistsWithDifferentFields)},
		{name: "field errors", transfers: []transport.Transfer{
			tx("raw:", "dbank", "shop", 1, 0), tx("f1", "dbank", "shop", 1, 1<<8),
			mod(tx("f2", "dbank", "shop", 1, 0), func(x *transport.Transfer) { x.Ledger = 0 }),
			mod(tx("f3", "dbank", "shop", 1, 0), func(x *transport.Transfer) { x.Code = 0 }),
			tx("f4", "dbank", "shop", 0, 0),
			mod(tx("f5", "dbank", "shop", 1, 0), func(x *transport.Transfer) { x.Timeout = 5 }),
			mod(tx("f6", "dbank", "shop", 1, 0), func(x *transport.Transfer) { x.Metadata = pairs(17) }),
			mod(tx("f7", "dbank", "shop", 1, 0), func(x *transport.Transfer) { x.Timestamp = 1 }),
			mod(tx("f8", "dbank", "shop", 1, 0), func(x *transport.Transfer) { x.PendingID = "x" }),
			tx("f9", "dbank", "dbank", 1, 0),
		}, want: []transport.Code{transport.CodeIDInvalid, transport.CodeFlagsInvalid, transport.CodeLedgerInvalid, transport.CodeCodeInvalid,
			transport.CodeAmountInvalid, transport.CodeTimeoutInvalid, transport.CodeMetadataInvalid, transport.CodeTimestampMustBeZero,
			transport.CodePendingIDInvalid, transport.CodeAccountsMustBeDifferent}},
		{name: "account errors", transfers: []transport.Transfer{
			tx("e1", "dnope", "shop", 1, 0), tx("e2", "dbank", "nope", 1, 0), tx("e3", "deur", "shop", 1, 0),
			tx("e4", "dbank", "closed", 1, 0), tx("e5", "dclosed", "shop", 1, 0),
			tx("e6", "dwallet", "shop", 41, 0), tx("e7", "dbank", "cap", 1, 0),
		}, want: []transport.Code{transport.CodeDebitAccountNotFound, transport.CodeCreditAccountNotFound, transport.CodeLedgerMismatch,
			transport.CodeAccountClosed, transport.CodeAccountClosed, transport.CodeExceedsCredits, transport.CodeExceedsDebits},
			after: map[string][4]uint64{"dwallet": {0, 60, 0, 100}, "shop": {0, 0, 0, 60}, "cap": {0, 0, 0, 0}}},
		{name: "overflow", transfers: []transport.Transfer{tx("o1", "dover", "big", maxAmount, 0), tx("o2", "dover2", "big", 1, 0)},
			want:  codes1(transport.CodeOK, transport.CodeOverflow),
			after: map[string][4]uint64{"big": {0, 0, 0, maxAmount}, "dover2": {0, 0, 0, 0}}},
		{name: "the refused ids are free", transfers: []transport.Transfer{tx("e6", "dwallet", "shop", 40, 0)}, want: codes1(transport.CodeOK),
			after: map[string][4]uint64{"dwallet": {0, 100, 0, 100}, "shop": {0, 0, 0, 100}}},
	}},
	{name: "two-phase transfers", steps: []step{
		{name: "accounts", accounts: []transport.Account{ca("dbank", 0), ca("dwallet", lim), ca("shop", 0)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK)},
		{name: "fund", transfers: []transport.Transfer{tx("fund", "dbank", "dwallet", 100, 0)}, want: codes1(transport.CodeOK)},
		{name: "holds", transfers: []transport.Transfer{tx("h1", "dwallet", "shop", 60, pend), tx("h2", "dwallet", "shop", 30, pend),
			mod(tx("h3", "dwallet", "shop", 5, pend), func(x *transport.Transfer) { x.Timeout = 1 }), tx("h5", "dwallet", "shop", 5, pend),
			tx("h4", "dwallet", "shop", 1, pend)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeExceedsCredits)},
		{name: "post part, void", transfers: []transport.Transfer{resolveOf("p1", "h1", post, 45), resolveOf("v2", "h2", void, 0)},
			want: codes1(transport.CodeOK, transport.CodeOK)},
		{name: "resolution errors", transfers: []transport.Transfer{
			resolveOf("r1", "h1", void, 0), resolveOf("r2", "h2", post, 0), resolveOf("r3", "nope", post, 0),
			resolveOf("r4", "fund", post, 0), mod(resolveOf("r5", "h5", post, 0), func(x *transport.Transfer) { x.Code = 9 }),
			resolveOf("r6", "h5", post, 6), resolveOf("r7", "h5", void, 2), resolveOf("r8", "r8", post, 0),
			resolveOf("p1", "h1", post, 45), resolveOf("p1", "h1", post, 44),
		}, want: []transport.Code{transport.CodePendingTransferAlreadyPosted, transport.CodePendingTransferAlreadyVoided,
			transport.CodePendingTransferNotFound, transport.CodePendingTransferNotPending, transport.CodePendingTransferMismatch,
			transport.CodeExceedsPendingTransferAmount, transport.CodePendingTransferMismatch, transport.CodePendingIDInvalid,
			transport.CodeExists, transport.CodeExistsWithDifferentFields}},
		{name: "after expiry", until: [2]string{"h3", transport.StateExpired},
			transfers: []transport.Transfer{resolveOf("r9", "h3", post, 0)}, want: codes1(transport.CodePendingTransferExpired),
			after: map[string][4]uint64{"dwallet": {5, 45, 0, 100}, "shop": {0, 0, 5, 45}}},
		{name: "void the last hold", transfers: []transport.Transfer{resolveOf("v5", "h5", void, 5)}, want: codes1(transport.CodeOK),
			after: map[string][4]uint64{"dwallet": {0, 45, 0, 100}, "shop": {0, 0, 0, 45}}},
	}},
	{name: "linked chains", steps: []step{
		{name: "accounts", accounts: []transport.Account{ca("dbank", 0), ca("dwallet", lim), ca("shop", 0), ca("fee", 0)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK)},
		{name: "fund", transfers: []transport.Transfer{tx("l0", "dbank", "dwallet", 50, 0)}, want: codes1(transport.CodeOK)},
		{name: "spend in one chain", transfers: []transport.Transfer{tx("l1", "dwallet", "shop", 40, lnk),
			tx("l2", "dwallet", "fee", 5, lnk), tx("l3", "dbank", "shop", 1, 0)},
			want:  codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK),
			after: map[string][4]uint64{"dwallet": {0, 45, 0, 50}, "shop": {0, 0, 0, 41}, "fee": {0, 0, 0, 5}}},
		{name: "a chain failing on its last leg", transfers: []transport.Transfer{tx("l4", "dbank", "shop", 10, lnk),
			tx("l5", "dwallet", "shop", 6, 0)},
			want:  codes1(transport.CodeLinkedEventFailed, transport.CodeExceedsCredits),
			after: map[string][4]uint64{"dwallet": {0, 45, 0, 50}, "shop": {0, 0, 0, 41}, "dbank": {0, 51, 0, 0}}},
		{name: "a chain failing on its credit side", transfers: []transport.Transfer{tx("l9", "dwallet", "shop", 1, lnk),
			mod(tx("l10", "dbank", "fee", 1, 0), func(x *transport.Transfer) { x.Ledger = 2 })},
			want:  codes1(transport.CodeLinkedEventFailed, transport.CodeLedgerMismatch),
			after: map[string][4]uint64{"dwallet": {0, 45, 0, 50}, "fee": {0, 0, 0, 5}}},
		{name: "retry", transfers: []transport.Transfer{tx("l1", "dwallet", "shop", 40, lnk),
			tx("l2", "dwallet", "fee", 5, lnk), tx("l3", "dbank", "shop", 1, 0)},
			want: codes1(transport.CodeExists, transport.CodeExists, transport.CodeExists)},
		{name: "existing and new mixed", transfers: []transport.Transfer{tx("l6", "dbank", "shop", 1, lnk), tx("l3", "dbank", "shop", 1, 0)},
			want: codes1(transport.CodeLinkedEventFailed, transport.CodeExists)},
		{name: "open", transfers: []transport.Transfer{tx("l7", "dbank", "shop", 1, 0), tx("l8", "dbank", "shop", 1, lnk)},
			want:  codes1(transport.CodeOK, transport.CodeLinkedEventChainOpen),
			after: map[string][4]uint64{"shop": {0, 0, 0, 42}}},
	}},
	// A leg may spend what an earlier leg of its chain credits only on one
	// shard: across shards every leg is held against balances before the
	// chain (docs/protocol.md).
	{name: "a chain spending its own credit", oneShard: true, steps: []step{
		{name: "accounts", accounts: []transport.Account{ca("dbank", 0), ca("dwallet", lim), ca("shop", 0)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK)},
		{name: "fund and spend", transfers: []transport.Transfer{tx("f1", "dbank", "dwallet", 50, lnk), tx("f2", "dwallet", "shop", 45, 0)},
			want:  codes1(transport.CodeOK, transport.CodeOK),
			after: map[string][4]uint64{"dwallet": {0, 45, 0, 50}, "shop": {0, 0, 0, 45}}},
	}},
	{name: "balancing transfers", steps: []step{
		{name: "accounts", accounts: []transport.Account{ca("dbank", 0), ca("dwallet", 0), ca("shop", 0), ca("dsrc", 0)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK, transport.CodeOK)},
		{name: "fund", transfers: []transport.Transfer{tx("fund", "dbank", "dwallet", 70, 0), tx("back", "shop", "dbank", 20, 0),
			tx("out", "dsrc", "dbank", 30, 0)},
			want: codes1(transport.CodeOK, transport.CodeOK, transport.CodeOK)},
		{name: "balancing debit, then nothing left", transfers: []transport.Transfer{
			tx("b1", "dwallet", "shop", 1000, transport.TransferBalancingDebit), tx("b2", "dwallet", "shop", 1, transport.TransferBalancingDebit)},
			want:  codes1(transport.CodeOK, transport.CodeExceedsCredits),
			after: map[string][4]uint64{"dwallet": {0, 70, 0, 70}, "shop": {0, 20, 0, 70}}},
		{name: "balancing credit, then nothing left", transfers: []transport.Transfer{tx("b3", "dbank", "dsrc", 1000, transport.TransferBalancingCredit),
			tx("b4", "dbank", "dsrc", 1, transport.TransferBalancingCredit), tx("b5", "dbank", "shop", 1, transport.TransferBalancingCredit)},
			want:  codes1(transport.CodeOK, transport.CodeExceedsDebits, transport.CodeExceedsDebits),
			after: map[string][4]uint64{"dsrc": {0, 30, 0, 30}, "shop": {0, 20, 0, 70}}},
	}},
	{name: "closing transfers", steps: []step{
		{name: "accounts", accounts: []transport.Account{ca("dbank", 0), ca("shop", 0)}, want: codes1(transport.CodeOK, transport.CodeOK)},
		{name: "close by a pending transfer", transfers: []transport.Transfer{tx("c1", "dbank", "shop", 5, pend|transport.TransferClosingCredit),
			tx("c2", "dbank", "shop", 1, 0), tx("c3", "dbank", "shop", 1, transport.TransferClosingCredit)},
			want: codes1(transport.CodeOK, transport.CodeAccountClosed, transport.CodeFlagsInvalid)},
		{name: "reopen by its void", transfers: []transport.Transfer{resolveOf("c4", "c1", void, 0), tx("c5", "dbank", "shop", 1, 0)},
			want:  codes1(transport.CodeOK, transport.CodeOK),
			after: map[string][4]uint64{"shop": {0, 0, 0, 1}}},
	}},
}

func codes1(cs ...transport.Code) []transport.Code { return cs }

func TestConformanceOnOneAndTwoShards(t *testing.T) {
	// The table reaches every result code of the protocol.
	reached := map[transport.Code]bool{}
	for _, sc := range conformance {
		for _, st := range sc.steps {
			for _, c := range st.want {
				reached[c] = true
			}
		}
	}
	// unauthorized is answered to providers only: providers_test.go has a
	// row for each rule (TestProviderMayCreateOnlyWhatItOwns); this table
	// runs as an operator.
	reached[transport.CodeUnauthorized] = true
	for c := transport.CodeOK; c <= transport.CodeLinkedEventChainOpen; c++ {
		if !reached[c] {
			t.Errorf("no row of the table answers %v", c)
		}
	}
	answers := map[uint32][][]transport.Code{}
	for _, shards := range []uint32{1, 2} {
		t.Run(fmt.Sprintf("%d shards", shards), func(t *testing.T) {
			c := startCluster(t, shards)
			for i, sc := range conformance {
				answers[shards] = append(answers[shards], runScenario(t, c, i, sc, shards)...)
			}
			c.quiesce()
		})
	}
	// Both runs pass the same table, so they answered alike; say so.
	if fmt.Sprint(answers[1]) != fmt.Sprint(answers[2]) {
		t.Fatalf("one shard and two shards answered differently:\n%v\n%v", answers[1], answers[2])
	}
}

func runScenario(t *testing.T, c *cluster, index int, sc scenario, shards uint32) [][]transport.Code {
	placed := map[string]string{}
	place := func(name string) string {
		if name == "" {
			return ""
		}
		if raw, ok := strings.CutPrefix(name, "raw:"); ok {
			return raw
		}
		if id, ok := placed[name]; ok {
			return id
		}
		shard := uint32(1)
		if shards == 2 && !sc.oneShard && !strings.HasPrefix(name, "d") {
			shard = 2
		}
		placed[name] = c.accountOn(fmt.Sprintf("s%d-%s", index, name), shard)
		return placed[name]
	}
	tid := func(id string) string {
		if raw, ok := strings.CutPrefix(id, "raw:"); ok {
			return raw
		}
		return fmt.Sprintf("s%d-%s", index, id)
	}
	var got [][]transport.Code
	for _, st := range sc.steps {
		where := fmt.Sprintf("%s / %s (%d shards)", sc.name, st.name, shards)
		if st.until[0] != "" {
			deadline := time.Now().Add(30 * time.Second) // a hang guard
			for c.transferState(tid(st.until[0])) != st.until[1] {
				if time.Now().After(deadline) {
					t.Fatalf("%s: %s never became %s", where, st.until[0], st.until[1])
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		var res []transport.Result
		var err error
		if st.accounts != nil {
			as := make([]transport.Account, len(st.accounts))
			for i, a := range st.accounts {
				a.ID, a.Metadata = place(a.ID), maps.Clone(a.Metadata)
				as[i] = a
			}
			res, err = c.c.CreateAccounts(c.ctx(), as)
		} else {
			xs := make([]transport.Transfer, len(st.transfers))
			for i, x := range st.transfers {
				x.ID, x.DebitAccountID, x.CreditAccountID = tid(x.ID), place(x.DebitAccountID), place(x.CreditAccountID)
				if x.PendingID != "" {
					x.PendingID = tid(x.PendingID)
				}
				xs[i] = x
			}
			res, err = c.c.CreateTransfers(c.ctx(), xs)
		}
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if fmt.Sprint(codes(res)) != fmt.Sprint(st.want) {
			t.Fatalf("%s: codes %v, want %v", where, codes(res), st.want)
		}
		got = append(got, codes(res))
		for name, want := range st.after {
			a := c.account(place(name))
			if b := [4]uint64{a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted}; b != want {
				t.Fatalf("%s: %s {dp dP cp cP} %v, want %v", where, name, b, want)
			}
		}
	}
	return got
}
