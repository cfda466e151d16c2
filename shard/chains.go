package shard

import (
	"fmt"
	"strconv"

	"github.com/ledgerd/ledgerd/transport"
)

// Linked chains across shards: two-phase commit with a coordinator.
//
// The router sends a chain whose transfers touch more than one shard to the
// shard of its first debit account, the coordinator, with every transfer's
// debit and credit shard. The coordinator writes a chain row and, for every
// leg, two hold parts in its outbox: one for the debit side (the debit
// shard reserves the amount in debits_pending and takes the id) and one for
// the credit side (the credit shard reserves it in credits_pending). Each
// participant decides its part alone, against its own accounts, and records
// the decision in its inbox (first writer wins: a part aborted because the
// coordinator waited too long is never held later).
//
// Once every part has answered, the entry that applies the last answer
// decides, durably in the coordinator's log: commit if every part is held,
// else release what is held. A commit finishes the credit sides first (the
// credit is posted, or kept as the pending credit of a pending leg), then
// the debit sides (the transfer is stored under its id, posted or pending),
// so that nothing can post or void a pending leg before its credit half
// exists. Finish parts cannot be refused. The client is answered when every
// part has finished, as one chain is on one shard: ok on every leg; exists on
// every leg when every leg already existed; else the failing leg's code and
// linked_event_failed on the others; retry if a part was aborted.
//
// Every message is an outbox row sent by the same dispatcher as the credits
// of transfers across shards (resent until answered, aborted after a
// minute, forgotten below the watermark), so parts are keyed like outbox
// rows: ChainPart.Key, which no transfer id can equal.
//
// Differences from a chain on one shard, documented in docs/protocol.md: a
// leg is checked against balances as they were before the chain (plus the
// chain's earlier holds), so a leg cannot spend what an earlier leg credits;
// legs may be plain or pending transfers, not posts, voids, balancing or
// closing transfers (flags_invalid); an id held by a chain in progress
// answers exists_with_different_fields to a plain transfer.

// ChainPart says which part of a chain across shards an outbox row or a
// Credit is. Transfer.ID of the row is Key(); ID is the leg's own id.
type ChainPart struct {
	Chain       string `msgpack:"ch"` // the chain's id: its first leg's id
	Leg         uint16 `msgpack:"l"`
	ID          string `msgpack:"id"`
	Debit       bool   `msgpack:"d,omitempty"` // the debit side, else the credit side
	Finish      bool   `msgpack:"f,omitempty"` // the decision, else the hold
	Commit      bool   `msgpack:"cm,omitempty"`
	DebitShard  uint32 `msgpack:"ds"`
	CreditShard uint32 `msgpack:"cs"`
}

// Key is the part's outbox and inbox key. '/' is never in a transfer id.
func (p *ChainPart) Key() string {
	side := "c"
	if p.Debit {
		side = "d"
	}
	phase := "h"
	if p.Finish {
		phase = "f"
	}
	return p.Chain + "/" + strconv.Itoa(int(p.Leg)) + "/" + phase + side
}

// ChainRow is a chain in progress on its coordinator.
type ChainRow struct {
	Attempt      uint64               `msgpack:"at"`
	Legs         []transport.Transfer `msgpack:"l"`
	DebitShards  []uint32             `msgpack:"ds"`
	CreditShards []uint32             `msgpack:"cs"`
	// Votes: the hold answers, [2k] the debit side of leg k, [2k+1] its
	// credit side; the debit side's Timestamp becomes the leg's once it is
	// committed.
	Votes   []Answer   `msgpack:"v"`
	Stage   ChainStage `msgpack:"s"`
	Waiting int        `msgpack:"w"` // parts of this stage not answered yet
	// Request: the client request that started it (chainsdone.go).
	Request []byte `msgpack:"rq,omitempty"`
}

// ChainStage is where a chain is.
type ChainStage uint8

// Chain stages. Persisted: never renumber.
const (
	StageHolding      ChainStage = 1
	StageCommitCredit ChainStage = 2
	StageCommitDebit  ChainStage = 3
	StageReleasing    ChainStage = 4
)

// crossShardChain reports whether the chain [i, j) touches another shard.
func (s *State) crossShardChain(i, j int, debitShards, creditShards []uint32) bool {
	if len(debitShards) == 0 || j-i < 2 {
		return false
	}
	for k := i; k < j; k++ {
		if debitShards[k] != s.id || creditShards[k] != s.id {
			return true
		}
	}
	return false
}

