package check

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ledgerd/ledgerd/transport"
)

// builder writes synthetic histories; the final lookups are written by
// hand, as the ledger would store them.
type builder struct{ h History }

func (b *builder) send(client int, call, ret int64, codes []transport.Code, ts ...transport.Transfer) {
	op := Op{Client: client, Call: call, Return: ret, Transfers: ts, Outcome: OutcomeUnknown}
	if codes != nil {
		op.Outcome = OutcomeOK
		for i, c := range codes {
			op.Results = append(op.Results, transport.Result{Index: uint32(i), Code: c})
		}
	}
	b.h.Ops = append(b.h.Ops, op)
}

func (b *builder) read(client int, call, ret int64, seen ...transport.Account) {
	op := Op{Client: client, Call: call, Return: ret, Outcome: OutcomeOK, Accounts: seen}
	for _, a := range seen {
		op.Read = append(op.Read, a.ID)
	}
	b.h.Ops = append(b.h.Ops, op)
}

var (
	ok      = []transport.Code{transport.CodeOK}
	exists  = []transport.Code{transport.CodeExists}
	unknown []transport.Code // no answer
)

func plain(id, debit, credit string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: amount, Ledger: 1, Code: 1}
}

func pending(id, debit, credit string, amount uint64, timeout uint32) transport.Transfer {
	t := plain(id, debit, credit, amount)
	t.Flags, t.Timeout = transport.TransferPending, timeout
	return t
}

func resolution(id, pendingID string, flags uint32, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, PendingID: pendingID, Flags: flags, Amount: amount}
}

// stored is t as a lookup returns it.
func stored(t transport.Transfer, timestamp uint64, state string) transport.Transfer {
	t.Timestamp, t.State = timestamp, state
	return t
}

func bal(id string, debitsPending, debitsPosted, creditsPending, creditsPosted uint64) transport.Account {
	return transport.Account{ID: id, DebitsPending: debitsPending, DebitsPosted: debitsPosted,
		CreditsPending: creditsPending, CreditsPosted: creditsPosted}
}

func accounts() []transport.Account {
	return []transport.Account{
		{ID: "bank", Ledger: 1, Code: 1},
		{ID: "alice", Ledger: 1, Code: 1, Flags: transport.AccountDebitsMustNotExceedCredits},
		{ID: "bob", Ledger: 1, Code: 1},
	}
}

// base is one transfer, t1, bank -> alice 100, answered ok in [0, 10].
func base() *builder {
	b := &builder{h: History{Accounts: accounts()}}
	b.send(0, 0, 10, ok, plain("t1", "bank", "alice", 100))
	b.h.FinalTransfers = []transport.Transfer{stored(plain("t1", "bank", "alice", 100), 1, transport.StatePosted)}
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 100, 0, 0), bal("alice", 0, 0, 0, 100), bal("bob", 0, 0, 0, 0)}
	return b
}

func wantViolations(t *testing.T, r *Report, want ...Violation) {
	t.Helper()
	if !slices.Equal(r.Violations, want) {
		t.Fatalf("violations:\n%s\nwant:\n%s", list(r.Violations), list(want))
	}
	if (r.Err() == nil) != (len(want) == 0) {
		t.Fatalf("Err() = %v with %d violations", r.Err(), len(want))
	}
}

func list(vs []Violation) string {
	var b strings.Builder
	for _, v := range vs {
		b.WriteString("  " + v.String() + "\n")
	}
	return b.String()
}

