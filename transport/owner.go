package transport

import "strings"

// Owner is what a provider owns (docs/protocol.md, "Who may do what"): the
// accounts and transfers whose ids start with one of Prefixes, on the
// Ledgers it is allowed. A nil *Owner is an operator, who may do anything.
// The router checks every event and filters every read with it; a shard
// checks the one rule that needs its state (the pending transfer of a post
// or void that leaves its accounts empty), so the owner travels in the
// command and so in the log.
type Owner struct {
	Prefixes []string `msgpack:"p"`
	Ledgers  []uint32 `msgpack:"l"`
	// PendingMax bounds the open pending transfers the owner may hold on
	// each shard (0: no bound). A create command that would pass it is
	// refused as a whole, in apply, so every replica decides alike.
	PendingMax uint32 `msgpack:"pm,omitempty"`
}

// Owns reports whether id is one of the owner's ids.
func (o *Owner) Owns(id string) bool {
	if o == nil {
		return true
	}
	for _, p := range o.Prefixes {
		if strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

// Allows reports whether the owner may use ledger.
func (o *Owner) Allows(ledger uint32) bool {
	if o == nil {
		return true
	}
	for _, l := range o.Ledgers {
		if l == ledger {
			return true
		}
	}
	return false
}

// OwnsAccount reports whether a is the owner's: its id and its ledger.
func (o *Owner) OwnsAccount(a *Account) bool { return o.Owns(a.ID) && o.Allows(a.Ledger) }

// MayCreateAccount reports whether the owner may create a. A ledger of 0
// is no ledger at all: ledger_invalid says so, not unauthorized.
func (o *Owner) MayCreateAccount(a *Account) bool {
	return o.Owns(a.ID) && (a.Ledger == 0 || o.Allows(a.Ledger))
}

// MayCreateTransfer reports whether the owner may create t as far as the
// event itself shows: its id, its ledger, and its debit account (a post or
// void that leaves it empty names the pending transfer's, which its shard
// checks: MayResolve). Any account of an allowed ledger may be credited,
// but only an own account may be closed or have its balance probed by a
// balancing transfer.
func (o *Owner) MayCreateTransfer(t *Transfer) bool {
	if o == nil {
		return true
	}
	if !o.Owns(t.ID) || (t.Ledger != 0 && !o.Allows(t.Ledger)) {
		return false
	}
	if t.DebitAccountID != "" && !o.Owns(t.DebitAccountID) {
		return false
	}
	const creditSide = TransferBalancingCredit | TransferClosingCredit
	return t.Flags&creditSide == 0 || t.CreditAccountID == "" || o.Owns(t.CreditAccountID)
}

// MayResolve reports whether the owner may post or void pending, a pending
// transfer found by a post or void: its debit account must be the
// owner's, on an allowed ledger.
func (o *Owner) MayResolve(pending *Transfer) bool {
	return o.Owns(pending.DebitAccountID) && o.Allows(pending.Ledger)
}

// SeesTransfer reports whether the owner may read t: it touches one of
// the owner's accounts on an allowed ledger.
func (o *Owner) SeesTransfer(t *Transfer) bool {
	return o.Allows(t.Ledger) && (o.Owns(t.DebitAccountID) || o.Owns(t.CreditAccountID))
}
