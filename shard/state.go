package shard

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"math/bits"

	"github.com/ledgerd/ledgerd/transport"
)

// State is one shard's ledger. It is not safe for concurrent use: Raft's FSM
// goroutine is its only writer, and readers synchronise with it (raftfsm).
type State struct {
	id   uint32
	last uint64 // the last timestamp given to an event

	accounts  map[string]*transport.Account
	transfers map[string]*transport.Transfer // open (pending) transfers debited here
	outbox    map[string]*OutboxRow          // reserved here, waiting for the credit shard
	inbox     map[string]*InboxRow           // credit-side decisions by inboxKey, until forgotten
	// archive holds every final transfer and the accounts' history; stored
	// counts the transfers ever stored here (final and open).
	archive Archive
	stored  uint64
	// watermarks: per debit shard, attempts below it are resolved and gone.
	watermarks map[uint32]uint64
	// expiring: pending transfers with a timeout, by id, to their expiry
	// time. Derived from transfers (rebuilt by Read), so not encoded.
	expiring map[string]uint64
	// Two-phase transfers across shards. remote: the open pending
	// transfers debited here whose credit account lives on another shard,
	// by id, to that shard. pendingCredits: on the credit shard, the
	// credit halves of open pending transfers, by inboxKey(debit shard,
	// id), until their post, void or expiry settles them.
	remote         map[string]uint32
	pendingCredits map[string]*Credit
	// origins: of the remote pending transfers a split brought here, the
	// shard their credit half is keyed by (slots.go); absent: this one.
	origins map[string]uint32
	// slots: the hash slots owned, once the shard took part in a split
	// (slots.go); nil before: it serves what the router sends it.
	slots *slotState
	// Linked chains across shards (chains.go). chains: on the coordinator,
	// the chains in progress by id. heldIDs: on a debit shard, the ids of
	// legs held for a chain, to the part's key.
	chains  map[string]*ChainRow
	heldIDs map[string]string
	// owner: the provider whose command is being applied (nil: an
	// operator's). Set for one command only; never part of the state.
	owner *transport.Owner
	// requests: recent client requests, so that a router's re-send is
	// answered as the first application was (requests.go).
	requests requests
	// owned: open pending transfers by provider prefix (owned.go).
	owned ownedCounts
	// request: the request id of the command being applied; set for one
	// command only, like owner. chainsDone: the chains across shards
	// requests committed (chainsdone.go).
	request    []byte
	chainsDone chainsDone
	// chainsAnswered: the chains the command being applied was answered
	// from chainsDone (chainsdone.go); for one command only.
	chainsAnswered map[string]bool
}

// OutboxRow is a cross-shard transfer reserved on this (debit) shard.
type OutboxRow struct {
	Transfer    transport.Transfer `msgpack:"t"` // Timestamp is the attempt
	CreditShard uint32             `msgpack:"cs"`
	// Origin: the shard the credit half of the settled transfer is keyed
	// by on CreditShard, when a split moved the transfer here (0: this one).
	Origin uint32 `msgpack:"og,omitempty"`
	// Part: a part of a linked chain coordinated here, sent to CreditShard
	// (which is then the participant, debit or credit side).
	Part *ChainPart `msgpack:"p,omitempty"`
}

// InboxRow is the credit shard's decision for one attempt.
type InboxRow struct {
	ID         string         `msgpack:"id"`
	DebitShard uint32         `msgpack:"ds"`
	Attempt    uint64         `msgpack:"at"`
	Outcome    Outcome        `msgpack:"o"`
	Code       transport.Code `msgpack:"c"`
	Timestamp  uint64         `msgpack:"ts"`
	Amount     uint64         `msgpack:"am,omitempty"` // the amount credited, if a balancing_credit clamped it
}

