package raftfsm

import (
	"maps"
	"slices"

	"github.com/ledgerd/ledgerd/transport"
)

// Adding shards. The meta group records how many shards the cluster wants
// (Grow, from `ledgerctl shards add`), and the meta leader splits shards
// until it has them, one split at a time (node/split.go): the shard with
// the most slots gives the upper half of its slots to a new shard. A split
// is recorded under way first (Split), with the slot map epoch it will
// make; the parent's log then applies it (shard.KindSplit); EndSplit gives
// the slots to the new shard in the map, at that epoch, and places it on
// its parent's voters, where every replica made it. Replica moves then
// spread it like any other shard.

// ShardsMax bounds the shards a cluster may want.
const ShardsMax = 1024

// Split is a split of shard Parent: Slots go to the new shard Child, and
// the slot map that says so has Epoch.
type Split struct {
	Parent uint32   `msgpack:"parent"`
	Child  uint32   `msgpack:"child"`
	Slots  []uint16 `msgpack:"slots"`
	Epoch  uint64   `msgpack:"epoch"`
}

func (s Split) clone() Split {
	s.Slots = slices.Clone(s.Slots)
	return s
}

func (s *Split) equal(o *Split) bool {
	return s != nil && o != nil && s.Parent == o.Parent && s.Child == o.Child && s.Epoch == o.Epoch && slices.Equal(s.Slots, o.Slots)
}

// splitting reports whether shard id is the parent or child of the split
// under way: no replica of it moves meanwhile, so that the new shard's
// first voters (the parent's when the split was planned) are where the
// placement puts it.
func (s *MetaState) splitting(id uint32) bool {
	return s.Splitting != nil && (s.Splitting.Parent == id || s.Splitting.Child == id)
}

func (s *MetaState) applySplit(c *MetaCommand) {
	switch {
	case c.Grow != 0:
		s.ShardsWanted = min(max(s.ShardsWanted, c.Grow), ShardsMax)
	case c.Split != nil:
		if s.Splitting == nil && s.splitValid(c.Split) {
			sp := c.Split.clone()
			s.Splitting = &sp
		}
	case c.EndSplit != nil:
		sp := s.Splitting
		if !sp.equal(c.EndSplit) || sp.Epoch != s.Epoch+1 {
			return
		}
		for _, slot := range sp.Slots {
			s.Slots[slot] = sp.Child
		}
		s.Epoch = sp.Epoch
		s.Placement[sp.Child] = slices.Clone(s.Placement[sp.Parent])
		if s.SplitFrom == nil {
			s.SplitFrom = map[uint32]uint32{}
		}
		s.SplitFrom[sp.Child] = sp.Parent
		s.Splitting = nil
	}
}

// splitValid: a split of a placed shard, not moving, to a new shard id,
// at the next epoch, of some of the parent's slots but not all.
func (s *MetaState) splitValid(sp *Split) bool {
	_, moving := s.Moving[sp.Parent]
	if s.Replicas == 0 || moving || s.Placement[sp.Parent] == nil || s.Placement[sp.Child] != nil || sp.Child == 0 ||
		sp.Epoch != s.Epoch+1 || len(sp.Slots) == 0 || !slices.IsSorted(sp.Slots) {
		return false
	}
	owned := 0
	for _, id := range s.Slots {
		if id == sp.Child {
			return false
		}
		if id == sp.Parent {
			owned++
		}
	}
	for i, slot := range sp.Slots {
		if int(slot) >= len(s.Slots) || s.Slots[slot] != sp.Parent || i > 0 && sp.Slots[i-1] == slot {
			return false
		}
	}
	return len(sp.Slots) < owned
}

// NextSplit plans the next split while the cluster has fewer shards than
// it wants: the shard with the most slots (the lowest id among equals),
// not moving a replica, gives the upper half of its slots to a new shard
// numbered after the highest.
func NextSplit(s *MetaState) (Split, bool) {
	shards := s.Shards()
	if s.Replicas == 0 || s.Splitting != nil || uint32(len(shards)) >= s.ShardsWanted || len(s.Slots) != transport.SlotCount {
		return Split{}, false
	}
	bySlots := map[uint32][]uint16{}
	for slot, id := range s.Slots {
		bySlots[id] = append(bySlots[id], uint16(slot))
	}
	var parent uint32
	for _, id := range shards {
		if _, moving := s.Moving[id]; moving {
			continue
		}
		if parent == 0 || len(bySlots[id]) > len(bySlots[parent]) {
			parent = id
		}
	}
	if parent == 0 || len(bySlots[parent]) < 2 {
		return Split{}, false
	}
	child := slices.Max(slices.Collect(maps.Keys(bySlots))) + 1
	for id := range s.Placement {
		child = max(child, id+1)
	}
	slots := bySlots[parent]
	return Split{Parent: parent, Child: child, Slots: slices.Clone(slots[len(slots)/2:]), Epoch: s.Epoch + 1}, true
}
