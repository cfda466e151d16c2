package check

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ledgerd/ledgerd/transport"
)

// Kind names what a violation breaks, so a test (or a triage script) can
// tell violations apart without parsing their text.
type Kind string

const (
	KindMissing        Kind = "missing"         // an ok transfer, or a created account, is not found
	KindDuplicated     Kind = "duplicated"      // the final lookup holds a transfer more than once
	KindFields         Kind = "fields"          // a transfer is stored with other fields than sent
	KindRefusedApplied Kind = "refused-applied" // a transfer answered refused was applied
	KindNeverSent      Kind = "never-sent"      // the final lookup holds an id no client sent
	KindReplay         Kind = "replay"          // the applied transfers contradict each other
	KindBalance        Kind = "balance"         // final balances differ from the replay
	KindLimit          Kind = "limit"           // an account's limit flag is broken
	KindLinearizable   Kind = "linearizable"    // reads of an account are not linearizable
	KindUnsupported    Kind = "unsupported"     // the checker cannot judge this transfer
	KindHistory        Kind = "history"         // the history itself is malformed
)

// Violation is one broken promise, as a sentence naming its ids.
type Violation struct {
	Kind Kind
	Text string
}

func (v Violation) String() string { return string(v.Kind) + ": " + v.Text }

// Report is what Check found. Transfers are counted by id, by what the
// clients learned over all tries of the id.
type Report struct {
	Ops              int
	TransfersOK      int // some try answered ok or exists
	TransfersRefused int // every answered try refused, and no try unknown
	TransfersUnknown int // no try answered ok, some try's outcome unknown
	UnknownApplied   int // of TransfersUnknown, those the final lookup holds
	Reads            int // answered reads (checked)
	ReadsUnknown     int // reads without an answer (dropped)
	AccountsChecked  int
	// Linearizable is porcupine's verdict per account with reads:
	// porcupine.Unknown when the search ran out of its time budget.
	Linearizable map[string]porcupine.CheckResult
	Violations   []Violation
}

// errViolationsMax bounds the violations Err spells out.
const errViolationsMax = 20

// Err is nil if no promise was broken, else an error listing the first
// violations.
func (r *Report) Err() error {
	if len(r.Violations) == 0 {
		return nil
	}
	lines := []string{fmt.Sprintf("%d violations:", len(r.Violations))}
	for _, v := range r.Violations[:min(len(r.Violations), errViolationsMax)] {
		lines = append(lines, "  "+v.String())
	}
	if n := len(r.Violations) - errViolationsMax; n > 0 {
		lines = append(lines, fmt.Sprintf("  and %d more", n))
	}
	return errors.New(strings.Join(lines, "\n"))
}

// String summarises the counts in one line.
func (r *Report) String() string {
	verdicts := map[porcupine.CheckResult]int{}
	for _, v := range r.Linearizable {
		verdicts[v]++
	}
	return fmt.Sprintf("%d ops; transfers %d ok, %d refused, %d unknown (%d applied); %d reads (%d unknown); "+
		"%d accounts, linearizable %d ok, %d unknown, %d illegal; %d violations",
		r.Ops, r.TransfersOK, r.TransfersRefused, r.TransfersUnknown, r.UnknownApplied, r.Reads, r.ReadsUnknown,
		r.AccountsChecked, verdicts[porcupine.Ok], verdicts[porcupine.Unknown], verdicts[porcupine.Illegal], len(r.Violations))
}

// Options tunes CheckWith.
type Options struct {
	// Timeout bounds the linearizability search over all accounts
	// (default 60 s). An account not decided within its share is reported
	// porcupine.Unknown, which is not a violation.
	Timeout time.Duration
	// VisualizeDir, if set, receives porcupine's HTML visualization of each
	// account whose reads are not linearizable.
	VisualizeDir string
}

const linearizeTimeoutDefault = 60 * time.Second

// never is the Return of an effect whose outcome no client learned: it may
// have taken place at any time after its first try was sent.
const never = math.MaxInt64

// Check proves what a ledger promises about one chaos run:
//  1. every transfer answered ok (or exists) is applied once, as sent;
//  2. a transfer only ever answered refused is not applied;
//  3. a transfer whose outcome was never learned is applied at most once;
//  4. final balances are the replay of the transfers applied;
//  5. no account read, nor any final account, breaks its limit flag;
//  6. each account's reads are linearizable with the transfers applied.
func Check(h *History) *Report { return CheckWith(h, Options{}) }

