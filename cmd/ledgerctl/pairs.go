package main

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/ledgerd/ledgerd/transport"
)

// pair is one transfer's accounts, as indexes into the bench's accounts,
// and how the bench sends it.
type pair struct {
	debit, credit int32
	kind          kind
}

// kind says whether a transfer is posted at once or two-phase, and how the
// bench resolves a two-phase one.
type kind uint8

const (
	kindSingle      kind = iota // posted at once
	kindPost                    // pending, then posted whole (amount 0)
	kindPostPartial             // pending, then posted in part
	kindVoid                    // pending, then voided
)

func (k kind) twoPhase() bool { return k != kindSingle }

// mix is what bench sends: how many transfers, and which fractions of them
// are of each kind.
type mix struct {
	transfers int
	// crossShard is the fraction of the single-phase transfers whose accounts
	// are on different shards; -1 picks their accounts uniformly at random.
	// Two-phase transfers always keep both accounts on one shard.
	crossShard float64
	twoPhase   float64 // of the transfers
	void       float64 // of the two-phase transfers
	partial    float64 // of the two-phase transfers that are posted
}

// evenly reports whether the i-th of a sequence is one of the ⌊n·fraction⌋
// in n picked evenly through it.
func evenly(i int, fraction float64) bool {
	return int(float64(i+1)*fraction) > int(float64(i)*fraction)
}

// kinds gives each transfer of m its kind, and says which single-phase ones
// are cross-shard: exactly ⌊n·twoPhase⌋ transfers are two-phase, of those
// ⌊·void⌋ voided, of the posted ones ⌊·partial⌋ posted in part, and of the
// single-phase ones ⌊·crossShard⌋ cross-shard, each spread evenly.
func (m mix) kinds() (kinds []kind, cross []bool) {
	kinds, cross = make([]kind, m.transfers), make([]bool, m.transfers)
	var singles, twoPhase, posts int
	for i := range kinds {
		switch {
		case !evenly(i, m.twoPhase):
			cross[i] = m.crossShard >= 0 && evenly(singles, m.crossShard)
			singles++
		case evenly(twoPhase, m.void):
			kinds[i] = kindVoid
			twoPhase++
		default:
			kinds[i] = kindPost
			if evenly(posts, m.partial) {
				kinds[i] = kindPostPartial
			}
			twoPhase++
			posts++
		}
	}
	return kinds, cross
}

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

// genPairs picks the debit/credit pairs of distinct accounts of the
// transfers of m; shardOf[i] is account i's shard. A two-phase transfer has
// both accounts on one shard. A single-phase one has them uniformly random
// if m.crossShard < 0, else on different shards or on one as m.kinds says.
// The debit account is uniform over the accounts that can take part.
func genPairs(rng *rand.Rand, shardOf []int32, m mix) ([]pair, error) {
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
	kinds, cross := m.kinds()
	needCross, needSame := slices.Contains(cross, true), false
	for i, k := range kinds {
		needSame = needSame || k.twoPhase() || (m.crossShard >= 0 && !cross[i])
	}
	switch {
	case needCross && busy < 2:
		return nil, fmt.Errorf("--cross-shard %v needs accounts on 2 shards or more; they are on %d", m.crossShard, busy)
	case needSame && len(paired) == 0:
		return nil, fmt.Errorf("--cross-shard %v --two-phase %v: same-shard and two-phase transfers need 2 accounts on one shard; no shard has them", m.crossShard, m.twoPhase)
	}

	pairs := make([]pair, m.transfers)
	for i := range pairs {
		switch {
		case m.crossShard < 0 && !kinds[i].twoPhase():
			d := rng.IntN(accounts)
			c := rng.IntN(accounts - 1)
			if c >= d {
				c++ // any account but d
			}
			pairs[i] = pair{debit: int32(d), credit: int32(c)}
		case cross[i]:
			d := rng.IntN(accounts)
			s := shardOf[d]
			size := lo[s+1] - lo[s]
			c := rng.IntN(accounts - size)
			if c >= lo[s] {
				c += size // skip d's shard
			}
			pairs[i] = pair{debit: int32(d), credit: order[c]}
		default: // same shard
			d := paired[rng.IntN(len(paired))]
			s := shardOf[order[d]]
			c := lo[s] + rng.IntN(lo[s+1]-lo[s]-1)
			if c >= d {
				c++ // any account of d's shard but d
			}
			pairs[i] = pair{debit: order[d], credit: order[c]}
		}
		pairs[i].kind = kinds[i]
	}
	return pairs, nil
}
