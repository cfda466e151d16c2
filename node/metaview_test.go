package node

import (
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// The meta view counts each shard's slots from the map and lists a shard
// the placement knows before it owns a slot, by id, with a copy of its
// voters: a reply must not share the state's slices.
func TestMetaShardsCountSlotsAndListPlacedShards(t *testing.T) {
	slots := make([]uint32, transport.SlotCount)
	for i := range slots {
		slots[i] = uint32(i%3) + 1
	}
	st := raftfsm.MetaState{SlotMap: raftfsm.SlotMap{Epoch: 2, Slots: slots},
		Placement: placement.Placement{2: {"n1", "n2"}, 4: {"n3"}}}
	got := metaShards(st)
	var ids []uint32
	sum := 0
	for _, s := range got {
		ids = append(ids, s.ID)
		sum += s.Slots
		if s.Placement == nil {
			t.Errorf("shard %d: placement null, want a list", s.ID)
		}
	}
	if !slices.Equal(ids, []uint32{1, 2, 3, 4}) || sum != transport.SlotCount || got[0].Slots != 1366 || got[3].Slots != 0 ||
		!slices.Equal(got[1].Placement, []string{"n1", "n2"}) {
		t.Fatalf("meta shards %+v", got)
	}
	got[1].Placement[0] = "changed"
	if st.Placement[2][0] != "n1" {
		t.Fatal("the view shares the state's placement")
	}
}
