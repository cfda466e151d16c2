package raftfsm

import "math/bits"

// ApplyBatchBuckets is the number of buckets of ApplyBatches: an entry of
// n commands counts in bucket ⌈log2 n⌉ up to 2^12 commands (about a
// mailbox's worth, mailboxProposalsMax, which the leader's actor takes in
// one entry), and the last bucket takes every larger entry.
const ApplyBatchBuckets = 14

// ApplyBatches counts the command entries a shard machine has applied by
// their number of commands: the batches the leader's actor formed, the
// same on every replica. Bucket i counts the entries of more than 2^(i-1)
// and at most 2^i commands (bucket 0: one command; the last: the rest,
// no bound). Counted by Apply under
// the machine's lock, so it costs no atomic; read with
// ShardMachine.ApplyBatches. It starts at zero with the process.
type ApplyBatches struct {
	Buckets  [ApplyBatchBuckets]uint64
	Entries  uint64
	Commands uint64
}

// ApplyBatchBound is bucket i's upper bound, in commands (but for the
// last bucket's, which has none).
func ApplyBatchBound(i int) uint64 { return 1 << i }

func (b *ApplyBatches) observe(commands int) {
	if commands == 0 {
		return // a configuration or no-op entry: no batch
	}
	i := min(bits.Len(uint(commands-1)), ApplyBatchBuckets-1)
	b.Buckets[i]++
	b.Entries++
	b.Commands += uint64(commands)
}

// ApplyBatches returns the counts of the entries applied so far.
func (m *ShardMachine) ApplyBatches() ApplyBatches {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.batches
}
