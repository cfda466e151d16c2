package shard

import (
	"bytes"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// Two-phase transfers across shards: the debit shard (1) owns the pending
// transfer and its saga; the credit shard (2) holds the credit half until a
// post, void or expiry settles it. Messages are carried by hand here; the
// simulator (package sim) loses, repeats and reorders them.

type remoteFixture struct {
	t      *testing.T
	c      *clock
	d, cr  *State // debit shard 1, credit shard 2
	sent   []OutboxRow
	lastIn *Output
}

func newRemoteFixture(t *testing.T) *remoteFixture {
	f := &remoteFixture{t: t, c: &clock{}, d: New(1, nil), cr: New(2, nil)}
	mustCreateAccounts(t, f.c, f.d, acct("bank", 1, 0), acct("wallet", 1, transport.AccountDebitsMustNotExceedCredits))
	mustCreateAccounts(t, f.c, f.cr, acct("shop", 1, 0), acct("capped", 1, transport.AccountCreditsMustNotExceedDebits))
	mustTransfer(t, f.c, f.d, xfer("fund", "bank", "wallet", 100))
	return f
}

// send applies transfers on the debit shard (credit accounts on shard 2)
// and keeps the outbox rows written.
func (f *remoteFixture) send(xs ...transport.Transfer) []EventResult {
	out := f.c.apply(f.d, Command{Kind: KindCreateTransfers, Transfers: xs, CreditShards: repeat(uint32(2), len(xs))})
	f.sent = append(f.sent, out.Reserved...)
	f.lastIn = out
	return out.Events[0]
}

func repeat(v uint32, n int) []uint32 {
	r := make([]uint32, n)
	for i := range r {
		r[i] = v
	}
	return r
}

// deliver carries every row sent so far to the credit shard (as a credit,
// or as an abort) and its answers back; it returns what the debit shard
// resolved.
func (f *remoteFixture) deliver(abort bool) []Resolved {
	kind := KindCredit
	if abort {
		kind = KindAbort
	}
	var credits []Credit
	for _, r := range f.sent {
		credits = append(credits, Credit{Transfer: r.Transfer, DebitShard: 1})
	}
	f.sent = nil
	if len(credits) == 0 {
		return nil
	}
	answers := f.c.apply(f.cr, Command{Kind: kind, Credits: credits}).Answers[0]
	return f.c.apply(f.d, Command{Kind: KindResolve, Answers: answers}).Resolved
}

func (f *remoteFixture) balances(s *State, id string) [4]uint64 {
	a := account(f.t, s, id)
	return [4]uint64{a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted}
}

func (f *remoteFixture) want(s *State, id string, b [4]uint64) {
	f.t.Helper()
	if got := f.balances(s, id); got != b {
		f.t.Fatalf("shard %d %s: {dp dP cp cP} %v, want %v", s.id, id, got, b)
	}
}

func remotePending(id string, amount uint64, timeout uint32) transport.Transfer {
	x := xfer(id, "wallet", "shop", amount)
	x.Flags, x.Timeout = transport.TransferPending, timeout
	return x
}

func resolution(id, pending string, flags uint32, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, PendingID: pending, Flags: flags, Amount: amount}
}

