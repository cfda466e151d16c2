package shard

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/ledgerd/ledgerd/transport"
)

// resolvePending posts or voids a pending transfer on this shard. A post
// moves up to the pending amount to posted and releases the rest; a void
// releases it all. A pending transfer resolves at most once.
//
// When the pending transfer's credit account lives on another shard, only
// the debit side changes here; the post or void is stored at once and goes
// in the outbox as the settlement the credit shard must apply (it cannot
// refuse: the pending credit reserved room for it). The event is answered
// once it has.
func (s *State) resolvePending(now uint64, t *transport.Transfer, chained bool) EventResult {
	p, ok := s.transfers[t.PendingID]
	if !ok {
		final, ok := s.archived(t.PendingID)
		if !ok {
			return EventResult{Code: transport.CodePendingTransferNotFound}
		}
		p = &final
	}
	if !s.owner.MayResolve(p) {
		return EventResult{Code: transport.CodeUnauthorized}
	}
	if code := checkResolution(t, p, max(s.last+1, now)); code != transport.CodeOK {
		return EventResult{Code: code}
	}
	creditShard, remote := s.remote[p.ID]
	if remote && chained {
		return EventResult{Code: transport.CodeFlagsInvalid} // a chain never waits on a saga
	}
	post := t.Flags&transport.TransferPostPendingTransfer != 0
	amount := t.Amount
	if amount == 0 {
		amount = p.Amount
	}
	dr, cr := s.accounts[p.DebitAccountID], s.accounts[p.CreditAccountID]
	if remote {
		cr = &transport.Account{CreditsPending: p.Amount} // settled on its own shard
	}
	if dr == nil || cr == nil || dr.DebitsPending < p.Amount || cr.CreditsPending < p.Amount {
		panic(fmt.Sprintf("shard %d: pending transfer %q holds %d that its accounts do not", s.id, p.ID, p.Amount))
	}
	dr.DebitsPending -= p.Amount
	cr.CreditsPending -= p.Amount
	stored := *t
	stored.DebitAccountID, stored.CreditAccountID = p.DebitAccountID, p.CreditAccountID
	stored.Ledger, stored.Code, stored.Amount = p.Ledger, p.Code, amount
	stored.Timestamp = s.tick(now)
	resolved := *p // copy on write: snapshots share the old record
	if post {
		dr.DebitsPosted += amount
		cr.CreditsPosted += amount
		stored.State, resolved.State = transport.StatePosted, transport.StatePosted
	} else {
		stored.State, resolved.State = transport.StateVoided, transport.StateVoided
		closeAccounts(p, dr, cr, false)
	}
	s.stored++
	s.recordTransfer(&stored, true, stored.Timestamp)
	s.recordTransfer(&resolved, true, stored.Timestamp)
	s.dropOpen(p.ID)
	delete(s.expiring, p.ID)
	s.recordBalance(dr, stored.Timestamp)
	if remote {
		s.outbox[t.ID] = s.settlement(p.ID, &stored, creditShard)
		return EventResult{InFlight: true, ID: t.ID, Attempt: stored.Timestamp}
	}
	s.recordBalance(cr, stored.Timestamp)
	return EventResult{Code: transport.CodeOK, Timestamp: stored.Timestamp}
}

// settlement is the outbox row that settles the remote pending transfer
// pending on its credit shard: the post, void or expiry t. The transfer is
// no longer remote here.
func (s *State) settlement(pending string, t *transport.Transfer, creditShard uint32) *OutboxRow {
	row := &OutboxRow{Transfer: *t, CreditShard: creditShard, Origin: s.origins[pending]}
	delete(s.remote, pending)
	delete(s.origins, pending)
	return row
}

// settle applies, on the credit shard, the post, void or expiry of a
// pending transfer whose credit half it holds. A settlement seen before (the
// pending credit is gone) is answered credited again: it changes nothing.
func (s *State) settle(now uint64, c *Credit) Answer {
	t := &c.Transfer
	ans := Answer{ID: t.ID, Attempt: t.Timestamp, Outcome: OutcomeCredited}
	key := inboxKey(cmp.Or(c.Origin, c.DebitShard), t.PendingID)
	pc, ok := s.pendingCredits[key]
	if !ok {
		if !s.owns(t.CreditAccountID) { // a split took the credit half away
			ans.Outcome = OutcomeMoved
		}
		return ans
	}
	p := &pc.Transfer
	cr := s.accounts[p.CreditAccountID]
	if cr == nil || cr.CreditsPending < p.Amount {
		panic(fmt.Sprintf("shard %d: pending credit %q holds %d that its account does not", s.id, p.ID, p.Amount))
	}
	cr.CreditsPending -= p.Amount
	if t.Flags&transport.TransferPostPendingTransfer != 0 {
		cr.CreditsPosted += t.Amount
	} else {
		closeAccounts(p, nil, cr, false) // a void or expiry reopens it
	}
	delete(s.pendingCredits, key)
	ans.Timestamp = s.tick(now)
	s.archive.PutAccountTransfer(cr.ID, ans.Timestamp, t)
	s.recordBalance(cr, ans.Timestamp)
	return ans
}

