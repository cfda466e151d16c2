package nodeops

import "github.com/ledgerd/ledgerd/transport"

// MetaSubject is where the meta leader answers with the meta group's state
// (ledgerctl shards, ledgerctl status): the slot map's epoch, the nodes,
// where each shard's voters are placed and the replica moves under way.
// Like the drain, it answers only an operator.
func MetaSubject(s transport.Subjects) string { return s.Prefix + ".v1.cluster.meta" }

// MetaRequest is the body of MetaSubject (an empty body asks for the
// defaults).
type MetaRequest struct {
	// Members also asks each shard's leader for its group's configuration
	// (one request a shard, in parallel): which replicas vote and which
	// are nonvoters still catching up. Without it the answer comes from the
	// meta state alone, at once.
	Members bool `msgpack:"members,omitempty" json:"members,omitempty"`
}

// Meta is the meta group's state as its leader holds it.
type Meta struct {
	// Leader is the meta leader that answered.
	Leader string `msgpack:"leader" json:"leader"`
	// Epoch of the slot map: it grows with each change of the map.
	Epoch uint64 `msgpack:"epoch" json:"epoch"`
	// Replicas is the replication factor; 0: a cluster that keeps every
	// shard on every node (created before placement), with no placement,
	// no moves and no draining.
	Replicas uint32 `msgpack:"replicas" json:"replicas"`
	// Nodes: the nodes the meta state registers and the servers of the
	// meta group's configuration, by id.
	Nodes  []MetaNode  `msgpack:"nodes" json:"nodes"`
	Shards []MetaShard `msgpack:"shards" json:"shards"` // by id
	Moves  []Move      `msgpack:"moves" json:"moves"`   // under way, by shard
	// Splitting is the shard split under way, if any; ShardsWanted the
	// shards ledgerctl shards add asked for (0: never asked).
	Splitting    *SplitView `msgpack:"splitting,omitempty" json:"splitting,omitempty"`
	ShardsWanted uint32     `msgpack:"shards_wanted,omitempty" json:"shards_wanted,omitempty"`
	// Error is why the request was refused.
	Error string `msgpack:"error,omitempty" json:"error,omitempty"`
}

// MetaNode is one node of the cluster.
type MetaNode struct {
	ID       string `msgpack:"id" json:"id"`
	RaftAddr string `msgpack:"raft,omitempty" json:"raft,omitempty"`
	// Draining: ledgerctl nodes drain marked it; placement moves every
	// replica off it, and it stays marked until it is removed.
	Draining bool `msgpack:"draining,omitempty" json:"draining,omitempty"`
	// Meta is its seat in the meta group: "voter", "nonvoter", or "" (not
	// in the meta group's configuration).
	Meta string `msgpack:"meta,omitempty" json:"meta,omitempty"`
}

// MetaShard is one shard as the meta state places it.
type MetaShard struct {
	ID    uint32 `msgpack:"id" json:"id"`
	Slots int    `msgpack:"slots" json:"slots"` // hash slots the map gives it
	// Placement: the nodes that hold its voters, before the move under way
	// (if any) ends; empty when the cluster does not place replicas.
	Placement []string `msgpack:"placement" json:"placement"`
	// Voters and Nonvoters are the group's configuration as its leader
	// answered (MetaRequest.Members); MembersError says why it did not.
	Voters       []string `msgpack:"voters,omitempty" json:"voters,omitempty"`
	Nonvoters    []string `msgpack:"nonvoters,omitempty" json:"nonvoters,omitempty"`
	MembersError string   `msgpack:"members_error,omitempty" json:"members_error,omitempty"`
}

// Move is one replica move under way: Add joins the shard's group as a
// nonvoter, catches up and is promoted, then Remove leaves it. Either may
// be empty (a shard short of voters, or with too many).
type Move struct {
	Shard  uint32 `msgpack:"shard" json:"shard"`
	Add    string `msgpack:"add,omitempty" json:"add,omitempty"`
	Remove string `msgpack:"remove,omitempty" json:"remove,omitempty"`
}
