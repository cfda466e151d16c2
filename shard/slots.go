package shard

import (
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"slices"

	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// Hash slots and splits. A shard that has never been split trusts the
// router's routing (slots nil): the router computed every shard from the
// slot map, and the map has never changed. A split is what changes it: the
// shard's log then records which slots it owns, so that a command routed
// with an older map is refused (Output.Moved) and the router re-plans it,
// and a message of another shard about an account that left answers
// OutcomeMoved and goes to the new owner.
//
// A split is Cockroach's range split applied to hash slots: the parent
// shard applies KindSplit at one index of its log, and every replica
// derives the new shard's first state from its own state at that index
// (State.split), so nothing is copied over the network and the two halves
// hold exactly what the parent held. The history store is shared the same
// way (raftfsm checkpoints the parent's store for the child). Before the
// split, KindFreeze stops new client commands on the slots that leave, so
// that the sagas and chains of their accounts end; the split is refused
// until their accounts' pending balances are all explained by open pending
// transfers (splitReady).

// SlotSet is a set of hash slots.
type SlotSet [transport.SlotCount / 64]uint64

// Has reports whether slot is in the set.
func (s *SlotSet) Has(slot uint16) bool {
	return int(slot) < transport.SlotCount && s[slot/64]&(1<<(slot%64)) != 0
}

// Add adds slot to the set (ignored if out of range).
func (s *SlotSet) Add(slot uint16) {
	if int(slot) < transport.SlotCount {
		s[slot/64] |= 1 << (slot % 64)
	}
}

// Len is the number of slots in the set.
func (s *SlotSet) Len() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// Slots lists the set in order.
func (s *SlotSet) Slots() []uint16 {
	var out []uint16
	for i := range transport.SlotCount {
		if s.Has(uint16(i)) {
			out = append(out, uint16(i))
		}
	}
	return out
}

// SetOf returns the set of slots (out of range ones ignored).
func SetOf(slots []uint16) SlotSet {
	var s SlotSet
	for _, x := range slots {
		s.Add(x)
	}
	return s
}

// slotState is what a shard knows of its slots once it took part in a
// split: the slots it owns, those frozen for a split, and the slot map
// epoch of the last change.
type slotState struct {
	epoch  uint64
	owned  SlotSet
	frozen SlotSet
}

// SlotCommand is the argument of KindFreeze and KindSplit.
type SlotCommand struct {
	// Epoch: the slot map epoch the change belongs to (the map that gives
	// Slots to To). Commands of an older epoch than the shard's are ignored.
	Epoch uint64 `msgpack:"e"`
	// Slots: the slots frozen (KindFreeze; none: thaw) or split off.
	Slots []uint16 `msgpack:"s,omitempty"`
	// Owned, on KindSplit: every slot the shard owns before the split (the
	// slot map's, for a shard that never split: it does not know them).
	Owned []uint16 `msgpack:"o,omitempty"`
	// To, on KindSplit: the new shard's id, and Voters its first
	// configuration (the parent's voters: every one derives the new shard's
	// first state from its own copy of the parent's).
	To     uint32  `msgpack:"to,omitempty"`
	Voters []Voter `msgpack:"v,omitempty"`
}

// Voter is a node of a new shard's first configuration.
type Voter struct {
	ID   string `msgpack:"id"`
	Addr string `msgpack:"a"`
}

// Moved says why a command was refused as a whole: an account it names is
// in a slot this shard does not own (the router's map is older than Epoch)
// or in a slot frozen for a split (Frozen; retry shortly).
type Moved struct {
	Epoch  uint64
	Frozen bool
}

// SplitResult is the output of a KindSplit. Refused says why the split did
// not happen (nothing changed; the command may be sent again). Otherwise
// Child is the new shard's first state, taken at this entry, without an
// archive: encode it (WriteTo) and Read it back over a copy of this
// shard's archive.
type SplitResult struct {
	To      uint32
	Epoch   uint64
	Voters  []Voter
	Refused string
	Child   *State
}

// Slots returns the slots the shard owns and the epoch it learnt them at;
// ok is false for a shard that never split (it serves what it is sent).
func (s *State) Slots() (owned SlotSet, epoch uint64, ok bool) {
	if s.slots == nil {
		return SlotSet{}, 0, false
	}
	return s.slots.owned, s.slots.epoch, true
}

// Serves reports whether account is in a slot this shard owns (always, for
// a shard that never split): reads of another account are answered moved.
func (s *State) Serves(account string) bool { return s.owns(account) }

// LastTimestamp is the timestamp of the last event applied.
func (s *State) LastTimestamp() uint64 { return s.last }

// Epoch is the slot map epoch of the shard's last split (0: never split).
func (s *State) Epoch() uint64 {
	if s.slots == nil {
		return 0
	}
	return s.slots.epoch
}

// owns reports whether account is in a slot this shard owns (always, for a
// shard that never split).
func (s *State) owns(account string) bool {
	return s.slots == nil || s.slots.owned.Has(transport.Slot(account))
}

// moved reports whether a create command must be refused as a whole: one
// of the accounts it names here is in a slot not owned, or frozen. Events
// are not checked further (a bad one is answered by its own code).
func (s *State) moved(c *Command) (Moved, bool) {
	if s.slots == nil {
		return Moved{}, false
	}
	frozen := false
	check := func(account string) bool {
		if account == "" {
			return true
		}
		slot := transport.Slot(account)
		if !s.slots.owned.Has(slot) {
			return false
		}
		frozen = frozen || s.slots.frozen.Has(slot)
		return true
	}
	ok := true
	switch c.Kind {
	case KindCreateAccounts:
		for i := range c.Accounts {
			ok = ok && check(c.Accounts[i].ID)
		}
	case KindCreateTransfers:
		for i := range c.Transfers {
			ok = ok && s.checkTransferSlots(c, i, check)
		}
	}
	switch {
	case !ok:
		return Moved{Epoch: s.slots.epoch}, true
	case frozen:
		return Moved{Epoch: s.slots.epoch, Frozen: true}, true
	}
	return Moved{}, false
}

// checkTransferSlots checks the accounts of transfer i that the command
// says are here: its debit account (a post's or void's: its pending
// transfer's), unless a chain's DebitShards put it elsewhere, and its
// credit account when its credit shard is this one.
func (s *State) checkTransferSlots(c *Command, i int, check func(string) bool) bool {
	t := &c.Transfers[i]
	debit := t.DebitAccountID
	if debit == "" && t.PendingID != "" {
		if p, ok := s.lookupTransfer(t.PendingID); ok {
			debit = p.DebitAccountID
		}
	}
	if (len(c.DebitShards) != len(c.Transfers) || c.DebitShards[i] == s.id) && !check(debit) {
		return false
	}
	here := i >= len(c.CreditShards) || c.CreditShards[i] == s.id
	return !here || check(t.CreditAccountID)
}

// freeze sets the frozen slots (none: thaw). A shard that never split
// learns no ownership from it: the split tells it.
func (s *State) freeze(c *SlotCommand) {
	if c == nil || s.slots != nil && c.Epoch < s.slots.epoch {
		return
	}
	if s.slots == nil {
		if len(c.Slots) == 0 {
			return
		}
		s.slots = &slotState{}
		for i := range s.slots.owned {
			s.slots.owned[i] = ^uint64(0) // every slot: the router's map said so
		}
	}
	s.slots.frozen = SetOf(c.Slots)
}

// split applies a KindSplit: the slots c.Slots leave for shard c.To with
// everything of their accounts, if splitReady allows it.
func (s *State) split(c *SlotCommand) *SplitResult {
	r := &SplitResult{To: 0}
	if c == nil {
		r.Refused = "no split command"
		return r
	}
	r.To, r.Epoch, r.Voters = c.To, c.Epoch, c.Voters
	owned := SetOf(c.Owned)
	if s.slots != nil {
		owned = s.slots.owned
	}
	leaving := SetOf(c.Slots)
	switch {
	case s.slots != nil && c.Epoch <= s.slots.epoch:
		r.Refused = fmt.Sprintf("epoch %d is not after the shard's %d", c.Epoch, s.slots.epoch)
	case c.To == 0 || c.To == s.id:
		r.Refused = fmt.Sprintf("split to shard %d", c.To)
	case leaving.Len() == 0 || leaving.Len() == owned.Len():
		r.Refused = "a split must leave slots on both sides"
	case !subset(&leaving, &owned):
		r.Refused = "a slot split off is not owned"
	default:
		r.Refused = s.splitReady(&leaving)
	}
	if r.Refused != "" {
		return r
	}
	r.Child = s.splitOff(c.To, &leaving)
	for i := range owned {
		owned[i] &^= leaving[i]
	}
	s.slots = &slotState{epoch: c.Epoch, owned: owned}
	r.Child.slots = &slotState{epoch: c.Epoch, owned: leaving}
	return r
}

func subset(a, b *SlotSet) bool {
	for i := range a {
		if a[i]&^b[i] != 0 {
			return false
		}
	}
	return true
}

// SplitReady says why a split of slots would be refused now for what is in
// flight on their accounts ("": it would not): the leader asks before it
// proposes, so that a split waiting for sagas adds no entry to the log.
func (s *State) SplitReady(slots []uint16) string {
	leaving := SetOf(slots)
	return s.splitReady(&leaving)
}

// splitReady says why the accounts of the leaving slots cannot move yet, or
// "": every pending amount they hold must be explained by an open pending
// transfer here (local or with its credit half on another shard) or a
// credit half held here. What else holds one is in flight — a reservation
// waiting for its credit shard, a chain's hold — and its saga addresses
// this shard: it must end first (the freeze keeps new ones from starting).
func (s *State) splitReady(leaving *SlotSet) string {
	debits, credits := map[string]uint64{}, map[string]uint64{}
	for id, t := range s.transfers {
		debits[t.DebitAccountID] += t.Amount
		if _, remote := s.remote[id]; !remote {
			credits[t.CreditAccountID] += t.Amount
		}
	}
	for _, c := range s.pendingCredits {
		credits[c.Transfer.CreditAccountID] += c.Transfer.Amount
	}
	for _, id := range slices.Sorted(maps.Keys(s.accounts)) {
		if !leaving.Has(transport.Slot(id)) {
			continue
		}
		a := s.accounts[id]
		if a.DebitsPending != debits[id] || a.CreditsPending != credits[id] {
			return fmt.Sprintf("account %q has a transfer in flight", id)
		}
	}
	// A settlement in flight (the post, void or expiry of a transfer whose
	// credit half is elsewhere) stays here: its answer changes no account.
	return ""
}

// splitOff moves what belongs to the leaving slots into a new state for
// shard to, and returns it (without archive). A pending transfer whose two
// accounts the split separates becomes a two-phase transfer across shards:
// the debit side keeps the transfer and remote, the credit side a pending
// credit, keyed as if this shard had sent it (origin).
func (s *State) splitOff(to uint32, leaving *SlotSet) *State {
	c := New(to, nil)
	c.archive = nil
	c.last = s.last
	in := func(account string) bool { return leaving.Has(transport.Slot(account)) }
	for id, a := range s.accounts {
		if in(id) {
			c.accounts[id] = a
			delete(s.accounts, id)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.transfers)) {
		t := s.transfers[id]
		cs, remote := s.remote[id]
		d, cr := in(t.DebitAccountID), in(t.CreditAccountID)
		switch {
		case remote && d:
			c.moveOpen(s, id, t)
			c.remote[id], c.origins[id] = cs, s.originOf(id)
			delete(s.remote, id)
			delete(s.origins, id)
		case remote:
		case d && cr:
			c.moveOpen(s, id, t)
		case d: // the credit account stays: its half becomes a pending credit here
			c.moveOpen(s, id, t)
			c.remote[id], c.origins[id] = s.id, s.id
			s.pendingCredits[inboxKey(s.id, id)] = &Credit{Transfer: *t, DebitShard: s.id}
		case cr: // the debit account stays: its credit half goes
			s.remote[id] = to
			c.pendingCredits[inboxKey(s.id, id)] = &Credit{Transfer: *t, DebitShard: s.id}
		}
	}
	for key, pc := range s.pendingCredits { // credit halves held here go with their account
		if in(pc.Transfer.CreditAccountID) {
			c.pendingCredits[key] = pc
			delete(s.pendingCredits, key)
		}
	}
	// The recent requests are the child's too: a router's re-send of a
	// request applied here before the split is answered as first there.
	c.requests, c.chainsDone = s.requests.clone(), s.chainsDone.clone()
	// stored stays 0: the parent counted every transfer stored before the split.
	s.owned = ownedCounts{} // derived: refilled on first use
	return c
}

// moveOpen moves the open pending transfer id from s into c.
func (c *State) moveOpen(s *State, id string, t *transport.Transfer) {
	s.dropOpen(id)
	c.transfers[id] = t
	if exp, ok := s.expiring[id]; ok {
		c.expiring[id] = exp
		delete(s.expiring, id)
	}
}

// originOf is the shard a remote pending transfer's credit half is keyed
// by on its credit shard: this one, unless a split brought it here.
func (s *State) originOf(id string) uint32 {
	if o, ok := s.origins[id]; ok {
		return o
	}
	return s.id
}

// encodeSlots writes the origins, sorted, then the slots: nil, or the
// epoch and the owned and frozen sets as words.
func (s *State) encodeSlots(enc *msgpack.Encoder) error {
	if err := enc.EncodeArrayLen(len(s.origins)); err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(s.origins)) {
		if err := enc.EncodeMulti(id, s.origins[id]); err != nil {
			return err
		}
	}
	if s.slots == nil {
		return enc.EncodeNil()
	}
	if err := enc.EncodeArrayLen(1 + 2*len(s.slots.owned)); err != nil {
		return err
	}
	if err := enc.EncodeUint(s.slots.epoch); err != nil {
		return err
	}
	for _, set := range []*SlotSet{&s.slots.owned, &s.slots.frozen} {
		for _, w := range set {
			if err := enc.EncodeUint(w); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *State) decodeSlots(dec *msgpack.Decoder) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	for range n {
		var id string
		var o uint32
		if err := dec.DecodeMulti(&id, &o); err != nil {
			return err
		}
		s.origins[id] = o
	}
	if n, err = dec.DecodeArrayLen(); err != nil || n < 0 { // n < 0: nil
		return err
	}
	st := &slotState{}
	if n != 1+2*len(st.owned) {
		return errors.New("slot sets of the wrong size")
	}
	if st.epoch, err = dec.DecodeUint64(); err != nil {
		return err
	}
	for _, set := range []*SlotSet{&st.owned, &st.frozen} {
		for i := range set {
			if set[i], err = dec.DecodeUint64(); err != nil {
				return err
			}
		}
	}
	s.slots = st
	return nil
}
