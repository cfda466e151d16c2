package transport

import (
	"fmt"
	"strconv"
)

// DefaultPrefix is the subject prefix when none is configured.
const DefaultPrefix = "ledger"

// Subjects names every NATS subject under one prefix.
type Subjects struct{ Prefix string }

// Client-facing subjects (docs/protocol.md).
func (s Subjects) AccountsCreate() string    { return s.Prefix + ".v1.accounts.create" }
func (s Subjects) TransfersCreate() string   { return s.Prefix + ".v1.transfers.create" }
func (s Subjects) AccountsLookup() string    { return s.Prefix + ".v1.accounts.lookup" }
func (s Subjects) TransfersLookup() string   { return s.Prefix + ".v1.transfers.lookup" }
func (s Subjects) AccountsTransfers() string { return s.Prefix + ".v1.accounts.transfers" }
func (s Subjects) AccountsBalances() string  { return s.Prefix + ".v1.accounts.balances" }
func (s Subjects) ClusterStatus() string     { return s.Prefix + ".v1.cluster.status" }

// Shard is the internal subject served by the leader of shard id: router
// commands and shard-to-shard saga messages.
func (s Subjects) Shard(id uint32) string {
	return s.Prefix + ".internal.shard." + strconv.FormatUint(uint64(id), 10)
}

// History is the internal subject on which node serves copies of its
// history store of shard id, to a replica installing a snapshot. Node ids
// are subject tokens (ValidNodeID).
func (s Subjects) History(id uint32, node string) string {
	return s.Prefix + ".internal.history." + strconv.FormatUint(uint64(id), 10) + "." + node
}

// Meta is the internal subject served by the leader of the meta group.
func (s Subjects) Meta() string { return s.Prefix + ".internal.meta" }

// Nodes is the internal subject on which nodes find each other: a request
// carries the asker's NodeInfo, and every node answers with its own.
func (s Subjects) Nodes() string { return s.Prefix + ".internal.nodes" }

// NodesStatus is the internal subject every node answers with its
// NodeStatus (not a queue group: all answer).
func (s Subjects) NodesStatus() string { return s.Prefix + ".internal.nodes.status" }

// NodeInfo is what a node tells the others about itself.
type NodeInfo struct {
	ID       string `msgpack:"id"`
	RaftAddr string `msgpack:"raft"`
	// Member: the node belongs to an established cluster (its meta log
	// holds entries past the bootstrap), as it answers on the Nodes
	// subject.
	Member bool `msgpack:"member,omitempty"`
}

// NodeIDBytesMax bounds a node id.
const NodeIDBytesMax = 64

// ValidNodeID checks a node id: 1 to NodeIDBytesMax letters, digits, '-'
// or '_', so that it is a NATS subject token and a Raft server id as is.
func ValidNodeID(id string) error {
	if id == "" || len(id) > NodeIDBytesMax {
		return fmt.Errorf("node id %q: must be 1 to %d characters", id, NodeIDBytesMax)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("node id %q: only letters, digits, '-' and '_' are allowed", id)
		}
	}
	return nil
}