// checkResolution checks a post or void against its pending transfer, in
// the protocol's order. now is the time the event would get.
func checkResolution(t, p *transport.Transfer, now uint64) transport.Code {
	switch {
	case t.DebitAccountID != "" && t.DebitAccountID != p.DebitAccountID,
		t.CreditAccountID != "" && t.CreditAccountID != p.CreditAccountID,
		t.Ledger != 0 && t.Ledger != p.Ledger,
		t.Code != 0 && t.Code != p.Code:
		return transport.CodePendingTransferMismatch
	case p.Flags&transport.TransferPending == 0:
		return transport.CodePendingTransferNotPending
	case p.State == transport.StatePosted:
		return transport.CodePendingTransferAlreadyPosted
	case p.State == transport.StateVoided:
		return transport.CodePendingTransferAlreadyVoided
	case p.State == transport.StateExpired || p.Timeout > 0 && now >= expiresAt(p):
		return transport.CodePendingTransferExpired
	case t.Amount > p.Amount:
		return transport.CodeExceedsPendingTransferAmount
	case t.Flags&transport.TransferVoidPendingTransfer != 0 && t.Amount != 0 && t.Amount != p.Amount:
		return transport.CodePendingTransferMismatch // a void releases the whole amount
	}
	return transport.CodeOK
}

// expiresAt is when a pending transfer with a timeout expires.
func expiresAt(p *transport.Transfer) uint64 {
	return p.Timestamp + uint64(p.Timeout)*1e9
}

// expire voids every pending transfer whose timeout has passed at now (the
// proposing leader's clock, carried in the entry), oldest deadline first:
// each expiry is an event with its own timestamp in the accounts' history.
func (s *State) expire(now uint64, out *Output) {
	now = max(s.last+1, now)
	var due []string
	for id, at := range s.expiring {
		if at <= now {
			due = append(due, id)
		}
	}
	slices.SortFunc(due, func(a, b string) int {
		return cmp.Or(cmp.Compare(s.expiring[a], s.expiring[b]), cmp.Compare(a, b))
	})
	for _, id := range due {
		p := s.transfers[id]
		expired := *p
		expired.State = transport.StateExpired
		ts := s.tick(now)
		dr := s.accounts[p.DebitAccountID]
		dr.DebitsPending -= p.Amount
		s.recordTransfer(&expired, true, ts)
		s.dropOpen(id)
		delete(s.expiring, id)
		out.Expired = append(out.Expired, id)
		s.recordBalance(dr, ts)
		if creditShard, remote := s.remote[id]; remote {
			// The credit shard voids its half when the settlement
			// arrives: a void under the pending transfer's own id.
			closeAccounts(p, dr, nil, false)
			settle := transport.Transfer{ID: id, PendingID: id, Flags: transport.TransferVoidPendingTransfer,
				DebitAccountID: p.DebitAccountID, CreditAccountID: p.CreditAccountID, Ledger: p.Ledger, Code: p.Code,
				Amount: p.Amount, Timestamp: ts, State: transport.StateExpired}
			row := s.settlement(id, &settle, creditShard)
			s.outbox[id] = row
			out.Reserved = append(out.Reserved, *row)
			continue
		}
		cr := s.accounts[p.CreditAccountID]
		cr.CreditsPending -= p.Amount
		closeAccounts(p, dr, cr, false)
		s.recordBalance(cr, ts)
	}
}

// NextExpiry returns the earliest expiry time of an open pending transfer,
// and false if none has a timeout. The leader proposes KindExpire once its
// clock passes it.
func (s *State) NextExpiry() (uint64, bool) {
	var next uint64
	found := false
	for _, at := range s.expiring {
		if !found || at < next {
			next, found = at, true
		}
	}
	return next, found
}

// sameResolution reports whether t repeats the post or void old: the
// fields a post may omit (stored filled in from the pending transfer) match
// whatever they resolved to, and an amount of 0 matches the whole amount.
func (s *State) sameResolution(old, t *transport.Transfer) bool {
	const resolves = transport.TransferPostPendingTransfer | transport.TransferVoidPendingTransfer
	if old.Flags&resolves == 0 || old.Flags != t.Flags || old.PendingID != t.PendingID || old.Timeout != t.Timeout {
		return false
	}
	amount := t.Amount
	if amount == 0 {
		p, _ := s.lookupTransfer(old.PendingID) // the pending transfer outlives its resolutions
		amount = p.Amount
	}
	return (t.DebitAccountID == "" || t.DebitAccountID == old.DebitAccountID) &&
		(t.CreditAccountID == "" || t.CreditAccountID == old.CreditAccountID) &&
		(t.Ledger == 0 || t.Ledger == old.Ledger) && (t.Code == 0 || t.Code == old.Code) &&
		amount == old.Amount && maps.Equal(old.Metadata, t.Metadata)
}
