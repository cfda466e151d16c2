package raftfsm

import "testing"

// An entry of n commands counts in the bucket whose bound is the least
// power of two at least n; past the last bound, in the last bucket; an
// entry without commands (configuration, no-op) not at all.
func TestApplyBatchesBuckets(t *testing.T) {
	var b ApplyBatches
	for _, n := range []int{0, 1, 2, 3, 4, 5, 4096, 4097, 100_000} {
		b.observe(n)
	}
	want := map[int]uint64{0: 1, 1: 1, 2: 2, 3: 1, 12: 1, ApplyBatchBuckets - 1: 2}
	for i, got := range b.Buckets {
		if got != want[i] {
			t.Errorf("bucket %d (≤ %d): %d entries, want %d", i, ApplyBatchBound(i), got, want[i])
		}
	}
	if b.Entries != 8 || b.Commands != 1+2+3+4+5+4096+4097+100_000 {
		t.Errorf("entries %d, commands %d", b.Entries, b.Commands)
	}
	if ApplyBatchBound(12) != 4096 {
		t.Errorf("bound 12 is %d, want 4096", ApplyBatchBound(12))
	}
}