// New returns the empty state of shard id, with its history in archive (a
// fresh MemArchive if nil).
func New(id uint32, archive Archive) *State {
	if archive == nil {
		archive = NewMemArchive()
	}
	return &State{
		id:         id,
		archive:    archive,
		accounts:   make(map[string]*transport.Account),
		transfers:  make(map[string]*transport.Transfer),
		outbox:     make(map[string]*OutboxRow),
		inbox:      make(map[string]*InboxRow),
		watermarks: make(map[uint32]uint64),
		expiring:   make(map[string]uint64),
		remote:     make(map[string]uint32),
		origins:    make(map[string]uint32),

		pendingCredits: make(map[string]*Credit),
		chains:         make(map[string]*ChainRow),
		heldIDs:        make(map[string]string),
	}
}

// ID returns the shard id.
func (s *State) ID() uint32 { return s.id }

// Archive returns the archive the state writes its history to.
func (s *State) Archive() Archive { return s.archive }

// EventResult is the outcome of one create event.
type EventResult struct {
	Code      transport.Code
	Timestamp uint64
	// InFlight: the transfer is reserved and waits for its credit shard. The
	// final result arrives as a Resolved effect for (ID, Attempt).
	InFlight bool
	ID       string // the transfer's id, when InFlight
	Attempt  uint64
	// Retry: the event repeated an attempt already in flight; if that
	// attempt is credited the event's answer is exists, not ok.
	Retry bool
}

// Resolved reports that an in-flight transfer became final.
type Resolved struct {
	ID        string
	Attempt   uint64
	Code      transport.Code // ok, or the credit shard's refusal
	Timestamp uint64         // the transfer's timestamp when ok
	Aborted   bool           // voided because an abort won at the credit shard
	Chain     bool           // a leg of a chain across shards coordinated here
}

// Output is what applying one entry produced, command by command.
type Output struct {
	Events   [][]EventResult // create commands, parallel to Entry.Commands
	Answers  [][]Answer      // credit and abort commands
	Resolved []Resolved      // in-flight transfers that became final
	Reserved []OutboxRow     // outbox rows written (cross-shard transfers reserved)
	Expired  []string        // pending transfers voided by their timeout, in order
	// Refused: why a create command was refused as a whole, by command
	// index (nil if none was): it changed nothing (owned.go).
	Refused map[int]string
	// Moved: the create commands refused as a whole because an account
	// they name is not (or not now) served here (slots.go).
	Moved map[int]Moved
	// Split: the result of a KindSplit.
	Split *SplitResult
}

// Apply applies every command of e in order. It never fails: malformed or
// unexpected input yields result codes or is ignored, and leaves the state
// as it was for that event.
func (s *State) Apply(e *Entry) *Output {
	out := &Output{
		Events:  make([][]EventResult, len(e.Commands)),
		Answers: make([][]Answer, len(e.Commands)),
	}
	for i := range e.Commands {
		c := &e.Commands[i]
		if m, moved := s.moved(c); moved {
			if out.Moved == nil {
				out.Moved = map[int]Moved{}
			}
			out.Moved[i] = m
			continue
		}
		switch c.Kind {
		case KindCreateAccounts:
			from := s.last
			out.Events[i] = s.createAccounts(e.Timestamp, c.Accounts)
			s.answerAsFirst(c, from, out.Events[i])
		case KindCreateTransfers:
			if why := s.overPendingLimit(c); why != "" {
				if out.Refused == nil {
					out.Refused = map[int]string{}
				}
				out.Refused[i] = why
				continue
			}
			from := s.last
			s.owner, s.request = c.Owner, c.Request
			out.Events[i] = s.createTransfers(e.Timestamp, c.Transfers, c.CreditShards, c.DebitShards, out)
			s.owner, s.request, s.chainsAnswered = nil, nil, nil
			s.answerAsFirst(c, from, out.Events[i])
		case KindCredit:
			out.Answers[i] = s.credits(e.Timestamp, c.Credits, false)
		case KindAbort:
			out.Answers[i] = s.credits(e.Timestamp, c.Credits, true)
		case KindResolve:
			s.resolve(e.Timestamp, c.Answers, out)
		case KindForget:
			if c.Forget != nil {
				s.forget(*c.Forget)
			}
		case KindExpire:
			s.expire(e.Timestamp, out)
		case KindFreeze:
			s.freeze(c.Slots)
		case KindSplit:
			out.Split = s.split(c.Slots)
		}
	}
	return out
}

