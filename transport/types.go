package transport

// Account is an account as sent by clients and returned by lookups.
// Balances and Timestamp are set by the cluster.
type Account struct {
	ID             string            `json:"id"`
	Ledger         uint32            `json:"ledger"`
	Code           uint16            `json:"code"`
	Flags          uint32            `json:"flags"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	DebitsPending  uint64            `json:"debits_pending"`
	DebitsPosted   uint64            `json:"debits_posted"`
	CreditsPending uint64            `json:"credits_pending"`
	CreditsPosted  uint64            `json:"credits_posted"`
	Timestamp      uint64            `json:"timestamp"`
}

// Transfer is a transfer as sent by clients and returned by lookups.
// Timestamp and State are set by the cluster.
type Transfer struct {
	ID              string            `json:"id"`
	DebitAccountID  string            `json:"debit_account_id"`
	CreditAccountID string            `json:"credit_account_id"`
	Amount          uint64            `json:"amount"`
	Ledger          uint32            `json:"ledger"`
	Code            uint16            `json:"code"`
	Flags           uint32            `json:"flags"`
	PendingID       string            `json:"pending_id,omitempty"`
	Timeout         uint32            `json:"timeout,omitempty"`
	Metadata        map[string]string `json:"metadata,omitempty"`
	Timestamp       uint64            `json:"timestamp"`
	State           string            `json:"state,omitempty"`
}

// Transfer states reported by lookups.
const (
	StatePosted  = "posted"
	StatePending = "pending"
	StateVoided  = "voided"
	StateExpired = "expired"
)

// Result is the outcome of one event of a create request.
type Result struct {
	Index     uint32 `json:"index"`
	Code      Code   `json:"code"`
	Timestamp uint64 `json:"timestamp"`
}

// Error is the body of a request that failed as a whole.
type Error struct {
	Code    string `msgpack:"code" json:"code"`
	Message string `msgpack:"message" json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// CreateAccountsRequest is the body of <prefix>.v1.accounts.create.
type CreateAccountsRequest struct {
	Accounts []Account
}

// CreateTransfersRequest is the body of <prefix>.v1.transfers.create.
type CreateTransfersRequest struct {
	Transfers []Transfer
}

// LookupRequest is the body of the two lookup subjects.
type LookupRequest struct {
	IDs []string
}

// ResultsReply answers a create request; Error is set instead when the
// request failed as a whole.
type ResultsReply struct {
	Results []Result
	Error   *Error
}

// AccountsReply answers accounts.lookup.
type AccountsReply struct {
	Accounts []Account
	Error    *Error
}

// TransfersReply answers transfers.lookup.
type TransfersReply struct {
	Transfers []Transfer
	Error     *Error
}

// StatusReply answers cluster.status.
type StatusReply struct {
	Nodes  []NodeStatus  `msgpack:"nodes" json:"nodes"`
	Shards []ShardStatus `msgpack:"shards" json:"shards"`
	Error  *Error        `msgpack:"error,omitempty" json:"error,omitempty"`
}

// Version is the version of ledgerd and of its protocol's micro service.
const Version = "0.1.0"

// NodeStatus describes one ledgerd process, as it answers on the Nodes
// status subject; a configured node that did not answer is listed with
// Health "unreachable" and nothing else.
type NodeStatus struct {
	ID      string `msgpack:"id" json:"id"`
	Version string `msgpack:"version" json:"version"`
	// Build: the commit the node's binary was built from and the Go that
	// built it, e.g. "7f616d2c4e1a go1.26.8" (internal/buildinfo).
	Build    string        `msgpack:"build,omitempty" json:"build,omitempty"`
	Health   string        `msgpack:"health" json:"health"` // "up" or "unreachable"
	RaftAddr string        `msgpack:"raft,omitempty" json:"raft,omitempty"`
	Groups   []GroupStatus `msgpack:"groups,omitempty" json:"groups,omitempty"`
	// Voters: the voting node ids of the cluster's configuration (its meta
	// group's) as this node knows it; a joining node is not one until it
	// has caught up.
	Voters []string `msgpack:"voters,omitempty" json:"voters,omitempty"`
	// Wire: the newest internal encoding the node's binary reads
	// (transport.WireVersion; 0: a node of a release before it).
	Wire uint32 `msgpack:"wire,omitempty" json:"wire,omitempty"`
}

// GroupStatus is one Raft group as one node sees it.
type GroupStatus struct {
	ID           uint32 `msgpack:"id" json:"id"`       // 0: the meta group; shards from 1
	State        string `msgpack:"state" json:"state"` // Leader, Follower, Candidate
	Term         uint64 `msgpack:"term" json:"term"`
	LastIndex    uint64 `msgpack:"last_index" json:"last_index"`
	AppliedIndex uint64 `msgpack:"applied_index" json:"applied_index"`
}

// ReplicaStatus is one replica of a shard: its node, its Raft state, and
// how many entries it has applied fewer than the leader.
type ReplicaStatus struct {
	Node         string `msgpack:"node" json:"node"`
	State        string `msgpack:"state" json:"state"`
	AppliedIndex uint64 `msgpack:"applied_index" json:"applied_index"`
	Lag          uint64 `msgpack:"lag" json:"lag"`
}

// ShardStatus describes one shard as its leader sees it.
type ShardStatus struct {
	ID           uint32   `msgpack:"id" json:"id"`
	Leader       string   `msgpack:"leader" json:"leader"`
	Term         uint64   `msgpack:"term" json:"term"`
	CommitIndex  uint64   `msgpack:"commit_index" json:"commit_index"`
	AppliedIndex uint64   `msgpack:"applied_index" json:"applied_index"`
	Slots        []uint16 `msgpack:"slots" json:"slots"` // the hash slots this shard owns
	Accounts     uint64   `msgpack:"accounts" json:"accounts"`
	Transfers    uint64   `msgpack:"transfers" json:"transfers"`
	OutboxDepth  uint64   `msgpack:"outbox_depth" json:"outbox_depth"`
	InboxDepth   uint64   `msgpack:"inbox_depth" json:"inbox_depth"`
	StateHash    string   `msgpack:"state_hash" json:"state_hash"`
	// Totals per ledger, for the conservation audit (ledgerctl bench checks
	// it): the first StatusLedgersMax ledgers by number; LedgersOmitted says
	// how many more the shard holds.
	Ledgers        []LedgerTotals `msgpack:"ledgers" json:"ledgers"`
	LedgersOmitted uint32         `msgpack:"ledgers_omitted,omitempty" json:"ledgers_omitted,omitempty"`
	Error          string         `msgpack:"error,omitempty" json:"error,omitempty"`
	// Replicas: every node that answered with this shard's group, in node
	// order (filled by the router from the nodes' answers).
	Replicas []ReplicaStatus `msgpack:"replicas,omitempty" json:"replicas,omitempty"`
}

// LedgerTotals sums one ledger's balances over a shard's accounts. A sum
// may pass 2^64−1 (each balance is a uint64, not their sum): its uint64
// field then holds 2^64−1, never a wrapped value, and Exact holds all four
// sums exactly (NewLedgerTotals; Sums reads them either way).
type LedgerTotals struct {
	Ledger         uint32       `msgpack:"ledger" json:"ledger"`
	DebitsPosted   uint64       `msgpack:"debits_posted" json:"debits_posted"`
	CreditsPosted  uint64       `msgpack:"credits_posted" json:"credits_posted"`
	DebitsPending  uint64       `msgpack:"debits_pending" json:"debits_pending"`
	CreditsPending uint64       `msgpack:"credits_pending" json:"credits_pending"`
	Exact          *ExactTotals `msgpack:"exact,omitempty" json:"exact,omitempty"`
}

// AccountFilter is the body of accounts.transfers and accounts.balances:
// an account's history between two timestamps (inclusive; 0 means
// unbounded), at most Limit rows (1..HistoryLimitMax), oldest first unless
// Reverse.
type AccountFilter struct {
	AccountID    string
	TimestampMin uint64
	TimestampMax uint64
	Limit        uint32
	Reverse      bool
}

// Balance is an account's balances right after the event at Timestamp.
type Balance struct {
	Timestamp      uint64 `json:"timestamp"`
	DebitsPending  uint64 `json:"debits_pending"`
	DebitsPosted   uint64 `json:"debits_posted"`
	CreditsPending uint64 `json:"credits_pending"`
	CreditsPosted  uint64 `json:"credits_posted"`
}

// BalancesReply answers accounts.balances.
type BalancesReply struct {
	Balances []Balance
	Error    *Error
}