func TestPendingAcrossShardsPostedInPart(t *testing.T) {
	f := newRemoteFixture(t)
	r := f.send(remotePending("hold", 60, 0))[0]
	if !r.InFlight {
		t.Fatalf("pending across shards: %+v", r)
	}
	f.want(f.d, "wallet", [4]uint64{60, 0, 0, 100})
	res := f.deliver(false)
	if len(res) != 1 || res[0].Code != transport.CodeOK || res[0].Timestamp != r.Attempt {
		t.Fatalf("resolved %+v", res)
	}
	f.want(f.d, "wallet", [4]uint64{60, 0, 0, 100})
	f.want(f.cr, "shop", [4]uint64{0, 0, 60, 0})
	if got := f.d.LookupTransfers([]string{"hold"}); len(got) != 1 || got[0].State != transport.StatePending || got[0].Timestamp != r.Attempt {
		t.Fatalf("lookup %+v", got)
	}
	// The hold counts against the wallet's limit.
	if r := f.send(xfer("more", "wallet", "shop", 41))[0]; r.Code != transport.CodeExceedsCredits {
		t.Fatalf("spending held money: %+v", r)
	}
	// A post of 45: applied on the debit side at once, answered once the
	// credit shard has settled.
	post := f.send(resolution("capture", "hold", transport.TransferPostPendingTransfer, 45))[0]
	if !post.InFlight {
		t.Fatalf("post across shards: %+v", post)
	}
	f.want(f.d, "wallet", [4]uint64{0, 45, 0, 100})
	f.want(f.cr, "shop", [4]uint64{0, 0, 60, 0})
	// A retry while the settlement is in flight joins it.
	if again := f.send(resolution("capture", "hold", transport.TransferPostPendingTransfer, 45))[0]; !again.InFlight || !again.Retry || again.Attempt != post.Attempt {
		t.Fatalf("retry in flight: %+v", again)
	}
	// A void of the same hold is refused now.
	if v := f.send(resolution("release", "hold", transport.TransferVoidPendingTransfer, 0))[0]; v.Code != transport.CodePendingTransferAlreadyPosted {
		t.Fatalf("void after post: %+v", v)
	}
	res = f.deliver(false)
	if len(res) != 1 || res[0].ID != "capture" || res[0].Code != transport.CodeOK || res[0].Timestamp != post.Attempt {
		t.Fatalf("settled %+v", res)
	}
	f.want(f.cr, "shop", [4]uint64{0, 0, 0, 45})
	if f.d.OutboxLen() != 0 || len(f.cr.pendingCredits) != 0 || len(f.d.remote) != 0 {
		t.Fatalf("left over: outbox %d, pending credits %d, remote %d", f.d.OutboxLen(), len(f.cr.pendingCredits), len(f.d.remote))
	}
	if again := f.send(resolution("capture", "hold", transport.TransferPostPendingTransfer, 45))[0]; again.Code != transport.CodeExists || again.Timestamp != post.Attempt {
		t.Fatalf("retry after settlement: %+v", again)
	}
	got := f.d.LookupTransfers([]string{"hold", "capture"})
	if got[0].State != transport.StatePosted || got[1].State != transport.StatePosted || got[1].Amount != 45 || got[1].CreditAccountID != "shop" {
		t.Fatalf("stored %+v", got)
	}
	// The credit account's history lists the hold and the capture.
	hist := f.cr.archive.(*MemArchive).AccountTransfers["shop"]
	if len(hist) != 2 {
		t.Fatalf("shop's history: %+v", hist)
	}
	// A duplicate of the settlement changes nothing.
	before := f.cr.Hash()
	settle := Credit{Transfer: f.d.archiveTransfer(t, "capture"), DebitShard: 1}
	if a := f.c.apply(f.cr, Command{Kind: KindCredit, Credits: []Credit{settle}}).Answers[0][0]; a.Outcome != OutcomeCredited || f.cr.Hash() != before {
		t.Fatalf("duplicate settlement: %+v", a)
	}
}

func (s *State) archiveTransfer(t *testing.T, id string) transport.Transfer {
	x, ok := s.archived(id)
	if !ok {
		t.Fatalf("%q not archived", id)
	}
	return x
}

func TestPendingAcrossShardsVoidedAndExpired(t *testing.T) {
	f := newRemoteFixture(t)
	f.send(remotePending("h1", 30, 0), remotePending("h2", 20, 1))
	f.deliver(false)
	f.want(f.cr, "shop", [4]uint64{0, 0, 50, 0})
	if v := f.send(resolution("v1", "h1", transport.TransferVoidPendingTransfer, 0))[0]; !v.InFlight {
		t.Fatalf("void: %+v", v)
	}
	f.want(f.d, "wallet", [4]uint64{20, 0, 0, 100})
	// An abort cannot stop a settlement: the credit shard applies it.
	if res := f.deliver(true); len(res) != 1 || res[0].Code != transport.CodeOK {
		t.Fatalf("void settled through an abort: %+v", res)
	}
	f.want(f.cr, "shop", [4]uint64{0, 0, 20, 0})
	// h2 expires: the leader's expiry entry releases the debit side and
	// sends the credit shard a void under h2's id.
	out := f.d.Apply(&Entry{Timestamp: f.c.now + 2e9, Commands: []Command{{Kind: KindExpire}}})
	if len(out.Expired) != 1 || len(out.Reserved) != 1 || out.Reserved[0].Transfer.PendingID != "h2" {
		t.Fatalf("expiry output %+v", out)
	}
	f.c.now += 2e9
	f.sent = out.Reserved
	f.want(f.d, "wallet", [4]uint64{0, 0, 0, 100})
	// A retry of h2 while its expiry is being settled answers exists.
	if r := f.send(remotePending("h2", 20, 1))[0]; r.Code != transport.CodeExists {
		t.Fatalf("retry of an expired pending transfer: %+v", r)
	}
	f.deliver(false)
	f.want(f.cr, "shop", [4]uint64{0, 0, 0, 0})
	if got := f.d.LookupTransfers([]string{"h1", "h2"}); got[0].State != transport.StateVoided || got[1].State != transport.StateExpired {
		t.Fatalf("states %q %q", got[0].State, got[1].State)
	}
	if f.d.OutboxLen() != 0 || len(f.cr.pendingCredits) != 0 {
		t.Fatal("settlements left over")
	}
}