// tick returns the next event timestamp: unique and strictly increasing.
func (s *State) tick(now uint64) uint64 {
	s.last = max(s.last+1, now)
	return s.last
}

func (s *State) createAccounts(now uint64, accounts []transport.Account) []EventResult {
	res := make([]EventResult, len(accounts))
	linked := func(k int) bool { return accounts[k].Flags&transport.AccountLinked != 0 }
	touched := func(k int) ([]string, []string) { return []string{accounts[k].ID}, nil }
	EachChain(len(accounts), linked, func(i, j int, open bool) {
		s.applyChain(res, i, j, open, touched, func(k int, _ bool) EventResult { return s.createAccount(now, &accounts[k]) })
	})
	return res
}

func (s *State) createAccount(now uint64, a *transport.Account) EventResult {
	code := s.checkAccount(a)
	switch code {
	case transport.CodeOK:
		stored := *a
		stored.Timestamp = s.tick(now)
		s.accounts[a.ID] = &stored
		return EventResult{Code: code, Timestamp: stored.Timestamp}
	case transport.CodeExists:
		return EventResult{Code: code, Timestamp: s.accounts[a.ID].Timestamp}
	}
	return EventResult{Code: code}
}

func (s *State) checkAccount(a *transport.Account) transport.Code {
	const bothLimits = transport.AccountDebitsMustNotExceedCredits | transport.AccountCreditsMustNotExceedDebits
	switch {
	case !transport.ValidID(a.ID):
		return transport.CodeIDInvalid
	case !transport.AccountFlagsKnown(a.Flags) || a.Flags&bothLimits == bothLimits:
		return transport.CodeFlagsInvalid
	case a.Ledger == 0:
		return transport.CodeLedgerInvalid
	case a.Code == 0:
		return transport.CodeCodeInvalid
	case !transport.ValidMetadata(a.Metadata):
		return transport.CodeMetadataInvalid
	case a.Timestamp != 0:
		return transport.CodeTimestampMustBeZero
	case a.DebitsPending != 0 || a.DebitsPosted != 0 || a.CreditsPending != 0 || a.CreditsPosted != 0:
		return transport.CodeBalancesMustBeZero
	}
	if old, ok := s.accounts[a.ID]; ok {
		// closed is left out: a closing transfer may have set it since.
		const closed = transport.AccountClosed
		if old.Ledger == a.Ledger && old.Code == a.Code && old.Flags&^closed == a.Flags&^closed && maps.Equal(old.Metadata, a.Metadata) {
			return transport.CodeExists
		}
		return transport.CodeExistsWithDifferentFields
	}
	return transport.CodeOK
}

func (s *State) createTransfers(now uint64, transfers []transport.Transfer, creditShards, debitShards []uint32, out *Output) []EventResult {
	if len(debitShards) != 0 && (len(debitShards) != len(transfers) || len(creditShards) != len(transfers)) {
		debitShards = nil // malformed: every debit account is taken to be here
	}
	res := make([]EventResult, len(transfers))
	apply := func(k int, chained bool) EventResult {
		t := &transfers[k]
		creditShard := s.id
		if k < len(creditShards) {
			creditShard = creditShards[k]
		}
		r := s.createTransfer(now, t, creditShard, chained)
		if r.InFlight && !r.Retry {
			out.Reserved = append(out.Reserved, *s.outbox[t.ID])
		}
		return r
	}
	linked := func(k int) bool { return transfers[k].Flags&transport.TransferLinked != 0 }
	touched := func(k int) (accounts, ids []string) {
		t := &transfers[k]
		accounts, ids = []string{t.DebitAccountID, t.CreditAccountID}, []string{t.ID}
		if t.PendingID != "" {
			ids = append(ids, t.PendingID)
			if p, ok := s.transfers[t.PendingID]; ok {
				accounts = append(accounts, p.DebitAccountID, p.CreditAccountID)
			}
		}
		return accounts, ids
	}
	EachChain(len(transfers), linked, func(i, j int, open bool) {
		if !open && s.crossShardChain(i, j, debitShards, creditShards) {
			s.beginRemoteChain(now, transfers[i:j], debitShards[i:j], creditShards[i:j], res[i:j], out)
			return
		}
		s.applyChain(res, i, j, open, touched, apply)
	})
	return res
}

