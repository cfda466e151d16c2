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

// kind says whether a transfer is posted at once, two-phase (and how the
// bench resolves it), or a leg of a linked chain.
type kind uint8

const (
	kindSingle      kind = iota // posted at once
	kindPost                    // pending, then posted whole (amount 0)
	kindPostPartial             // pending, then posted in part
	kindVoid                    // pending, then voided
	kindLeg                     // posted at once, linked to the next transfer: a leg of a chain but its last
	kindLegLast                 // posted at once, the last leg of a chain
)

func (k kind) twoPhase() bool { return k == kindPost || k == kindPostPartial || k == kindVoid }
func (k kind) inChain() bool  { return k == kindLeg || k == kindLegLast }

// mix is what bench sends: how many transfers, and which fractions of them
// are of each kind.
type mix struct {
	transfers int
	// crossShard is the fraction of the single-phase transfers whose accounts
	// are on different shards; -1 picks their accounts uniformly at random.
	// It leaves chains alone: see linkedCross.
	crossShard float64
	twoPhase   float64 // of the transfers outside chains
	// twoPhaseCross is the fraction of the two-phase transfers whose
	// accounts are on different shards (the others keep them on one).
	twoPhaseCross float64
	void          float64 // of the two-phase transfers
	partial       float64 // of the two-phase transfers that are posted
	// linked is the fraction of the blocks of legs transfers (the first
	// ⌊transfers/legs⌋ blocks) sent as a linked chain: legs transfers from
	// one debit account, all on its shard (but see linkedCross), that
	// succeed or fail as one.
	linked float64
	legs   int // 2 or more if linked > 0
	// linkedCross is the fraction of the chains whose every leg has its
	// credit account on another shard than the chain's debit account, so
	// that the cluster coordinates the chain across shards (the others keep
	// all their accounts on one).
	linkedCross float64
}

// chainLegs is how many transfers a chain of m holds, and the alignment of
// its chains in the sequence of transfers: 1 when m has none.
func (m mix) chainLegs() int {
	if m.linked > 0 {
		return m.legs
	}
	return 1
}

// evenly reports whether the i-th of a sequence is one of the ⌊n·fraction⌋
// in n picked evenly through it.
func evenly(i int, fraction float64) bool {
	return int(float64(i+1)*fraction) > int(float64(i)*fraction)
}

// kinds gives each transfer of m its kind, and says which ones are
// cross-shard. The transfers fall in blocks of m.legs (of 1 without
// chains): exactly ⌊⌊n/legs⌋·linked⌋ whole blocks are chains. Of the r
// transfers outside chains, ⌊r·twoPhase⌋ are two-phase, of those ⌊·void⌋
// voided, of the posted ones ⌊·partial⌋ posted in part, and of the
// single-phase ones ⌊·crossShard⌋ cross-shard; of the c chains
// ⌊c·linkedCross⌋ cross shards, every leg of them cross. Each is spread
// evenly. A chain starts at a multiple of legs, so a sender that takes
// transfers in multiples of legs never cuts one.
func (m mix) kinds() (kinds []kind, cross []bool) {
	kinds, cross = make([]kind, m.transfers), make([]bool, m.transfers)
	var others, singles, twoPhase, posts, chains int
	other := func(i int) { // transfer i, the others-th outside chains
		switch {
		case !evenly(others, m.twoPhase):
			cross[i] = m.crossShard >= 0 && evenly(singles, m.crossShard)
			singles++
		case evenly(twoPhase, m.void):
			kinds[i] = kindVoid
			cross[i] = evenly(twoPhase, m.twoPhaseCross)
			twoPhase++
		default:
			kinds[i] = kindPost
			if evenly(posts, m.partial) {
				kinds[i] = kindPostPartial
			}
			cross[i] = evenly(twoPhase, m.twoPhaseCross)
			twoPhase++
			posts++
		}
		others++
	}
	size := m.chainLegs()
	for lo := 0; lo < len(kinds); lo += size {
		hi := min(lo+size, len(kinds))
		if m.linked == 0 || hi-lo < size || !evenly(lo/size, m.linked) {
			for i := lo; i < hi; i++ {
				other(i)
			}
			continue
		}
		crossChain := evenly(chains, m.linkedCross)
		chains++
		for i := lo; i < hi; i++ {
			kinds[i], cross[i] = kindLeg, crossChain
		}
		kinds[hi-1] = kindLegLast
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
// both accounts on one shard, or on two as m.kinds says. The legs of a
// chain share their debit account (a payment and its fee, say), and have
// credit accounts of its shard, or of other shards for a chain that m.kinds
// says crosses shards (each leg's credit account uniform over the accounts
// off the debit account's shard). Any other
// transfer has its accounts uniformly random if m.crossShard < 0, else on
// different shards or on one as m.kinds says. The debit account is uniform
// over the accounts that can take part.
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
	// --linked-cross-shard needs 2 shards even if too few chains are sent
	// for any to cross.
	needCross, needSame := slices.Contains(cross, true) || m.linked > 0 && m.linkedCross > 0, false
	for i, k := range kinds {
		needSame = needSame || (k != kindSingle || m.crossShard >= 0) && !cross[i]
	}
	switch {
	case needCross && busy < 2:
		return nil, fmt.Errorf("--cross-shard %v --two-phase-cross-shard %v --linked-cross-shard %v need accounts on 2 shards or more; they are on %d",
			m.crossShard, m.twoPhaseCross, m.linkedCross, busy)
	case needSame && len(paired) == 0:
		return nil, fmt.Errorf("--cross-shard %v --two-phase %v --linked %v: same-shard, two-phase and linked transfers need 2 accounts on one shard; no shard has them",
			m.crossShard, m.twoPhase, m.linked)
	}

	pairs := make([]pair, m.transfers)
	dp := 0 // position in order of the debit account of the last same-shard transfer
	for i := range pairs {
		switch {
		case m.crossShard < 0 && kinds[i] == kindSingle:
			d := rng.IntN(accounts)
			c := rng.IntN(accounts - 1)
			if c >= d {
				c++ // any account but d
			}
			pairs[i] = pair{debit: int32(d), credit: int32(c)}
		case cross[i]: // a chain's legs after its first keep its debit account
			var d int
			if i > 0 && kinds[i-1] == kindLeg {
				d = int(pairs[i-1].debit)
			} else {
				d = rng.IntN(accounts)
			}
			s := shardOf[d]
			size := lo[s+1] - lo[s]
			c := rng.IntN(accounts - size)
			if c >= lo[s] {
				c += size // skip d's shard
			}
			pairs[i] = pair{debit: int32(d), credit: order[c]}
		default: // same shard; a chain's legs after its first keep its debit account
			if i == 0 || kinds[i-1] != kindLeg {
				dp = paired[rng.IntN(len(paired))]
			}
			s := shardOf[order[dp]]
			c := lo[s] + rng.IntN(lo[s+1]-lo[s]-1)
			if c >= dp {
				c++ // any account of the debit's shard but the debit
			}
			pairs[i] = pair{debit: order[dp], credit: order[c]}
		}
		pairs[i].kind = kinds[i]
	}
	return pairs, nil
}
