package shard

import (
	"fmt"

	"github.com/ledgerd/ledgerd/transport"
)

// A provider's open pending transfers are bounded per shard
// (transport.Owner.PendingMax): without a bound, pending transfers with no
// timeout would let one provider grow a shard's memory without end. The
// owner of an open pending transfer is the provider whose prefix its id
// carries (a provider creates only such ids, and no two providers' prefixes
// overlap), so the count is a pure function of the open transfers: apply
// stays deterministic whatever the cache below holds.

// ownedCounts caches, for each prefix a provider's command has named, how
// many open pending transfers here have an id with that prefix. It is
// derived from State.transfers: never encoded, empty after Read or Clone,
// filled on first use.
type ownedCounts struct {
	byPrefix       map[string]int
	minLen, maxLen int
}

// move adds d to the count of every tracked prefix of id.
func (c *ownedCounts) move(id string, d int) {
	if len(c.byPrefix) == 0 {
		return
	}
	for l := c.minLen; l <= min(c.maxLen, len(id)); l++ {
		if n, ok := c.byPrefix[id[:l]]; ok {
			c.byPrefix[id[:l]] = n + d
		}
	}
}

// putOpen records t as the open pending transfer id.
func (s *State) putOpen(id string, t *transport.Transfer) {
	if _, had := s.transfers[id]; !had {
		s.owned.move(id, 1)
	}
	s.transfers[id] = t
}

// dropOpen removes the open pending transfer id, if there is one.
func (s *State) dropOpen(id string) {
	if _, had := s.transfers[id]; had {
		s.owned.move(id, -1)
		delete(s.transfers, id)
	}
}

// ownedPending counts the open pending transfers here that belong to o,
// tracking o's prefixes from now on (apply only: it fills the cache).
func (s *State) ownedPending(o *transport.Owner) int {
	for _, p := range o.Prefixes {
		if _, ok := s.owned.byPrefix[p]; ok {
			continue
		}
		if s.owned.byPrefix == nil {
			s.owned.byPrefix = map[string]int{}
			s.owned.minLen, s.owned.maxLen = len(p), len(p)
		}
		s.owned.byPrefix[p] = s.countPrefix(p)
		s.owned.minLen, s.owned.maxLen = min(s.owned.minLen, len(p)), max(s.owned.maxLen, len(p))
	}
	return s.PendingHeld(o)
}

// PendingHeld counts the open pending transfers here that belong to o. It
// only reads (readers share the state): a prefix no command has named yet
// is counted afresh.
func (s *State) PendingHeld(o *transport.Owner) int {
	total := 0
	for _, p := range o.Prefixes {
		if n, ok := s.owned.byPrefix[p]; ok {
			total += n
		} else {
			total += s.countPrefix(p)
		}
	}
	return total
}

func (s *State) countPrefix(p string) int {
	n := 0
	for id := range s.transfers {
		if len(id) >= len(p) && id[:len(p)] == p {
			n++
		}
	}
	return n
}

// overPendingLimit says why a provider's create command is refused as a
// whole, or "" if it is not: the pending transfers it may open here
// (flagged pending, not already open) would take the provider past its
// limit. Refusing the whole command keeps the answer the request-level
// unavailable of docs/protocol.md: nothing of it is applied.
func (s *State) overPendingLimit(c *Command) string {
	o := c.Owner
	if o == nil || o.PendingMax == 0 {
		return ""
	}
	opens := 0
	for i := range c.Transfers {
		t := &c.Transfers[i]
		if t.Flags&transport.TransferPending == 0 {
			continue
		}
		if _, open := s.transfers[t.ID]; !open {
			opens++
		}
	}
	if opens == 0 {
		return ""
	}
	held := s.ownedPending(o)
	if held+opens <= int(o.PendingMax) {
		return ""
	}
	return fmt.Sprintf("the provider holds %d open pending transfers on shard %d and its limit there is %d: post, void or let some expire before opening %d more", held, s.id, o.PendingMax, opens)
}