// createTransfer applies one transfer event; chained reports that it is one
// of a chain of several.
func (s *State) createTransfer(now uint64, t *transport.Transfer, creditShard uint32, chained bool) EventResult {
	if code := checkTransferFields(t); code != transport.CodeOK {
		return EventResult{Code: code}
	}
	// The outbox first: a post or void of a pending transfer across shards
	// is stored here at once, and answered once its credit shard settled.
	// (The settlement of an expiry is under the expired transfer's id,
	// which is final: its repeats are judged against it below.)
	if row, ok := s.outbox[t.ID]; ok && row.Transfer.PendingID != t.ID {
		same := sameTransfer(&row.Transfer, t) || s.sameResolution(&row.Transfer, t)
		if same && !chained { // a chain never waits on a saga
			return EventResult{InFlight: true, Retry: true, ID: t.ID, Attempt: row.Transfer.Timestamp}
		}
		return EventResult{Code: transport.CodeExistsWithDifferentFields}
	}
	if _, held := s.heldIDs[t.ID]; held {
		return EventResult{Code: transport.CodeExistsWithDifferentFields} // a chain's leg, in progress
	}
	if old, ok := s.lookupTransfer(t.ID); ok {
		if sameTransfer(&old, t) || s.sameResolution(&old, t) {
			return EventResult{Code: transport.CodeExists, Timestamp: old.Timestamp}
		}
		return EventResult{Code: transport.CodeExistsWithDifferentFields}
	}
	if t.Flags&resolveFlags != 0 {
		return s.resolvePending(now, t, chained)
	}
	dr, ok := s.accounts[t.DebitAccountID]
	if !ok {
		return EventResult{Code: transport.CodeDebitAccountNotFound}
	}
	if creditShard != s.id {
		if chained {
			// A chain across shards reaches its coordinator with its
			// debit shards (chains.go); without them (an entry older
			// than chains across shards) it is refused, never half-applied.
			return EventResult{Code: transport.CodeFlagsInvalid}
		}
		return s.reserve(now, t, dr, creditShard)
	}
	cr, ok := s.accounts[t.CreditAccountID]
	if !ok {
		return EventResult{Code: transport.CodeCreditAccountNotFound}
	}
	stored := *t
	if code := checkBalancedAccounts(&stored, dr, cr); code != transport.CodeOK {
		return EventResult{Code: code}
	}
	stored.Timestamp = s.tick(now)
	stored.State = transport.StatePosted
	pending := t.Flags&transport.TransferPending != 0
	if pending {
		dr.DebitsPending += stored.Amount
		cr.CreditsPending += stored.Amount
		closeAccounts(&stored, dr, cr, true)
		stored.State = transport.StatePending
		if t.Timeout > 0 {
			s.expiring[t.ID] = expiresAt(&stored)
		}
		s.putOpen(t.ID, &stored)
	} else {
		dr.DebitsPosted += stored.Amount
		cr.CreditsPosted += stored.Amount
	}
	s.stored++
	s.recordTransfer(&stored, !pending, stored.Timestamp)
	s.recordBalance(dr, stored.Timestamp)
	s.recordBalance(cr, stored.Timestamp)
	return EventResult{Code: transport.CodeOK, Timestamp: stored.Timestamp}
}

