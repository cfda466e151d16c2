package sim

import "fmt"

// Mutation is a bug injected on purpose into the simulator's model of the
// leader-side code (the shard package itself is never changed). Each must be
// caught by the checks within the CI seed budget: they test the tester.
type Mutation string

const (
	// MutVoidOnTimer: the dispatcher voids a row older than AbortAfter on
	// its own clock instead of sending an abort to the credit shard (the
	// design's first-writer-wins rule). A credit applied late creates money.
	MutVoidOnTimer Mutation = "void-on-timer"
	// MutForgetAboveInflight: the forget watermark is announced past the
	// newest in-flight attempt instead of below the oldest.
	MutForgetAboveInflight Mutation = "forget-above-inflight"
	// MutResolveAnyAttempt: answers are matched to outbox rows by id only,
	// so the shard's per-attempt dedup of resolves is bypassed and a late
	// answer for an earlier attempt resolves the current one.
	MutResolveAnyAttempt Mutation = "resolve-any-attempt"
	// MutRetryAnswersOK: a retry that joined an in-flight transfer is
	// answered ok instead of exists (two oks for one transfer).
	MutRetryAnswersOK Mutation = "retry-answers-ok"
	// MutReplicaSkip: a follower now and then skips applying an entry.
	MutReplicaSkip Mutation = "replica-skips-entry"
	// MutAnswersThroughLoop: the dispatcher as it was before 0454b70, a
	// real bug the simulator found: senders hand answers to the run loop
	// through a channel of sendsInFlightMax and keep their semaphore slot
	// until they have; the loop, blocked in send() for a slot, deadlocks.
	MutAnswersThroughLoop Mutation = "answers-through-loop"
	// MutExpireClockSeconds: the expire loop compares its clock in seconds
	// (time.Now().Unix()) with NextExpiry in nanoseconds, so it never finds
	// a pending transfer due and never proposes KindExpire. Posts after the
	// deadline are still refused (apply decides with the entry's time), so
	// only liveness shows it: a pending transfer with a timeout never ends.
	MutExpireClockSeconds Mutation = "expire-clock-in-seconds"
	// MutLookupFromFollower: the shard server answers a transfers lookup
	// from whichever replica's state is at hand (a read "optimised" off
	// the leader), which may lag behind what was acknowledged: the router
	// sends a post that names only its pending id to the wrong shard.
	MutLookupFromFollower Mutation = "lookup-from-follower"
	// MutPostOKBeforeSettlement: the shard server answers a post or void
	// of a pending transfer across shards ok as soon as its debit side is
	// applied (its settlement cannot be refused), not once the settlement
	// has landed on the credit shard: ok before both halves committed.
	MutPostOKBeforeSettlement Mutation = "post-ok-before-settlement"
	// MutSettlementFireAndForget: the dispatcher proposes a settlement's
	// resolve as soon as it sends it (it cannot be refused), so the row
	// leaves the outbox before the credit shard applied it, and a lost
	// message leaves the credit half pending forever.
	MutSettlementFireAndForget Mutation = "settlement-fire-and-forget"
	// MutChainCutByShard: the router does not send a chain of transfers
	// across shards whole to its coordinator (the first debit account's
	// shard, with DebitShards) but cuts it by shard and sends each shard
	// its piece as an ordinary chain: a piece open at the end of its
	// command is refused, another applied, so the chain is half applied
	// (not all or nothing), or its pieces answer inconsistent codes.
	MutChainCutByShard Mutation = "chain-cut-by-shard"
)

// Mutations lists every mutation.
var Mutations = []Mutation{MutVoidOnTimer, MutForgetAboveInflight, MutResolveAnyAttempt, MutRetryAnswersOK, MutReplicaSkip, MutAnswersThroughLoop, MutExpireClockSeconds, MutLookupFromFollower,
	MutPostOKBeforeSettlement, MutSettlementFireAndForget, MutChainCutByShard}

// ParseMutation checks a mutation name ("" is none).
func ParseMutation(s string) (Mutation, error) {
	if s == "" {
		return "", nil
	}
	for _, m := range Mutations {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown mutation %q (known: %v)", s, Mutations)
}
