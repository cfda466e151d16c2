// Package shard owns the ledger's state machine: accounts, transfers, and the
// outbox and inbox of cross-shard transfers. It is pure and deterministic: no
// Raft, NATS, clock or file in it. The same sequence of entries gives the same
// state, byte for byte (Hash), on every replica; time arrives in the entry.
package shard

import "github.com/ledgerd/ledgerd/transport"

// Entry is the payload of one Raft log entry: commands applied in order.
type Entry struct {
	// Timestamp is the proposing leader's clock in nanoseconds. Apply never
	// reads a clock: event timestamps are max(last+1, Timestamp).
	Timestamp uint64    `msgpack:"ts"`
	Commands  []Command `msgpack:"c"`
}

// Kind says what a command does.
type Kind uint8

// Command kinds. Values are persisted in logs and snapshots: never renumber.
const (
	// KindCreateAccounts creates accounts (client request).
	KindCreateAccounts Kind = 1
	// KindCreateTransfers applies transfers whose debit account lives here
	// (client request). A transfer whose credit account is on another shard
	// is reserved (debits_pending) and put in the outbox.
	KindCreateTransfers Kind = 2
	// KindCredit applies, on the credit shard, the credit half of a
	// cross-shard transfer, or records why it is refused. Idempotent.
	KindCredit Kind = 3
	// KindAbort records, on the credit shard, that an attempt will never be
	// credited, unless it already was (first writer wins).
	KindAbort Kind = 4
	// KindResolve posts or voids a reservation on the debit shard with the
	// credit shard's answer, and removes the outbox row.
	KindResolve Kind = 5
	// KindForget tells the credit shard that every attempt of one debit shard
	// below a timestamp is resolved, so their inbox rows can go.
	KindForget Kind = 6
	// KindExpire voids every pending transfer whose timeout has passed at
	// the entry's timestamp. The leader proposes it; replicas never read
	// their own clock.
	KindExpire Kind = 7
	// KindFreeze refuses, until the split, the client commands that name an
	// account of the slots given (Output.Moved, Frozen), so that what is in
	// flight for them ends (slots.go). No slots: thaw.
	KindFreeze Kind = 8
	// KindSplit moves the slots given, with everything of their accounts,
	// to a new shard whose first state it outputs (Output.Split).
	KindSplit Kind = 9
)

// Command is one state transition. Which fields are set depends on Kind.
type Command struct {
	Kind     Kind                `msgpack:"k"`
	Accounts []transport.Account `msgpack:"a,omitempty"`
	// Transfers with CreditShards[i], the shard of Transfers[i]'s credit
	// account as the router computed it (routing enters through the log).
	Transfers    []transport.Transfer `msgpack:"t,omitempty"`
	CreditShards []uint32             `msgpack:"cs,omitempty"`
	// DebitShards[i]: the shard of Transfers[i]'s debit account. Set by the
	// router on a chain's coordinator (chains.go); absent, every debit
	// account is on this shard.
	DebitShards []uint32 `msgpack:"ds,omitempty"`
	// Credits for KindCredit and KindAbort.
	Credits []Credit `msgpack:"cr,omitempty"`
	// Answers for KindResolve: the credit shard's answers.
	Answers []Answer `msgpack:"an,omitempty"`
	// Forget for KindForget.
	Forget *Forget `msgpack:"f,omitempty"`
	// Owner, on a provider's KindCreateTransfers: what the provider owns.
	// The router checked everything an event shows; the shard checks that a
	// post or void that leaves its accounts empty resolves one of the
	// provider's pending transfers (State.resolvePending).
	Owner *transport.Owner `msgpack:"o,omitempty"`
	// Request, on a create command: the id of the client request it is
	// part of (RequestIDBytes), the same on every re-send (requests.go).
	Request []byte `msgpack:"rq,omitempty"`
	// Slots for KindFreeze and KindSplit.
	Slots *SlotCommand `msgpack:"sl,omitempty"`
}

// Credit asks a credit shard to apply (or abort) one attempt of a
// cross-shard transfer. An attempt is identified by the transfer id, the
// debit shard and the reservation's timestamp there (strictly increasing per
// debit shard), so a retried transfer is never confused with an earlier
// refused attempt.
type Credit struct {
	Transfer   transport.Transfer `msgpack:"t"` // Timestamp = the attempt
	DebitShard uint32             `msgpack:"ds"`
	// Part: a part of a linked chain across shards (chains.go); DebitShard
	// is then the chain's coordinator.
	Part *ChainPart `msgpack:"p,omitempty"`
	// Origin, on the settlement of a pending transfer a split moved to
	// DebitShard: the shard its credit half is keyed by (0: DebitShard).
	Origin uint32 `msgpack:"og,omitempty"`
}

// Outcome is the credit shard's recorded decision for an attempt.
type Outcome uint8

// Outcomes. Persisted: never renumber.
const (
	// OutcomeCredited: the credit applied; the debit shard posts.
	OutcomeCredited Outcome = 1
	// OutcomeRefused: the credit shard refused (Code says why); void.
	OutcomeRefused Outcome = 2
	// OutcomeAborted: an abort won; void.
	OutcomeAborted Outcome = 3
	// OutcomeStale: the attempt is below the forget watermark: it was
	// resolved long ago and this message is a late duplicate. Ignore.
	OutcomeStale Outcome = 4
	// OutcomeMoved: the account left this shard in a split before anything
	// was decided here: send the message to its slot's shard. Never
	// recorded, never applied.
	OutcomeMoved Outcome = 5
)

// Answer is the credit shard's reply to a Credit, and the input of a
// KindResolve on the debit shard.
type Answer struct {
	ID        string         `msgpack:"id"`
	Attempt   uint64         `msgpack:"at"`
	Outcome   Outcome        `msgpack:"o"`
	Code      transport.Code `msgpack:"c"`  // why refused
	Timestamp uint64         `msgpack:"ts"` // the credit's timestamp on the credit shard
	// Amount: what the credit shard credited, when a balancing_credit
	// clamped it below the amount sent (0: as sent).
	Amount uint64 `msgpack:"am,omitempty"`
}

// Forget advances a debit shard's watermark on a credit shard.
type Forget struct {
	DebitShard uint32 `msgpack:"ds"`
	// Below: every attempt of DebitShard with a smaller timestamp is
	// resolved, and DebitShard will never send a new one below it.
	Below uint64 `msgpack:"b"`
}