// CheckWith is Check with options.
func CheckWith(h *History, o Options) *Report {
	c := &checker{
		h:        h,
		r:        &Report{Ops: len(h.Ops), AccountsChecked: len(h.Accounts), Linearizable: map[string]porcupine.CheckResult{}},
		created:  map[string]transport.Account{},
		sent:     map[string]*sent{},
		final:    map[string]*transport.Transfer{},
		reads:    map[string][]porcupine.Operation{},
		effects:  map[string][]porcupine.Operation{},
		balances: map[string]*transport.Account{},
	}
	for _, a := range h.Accounts {
		c.created[a.ID] = a
		c.balances[a.ID] = &transport.Account{ID: a.ID}
	}
	order := make([]int, len(h.Ops))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return cmp.Compare(h.Ops[i].Call, h.Ops[j].Call) })
	for _, i := range order {
		if len(h.Ops[i].Transfers) > 0 {
			c.transfers(i)
		} else {
			c.read(i)
		}
	}
	c.outcomes()
	c.replay()
	c.compareFinal()
	c.linearize(o)
	return c.r
}

type checker struct {
	h       *History
	r       *Report
	created map[string]transport.Account
	sent    map[string]*sent
	sentIDs []string // in the order first sent
	final   map[string]*transport.Transfer

	// Per account, porcupine operations: answered reads, and the effects
	// of posted transfers on its posted totals.
	reads, effects map[string][]porcupine.Operation
	balances       map[string]*transport.Account // the replay's
}

func (c *checker) violate(k Kind, format string, args ...any) {
	c.r.Violations = append(c.r.Violations, Violation{Kind: k, Text: fmt.Sprintf(format, args...)})
}

// sent is what the clients learned about one transfer id over its tries.
type sent struct {
	t       transport.Transfer // as the first try sent it (retries send the same)
	client  int                // of the first try
	call    int64              // Call of the first try
	ret     int64              // the earliest Return of a try answered ok or exists; never if none
	ok      []okTry
	unknown bool
	refused string // the first refusal, "op N: code"
}

type okTry struct {
	op        int
	timestamp uint64 // the result's: the transfer's own timestamp
}

func (c *checker) transfers(i int) {
	op := &c.h.Ops[i]
	answered := op.Outcome == OutcomeOK
	if answered && len(op.Results) != len(op.Transfers) {
		c.violate(KindHistory, "op %d (client %d) has %d results for %d transfers; taken as unknown", i, op.Client, len(op.Results), len(op.Transfers))
		answered = false
	}
	for k := range op.Transfers {
		t := &op.Transfers[k]
		s := c.sent[t.ID]
		if s == nil {
			s = &sent{t: *t, client: op.Client, call: op.Call, ret: never}
			c.sent[t.ID] = s
			c.sentIDs = append(c.sentIDs, t.ID)
		}
		switch {
		case !answered:
			s.unknown = true
		case accepted(op.Results[k].Code):
			s.ok = append(s.ok, okTry{op: i, timestamp: op.Results[k].Timestamp})
			s.ret = min(s.ret, op.Return)
		case s.refused == "":
			s.refused = fmt.Sprintf("op %d: %s", i, op.Results[k].Code)
		}
	}
}

// accepted reports whether a result code says the transfer is applied:
// ok, or exists (applied by an earlier try with the same id).
func accepted(c transport.Code) bool { return c == transport.CodeOK || c == transport.CodeExists }

// read records an answered read for the limit and linearizability checks.
// A read of an id not created before the run is not judged.
func (c *checker) read(i int) {
	op := &c.h.Ops[i]
	if op.Outcome != OutcomeOK {
		c.r.ReadsUnknown++
		return
	}
	c.r.Reads++
	found := map[string]*transport.Account{}
	for k := range op.Accounts {
		found[op.Accounts[k].ID] = &op.Accounts[k]
	}
	for _, id := range op.Read {
		created, ok := c.created[id]
		if !ok {
			continue
		}
		a := found[id]
		if a == nil {
			c.violate(KindMissing, "account %s, created before the run, was not found by read op %d (client %d)", id, i, op.Client)
			continue
		}
		if broken := limitBroken(created.Flags, a); broken != "" {
			c.violate(KindLimit, "account %s in read op %d (client %d): %s", id, i, op.Client, broken)
		}
		c.reads[id] = append(c.reads[id], porcupine.Operation{ClientId: op.Client, Call: op.Call, Return: op.Return,
			Input: readIn{op: i}, Output: posted{debits: a.DebitsPosted, credits: a.CreditsPosted}})
	}
}

