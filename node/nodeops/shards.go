package nodeops

import "github.com/ledgerd/ledgerd/transport"

// ShardsAddSubject is where the meta leader raises the number of shards the
// cluster wants (ledgerctl shards add) and answers with the splits'
// progress; asking with neither Add nor To polls. Like the drain, it
// answers only an operator.
func ShardsAddSubject(s transport.Subjects) string { return s.Prefix + ".v1.shards.add" }

// ShardsAddRequest asks for Add more shards than the cluster has or wants
// already, or (To) for at least To in all: To is the form to repeat after
// a crash, as it asks for the same thing again.
type ShardsAddRequest struct {
	Add uint32 `msgpack:"add,omitempty" json:"add,omitempty"`
	To  uint32 `msgpack:"to,omitempty" json:"to,omitempty"`
}

// ShardsProgress answers a ShardsAddRequest.
type ShardsProgress struct {
	// Shards the slot map has; Wanted, the number the cluster splits
	// shards until it has.
	Shards int `msgpack:"shards" json:"shards"`
	Wanted int `msgpack:"wanted" json:"wanted"`
	// MinSlots and MaxSlots: the fewest and most slots a shard has.
	MinSlots int `msgpack:"min_slots" json:"min_slots"`
	MaxSlots int `msgpack:"max_slots" json:"max_slots"`
	// Splitting is the split under way, if any.
	Splitting *SplitView `msgpack:"splitting,omitempty" json:"splitting,omitempty"`
	// Done: the cluster has the shards wanted and no split is under way.
	Done  bool   `msgpack:"done" json:"done"`
	Error string `msgpack:"error,omitempty" json:"error,omitempty"`
}

// SplitView is a split under way: Slots of shard Parent go to the new
// shard Child.
type SplitView struct {
	Parent uint32 `msgpack:"parent" json:"parent"`
	Child  uint32 `msgpack:"child" json:"child"`
	Slots  int    `msgpack:"slots" json:"slots"`
}