// reserve is step 1 of a cross-shard transfer: the amount moves to the debit
// account's debits_pending and an outbox row is written, in the same entry.
// A balancing_debit is clamped here, on its debit account; a
// balancing_credit is clamped by the credit shard, which answers the amount
// it credited, and the rest of the reservation is released at the resolve.
func (s *State) reserve(now uint64, t *transport.Transfer, dr *transport.Account, creditShard uint32) EventResult {
	reserved := *t
	zero := transport.CodeOK
	if t.Flags&transport.TransferBalancingDebit != 0 {
		reserved.Amount = min(t.Amount, headroom(dr.CreditsPosted, dr.DebitsPending, dr.DebitsPosted))
		if reserved.Amount == 0 {
			zero = transport.CodeExceedsCredits
		}
	}
	if code := checkAccounts(&reserved, dr, nil); code != transport.CodeOK || zero != transport.CodeOK {
		return EventResult{Code: cmp.Or(code, zero)}
	}
	dr.DebitsPending += reserved.Amount
	row := &OutboxRow{Transfer: reserved, CreditShard: creditShard}
	row.Transfer.Timestamp = s.tick(now)
	row.Transfer.State = ""
	s.outbox[t.ID] = row
	s.recordBalance(dr, row.Transfer.Timestamp)
	return EventResult{InFlight: true, ID: t.ID, Attempt: row.Transfer.Timestamp}
}

// checkTransferFields validates what needs no state, in the protocol's order.
// A post or void may leave accounts, ledger, code and amount empty: they
// come from the pending transfer.
func checkTransferFields(t *transport.Transfer) transport.Code {
	resolves := t.Flags&(transport.TransferPostPendingTransfer|transport.TransferVoidPendingTransfer) != 0
	switch {
	case !transport.ValidID(t.ID):
		return transport.CodeIDInvalid
	case !transferFlagsServed(t.Flags):
		return transport.CodeFlagsInvalid
	case t.Ledger == 0 && !resolves:
		return transport.CodeLedgerInvalid
	case t.Code == 0 && !resolves:
		return transport.CodeCodeInvalid
	case t.Amount == 0 && !resolves:
		return transport.CodeAmountInvalid
	case t.Timeout != 0 && t.Flags&transport.TransferPending == 0:
		return transport.CodeTimeoutInvalid // only pending transfers time out
	case !transport.ValidMetadata(t.Metadata):
		return transport.CodeMetadataInvalid
	case t.Timestamp != 0:
		return transport.CodeTimestampMustBeZero
	case resolves && (!transport.ValidID(t.PendingID) || t.PendingID == t.ID):
		return transport.CodePendingIDInvalid
	case !resolves && t.PendingID != "":
		return transport.CodePendingIDInvalid // only posts and voids name one
	case t.DebitAccountID == t.CreditAccountID && !(resolves && t.DebitAccountID == ""):
		return transport.CodeAccountsMustBeDifferent
	}
	return transport.CodeOK
}

const (
	resolveFlags   = transport.TransferPostPendingTransfer | transport.TransferVoidPendingTransfer
	balancingFlags = transport.TransferBalancingDebit | transport.TransferBalancingCredit
	closingFlags   = transport.TransferClosingDebit | transport.TransferClosingCredit
)

// transferFlagsServed reports whether flags are defined and compatible:
// pending, post and void exclude each other; a post or void is neither
// balancing nor closing (it takes its pending transfer's amount and
// accounts); closing needs pending (the account is closed while it is
// pending and stays closed once it is posted).
func transferFlagsServed(flags uint32) bool {
	switch {
	case !transport.TransferFlagsKnown(flags):
		return false
	case bits.OnesCount32(flags&(transport.TransferPending|resolveFlags)) > 1:
		return false
	case flags&resolveFlags != 0 && flags&(balancingFlags|closingFlags) != 0:
		return false
	case flags&closingFlags != 0 && flags&transport.TransferPending == 0:
		return false
	}
	return true
}

// sameTransfer reports whether b repeats a (metadata included). a may be
// the stored copy of a balancing transfer, whose amount was clamped: b
// repeats it with any amount at least that.
func sameTransfer(a, b *transport.Transfer) bool {
	sameAmount := a.Amount == b.Amount || a.Flags&balancingFlags != 0 && a.Amount <= b.Amount
	return a.DebitAccountID == b.DebitAccountID && a.CreditAccountID == b.CreditAccountID &&
		sameAmount && a.Ledger == b.Ledger && a.Code == b.Code && a.Flags == b.Flags &&
		a.PendingID == b.PendingID && a.Timeout == b.Timeout && maps.Equal(a.Metadata, b.Metadata)
}