// outcomes checks each id sent against the final lookup: promises 1 to 3
// (3 through the duplicate check here and the balances of replay).
func (c *checker) outcomes() {
	for k := range c.h.FinalTransfers {
		t := &c.h.FinalTransfers[k]
		if prev := c.final[t.ID]; prev != nil {
			c.violate(KindDuplicated, "transfer %s is in the final lookup more than once (timestamps %d and %d)", t.ID, prev.Timestamp, t.Timestamp)
			continue
		}
		c.final[t.ID] = t
		if c.sent[t.ID] == nil {
			c.violate(KindNeverSent, "transfer %s is in the final lookup but no client sent it", t.ID)
		}
	}
	for _, id := range c.sentIDs {
		s, f := c.sent[id], c.final[id]
		switch {
		case len(s.ok) > 0:
			c.r.TransfersOK++
			if f == nil {
				c.violate(KindMissing, "transfer %s was answered ok in op %d but the final lookup does not hold it", id, s.ok[0].op)
			}
		case s.unknown:
			c.r.TransfersUnknown++
			if f != nil {
				c.r.UnknownApplied++
			}
		default:
			c.r.TransfersRefused++
			if f != nil {
				c.violate(KindRefusedApplied, "transfer %s was refused (%s) in every try, but the final lookup holds it", id, s.refused)
			}
		}
		if f == nil {
			continue
		}
		if diff := fieldsDiffer(&s.t, f, c.final[s.t.PendingID]); diff != "" {
			c.violate(KindFields, "transfer %s is stored with %s", id, diff)
		}
		for _, ok := range s.ok {
			if ok.timestamp != 0 && ok.timestamp != f.Timestamp {
				c.violate(KindFields, "transfer %s was answered in op %d with timestamp %d, but is stored with %d", id, ok.op, ok.timestamp, f.Timestamp)
			}
		}
	}
}

// fieldsDiffer describes the first field in which stored differs from what
// was sent, or returns "". A post or void may omit accounts, ledger, code
// and amount (0: the whole pending amount); a balancing transfer is stored
// with its amount clamped.
func fieldsDiffer(sent, stored, pending *transport.Transfer) string {
	resolves := sent.Flags&resolveFlags != 0
	omitted := func(empty bool) bool { return resolves && empty }
	amount, amountOK := sent.Amount, stored.Amount == sent.Amount
	switch {
	case sent.Flags&balancingFlags != 0:
		amountOK = stored.Amount > 0 && stored.Amount <= sent.Amount
	case omitted(sent.Amount == 0) && pending != nil:
		amount, amountOK = pending.Amount, stored.Amount == pending.Amount
	case omitted(sent.Amount == 0):
		amountOK = true // the replay reports the pending transfer missing
	}
	differs := func(name string, got, want any) string {
		return fmt.Sprintf("%s %v, but was sent with %v", name, got, want)
	}
	switch {
	case stored.Flags != sent.Flags:
		return differs("flags", stored.Flags, sent.Flags)
	case stored.PendingID != sent.PendingID:
		return differs("pending_id", stored.PendingID, sent.PendingID)
	case stored.DebitAccountID != sent.DebitAccountID && !omitted(sent.DebitAccountID == ""):
		return differs("debit_account_id", stored.DebitAccountID, sent.DebitAccountID)
	case stored.CreditAccountID != sent.CreditAccountID && !omitted(sent.CreditAccountID == ""):
		return differs("credit_account_id", stored.CreditAccountID, sent.CreditAccountID)
	case stored.Ledger != sent.Ledger && !omitted(sent.Ledger == 0):
		return differs("ledger", stored.Ledger, sent.Ledger)
	case stored.Code != sent.Code && !omitted(sent.Code == 0):
		return differs("code", stored.Code, sent.Code)
	case !amountOK:
		return differs("amount", stored.Amount, amount)
	case stored.Timeout != sent.Timeout:
		return differs("timeout", stored.Timeout, sent.Timeout)
	case !maps.Equal(stored.Metadata, sent.Metadata):
		return differs("metadata", stored.Metadata, sent.Metadata)
	}
	return ""
}

// limitBroken describes how a breaks its limit flag, or returns "".
func limitBroken(flags uint32, a *transport.Account) string {
	exceeds := func(pending, posted, limit uint64) bool { return pending > limit || posted > limit-pending }
	switch {
	case flags&transport.AccountDebitsMustNotExceedCredits != 0 && exceeds(a.DebitsPending, a.DebitsPosted, a.CreditsPosted):
		return fmt.Sprintf("debits_must_not_exceed_credits broken: debits %d pending + %d posted > credits %d posted",
			a.DebitsPending, a.DebitsPosted, a.CreditsPosted)
	case flags&transport.AccountCreditsMustNotExceedDebits != 0 && exceeds(a.CreditsPending, a.CreditsPosted, a.DebitsPosted):
		return fmt.Sprintf("credits_must_not_exceed_debits broken: credits %d pending + %d posted > debits %d posted",
			a.CreditsPending, a.CreditsPosted, a.DebitsPosted)
	}
	return ""
}