// beginChain starts the chain legs on this shard, its coordinator, and writes
// res (in flight, or why it was refused at once).
func (s *State) beginRemoteChain(now uint64, legs []transport.Transfer, debitShards, creditShards []uint32, res []EventResult, out *Output) {
	fail := func(k int, code transport.Code) {
		for l := range res {
			res[l] = EventResult{Code: transport.CodeLinkedEventFailed}
		}
		res[k] = EventResult{Code: code}
	}
	if row, ok := s.chains[legs[0].ID]; ok {
		same := len(row.Legs) == len(legs)
		for k := 0; same && k < len(legs); k++ {
			same = sameTransfer(&row.Legs[k], &legs[k]) && row.DebitShards[k] == debitShards[k] && row.CreditShards[k] == creditShards[k]
		}
		if !same {
			fail(0, transport.CodeExistsWithDifferentFields)
			return
		}
		for k := range legs {
			res[k] = EventResult{InFlight: true, Retry: true, ID: legs[k].ID, Attempt: row.Attempt}
		}
		return
	}
	if stamps, ok := s.chainsDone.answer(legs[0].ID, len(legs), s.request); ok {
		// Committed by this request: its first answer, ok, for the chain's
		// first copy in the command, exists for a copy after it (which
		// joined the first's attempt then).
		code := transport.CodeOK
		if s.chainsAnswered[legs[0].ID] {
			code = transport.CodeExists
		}
		if s.chainsAnswered == nil {
			s.chainsAnswered = map[string]bool{}
		}
		s.chainsAnswered[legs[0].ID] = true
		for k := range legs {
			res[k] = EventResult{Code: code, Timestamp: stamps[k]}
		}
		return
	}
	seen := make(map[string]int, len(legs))
	for k := range legs {
		t := &legs[k]
		code := checkTransferFields(t)
		if code == transport.CodeOK && t.Flags&(resolveFlags|balancingFlags|closingFlags) != 0 {
			code = transport.CodeFlagsInvalid
		}
		if l, dup := seen[t.ID]; dup && code == transport.CodeOK {
			code = transport.CodeExistsWithDifferentFields
			if sameTransfer(&legs[l], t) {
				code = transport.CodeExists
			}
		}
		if code != transport.CodeOK {
			fail(k, code)
			return
		}
		seen[t.ID] = k
	}
	row := &ChainRow{
		Attempt: s.tick(now), Legs: legs, DebitShards: debitShards, CreditShards: creditShards,
		Votes: make([]Answer, 2*len(legs)), Stage: StageHolding, Waiting: 2 * len(legs), Request: s.request,
	}
	s.chains[legs[0].ID] = row
	for k := range legs {
		for _, debit := range []bool{true, false} {
			s.writePart(row, k, debit, false, false, out)
		}
		res[k] = EventResult{InFlight: true, ID: legs[k].ID, Attempt: row.Attempt}
	}
}

// writePart puts one part of a chain in the outbox.
func (s *State) writePart(row *ChainRow, k int, debit, finish, commit bool, out *Output) {
	p := &ChainPart{
		Chain: row.Legs[0].ID, Leg: uint16(k), ID: row.Legs[k].ID, Debit: debit, Finish: finish, Commit: commit,
		DebitShard: row.DebitShards[k], CreditShard: row.CreditShards[k],
	}
	to := p.CreditShard
	if debit {
		to = p.DebitShard
	}
	t := row.Legs[k]
	t.ID, t.Timestamp, t.State = p.Key(), row.Attempt, ""
	r := &OutboxRow{Transfer: t, CreditShard: to, Part: p}
	s.outbox[t.ID] = r
	out.Reserved = append(out.Reserved, *r)
}

