// Package nodeops is what an operator asks the meta group's leader about the
// cluster's nodes (ledgerctl nodes drain, ledgerctl nodes remove): the
// subjects and their msgpack bodies. It imports no Raft, so ledgerctl can
// speak it without linking the node.
//
// The subjects are under <prefix>.v1., which the operators' NATS account
// imports from the internal account with the requester's identity shared:
// the meta leader answers only an operator (node.Config.Operator).
package nodeops

import "github.com/ledgerd/ledgerd/transport"

// DrainSubject is where the meta leader marks a node draining and answers
// with its progress. Asking again is how progress is polled.
func DrainSubject(s transport.Subjects) string { return s.Prefix + ".v1.nodes.drain" }

// RemoveSubject is where the meta leader takes a drained node out of the
// cluster: out of the meta group's configuration, then forgotten.
func RemoveSubject(s transport.Subjects) string { return s.Prefix + ".v1.nodes.remove" }

// Request is the body of both subjects.
type Request struct {
	Node string `msgpack:"node" json:"node"`
}

// Progress answers a drain or a removal.
type Progress struct {
	Node string `msgpack:"node" json:"node"`
	// Replicas: shards whose voters the placement lists on the node, or
	// that a move is adding to it.
	Replicas int `msgpack:"replicas" json:"replicas"`
	// Moving: replica moves under way that add to or remove from it.
	Moving int `msgpack:"moving" json:"moving"`
	// Leads: the groups (0: the meta group) the node said it leads.
	Leads []uint32 `msgpack:"leads" json:"leads"`
	// MetaVoter: the node still holds a voting seat in the meta group.
	MetaVoter bool `msgpack:"meta_voter" json:"meta_voter"`
	// Done: a drain holds nothing of the node any more; a removal has
	// taken it out of the cluster.
	Done bool `msgpack:"done" json:"done"`
	// PerNode is how many replicas each node holds, after the moves under
	// way (the placement).
	PerNode map[string]int `msgpack:"per_node" json:"per_node"`
	// Error is why the request was refused; nothing changed.
	Error string `msgpack:"error,omitempty" json:"error,omitempty"`
}
