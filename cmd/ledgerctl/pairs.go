package main

import (
	"fmt"
	"math/rand/v2"

	"github.com/ledgerd/ledgerd/transport"
)

// pair is one transfer's accounts, as indexes into the bench's accounts.
type pair struct{ debit, credit int32 }

// accountShards returns the shard of each account, as an index into
// st.Shards, from the slots each shard reports it owns.
func accountShards(st *transport.StatusReply, ids []string) ([]int32, error) {
	var slotShard [transport.SlotCount]int32
	for i := range slotShard {
		slotShard[i] = -1
	}
	for i, s := range st.Shards {
		for _, slot := range s.Slots {
			if int(slot) < transport.SlotCount {
				slotShard[slot] = int32(i)
			}
		}
	}
	shardOf := make([]int32, len(ids))
	for i, id := range ids {
		slot := transport.Slot(id)
		if shardOf[i] = slotShard[slot]; shardOf[i] < 0 {
			return nil, fmt.Errorf("account %s: its slot %d is owned by no shard in the cluster status", id, slot)
		}
	}
	return shardOf, nil
}

// genPairs picks n debit/credit pairs of distinct accounts; shardOf[i] is
// account i's shard. With cross < 0 both accounts are uniformly random.
// Otherwise exactly ⌊n·cross⌋ pairs, spread evenly through the sequence,
// have their accounts on different shards, and the rest on one shard; the
// debit account is uniform over the accounts that can take part.
func genPairs(rng *rand.Rand, shardOf []int32, n int, cross float64) ([]pair, error) {
	accounts := len(shardOf)
	if accounts < 2 {
		return nil, fmt.Errorf("%d accounts: transfers need 2", accounts)
	}
	// order lists the accounts grouped by shard: shard s holds order[lo[s]:lo[s+1]].
	shards := 0
	for _, s := range shardOf {
		shards = max(shards, int(s)+1)
	}
	lo := make([]int, shards+1)
	for _, s := range shardOf {
		lo[s+1]++
	}
	busy, paired := 0, []int(nil) // shards with accounts; positions in order on a shard with 2 or more
	for s := range shards {
		if size := lo[s+1]; size > 0 {
			busy++
		}
		lo[s+1] += lo[s]
	}
	order, fill := make([]int32, accounts), append([]int(nil), lo[:shards]...)
	for acc, s := range shardOf {
		order[fill[s]] = int32(acc)
		fill[s]++
	}
	for s := range shards {
		if lo[s+1]-lo[s] >= 2 {
			for p := lo[s]; p < lo[s+1]; p++ {
				paired = append(paired, p)
			}
		}
	}
	switch {
	case cross > 0 && busy < 2:
		return nil, fmt.Errorf("--cross-shard %v needs accounts on 2 shards or more; they are on %d", cross, busy)
	case cross >= 0 && cross < 1 && len(paired) == 0:
		return nil, fmt.Errorf("--cross-shard %v needs 2 accounts on one shard; no shard has them", cross)
	}

	pairs := make([]pair, n)
	for i := range pairs {
		switch {
		case cross < 0:
			d := rng.IntN(accounts)
			c := rng.IntN(accounts - 1)
			if c >= d {
				c++ // any account but d
			}
			pairs[i] = pair{int32(d), int32(c)}
		case int(float64(i+1)*cross) > int(float64(i)*cross): // cross-shard: ⌊n·cross⌋ of these in n
			d := rng.IntN(accounts)
			s := shardOf[d]
			size := lo[s+1] - lo[s]
			c := rng.IntN(accounts - size)
			if c >= lo[s] {
				c += size // skip d's shard
			}
			pairs[i] = pair{int32(d), order[c]}
		default: // same shard
			d := paired[rng.IntN(len(paired))]
			s := shardOf[order[d]]
			c := lo[s] + rng.IntN(lo[s+1]-lo[s]-1)
			if c >= d {
				c++ // any account of d's shard but d
			}
			pairs[i] = pair{order[d], order[c]}
		}
	}
	return pairs, nil
}
