// Package plan holds the router's decisions about a create batch as pure
// functions: which shard takes each event, which linked chains no shard can
// take, and each shard's command. The router and the simulator (sim) both
// call them, so the simulator's schedules test the router's own decisions.
package plan

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Part is one shard's share of a batch: its command and, for each of its
// events, the event's index in the client's batch.
type Part struct {
	Shard uint32
	Cmd   shard.Command
	Index []int
}

// Plan is a batch planned: Parts, by shard id, carry the events sent to
// shards; Results has one entry per event, and holds the answer of every
// event in no part (the router answers it itself).
type Plan struct {
	Results []transport.Result
	Parts   []*Part
}

const resolves = transport.TransferPostPendingTransfer | transport.TransferVoidPendingTransfer

// Locate returns the debit account of every pending transfer the batch
// creates (a post or void later in the batch goes where it goes), and the
// ids of the pending transfers that posts and voids name without a debit
// account and that the batch does not create: the router looks those up on
// every shard and adds what it finds to debitOf. Unknown ones stay out, and
// any shard then answers pending_transfer_not_found.
func Locate(ts []transport.Transfer) (debitOf map[string]string, lookup []string) {
	debitOf = map[string]string{}
	for i := range ts {
		t := &ts[i]
		if t.Flags&transport.TransferPending != 0 {
			debitOf[t.ID] = t.DebitAccountID
		}
		if _, inBatch := debitOf[t.PendingID]; t.Flags&resolves != 0 && t.DebitAccountID == "" && t.PendingID != "" && !inBatch {
			lookup = append(lookup, t.PendingID)
		}
	}
	return debitOf, lookup
}

// Accounts plans a batch of accounts for owner (nil: an operator): each
// account goes to its id's shard; a chain across shards is refused.
func Accounts(as []transport.Account, shardOf func(id string) uint32, owner *transport.Owner) *Plan {
	p := &Plan{Results: make([]transport.Result, len(as))}
	shards := make([]uint32, len(as))
	for i := range as {
		shards[i] = shardOf(as[i].ID)
	}
	sent := RefuseChains(p.Results, shards, func(i int) bool { return as[i].Flags&transport.AccountLinked != 0 },
		func(i int) bool { return owner.MayCreateAccount(&as[i]) })
	parts := map[uint32]*Part{}
	for i := range as {
		if sent[i] {
			pt := partOf(parts, shards[i], shard.KindCreateAccounts)
			pt.Cmd.Accounts = append(pt.Cmd.Accounts, as[i])
			pt.Index = append(pt.Index, i)
		}
	}
	p.Parts = sorted(parts)
	return p
}

// Transfers plans a batch of transfers for owner (nil: an operator), with
// debitOf from Locate completed by the lookup. Shards and RegroupChains
// say where each transfer goes, RefuseChains which are answered here.
func Transfers(ts []transport.Transfer, shardOf func(id string) uint32, debitOf map[string]string, owner *transport.Owner) *Plan {
	r := Route(ts, shardOf, debitOf)
	debitShards := RegroupChains(ts, r)
	p := &Plan{Results: make([]transport.Result, len(ts))}
	sent := RefuseChains(p.Results, r.Shards, func(i int) bool { return ts[i].Flags&transport.TransferLinked != 0 },
		func(i int) bool { return owner.MayCreateTransfer(&ts[i]) })
	p.Parts = SplitTransfers(ts, r, debitShards, sent, owner)
	return p
}

// Routes is where each transfer of a batch goes: Shards[i] takes transfer
// i, CreditShards[i] holds its credit account, Leaves[i] tells whether it
// is a transfer across shards (not a post or void).
type Routes struct {
	Shards, CreditShards []uint32
	Leaves               []bool
}

// Route sends a transfer to its debit account's shard, which owns the saga
// if the credit account lives elsewhere (docs/design.md); a post or void
// goes where its pending transfer lives (debitOf), or, found nowhere and
// linked to the event before it, with its chain, whose shard answers it
// not found.
func Route(ts []transport.Transfer, shardOf func(id string) uint32, debitOf map[string]string) Routes {
	r := Routes{Shards: make([]uint32, len(ts)), CreditShards: make([]uint32, len(ts)), Leaves: make([]bool, len(ts))}
	for i := range ts {
		t := &ts[i]
		debit := t.DebitAccountID
		if d, ok := debitOf[t.PendingID]; ok && debit == "" {
			debit = d
		}
		r.Shards[i], r.CreditShards[i] = shardOf(debit), shardOf(t.CreditAccountID)
		r.Leaves[i] = t.Flags&resolves == 0 && r.CreditShards[i] != r.Shards[i]
		if debit == "" && i > 0 && ts[i-1].Flags&transport.TransferLinked != 0 {
			r.Shards[i] = r.Shards[i-1]
		}
	}
	return r
}

// RegroupChains sends a chain of transfers across shards (a transfer
// leaving its shard, or events on more than one shard) whole to the shard
// of its first event's debit account, which coordinates it
// (shard/chains.go). It returns every transfer's debit shard: the shards
// before the regrouping, which the coordinator needs.
func RegroupChains(ts []transport.Transfer, r Routes) (debitShards []uint32) {
	debitShards = slices.Clone(r.Shards)
	linked := func(i int) bool { return ts[i].Flags&transport.TransferLinked != 0 }
	shard.EachChain(len(ts), linked, func(i, j int, _ bool) {
		for k := i; k < j; k++ {
			if r.Leaves[k] || r.Shards[k] != r.Shards[i] {
				for l := i; l < j; l++ {
					r.Shards[l] = r.Shards[i]
				}
				return
			}
		}
	})
	return debitShards
}