// chainAnswer applies a participant's answer to a part of a chain
// coordinated here; its outbox row is gone already.
func (s *State) chainAnswer(r *OutboxRow, a *Answer, out *Output) {
	old, ok := s.chains[r.Part.Chain]
	if !ok || old.Attempt != r.Transfer.Timestamp {
		panic(fmt.Sprintf("shard %d: outbox row %q belongs to no chain", s.id, r.Transfer.ID))
	}
	row := *old // copy on write: snapshots share the old row
	row.Votes = append([]Answer(nil), old.Votes...)
	s.chains[r.Part.Chain] = &row
	vote := 2 * int(r.Part.Leg)
	if !r.Part.Debit {
		vote++
	}
	switch {
	case !r.Part.Finish:
		row.Votes[vote] = *a
	case row.Stage == StageCommitDebit:
		row.Votes[vote].Timestamp = a.Timestamp // the leg's timestamp
	}
	if row.Waiting--; row.Waiting > 0 {
		return
	}
	switch row.Stage {
	case StageHolding:
		held := 0
		for _, v := range row.Votes {
			if v.Outcome == OutcomeCredited {
				held++
			}
		}
		if held == len(row.Votes) {
			row.Stage, row.Waiting = StageCommitCredit, len(row.Legs)
			for k := range row.Legs {
				s.writePart(&row, k, false, true, true, out)
			}
			return
		}
		row.Stage, row.Waiting = StageReleasing, held
		for v := range row.Votes {
			if row.Votes[v].Outcome == OutcomeCredited {
				s.writePart(&row, v/2, v%2 == 0, true, false, out)
			}
		}
		if held > 0 {
			return
		}
	case StageCommitCredit:
		row.Stage, row.Waiting = StageCommitDebit, len(row.Legs)
		for k := range row.Legs {
			s.writePart(&row, k, true, true, true, out)
		}
		return
	}
	delete(s.chains, r.Part.Chain)
	results := row.results()
	if row.Stage == StageCommitDebit {
		s.committed(&row, results, s.last)
	}
	for k, code := range results {
		res := Resolved{ID: row.Legs[k].ID, Attempt: row.Attempt, Code: code.Code, Timestamp: code.Timestamp, Aborted: code.Aborted, Chain: true}
		out.Resolved = append(out.Resolved, res)
	}
}

// results are the legs' answers once the chain is over.
func (row *ChainRow) results() []Resolved {
	res := make([]Resolved, len(row.Legs))
	debit := func(k int) *Answer { return &row.Votes[2*k] }
	if row.Stage == StageCommitDebit {
		for k := range res {
			res[k] = Resolved{Code: transport.CodeOK, Timestamp: debit(k).Timestamp}
		}
		return res
	}
	existed, failed := 0, -1
	for k := range res {
		d, c := debit(k), &row.Votes[2*k+1]
		if d.Outcome == OutcomeAborted || c.Outcome == OutcomeAborted {
			for l := range res {
				res[l] = Resolved{Aborted: true}
			}
			return res
		}
		switch {
		case d.Outcome == OutcomeRefused && d.Code == transport.CodeExists:
			existed++
		case failed >= 0:
		case d.Outcome == OutcomeRefused && c.Outcome == OutcomeRefused:
			failed, res[k].Code = k, min(d.Code, c.Code) // the protocol's precedence
		case d.Outcome == OutcomeRefused:
			failed, res[k].Code = k, d.Code
		case c.Outcome == OutcomeRefused:
			failed, res[k].Code = k, c.Code
		}
	}
	if failed < 0 && existed == len(res) {
		for k := range res {
			res[k] = Resolved{Code: transport.CodeExists, Timestamp: debit(k).Timestamp}
		}
		return res
	}
	if failed < 0 { // some legs existed and the others were held: a chain reusing ids
		for k := range res {
			if debit(k).Code == transport.CodeExists {
				failed, res[k].Code = k, transport.CodeExists
				break
			}
		}
	}
	for k := range res {
		if k != failed {
			res[k] = Resolved{Code: transport.CodeLinkedEventFailed}
		}
	}
	return res
}

// chainPart decides, on a participant, one part of a chain whose coordinator
// is c.DebitShard. A decision is recorded in the inbox under the part's key
// and its attempt, so a repeated message gets the same answer and changes
// nothing, and an abort that arrives first keeps a hold from ever applying.
func (s *State) chainPart(now uint64, c *Credit, abort bool) Answer {
	t, p := &c.Transfer, c.Part
	ans := Answer{ID: t.ID, Attempt: t.Timestamp, Outcome: OutcomeStale}
	if t.Timestamp < s.watermarks[c.DebitShard] || t.ID != p.Key() {
		return ans
	}
	key := inboxKey(c.DebitShard, t.ID)
	if row, ok := s.inbox[key]; ok {
		if row.Attempt == t.Timestamp {
			return row.answer()
		}
		if row.Attempt > t.Timestamp {
			return ans
		}
		// A later chain under the same id: the earlier one is over.
	}
	account := t.CreditAccountID
	if p.Debit {
		account = t.DebitAccountID
	}
	if !s.owns(account) {
		ans.Outcome = OutcomeMoved // a split took the account away: its new shard decides
		return ans
	}
	row := &InboxRow{ID: t.ID, DebitShard: c.DebitShard, Attempt: t.Timestamp}
	switch {
	case p.Finish: // never refused, not even by an abort: the coordinator decided
		row.Outcome, row.Timestamp = OutcomeCredited, s.finishPart(now, t, p)
	case abort:
		row.Outcome = OutcomeAborted
	default:
		row.Outcome, row.Code = OutcomeRefused, s.holdPart(t, p)
		if row.Code == transport.CodeOK {
			row.Outcome = OutcomeCredited
			row.Timestamp = s.tick(now)
			if p.Debit {
				s.recordBalance(s.accounts[t.DebitAccountID], row.Timestamp)
			} else {
				s.recordBalance(s.accounts[t.CreditAccountID], row.Timestamp)
			}
		}
		if row.Code == transport.CodeExists {
			old, _ := s.lookupTransfer(p.ID)
			row.Timestamp = old.Timestamp
		}
		if row.Code == codeBusy {
			row.Outcome, row.Code = OutcomeAborted, transport.CodeOK
		}
	}
	s.inbox[key] = row
	return row.answer()
}

