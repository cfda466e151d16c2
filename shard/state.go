package shard

import (
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
}

// OutboxRow is a cross-shard transfer reserved on this (debit) shard.
type OutboxRow struct {
	Transfer    transport.Transfer `msgpack:"t"` // Timestamp is the attempt
	CreditShard uint32             `msgpack:"cs"`
}

// InboxRow is the credit shard's decision for one attempt.
type InboxRow struct {
	ID         string         `msgpack:"id"`
	DebitShard uint32         `msgpack:"ds"`
	Attempt    uint64         `msgpack:"at"`
	Outcome    Outcome        `msgpack:"o"`
	Code       transport.Code `msgpack:"c"`
	Timestamp  uint64         `msgpack:"ts"`
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
}

// Output is what applying one entry produced, command by command.
type Output struct {
	Events   [][]EventResult // create commands, parallel to Entry.Commands
	Answers  [][]Answer      // credit and abort commands
	Resolved []Resolved      // in-flight transfers that became final
	Reserved []OutboxRow     // outbox rows written (cross-shard transfers reserved)
	Expired  []string        // pending transfers voided by their timeout, in order
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
		switch c.Kind {
		case KindCreateAccounts:
			out.Events[i] = s.createAccounts(e.Timestamp, c.Accounts)
		case KindCreateTransfers:
			out.Events[i] = s.createTransfers(e.Timestamp, c.Transfers, c.CreditShards, out)
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
	for i := range accounts {
		a := &accounts[i]
		code := s.checkAccount(a)
		if code == transport.CodeOK {
			stored := *a
			stored.Timestamp = s.tick(now)
			s.accounts[a.ID] = &stored
			res[i] = EventResult{Code: code, Timestamp: stored.Timestamp}
			continue
		}
		res[i] = EventResult{Code: code}
		if code == transport.CodeExists {
			res[i].Timestamp = s.accounts[a.ID].Timestamp
		}
	}
	return res
}

func (s *State) checkAccount(a *transport.Account) transport.Code {
	const bothLimits = transport.AccountDebitsMustNotExceedCredits | transport.AccountCreditsMustNotExceedDebits
	switch {
	case !transport.ValidID(a.ID):
		return transport.CodeIDInvalid
	case !transport.AccountFlagsKnown(a.Flags) || a.Flags&bothLimits == bothLimits || a.Flags&transport.AccountLinked != 0:
		// linked chains are not served yet (issue 3): refused rather than
		// applied without their all-or-nothing guarantee.
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
		if old.Ledger == a.Ledger && old.Code == a.Code && old.Flags == a.Flags && maps.Equal(old.Metadata, a.Metadata) {
			return transport.CodeExists
		}
		return transport.CodeExistsWithDifferentFields
	}
	return transport.CodeOK
}

func (s *State) createTransfers(now uint64, transfers []transport.Transfer, creditShards []uint32, out *Output) []EventResult {
	res := make([]EventResult, len(transfers))
	for i := range transfers {
		t := &transfers[i]
		creditShard := s.id
		if i < len(creditShards) {
			creditShard = creditShards[i]
		}
		res[i] = s.createTransfer(now, t, creditShard)
		if res[i].InFlight && !res[i].Retry {
			out.Reserved = append(out.Reserved, *s.outbox[t.ID])
		}
	}
	return res
}

func (s *State) createTransfer(now uint64, t *transport.Transfer, creditShard uint32) EventResult {
	if code := checkTransferFields(t); code != transport.CodeOK {
		return EventResult{Code: code}
	}
	if old, ok := s.lookupTransfer(t.ID); ok {
		if sameTransfer(&old, t) || s.sameResolution(&old, t) {
			return EventResult{Code: transport.CodeExists, Timestamp: old.Timestamp}
		}
		return EventResult{Code: transport.CodeExistsWithDifferentFields}
	}
	if row, ok := s.outbox[t.ID]; ok {
		if sameTransfer(&row.Transfer, t) {
			return EventResult{InFlight: true, Retry: true, ID: t.ID, Attempt: row.Transfer.Timestamp}
		}
		return EventResult{Code: transport.CodeExistsWithDifferentFields}
	}
	if t.Flags&(transport.TransferPostPendingTransfer|transport.TransferVoidPendingTransfer) != 0 {
		return s.resolvePending(now, t)
	}
	dr, ok := s.accounts[t.DebitAccountID]
	if !ok {
		return EventResult{Code: transport.CodeDebitAccountNotFound}
	}
	if creditShard != s.id {
		if t.Flags&transport.TransferPending != 0 {
			// Two-phase transfers across shards need their own saga
			// messages (issue #3, next increment): refused until then,
			// never half-applied.
			return EventResult{Code: transport.CodeFlagsInvalid}
		}
		return s.reserve(now, t, dr, creditShard)
	}
	cr, ok := s.accounts[t.CreditAccountID]
	if !ok {
		return EventResult{Code: transport.CodeCreditAccountNotFound}
	}
	if code := checkAccounts(t, dr, cr); code != transport.CodeOK {
		return EventResult{Code: code}
	}
	stored := *t
	stored.Timestamp = s.tick(now)
	stored.State = transport.StatePosted
	pending := t.Flags&transport.TransferPending != 0
	if pending {
		dr.DebitsPending += t.Amount
		cr.CreditsPending += t.Amount
		stored.State = transport.StatePending
		if t.Timeout > 0 {
			s.expiring[t.ID] = expiresAt(&stored)
		}
		s.transfers[t.ID] = &stored
	} else {
		dr.DebitsPosted += t.Amount
		cr.CreditsPosted += t.Amount
	}
	s.stored++
	s.recordTransfer(&stored, !pending, stored.Timestamp)
	s.recordBalance(dr, stored.Timestamp)
	s.recordBalance(cr, stored.Timestamp)
	return EventResult{Code: transport.CodeOK, Timestamp: stored.Timestamp}
}

// reserve is step 1 of a cross-shard transfer: the amount moves to the debit
// account's debits_pending and an outbox row is written, in the same entry.
func (s *State) reserve(now uint64, t *transport.Transfer, dr *transport.Account, creditShard uint32) EventResult {
	if code := checkAccounts(t, dr, nil); code != transport.CodeOK {
		return EventResult{Code: code}
	}
	dr.DebitsPending += t.Amount
	row := &OutboxRow{Transfer: *t, CreditShard: creditShard}
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

// transferFlagsServed reports whether flags are defined, compatible, and
// served. Linked chains, balancing and closing transfers are refused until
// they are served with their guarantees (issue #3); undefined bits forever.
func transferFlagsServed(flags uint32) bool {
	const twoPhase = transport.TransferPending | transport.TransferPostPendingTransfer | transport.TransferVoidPendingTransfer
	if flags&^twoPhase != 0 {
		return false
	}
	return bits.OnesCount32(flags) <= 1 // pending, post and void exclude each other
}

// sameTransfer compares the fields a client sends (metadata included).
func sameTransfer(a, b *transport.Transfer) bool {
	return a.DebitAccountID == b.DebitAccountID && a.CreditAccountID == b.CreditAccountID &&
		a.Amount == b.Amount && a.Ledger == b.Ledger && a.Code == b.Code && a.Flags == b.Flags &&
		a.PendingID == b.PendingID && a.Timeout == b.Timeout && maps.Equal(a.Metadata, b.Metadata)
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
	ans := Answer{ID: t.ID, Attempt: t.Timestamp}
	if t.Timestamp < s.watermarks[c.DebitShard] || c.DebitShard == s.id {
		ans.Outcome = OutcomeStale
		return ans
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
	row := &InboxRow{ID: t.ID, DebitShard: c.DebitShard, Attempt: t.Timestamp}
	switch {
	case abort:
		row.Outcome = OutcomeAborted
	default:
		row.Outcome, row.Code = OutcomeRefused, s.checkCreditSide(t)
		if row.Code == transport.CodeOK {
			row.Outcome = OutcomeCredited
			cr := s.accounts[t.CreditAccountID]
			cr.CreditsPosted += t.Amount
			row.Timestamp = s.tick(now)
			credited := *t
			credited.State = transport.StatePosted
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

func (s *State) checkCreditSide(t *transport.Transfer) transport.Code {
	cr, ok := s.accounts[t.CreditAccountID]
	if !ok || t.Amount == 0 {
		return transport.CodeCreditAccountNotFound
	}
	return checkAccounts(t, nil, cr)
}

func (r *InboxRow) answer() Answer {
	return Answer{ID: r.ID, Attempt: r.Attempt, Outcome: r.Outcome, Code: r.Code, Timestamp: r.Timestamp}
}

// resolve ends in-flight transfers with their credit shard's answers. An
// answer that matches no outbox row (a duplicate) changes nothing.
func (s *State) resolve(now uint64, answers []Answer, out *Output) {
	for i := range answers {
		a := &answers[i]
		row, ok := s.outbox[a.ID]
		if !ok || row.Transfer.Timestamp != a.Attempt || a.Outcome == OutcomeStale {
			continue
		}
		t := &row.Transfer
		dr := s.accounts[t.DebitAccountID]
		if dr == nil || dr.DebitsPending < t.Amount {
			panic(fmt.Sprintf("shard %d: outbox row %q reserves %d that its debit account does not hold", s.id, t.ID, t.Amount))
		}
		dr.DebitsPending -= t.Amount
		delete(s.outbox, a.ID)
		// The settlement is an event of its own: the transfer becomes final
		// and the debit account's balances change now, not at the attempt.
		settled := s.tick(now)
		r := Resolved{ID: a.ID, Attempt: a.Attempt}
		switch a.Outcome {
		case OutcomeCredited:
			dr.DebitsPosted += t.Amount
			stored := *t
			stored.State = transport.StatePosted
			s.stored++
			s.recordTransfer(&stored, true, settled)
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