// RefuseChains answers the events no shard may take and reports which
// events are to be sent. An event the caller may not create gets
// unauthorized. A linked chain left open at the end of the batch gets
// linked_event_chain_open on each event. A chain whose events are sent to
// more than one shard (accounts; a chain of transfers goes to its
// coordinator) is refused: flags_invalid on its first such event. A chain
// with a refused event fails whole: linked_event_failed on its other
// events. A shard gets each chain whole and in order.
func RefuseChains(results []transport.Result, shards []uint32, linked func(int) bool, allowed func(int) bool) []bool {
	sent := make([]bool, len(results))
	shard.EachChain(len(results), linked, func(i, j int, open bool) {
		bad, code := -1, transport.CodeOK
		for k := i; k < j && bad < 0; k++ {
			switch {
			case !allowed(k):
				bad, code = k, transport.CodeUnauthorized
			case shards[k] != shards[i]:
				bad, code = k, transport.CodeFlagsInvalid
			}
		}
		for k := i; k < j; k++ {
			switch {
			case open:
				results[k] = transport.Result{Index: uint32(k), Code: transport.CodeLinkedEventChainOpen}
			case bad == k:
				results[k] = transport.Result{Index: uint32(k), Code: code}
			case bad >= 0:
				results[k] = transport.Result{Index: uint32(k), Code: transport.CodeLinkedEventFailed}
			default:
				sent[k] = true
			}
		}
	})
	return sent
}

// SplitTransfers makes each shard's command of the transfers to send
// (sent), in batch order. debitShards nil leaves DebitShards out.
func SplitTransfers(ts []transport.Transfer, r Routes, debitShards []uint32, sent []bool, owner *transport.Owner) []*Part {
	parts := map[uint32]*Part{}
	for i := range ts {
		if !sent[i] {
			continue
		}
		pt := partOf(parts, r.Shards[i], shard.KindCreateTransfers)
		pt.Cmd.Owner = owner
		pt.Cmd.Transfers = append(pt.Cmd.Transfers, ts[i])
		pt.Cmd.CreditShards = append(pt.Cmd.CreditShards, r.CreditShards[i])
		if debitShards != nil {
			pt.Cmd.DebitShards = append(pt.Cmd.DebitShards, debitShards[i])
		}
		pt.Index = append(pt.Index, i)
	}
	return sorted(parts)
}

func partOf(parts map[uint32]*Part, id uint32, kind shard.Kind) *Part {
	p := parts[id]
	if p == nil {
		p = &Part{Shard: id, Cmd: shard.Command{Kind: kind}}
		parts[id] = p
	}
	return p
}

func sorted(parts map[uint32]*Part) []*Part {
	out := make([]*Part, 0, len(parts))
	for _, p := range parts {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *Part) int { return cmp.Compare(a.Shard, b.Shard) })
	return out
}

// Merge puts a shard's results for the part into the batch's results, in
// the client's order.
func (p *Part) Merge(results, shardResults []transport.Result) error {
	if len(shardResults) != len(p.Index) {
		return fmt.Errorf("shard %d answered %d results for %d events", p.Shard, len(shardResults), len(p.Index))
	}
	for j, res := range shardResults {
		res.Index = uint32(p.Index[j])
		results[p.Index[j]] = res
	}
	return nil
}

// Cut returns where to cut the part in two, nearest its middle without
// cutting a linked chain, or 0 if it is one chain.
func (p *Part) Cut() int {
	n := len(p.Index)
	linked := func(k int) bool {
		if p.Cmd.Accounts != nil {
			return p.Cmd.Accounts[k].Flags&transport.AccountLinked != 0
		}
		return p.Cmd.Transfers[k].Flags&transport.TransferLinked != 0
	}
	for d := 0; d < n; d++ {
		for _, cut := range []int{n/2 - d, n/2 + d} {
			if cut > 0 && cut < n && !linked(cut-1) {
				return cut
			}
		}
	}
	return 0
}

// Slice returns the part's events [i, j).
func (p *Part) Slice(i, j int) *Part {
	c := p.Cmd
	if c.Accounts != nil {
		c.Accounts = c.Accounts[i:j]
	}
	if c.Transfers != nil {
		c.Transfers, c.CreditShards = c.Transfers[i:j], c.CreditShards[i:j]
		if c.DebitShards != nil {
			c.DebitShards = c.DebitShards[i:j]
		}
	}
	return &Part{Shard: p.Shard, Cmd: c, Index: p.Index[i:j]}
}

// PendingOpens counts, by the shard that will hold them, the pending
// transfers the plan may open (a chain leg is held on its debit shard, not
// on the chain's coordinator). Apply bounds a provider's open pending
// transfers exactly, but command by command (shard/owned.go); a plan that
// opens them on more than one shard, or on a shard other than the one its
// command goes to, is checked against every such shard first (Preflight),
// so that a provider over its limit on one shard gets unavailable before
// anything is applied on another.
func (p *Plan) PendingOpens() (opens map[uint32]int, preflight bool) {
	opens = map[uint32]int{}
	for _, pt := range p.Parts {
		for i := range pt.Cmd.Transfers {
			if pt.Cmd.Transfers[i].Flags&transport.TransferPending == 0 {
				continue
			}
			at := pt.Shard
			if pt.Cmd.DebitShards != nil {
				at = pt.Cmd.DebitShards[i]
			}
			opens[at]++
			preflight = preflight || at != pt.Shard
		}
	}
	return opens, preflight || len(opens) > 1
}