func TestCheckPassesConcurrentHistoryWithRetriesPendingAndUnknowns(t *testing.T) {
	b := &builder{h: History{Accounts: accounts()}}
	t1, t2, t3 := plain("t1", "bank", "alice", 100), plain("t2", "bank", "bob", 50), plain("t3", "alice", "bob", 30)
	t4, t5, t7 := plain("t4", "bob", "bank", 10), plain("t5", "alice", "bank", 1000), plain("t7", "bank", "bob", 7)
	t6 := plain("t6", "alice", "bank", 1000)
	t6.Flags = transport.TransferBalancingDebit
	p1, p2, p3 := pending("p1", "alice", "bob", 50, 0), pending("p2", "bank", "bob", 40, 0), pending("p3", "bank", "alice", 5, 1)
	post1 := resolution("post1", "p1", transport.TransferPostPendingTransfer, 20)
	void2 := resolution("void2", "p2", transport.TransferVoidPendingTransfer, 0)

	b.send(0, 0, 10, ok, t1)
	b.send(1, 5, 20, ok, t2)
	b.read(2, 6, 8, bal("alice", 0, 0, 0, 100), bal("bob", 0, 0, 0, 0)) // t1 done inside the read, t2 not yet
	b.send(0, 12, 30, unknown, t3)
	b.send(1, 21, 25, unknown, t4)                 // never applied
	b.read(2, 22, 28, bal("alice", 0, 30, 0, 100)) // t3 applied by its first try
	b.send(0, 31, 40, exists, t3)                  // the retry learns it
	b.send(1, 41, 50, ok, p1)
	b.send(0, 45, 55, unknown, p2) // applied
	b.send(1, 51, 60, ok, post1)   // posts 20 of 50
	b.send(0, 61, 70, ok, void2)
	b.read(2, 62, 64, bal("bob", 0, 0, 40, 100), bal("alice", 0, 50, 0, 100))
	// p3 expires; t5 is refused.
	b.send(1, 61, 66, []transport.Code{transport.CodeOK, transport.CodeExceedsCredits}, p3, t5)
	b.send(0, 71, 75, ok, t6)      // clamped to alice's 50 of headroom
	b.send(1, 72, 90, unknown, t7) // applied, after the next read
	b.read(2, 76, 78, bal("alice", 0, 100, 0, 100), bal("bank", 0, 150, 0, 50))
	b.h.Ops = append(b.h.Ops, Op{Client: 1, Call: 80, Return: 85, Read: []string{"alice"}, Outcome: OutcomeUnknown})
	b.read(2, 95, 99, bal("bank", 0, 157, 0, 50), bal("bob", 0, 0, 0, 107))

	filled := func(r transport.Transfer, p transport.Transfer, amount uint64) transport.Transfer {
		r.DebitAccountID, r.CreditAccountID, r.Ledger, r.Code, r.Amount = p.DebitAccountID, p.CreditAccountID, p.Ledger, p.Code, amount
		return r
	}
	t6.Amount = 50
	b.h.FinalTransfers = []transport.Transfer{
		stored(t1, 1, transport.StatePosted), stored(t2, 2, transport.StatePosted), stored(t3, 3, transport.StatePosted),
		stored(p1, 4, transport.StatePosted), stored(filled(post1, p1, 20), 5, transport.StatePosted),
		stored(p2, 6, transport.StateVoided), stored(filled(void2, p2, 40), 7, transport.StateVoided),
		stored(p3, 8, transport.StateExpired), stored(t6, 9, transport.StatePosted), stored(t7, 10, transport.StatePosted),
	}
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 157, 0, 50), bal("alice", 0, 100, 0, 100), bal("bob", 0, 0, 0, 107)}

	r := Check(&b.h)
	wantViolations(t, r)
	want := Report{Ops: 18, TransfersOK: 8, TransfersRefused: 1, TransfersUnknown: 3, UnknownApplied: 2, Reads: 5, ReadsUnknown: 1, AccountsChecked: 3}
	got := *r
	got.Linearizable, got.Violations = nil, nil
	if got.String() != want.String() {
		t.Errorf("report %s\nwant   %s", got.String(), want.String())
	}
	for _, id := range []string{"bank", "alice", "bob"} {
		if r.Linearizable[id] != porcupine.Ok {
			t.Errorf("account %s: linearizable %q, want Ok", id, r.Linearizable[id])
		}
	}
}

func TestCheckPassesUnknownTransferNotApplied(t *testing.T) {
	b := base()
	b.send(1, 5, 30, unknown, plain("t2", "bank", "bob", 5))
	b.read(2, 40, 50, bal("bob", 0, 0, 0, 0), bal("alice", 0, 0, 0, 100))
	wantViolations(t, Check(&b.h))
}

