// Package check reads the history of a chaos run and proves what a ledger
// promises: see Check.
package check

import "github.com/ledgerd/ledgerd/transport"

// Outcome is what a client learned from one request.
type Outcome uint8

const (
	// OutcomeOK: the cluster answered with a result for every event.
	OutcomeOK Outcome = iota + 1
	// OutcomeUnknown: the client never learned (timeout, connection lost,
	// an error reply for the request as a whole): the events may or may not
	// have been applied, each at most once.
	OutcomeUnknown
)

// Op is one request of one client, as the client saw it. Times are
// nanoseconds on the test process's monotonic clock (time.Since a fixed
// start): Call when the request was sent, Return when its reply (or the
// timeout) arrived.
type Op struct {
	Client int
	Call   int64
	Return int64

	// Exactly one of Transfers (a create_transfers batch) and Read (a
	// lookup_accounts of these ids) is set.
	Transfers []transport.Transfer
	Read      []string

	Outcome Outcome
	// Results, for OutcomeOK transfers: one per event, in order, Code ok
	// for the events the cluster accepted (exists counts as accepted: a
	// retry of an id applied before).
	Results []transport.Result
	// Accounts, for OutcomeOK reads: what the lookup returned (an id not
	// found is missing).
	Accounts []transport.Account
}

// History is a whole chaos run: the accounts created before the faults,
// every client operation, and what a lookup of every id ever sent returned
// once the faults had stopped and the cluster was quiet.
type History struct {
	Accounts []transport.Account // as created (limits in Flags)
	Ops      []Op

	FinalAccounts  []transport.Account  // lookup of every account at the end
	FinalTransfers []transport.Transfer // lookup of every transfer id sent (found ones)
}
