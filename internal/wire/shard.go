// Package wire is the cluster's internal protocol over NATS: what a node
// asks a shard's leader (the op header, Join, Remove, Reply) and the node
// status round (NodeStatuses). It keeps NATS out of shard, which stays a
// pure state machine.
package wire

import (
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// The internal protocol on a shard's subject (transport.Subjects.Shard):
// the request's OpHeader says what its body is.
const (
	OpHeader = "Ledger-Op"
	// OpCommand: the body is one msgpack shard.Command, proposed as is.
	OpCommand = "command"
	// OpLookupAccounts, OpLookupTransfers: the body is a transport.LookupRequest.
	OpLookupAccounts  = "lookup_accounts"
	OpLookupTransfers = "lookup_transfers"
	// OpAccountTransfers, OpAccountBalances: the body is a
	// transport.AccountFilter; the shard holds the account.
	OpAccountTransfers = "account_transfers"
	OpAccountBalances  = "account_balances"
	// OpStatus: no body.
	OpStatus = "status"
	// OpPendingHeld: the body is a transport.Owner; the reply's
	// PendingHeld is how many open pending transfers it holds here (the
	// router's preflight of a provider's limit, plan.PendingOpens).
	OpPendingHeld = "pending_held"
	// OpJoin: the body is a Join; the leader adds that node to its group,
	// as a nonvoter first, as a voter once it has caught up.
	OpJoin = "join"
	// OpRemove: the body is a Remove; the leader removes that node from
	// its group.
	OpRemove = "remove"
	// OpSnapshot: no body; the leader takes a snapshot of its state now,
	// for a replica that refused the older one it was sent (node/split.go).
	OpSnapshot = "snapshot"
	// OpSplit: the body is a shard.SlotCommand; the leader freezes the
	// slots, splits them off once nothing of theirs is in flight, and
	// answers an empty Reply (done) or Retry (node/split.go).
	OpSplit = "split"
)

// Join is the body of OpJoin: a node without data asks a group's leader to
// add it (Promote clear), then, once it has caught up, to make it a voter.
type Join struct {
	Node    transport.NodeInfo `msgpack:"n"`
	Promote bool               `msgpack:"p,omitempty"`
	Applied uint64             `msgpack:"a,omitempty"` // the node's applied index in the group
}

// Remove is the body of OpRemove: the operator removes a node that is gone
// for good (node/remove.go).
type Remove struct {
	Node string `msgpack:"n"`
}

// Reply answers every request on a shard's subject.
type Reply struct {
	// Results of a create command, one per event, Index = position:
	// [code, timestamp] pairs on the wire (transport.CompactResults).
	Results transport.CompactResults `msgpack:"r,omitempty"`
	// Answers of a credit or abort command.
	Answers   []shard.Answer         `msgpack:"an,omitempty"`
	Accounts  []transport.Account    `msgpack:"a,omitempty"`
	Transfers []transport.Transfer   `msgpack:"t,omitempty"`
	Balances  []transport.Balance    `msgpack:"b,omitempty"`
	Status    *transport.ShardStatus `msgpack:"s,omitempty"`
	// Retry is set when the request was not served: this node does not
	// lead the shard, its queue is full, or the outcome is unknown
	// (leadership lost mid-way). Resend the same command: it is idempotent.
	Retry string `msgpack:"retry,omitempty"`
	// Unknown is set with Retry when the command may have been applied
	// (leadership lost after it was proposed); clear, it never reached Raft.
	Unknown bool `msgpack:"unknown,omitempty"`
	// Invalid is set when the request itself could not be decoded.
	Invalid string `msgpack:"invalid,omitempty"`
	// Refused is set when a limit refused the command as a whole, in
	// apply (Output.Refused): nothing of it was applied; the client is
	// answered unavailable, with this reason.
	Refused string `msgpack:"refused,omitempty"`
	// PendingHeld answers OpPendingHeld.
	PendingHeld uint32 `msgpack:"ph,omitempty"`
	// Moved is set when a create command was refused as a whole because an
	// account it names is not served by this shard (a split moved it: the
	// router's slot map is older than Moved.Epoch) or not now (Frozen, for
	// a split: send it again shortly). Nothing of it was applied.
	Moved *Moved `msgpack:"mv,omitempty"`
	// Epoch, on a read's reply: the slot map epoch of the shard's last
	// split (0: never split). A router whose map is older fetches it again
	// and asks again: a shard the split made may hold what it asks for.
	Epoch uint64 `msgpack:"ep,omitempty"`
}

// Moved is Reply.Moved.
type Moved struct {
	Epoch  uint64 `msgpack:"e"`
	Frozen bool   `msgpack:"f,omitempty"`
}