func TestCheckCatchesOKTransferMissing(t *testing.T) {
	b := base()
	b.h.FinalTransfers = nil
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 0, 0, 0), bal("alice", 0, 0, 0, 0), bal("bob", 0, 0, 0, 0)}
	wantViolations(t, Check(&b.h),
		Violation{KindMissing, "transfer t1 was answered ok in op 0 but the final lookup does not hold it"})
}

func TestCheckCatchesOKTransferStoredWithOtherAmount(t *testing.T) {
	b := base()
	b.h.FinalTransfers[0].Amount = 90
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 90, 0, 0), bal("alice", 0, 0, 0, 90), bal("bob", 0, 0, 0, 0)}
	wantViolations(t, Check(&b.h),
		Violation{KindFields, "transfer t1 is stored with amount 90, but was sent with 100"})
}

func TestCheckCatchesAnswerWithOtherTimestamp(t *testing.T) {
	b := base()
	b.h.Ops[0].Results[0].Timestamp = 7
	wantViolations(t, Check(&b.h),
		Violation{KindFields, "transfer t1 was answered in op 0 with timestamp 7, but is stored with 1"})
}

func TestCheckCatchesRefusedTransferApplied(t *testing.T) {
	b := base()
	t2 := plain("t2", "bank", "bob", 5)
	b.send(1, 20, 30, []transport.Code{transport.CodeExceedsCredits}, t2)
	b.h.FinalTransfers = append(b.h.FinalTransfers, stored(t2, 2, transport.StatePosted))
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 105, 0, 0), bal("alice", 0, 0, 0, 100), bal("bob", 0, 0, 0, 5)}
	wantViolations(t, Check(&b.h),
		Violation{KindRefusedApplied, "transfer t2 was refused (op 1: exceeds_credits) in every try, but the final lookup holds it"})
}

func TestCheckCatchesTransferAppliedTwice(t *testing.T) {
	b := base()
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 200, 0, 0), bal("alice", 0, 0, 0, 200), bal("bob", 0, 0, 0, 0)}
	wantViolations(t, Check(&b.h),
		Violation{KindBalance, "account bank: debits_posted is 200 in the final lookup but 100 by the replay of the applied transfers"},
		Violation{KindBalance, "account alice: credits_posted is 200 in the final lookup but 100 by the replay of the applied transfers"})
}

func TestCheckCatchesTransferInFinalLookupTwice(t *testing.T) {
	b := base()
	b.h.FinalTransfers = append(b.h.FinalTransfers, b.h.FinalTransfers[0])
	wantViolations(t, Check(&b.h),
		Violation{KindDuplicated, "transfer t1 is in the final lookup more than once (timestamps 1 and 1)"})
}

func TestCheckCatchesTransferNeverSent(t *testing.T) {
	b := base()
	b.h.FinalTransfers = append(b.h.FinalTransfers, stored(plain("x", "bob", "bank", 1), 2, transport.StatePosted))
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 100, 0, 1), bal("alice", 0, 0, 0, 100), bal("bob", 0, 1, 0, 0)}
	wantViolations(t, Check(&b.h),
		Violation{KindNeverSent, "transfer x is in the final lookup but no client sent it"})
}

func TestCheckCatchesPendingPostedWithoutPost(t *testing.T) {
	b := base()
	p := pending("p", "bank", "bob", 10, 0)
	b.send(1, 20, 30, ok, p)
	b.h.FinalTransfers = append(b.h.FinalTransfers, stored(p, 2, transport.StatePosted))
	wantViolations(t, Check(&b.h),
		Violation{KindReplay, `pending transfer p is "posted" in the final lookup, but the lookup holds no post or void of it`},
		Violation{KindBalance, "account bank: debits_pending is 0 in the final lookup but 10 by the replay of the applied transfers"},
		Violation{KindBalance, "account bob: credits_pending is 0 in the final lookup but 10 by the replay of the applied transfers"})
}