func TestPendingAcrossShardsRefusedOrAbortedIsVoided(t *testing.T) {
	f := newRemoteFixture(t)
	x := remotePending("capped-hold", 10, 0)
	x.CreditAccountID = "capped" // no debits: its credits may not grow
	f.send(x)
	res := f.deliver(false)
	if len(res) != 1 || res[0].Code != transport.CodeExceedsDebits {
		t.Fatalf("refused pending credit: %+v", res)
	}
	f.send(remotePending("aborted", 10, 0))
	if res := f.deliver(true); len(res) != 1 || !res[0].Aborted {
		t.Fatalf("aborted pending: %+v", res)
	}
	f.want(f.d, "wallet", [4]uint64{0, 0, 0, 100})
	f.want(f.cr, "shop", [4]uint64{0, 0, 0, 0})
	f.want(f.cr, "capped", [4]uint64{0, 0, 0, 0})
	if got := f.d.LookupTransfers([]string{"capped-hold", "aborted"}); len(got) != 0 || len(f.d.remote) != 0 || len(f.cr.pendingCredits) != 0 {
		t.Fatalf("a voided attempt left %+v", got)
	}
}

// The tables of both sides survive a snapshot mid-saga.
func TestPendingAcrossShardsSurvivesASnapshot(t *testing.T) {
	f := newRemoteFixture(t)
	f.send(remotePending("h", 30, 5), remotePending("h-open", 5, 0))
	f.deliver(false)
	f.send(resolution("p", "h", transport.TransferPostPendingTransfer, 10))
	for _, s := range []**State{&f.d, &f.cr} {
		var buf bytes.Buffer
		if _, err := (*s).WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		r, err := Read(&buf, (*s).archive)
		if err != nil {
			t.Fatal(err)
		}
		if r.Hash() != (*s).Hash() {
			t.Fatalf("shard %d: restored state differs", (*s).id)
		}
		*s = r
	}
	if len(f.d.remote) != 1 || len(f.cr.pendingCredits) != 2 {
		t.Fatalf("restored remote %v, pending credits %d", f.d.remote, len(f.cr.pendingCredits))
	}
	f.deliver(false)
	f.want(f.cr, "shop", [4]uint64{0, 0, 5, 10})
	// In a chain, a post of a pending transfer across shards is refused:
	// a chain never waits on a saga.
	cmd := Command{Kind: KindCreateTransfers, CreditShards: []uint32{1, 0},
		Transfers: chained(xfer("plain", "bank", "wallet", 1), resolution("p2", "h-open", transport.TransferPostPendingTransfer, 0))}
	wantCodes(t, f.c.apply(f.d, cmd).Events[0], transport.CodeLinkedEventFailed, transport.CodeFlagsInvalid)
}