// checkBalancedAccounts checks a transfer on this shard against its
// accounts, after clamping the amount of a balancing one: balancing_debit
// debits at most what keeps the debit account's debits (pending included)
// within its posted credits, balancing_credit credits at most what keeps
// the credit account's credits within its posted debits, whether or not
// the account has the limit flag (as TigerBeetle). A clamp to 0 is refused
// with the limit's code.
func checkBalancedAccounts(t *transport.Transfer, dr, cr *transport.Account) transport.Code {
	zero := transport.CodeOK
	if t.Flags&transport.TransferBalancingDebit != 0 {
		t.Amount = min(t.Amount, headroom(dr.CreditsPosted, dr.DebitsPending, dr.DebitsPosted))
		if t.Amount == 0 {
			zero = transport.CodeExceedsCredits
		}
	}
	if t.Flags&transport.TransferBalancingCredit != 0 && zero == transport.CodeOK {
		t.Amount = min(t.Amount, headroom(cr.DebitsPosted, cr.CreditsPending, cr.CreditsPosted))
		if t.Amount == 0 {
			zero = transport.CodeExceedsDebits
		}
	}
	if code := checkAccounts(t, dr, cr); code != transport.CodeOK || zero != transport.CodeOK {
		return cmp.Or(code, zero) // ledger and closed come before the limits
	}
	return transport.CodeOK
}

// headroom is limit - (a + b), or 0 if that is negative or a + b overflows.
func headroom(limit, a, b uint64) uint64 {
	used, carry := bits.Add64(a, b, 0)
	if carry != 0 || used >= limit {
		return 0
	}
	return limit - used
}

// closeAccounts closes (close) or reopens the accounts a closing pending
// transfer names.
func closeAccounts(p *transport.Transfer, dr, cr *transport.Account, close bool) {
	for _, c := range [2]struct {
		flag uint32
		a    *transport.Account
	}{{transport.TransferClosingDebit, dr}, {transport.TransferClosingCredit, cr}} {
		switch {
		case p.Flags&c.flag == 0 || c.a == nil: // nil: on another shard
		case close:
			c.a.Flags |= transport.AccountClosed
		default:
			c.a.Flags &^= transport.AccountClosed
		}
	}
}

// checkAccounts checks a transfer against its accounts in the protocol's
// order: ledger, closed, the debit limit, the credit limit, overflow. A nil
// account is on another shard and checked there.
func checkAccounts(t *transport.Transfer, dr, cr *transport.Account) transport.Code {
	switch {
	case dr != nil && dr.Ledger != t.Ledger, cr != nil && cr.Ledger != t.Ledger:
		return transport.CodeLedgerMismatch
	case dr != nil && dr.Flags&transport.AccountClosed != 0, cr != nil && cr.Flags&transport.AccountClosed != 0:
		return transport.CodeAccountClosed
	}
	overflow := false
	if dr != nil {
		debits, c1 := bits.Add64(dr.DebitsPending, dr.DebitsPosted, 0)
		debits, c2 := bits.Add64(debits, t.Amount, 0)
		if dr.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && (c1|c2 != 0 || debits > dr.CreditsPosted) {
			return transport.CodeExceedsCredits
		}
		overflow = c1|c2 != 0
	}
	if cr != nil {
		credits, c1 := bits.Add64(cr.CreditsPending, cr.CreditsPosted, 0)
		credits, c2 := bits.Add64(credits, t.Amount, 0)
		if cr.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && (c1|c2 != 0 || credits > cr.DebitsPosted) {
			return transport.CodeExceedsDebits
		}
		overflow = overflow || c1|c2 != 0
	}
	if overflow {
		return transport.CodeOverflow
	}
	return transport.CodeOK
}