func TestCheckReportsUnsupportedFlags(t *testing.T) {
	b := base()
	l := plain("l", "bank", "bob", 3)
	l.Flags = transport.TransferLinked
	b.send(1, 20, 30, ok, l)
	b.h.FinalTransfers = append(b.h.FinalTransfers, stored(l, 2, transport.StatePosted))
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 103, 0, 0), bal("alice", 0, 0, 0, 100), bal("bob", 0, 0, 0, 3)}
	r := Check(&b.h)
	want := Violation{KindUnsupported, "transfer l has flags 0x1, which the checker does not replay (it knows pending, post, void and balancing)"}
	if !slices.Contains(r.Violations, want) {
		t.Fatalf("violations:\n%swant among them: %s", list(r.Violations), want)
	}
}

func TestCheckCatchesLimitBrokenInRead(t *testing.T) {
	b := base()
	b.read(1, 20, 30, bal("alice", 150, 0, 0, 100))
	wantViolations(t, Check(&b.h),
		Violation{KindLimit, "account alice in read op 1 (client 1): debits_must_not_exceed_credits broken: debits 150 pending + 0 posted > credits 100 posted"})
}

func TestCheckCatchesLimitBrokenInFinalAccount(t *testing.T) {
	b := base()
	t2 := plain("t2", "alice", "bob", 120)
	b.send(1, 20, 30, ok, t2)
	b.h.FinalTransfers = append(b.h.FinalTransfers, stored(t2, 2, transport.StatePosted))
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 100, 0, 0), bal("alice", 0, 120, 0, 100), bal("bob", 0, 0, 0, 120)}
	wantViolations(t, Check(&b.h),
		Violation{KindLimit, "account alice in the final lookup: debits_must_not_exceed_credits broken: debits 0 pending + 120 posted > credits 100 posted"})
}

func TestCheckCatchesAccountMissingFromRead(t *testing.T) {
	b := base()
	b.h.Ops = append(b.h.Ops, Op{Client: 1, Call: 20, Return: 30, Read: []string{"bob"}, Outcome: OutcomeOK})
	wantViolations(t, Check(&b.h),
		Violation{KindMissing, "account bob, created before the run, was not found by read op 1 (client 1)"})
}

func TestCheckCatchesStaleRead(t *testing.T) {
	b := base()
	b.read(1, 20, 30, bal("alice", 0, 0, 0, 0)) // t1 returned at 10
	dir := t.TempDir()
	r := CheckWith(&b.h, Options{VisualizeDir: dir})
	path := filepath.Join(dir, "alice.html")
	wantViolations(t, r, Violation{KindLinearizable, "account alice: its 1 reads are not linearizable with the 1 transfers posted to it: " +
		"read op 1 (client 1) saw 0 debits, 0 credits posted, but transfers that returned before it was sent (t1) make at least 0 debits, 100 credits" +
		" (visualization: " + path + ")"})
	if r.Linearizable["alice"] != porcupine.Illegal {
		t.Errorf("alice: linearizable %q, want Illegal", r.Linearizable["alice"])
	}
	if _, err := os.Stat(path); err != nil {
		t.Error(err)
	}
}

func TestCheckCatchesReadOfTransferNotYetSent(t *testing.T) {
	b := base()
	b.h.Ops[0].Call, b.h.Ops[0].Return = 20, 30
	b.read(1, 0, 10, bal("alice", 0, 0, 0, 100))
	r := Check(&b.h)
	wantViolations(t, r, Violation{KindLinearizable, "account alice: its 1 reads are not linearizable with the 1 transfers posted to it: " +
		"read op 1 (client 1) saw 0 debits, 100 credits posted, but the transfers sent before it returned (none) make at most 0 debits, 0 credits"})
	if r.Linearizable["alice"] != porcupine.Illegal {
		t.Errorf("alice: linearizable %q, want Illegal", r.Linearizable["alice"])
	}
}