// Balancing transfers across shards: a balancing_debit is clamped on the
// debit shard before it is reserved; a balancing_credit on the credit
// shard, which answers what it credited, and the debit shard releases the
// rest of its reservation.
func TestBalancingAcrossShards(t *testing.T) {
	f := newRemoteFixture(t)
	bd := xfer("bd", "wallet", "shop", 1000)
	bd.Flags = transport.TransferBalancingDebit
	if r := f.send(bd)[0]; !r.InFlight {
		t.Fatalf("balancing debit: %+v", r)
	}
	f.want(f.d, "wallet", [4]uint64{100, 0, 0, 100}) // clamped to the wallet's credits
	if res := f.deliver(false); len(res) != 1 || res[0].Code != transport.CodeOK {
		t.Fatalf("balancing debit resolved %+v", res)
	}
	f.want(f.d, "wallet", [4]uint64{0, 100, 0, 100})
	f.want(f.cr, "shop", [4]uint64{0, 0, 0, 100})
	if got := f.d.LookupTransfers([]string{"bd"}); len(got) != 1 || got[0].Amount != 100 {
		t.Fatalf("stored %+v", got)
	}
	if r := f.send(bd)[0]; r.Code != transport.CodeExists {
		t.Fatalf("retry: %+v", r)
	}
	if r := f.send(mod(bd, func(x *transport.Transfer) { x.ID = "bd2" }))[0]; r.Code != transport.CodeExceedsCredits || r.InFlight {
		t.Fatalf("nothing left to debit: %+v", r)
	}

	// capped may be credited up to its debits: 30.
	mustTransfer(t, f.c, f.cr, xfer("out", "capped", "shop", 30))
	bc := xfer("bc", "bank", "capped", 1000)
	bc.Flags = transport.TransferBalancingCredit | transport.TransferPending
	f.send(bc)
	f.want(f.d, "bank", [4]uint64{1000, 100, 0, 0}) // reserved in full
	if res := f.deliver(false); len(res) != 1 || res[0].Code != transport.CodeOK {
		t.Fatalf("balancing credit resolved %+v", res)
	}
	f.want(f.d, "bank", [4]uint64{30, 100, 0, 0}) // the rest released
	f.want(f.cr, "capped", [4]uint64{0, 30, 30, 0})
	if got := f.d.LookupTransfers([]string{"bc"}); len(got) != 1 || got[0].Amount != 30 || got[0].State != transport.StatePending {
		t.Fatalf("stored %+v", got)
	}
	f.send(resolution("bcv", "bc", transport.TransferVoidPendingTransfer, 0))
	f.deliver(false)
	f.want(f.d, "bank", [4]uint64{0, 100, 0, 0})
	f.want(f.cr, "capped", [4]uint64{0, 30, 0, 0})
	bc2 := mod(bc, func(x *transport.Transfer) { x.ID, x.Flags = "bc2", transport.TransferBalancingCredit })
	f.send(bc2)
	f.deliver(false)
	f.want(f.cr, "capped", [4]uint64{0, 30, 0, 30})
	f.want(f.d, "bank", [4]uint64{0, 130, 0, 0})
	bc3 := mod(bc2, func(x *transport.Transfer) { x.ID = "bc3" })
	f.send(bc3)
	if res := f.deliver(false); len(res) != 1 || res[0].Code != transport.CodeExceedsDebits {
		t.Fatalf("nothing left to credit: %+v", res)
	}
	f.want(f.d, "bank", [4]uint64{0, 130, 0, 0})
	if l, r := ledgerSums(f.d, f.cr)[1], [2]uint64{}; l[0] != l[1] || l == r {
		t.Fatalf("ledger 1: %v", l)
	}
}

// Closing transfers across shards: each shard closes its own account when
// the pending transfer holds (the credit shard at the credit, the debit
// shard at the resolve), and reopens it at a void or an expiry; a post
// leaves them closed.
func TestClosingAcrossShards(t *testing.T) {
	f := newRemoteFixture(t)
	both := transport.TransferPending | transport.TransferClosingDebit | transport.TransferClosingCredit
	closed := func(s *State, id string) bool { return account(t, s, id).Flags&transport.AccountClosed != 0 }
	x := xfer("close", "bank", "shop", 5)
	x.Flags = both
	f.send(x)
	if closed(f.d, "bank") {
		t.Fatal("closed before the credit shard answered")
	}
	f.deliver(false)
	if !closed(f.d, "bank") || !closed(f.cr, "shop") {
		t.Fatal("not closed once pending")
	}
	if r := f.send(xfer("after", "bank", "capped", 1))[0]; r.Code != transport.CodeAccountClosed {
		t.Fatalf("debit from a closed account: %+v", r)
	}
	f.send(xfer("to-shop", "wallet", "shop", 1))
	if res := f.deliver(false); len(res) != 1 || res[0].Code != transport.CodeAccountClosed {
		t.Fatalf("credit to a closed account: %+v", res)
	}
	f.send(resolution("reopen", "close", transport.TransferVoidPendingTransfer, 0))
	if closed(f.d, "bank") {
		t.Fatal("the void did not reopen the debit account")
	}
	f.deliver(false)
	if closed(f.cr, "shop") {
		t.Fatal("the void's settlement did not reopen the credit account")
	}
	// An expiry reopens both too.
	y := xfer("close2", "bank", "shop", 5)
	y.Flags, y.Timeout = both, 1
	f.send(y)
	f.deliver(false)
	f.c.now += 2e9
	out := f.c.apply(f.d, Command{Kind: KindExpire})
	f.sent = append(f.sent, out.Reserved...)
	if len(out.Expired) != 1 || closed(f.d, "bank") {
		t.Fatalf("expired %v, bank closed %v", out.Expired, closed(f.d, "bank"))
	}
	f.deliver(false)
	if closed(f.cr, "shop") {
		t.Fatal("the expiry's settlement did not reopen the credit account")
	}
	// A post leaves them closed.
	z := xfer("close3", "bank", "shop", 5)
	z.Flags = both
	f.send(z)
	f.deliver(false)
	f.send(resolution("keep", "close3", transport.TransferPostPendingTransfer, 0))
	f.deliver(false)
	if !closed(f.d, "bank") || !closed(f.cr, "shop") {
		t.Fatal("a post reopened an account")
	}
	f.want(f.cr, "shop", [4]uint64{0, 0, 0, 5})
}
