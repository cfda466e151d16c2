package shard

import (
	"fmt"

	"github.com/ledgerd/ledgerd/transport"
)

// Linked chains. Events flagged linked form a chain with the next event; a
// chain succeeds or fails as one. On a shard a chain is applied within one
// entry: its events one after another, each seeing the ones before, then
// kept if every event was applied (or every event already existed), else
// undone: balances, open transfers and history rows as they were before the
// chain, and the timestamps it took given again.
//
// A chain whose events would leave the shard (a transfer whose credit
// account lives on another shard) is refused with flags_invalid: all or
// nothing across shards needs a coordinator's durable decision, which is not
// built yet. The router refuses chains that span shards before sending them.

// EachChain calls f for each chain [i, j) of n events: a run of events each
// linked to the next, or one event that is not linked. open reports a chain
// whose last event is linked (the batch ended inside it). The router and
// the simulator cut batches into chains with it too.
func EachChain(n int, linked func(int) bool, f func(i, j int, open bool)) {
	for i := 0; i < n; {
		j := i
		for j < n && linked(j) {
			j++
		}
		if j == n {
			f(i, n, true)
			return
		}
		f(i, j+1, false)
		i = j + 1
	}
}

// applyChain applies the chain [i, j) with apply, whose results it writes to
// res. A chain of one unlinked event is applied as it is.
func (s *State) applyChain(res []EventResult, i, j int, open bool, touched func(k int) (accounts, transfers []string), apply func(k int, chained bool) EventResult) {
	if open {
		for k := i; k < j; k++ {
			res[k] = EventResult{Code: transport.CodeLinkedEventChainOpen}
		}
		return
	}
	if j-i == 1 {
		res[i] = apply(i, false)
		return
	}
	var accounts, transfers []string
	for k := i; k < j; k++ {
		a, t := touched(k)
		accounts, transfers = append(accounts, a...), append(transfers, t...)
	}
	u := s.beginChain(accounts, transfers)
	failed, applied, existed := -1, 0, 0
	for k := i; k < j && failed < 0; k++ {
		res[k] = apply(k, true)
		if res[k].InFlight {
			panic(fmt.Sprintf("shard %d: event %d of a chain went in flight", s.id, k))
		}
		switch res[k].Code {
		case transport.CodeOK:
			applied++
		case transport.CodeExists:
			existed++
		default:
			failed = k
		}
	}
	if failed < 0 && applied > 0 && existed > 0 {
		// Some events existed and some were new: a retry of a chain finds
		// all of it, so this is another chain reusing ids. The first event
		// that existed says so.
		for k := i; k < j; k++ {
			if res[k].Code == transport.CodeExists {
				failed = k
				break
			}
		}
	}
	if failed < 0 {
		s.commitChain(u)
		return
	}
	s.rollbackChain(u)
	for k := i; k < j; k++ {
		if k != failed {
			res[k] = EventResult{Code: transport.CodeLinkedEventFailed}
		}
	}
}

// chainUndo is what a chain may change, as it was before the chain.
type chainUndo struct {
	last, stored uint64
	accounts     map[string]*transport.Account  // a copy of each; nil if absent
	transfers    map[string]*transport.Transfer // the open transfer; nil if absent
	expiring     map[string]uint64              // 0 if absent
	archive      Archive                        // the real one, while buffer stands in
	buffer       *bufferedArchive
}

func (s *State) beginChain(accounts, transfers []string) *chainUndo {
	u := &chainUndo{
		last: s.last, stored: s.stored, archive: s.archive,
		accounts:  make(map[string]*transport.Account, len(accounts)),
		transfers: make(map[string]*transport.Transfer, len(transfers)),
		expiring:  make(map[string]uint64, len(transfers)),
		buffer:    &bufferedArchive{under: s.archive, transfers: map[string]ArchivedTransfer{}},
	}
	for _, id := range accounts {
		if a, ok := s.accounts[id]; ok {
			cp := *a
			u.accounts[id] = &cp
		} else {
			u.accounts[id] = nil
		}
	}
	for _, id := range transfers {
		u.transfers[id] = s.transfers[id]
		u.expiring[id] = s.expiring[id]
	}
	s.archive = u.buffer
	return u
}

func (s *State) commitChain(u *chainUndo) {
	s.archive = u.archive
	for _, w := range u.buffer.writes {
		w(s.archive)
	}
}

func (s *State) rollbackChain(u *chainUndo) {
	s.archive = u.archive
	s.last, s.stored = u.last, u.stored
	for id, a := range u.accounts {
		if a == nil {
			delete(s.accounts, id)
		} else {
			*s.accounts[id] = *a // the same record: Clone copies accounts
		}
	}
	for id, t := range u.transfers {
		if t == nil {
			s.dropOpen(id)
		} else {
			s.putOpen(id, t) // records are never changed in place
		}
		if at := u.expiring[id]; at == 0 {
			delete(s.expiring, id)
		} else {
			s.expiring[id] = at
		}
	}
}

// bufferedArchive holds a chain's history writes until the chain is kept,
// and reads its own transfers back (an event may post one pending earlier in
// the chain).
type bufferedArchive struct {
	under     Archive
	transfers map[string]ArchivedTransfer
	writes    []func(Archive)
}

func (b *bufferedArchive) Transfer(id string) (transport.Transfer, uint64, bool) {
	if a, ok := b.transfers[id]; ok {
		return a.T, a.At, true
	}
	return b.under.Transfer(id)
}

func (b *bufferedArchive) PutTransfer(t *transport.Transfer, at uint64) {
	cp := *t
	b.transfers[t.ID] = ArchivedTransfer{T: cp, At: at}
	b.writes = append(b.writes, func(a Archive) { a.PutTransfer(&cp, at) })
}

func (b *bufferedArchive) PutAccountTransfer(account string, ts uint64, t *transport.Transfer) {
	cp := *t
	b.writes = append(b.writes, func(a Archive) { a.PutAccountTransfer(account, ts, &cp) })
}

func (b *bufferedArchive) PutAccountTransferRef(account string, ts uint64, id string) {
	b.writes = append(b.writes, func(a Archive) { a.PutAccountTransferRef(account, ts, id) })
}

func (b *bufferedArchive) PutBalance(account string, bal *transport.Balance) {
	cp := *bal
	b.writes = append(b.writes, func(a Archive) { a.PutBalance(account, &cp) })
}