// codeBusy is holdPart's answer when the leg's id is taken by a transfer or
// chain in flight: the chain is aborted and its client retries.
const codeBusy = transport.Code(255)

// holdPart reserves one side of a leg, or says why it cannot.
func (s *State) holdPart(t *transport.Transfer, p *ChainPart) transport.Code {
	if !p.Debit {
		cr, ok := s.accounts[t.CreditAccountID]
		if !ok {
			return transport.CodeCreditAccountNotFound
		}
		if code := checkAccounts(t, nil, cr); code != transport.CodeOK {
			return code
		}
		cr.CreditsPending += t.Amount
		return transport.CodeOK
	}
	if _, held := s.heldIDs[p.ID]; held {
		return codeBusy
	}
	if _, inFlight := s.outbox[p.ID]; inFlight {
		return codeBusy
	}
	leg := *t
	leg.ID, leg.Timestamp = p.ID, 0
	if old, ok := s.lookupTransfer(p.ID); ok {
		if sameTransfer(&old, &leg) {
			return transport.CodeExists
		}
		return transport.CodeExistsWithDifferentFields
	}
	dr, ok := s.accounts[t.DebitAccountID]
	if !ok {
		return transport.CodeDebitAccountNotFound
	}
	if code := checkAccounts(t, dr, nil); code != transport.CodeOK {
		return code
	}
	dr.DebitsPending += t.Amount
	s.heldIDs[p.ID] = t.ID
	return transport.CodeOK
}

// finishPart commits or releases a side held by holdPart and returns the
// event's timestamp.
func (s *State) finishPart(now uint64, t *transport.Transfer, p *ChainPart) uint64 {
	ts := s.tick(now)
	leg := *t
	leg.ID, leg.Timestamp = p.ID, ts
	pending := t.Flags&transport.TransferPending != 0
	if !p.Debit {
		cr := s.accounts[t.CreditAccountID]
		if cr == nil || cr.CreditsPending < t.Amount {
			panic(fmt.Sprintf("shard %d: chain part %q holds %d that its account does not", s.id, t.ID, t.Amount))
		}
		if p.Commit {
			leg.State = transport.StatePending
			if !pending {
				cr.CreditsPending -= t.Amount
				cr.CreditsPosted += t.Amount
				leg.State = transport.StatePosted
			} else if p.DebitShard != s.id {
				s.pendingCredits[inboxKey(p.DebitShard, p.ID)] = &Credit{Transfer: leg, DebitShard: p.DebitShard}
			}
			if p.DebitShard != s.id { // else the debit side lists it
				s.archive.PutAccountTransfer(cr.ID, ts, &leg)
			}
		} else {
			cr.CreditsPending -= t.Amount
		}
		s.recordBalance(cr, ts)
		return ts
	}
	dr := s.accounts[t.DebitAccountID]
	hold := *p
	hold.Finish, hold.Commit = false, false
	if dr == nil || dr.DebitsPending < t.Amount || s.heldIDs[p.ID] != hold.Key() {
		panic(fmt.Sprintf("shard %d: chain part %q holds %d that its account does not", s.id, t.ID, t.Amount))
	}
	delete(s.heldIDs, p.ID)
	switch {
	case !p.Commit:
		dr.DebitsPending -= t.Amount
	case pending:
		leg.State = transport.StatePending
		s.putOpen(leg.ID, &leg)
		if leg.Timeout > 0 {
			s.expiring[leg.ID] = expiresAt(&leg)
		}
		if p.CreditShard != s.id {
			s.remote[leg.ID] = p.CreditShard
		}
		s.stored++
		s.recordTransfer(&leg, false, ts)
	default:
		dr.DebitsPending -= t.Amount
		dr.DebitsPosted += t.Amount
		leg.State = transport.StatePosted
		s.stored++
		s.recordTransfer(&leg, true, ts)
	}
	s.recordBalance(dr, ts)
	return ts
}