// credits applies Credit (or Abort) commands on the credit shard. Each
// attempt is decided once; a repeat gets the recorded answer.
func (s *State) credits(now uint64, credits []Credit, abort bool) []Answer {
	answers := make([]Answer, len(credits))
	for i := range credits {
		answers[i] = s.credit(now, &credits[i], abort)
	}
	return answers
}

func (s *State) credit(now uint64, c *Credit, abort bool) Answer {
	t := &c.Transfer
	if c.Part != nil {
		return s.chainPart(now, c, abort)
	}
	ans := Answer{ID: t.ID, Attempt: t.Timestamp}
	if t.Timestamp < s.watermarks[c.DebitShard] || c.DebitShard == s.id {
		ans.Outcome = OutcomeStale
		return ans
	}
	if t.Flags&resolveFlags != 0 {
		return s.settle(now, c) // an abort cannot stop it: the debit side has decided
	}
	key := inboxKey(c.DebitShard, t.ID)
	if row, ok := s.inbox[key]; ok {
		switch {
		case row.Attempt == t.Timestamp:
			return row.answer()
		case row.Attempt > t.Timestamp:
			// An older attempt than the one recorded: it was resolved
			// before the newer one began. A late duplicate.
			ans.Outcome = OutcomeStale
			return ans
		case row.Outcome == OutcomeCredited:
			// The id is taken: credited for an earlier attempt.
			ans.Outcome, ans.Code = OutcomeRefused, transport.CodeExistsWithDifferentFields
			return ans
		}
		// A newer attempt after a refusal or abort: decide afresh below.
	}
	if !s.owns(t.CreditAccountID) { // a split moved it: decided by its new shard
		ans.Outcome = OutcomeMoved
		return ans
	}
	row := &InboxRow{ID: t.ID, DebitShard: c.DebitShard, Attempt: t.Timestamp}
	switch {
	case abort:
		row.Outcome = OutcomeAborted
	default:
		credited := *t
		row.Outcome, row.Code = OutcomeRefused, s.checkCreditSide(&credited)
		if row.Code == transport.CodeOK {
			row.Outcome = OutcomeCredited
			cr := s.accounts[t.CreditAccountID]
			row.Timestamp = s.tick(now)
			if credited.Amount != t.Amount {
				row.Amount = credited.Amount // clamped by balancing_credit
			}
			t := &credited
			if t.Flags&transport.TransferPending != 0 {
				closeAccounts(t, nil, cr, true)
				cr.CreditsPending += t.Amount
				credited.State = transport.StatePending
				s.pendingCredits[key] = &Credit{Transfer: credited, DebitShard: c.DebitShard}
			} else {
				cr.CreditsPosted += t.Amount
				credited.State = transport.StatePosted
			}
			s.archive.PutAccountTransfer(cr.ID, row.Timestamp, &credited)
			s.recordBalance(cr, row.Timestamp)
		}
	}
	s.inbox[key] = row
	return row.answer()
}

// inboxKey keys the inbox by debit shard and transfer id, so every decision
// is recorded under the attempt's own debit shard. Keyed by id alone, a
// credit whose id another debit shard had used was refused without a record;
// once that shard's row was forgotten, a late copy was decided afresh and
// credited although its own debit shard had voided it (money created).
func inboxKey(debitShard uint32, id string) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], debitShard)
	return string(b[:]) + id
}

// checkCreditSide checks a credit against its account, after clamping the
// amount of a balancing_credit (t is the shard's own copy).
func (s *State) checkCreditSide(t *transport.Transfer) transport.Code {
	cr, ok := s.accounts[t.CreditAccountID]
	if !ok || t.Amount == 0 {
		return transport.CodeCreditAccountNotFound
	}
	zero := transport.CodeOK
	if t.Flags&transport.TransferBalancingCredit != 0 {
		t.Amount = min(t.Amount, headroom(cr.DebitsPosted, cr.CreditsPending, cr.CreditsPosted))
		if t.Amount == 0 {
			zero = transport.CodeExceedsDebits
		}
	}
	if code := checkAccounts(t, nil, cr); code != transport.CodeOK || zero != transport.CodeOK {
		return cmp.Or(code, zero)
	}
	return transport.CodeOK
}