// Each read alone is within its bounds; only their order is impossible.
func TestCheckCatchesReadsGoingBack(t *testing.T) {
	b := &builder{h: History{Accounts: accounts()}}
	b.send(0, 0, 100, ok, plain("t1", "bank", "alice", 100))
	b.read(1, 10, 20, bal("alice", 0, 0, 0, 100))
	b.read(2, 30, 40, bal("alice", 0, 0, 0, 0))
	b.h.FinalTransfers = []transport.Transfer{stored(plain("t1", "bank", "alice", 100), 1, transport.StatePosted)}
	b.h.FinalAccounts = []transport.Account{bal("bank", 0, 100, 0, 0), bal("alice", 0, 0, 0, 100), bal("bob", 0, 0, 0, 0)}
	wantViolations(t, Check(&b.h),
		Violation{KindLinearizable, "account alice: its 2 reads are not linearizable with the 1 transfers posted to it"})
}

func TestCheckCatchesResultsNotMatchingTransfers(t *testing.T) {
	b := base()
	b.h.Ops[0].Results = nil
	r := Check(&b.h)
	wantViolations(t, r, Violation{KindHistory, "op 0 (client 0) has 0 results for 1 transfers; taken as unknown"})
	if r.TransfersUnknown != 1 || r.UnknownApplied != 1 {
		t.Errorf("report %s: want t1 unknown and applied", r)
	}
}

// A random history of a correct ledger: each op takes effect at a point
// inside its window, some outcomes are lost (applied or not). Check must
// find nothing, within its budget.
func TestCheckPassesRandomLinearizableHistory(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []string{"bank", "alice", "bob"}
	b := &builder{h: History{Accounts: []transport.Account{{ID: "bank"}, {ID: "alice"}, {ID: "bob"}}}}
	type point struct {
		at int64
		op int
	}
	var points []point
	balances := map[string]*transport.Account{}
	for _, id := range ids {
		balances[id] = &transport.Account{ID: id}
	}
	clock := make([]int64, 8) // each client's next free time: a client waits for its reply
	for i := range 3000 {
		call := clock[i%8] + rng.Int64N(50)
		at := call + rng.Int64N(200)
		ret := at + rng.Int64N(200)
		clock[i%8] = ret + 1
		if rng.IntN(3) == 0 {
			b.h.Ops = append(b.h.Ops, Op{Client: i % 8, Call: call, Return: ret, Read: ids, Outcome: OutcomeOK})
		} else {
			d := rng.IntN(3)
			tr := plain(fmt.Sprint("t", i), ids[d], ids[(d+1+rng.IntN(2))%3], uint64(1+rng.IntN(100)))
			b.send(i%8, call, ret, ok, tr)
			if rng.IntN(10) == 0 {
				b.h.Ops[i].Outcome, b.h.Ops[i].Results = OutcomeUnknown, nil
				if rng.IntN(2) == 0 {
					continue // lost before it was applied
				}
			}
		}
		points = append(points, point{at, i})
	}
	slices.SortFunc(points, func(a, b point) int { return cmp.Compare(a.at, b.at) })
	for k, p := range points {
		op := &b.h.Ops[p.op]
		if op.Read != nil {
			for _, id := range ids {
				op.Accounts = append(op.Accounts, *balances[id])
			}
			continue
		}
		tr := op.Transfers[0]
		balances[tr.DebitAccountID].DebitsPosted += tr.Amount
		balances[tr.CreditAccountID].CreditsPosted += tr.Amount
		b.h.FinalTransfers = append(b.h.FinalTransfers, stored(tr, uint64(k+1), transport.StatePosted))
	}
	for _, id := range ids {
		b.h.FinalAccounts = append(b.h.FinalAccounts, *balances[id])
	}
	start := time.Now()
	r := Check(&b.h)
	wantViolations(t, r)
	for _, id := range ids {
		if r.Linearizable[id] != porcupine.Ok {
			t.Errorf("account %s: linearizable %q, want Ok", id, r.Linearizable[id])
		}
	}
	t.Logf("%s in %v", r, time.Since(start))
}