func (r *InboxRow) answer() Answer {
	return Answer{ID: r.ID, Attempt: r.Attempt, Outcome: r.Outcome, Code: r.Code, Timestamp: r.Timestamp, Amount: r.Amount}
}

// resolve ends in-flight transfers with their credit shard's answers. An
// answer that matches no outbox row (a duplicate) changes nothing.
func (s *State) resolve(now uint64, answers []Answer, out *Output) {
	for i := range answers {
		a := &answers[i]
		row, ok := s.outbox[a.ID]
		if !ok || row.Transfer.Timestamp != a.Attempt || a.Outcome == OutcomeStale || a.Outcome == OutcomeMoved {
			continue
		}
		t := &row.Transfer
		delete(s.outbox, a.ID)
		if row.Part != nil {
			s.chainAnswer(row, a, out)
			continue
		}
		if t.Flags&resolveFlags != 0 {
			// A post, void or expiry settled on the credit shard: it was
			// applied here when it was stored.
			if a.Outcome != OutcomeCredited {
				panic(fmt.Sprintf("shard %d: the settlement of %q was refused: %+v", s.id, t.PendingID, a))
			}
			out.Resolved = append(out.Resolved, Resolved{ID: a.ID, Attempt: a.Attempt, Code: transport.CodeOK, Timestamp: t.Timestamp})
			continue
		}
		dr := s.accounts[t.DebitAccountID]
		if dr == nil || dr.DebitsPending < t.Amount {
			panic(fmt.Sprintf("shard %d: outbox row %q reserves %d that its debit account does not hold", s.id, t.ID, t.Amount))
		}
		pending := t.Flags&transport.TransferPending != 0
		amount := t.Amount
		if a.Outcome == OutcomeCredited && a.Amount != 0 && a.Amount < t.Amount {
			amount = a.Amount // a balancing_credit clamped on the credit shard
		}
		if pending && a.Outcome == OutcomeCredited {
			dr.DebitsPending -= t.Amount - amount // the rest is released
		} else {
			dr.DebitsPending -= t.Amount
		}
		// The settlement is an event of its own: the transfer becomes final
		// (or, pending, open) and the debit account's balances change now,
		// not at the attempt.
		settled := s.tick(now)
		r := Resolved{ID: a.ID, Attempt: a.Attempt}
		switch a.Outcome {
		case OutcomeCredited:
			stored := *t
			stored.Amount = amount
			s.stored++
			if pending {
				closeAccounts(&stored, dr, nil, true)
				stored.State = transport.StatePending
				s.putOpen(t.ID, &stored)
				s.remote[t.ID] = row.CreditShard
				if t.Timeout > 0 {
					s.expiring[t.ID] = expiresAt(&stored)
				}
				s.recordTransfer(&stored, false, settled)
			} else {
				dr.DebitsPosted += amount
				stored.State = transport.StatePosted
				s.recordTransfer(&stored, true, settled)
			}
			r.Code, r.Timestamp = transport.CodeOK, t.Timestamp
		case OutcomeAborted:
			r.Aborted = true
		default:
			r.Code = a.Code
			if r.Code == transport.CodeOK { // a refusal must carry its reason
				r.Code = transport.CodeCreditAccountNotFound
			}
		}
		s.recordBalance(dr, settled)
		out.Resolved = append(out.Resolved, r)
	}
}

// forget advances a debit shard's watermark and drops the inbox rows below it.
func (s *State) forget(f Forget) {
	if f.Below <= s.watermarks[f.DebitShard] {
		return
	}
	s.watermarks[f.DebitShard] = f.Below
	for id, row := range s.inbox {
		if row.DebitShard == f.DebitShard && row.Attempt < f.Below {
			delete(s.inbox, id)
		}
	}
}

// lookupTransfer returns a transfer debited here: open ones from memory,
// final ones from the archive.
func (s *State) lookupTransfer(id string) (transport.Transfer, bool) {
	if t, ok := s.transfers[id]; ok {
		return *t, true
	}
	return s.archived(id)
}
