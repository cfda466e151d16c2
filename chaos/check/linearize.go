package check

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The linearizability model of one account (promise 6). Only the posted
// totals are modelled: a transfer's posting is one step on each of its
// accounts, but a cross-shard transfer's pending reservation and its
// release happen at two moments the history cannot order (the debit
// shard's reservation before the credit, its release after), so pending
// totals are left to the replay and the limit checks.
//
// An applied transfer's effect took place during some try of its id: its
// window runs from the Call of the first try to the Return of the first
// try answered ok or exists (never, if none was). The router answers ok
// only once both sides are posted, also across shards, so every effect
// lies within its window.
type (
	posted struct{ debits, credits uint64 } // the state, and a read's output
	effect struct {                         // an applied posting: adds to the state
		id              string
		debits, credits uint64
	}
	readIn struct{ op int } // a read, by its index in History.Ops
)

var accountModel = porcupine.Model{
	Init: func() any { return posted{} },
	Step: func(state, input, output any) (bool, any) {
		s := state.(posted)
		if e, ok := input.(effect); ok {
			return true, posted{s.debits + e.debits, s.credits + e.credits}
		}
		return output.(posted) == s, s
	},
	Hash: func(state any) uint64 {
		s := state.(posted)
		return s.debits*0x9e3779b97f4a7c15 ^ s.credits
	},
	DescribeOperation: func(input, output any) string {
		if e, ok := input.(effect); ok {
			return fmt.Sprintf("%s: +%d debits, +%d credits", e.id, e.debits, e.credits)
		}
		o := output.(posted)
		return fmt.Sprintf("read op %d -> %d debits, %d credits", input.(readIn).op, o.debits, o.credits)
	},
	DescribeState: func(state any) string {
		s := state.(posted)
		return fmt.Sprintf("%d debits, %d credits posted", s.debits, s.credits)
	},
}

// linearize checks each account with reads, sharing the time budget among
// the accounts not yet checked.
func (c *checker) linearize(o Options) {
	deadline := time.Now().Add(cmp.Or(o.Timeout, linearizeTimeoutDefault))
	var ids []string
	for _, a := range c.h.Accounts {
		if len(c.reads[a.ID]) > 0 {
			ids = append(ids, a.ID)
		}
	}
	for k, id := range ids {
		share := time.Until(deadline) / time.Duration(len(ids)-k)
		if share <= 0 { // porcupine takes 0 as no bound at all
			c.r.Linearizable[id] = porcupine.Unknown
			continue
		}
		reads, effects := c.reads[id], c.effects[id]
		ops := slices.Concat(reads, effects)
		res := porcupine.CheckOperationsTimeout(accountModel, ops, share)
		c.r.Linearizable[id] = res
		if res != porcupine.Illegal {
			continue
		}
		text := fmt.Sprintf("account %s: its %d reads are not linearizable with the %d transfers posted to it", id, len(reads), len(effects))
		if why := explain(reads, effects); why != "" {
			text += ": " + why
		}
		if o.VisualizeDir != "" {
			text += " (" + visualize(ops, filepath.Join(o.VisualizeDir, id+".html"), share) + ")"
		}
		c.violate(KindLinearizable, "%s", text)
	}
}

// explain names the first read whose posted totals lie outside what any
// order allows: at least the effects whose window closed before the read
// was sent, at most those sent before it returned. "" if every read is
// within its bounds alone (the violation is in the order between reads).
func explain(reads, effects []porcupine.Operation) string {
	for _, r := range reads {
		var low, high posted
		var before, sentBefore []string
		for _, e := range effects {
			in := e.Input.(effect)
			if e.Return < r.Call {
				low.debits, low.credits = low.debits+in.debits, low.credits+in.credits
				before = append(before, in.id)
			}
			if e.Call <= r.Return {
				high.debits, high.credits = high.debits+in.debits, high.credits+in.credits
				sentBefore = append(sentBefore, in.id)
			}
		}
		got := r.Output.(posted)
		op := r.Input.(readIn).op
		switch {
		case got.debits < low.debits || got.credits < low.credits:
			return fmt.Sprintf("read op %d (client %d) saw %d debits, %d credits posted, but transfers that returned before it was sent (%s) make at least %d debits, %d credits",
				op, r.ClientId, got.debits, got.credits, idList(before), low.debits, low.credits)
		case got.debits > high.debits || got.credits > high.credits:
			return fmt.Sprintf("read op %d (client %d) saw %d debits, %d credits posted, but the transfers sent before it returned (%s) make at most %d debits, %d credits",
				op, r.ClientId, got.debits, got.credits, idList(sentBefore), high.debits, high.credits)
		}
	}
	return ""
}

// idListMax bounds the ids a violation lists.
const idListMax = 5

func idList(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	if len(ids) > idListMax {
		return strings.Join(ids[:idListMax], ", ") + fmt.Sprintf(" and %d more", len(ids)-idListMax)
	}
	return strings.Join(ids, ", ")
}

// visualize writes porcupine's view of an illegal history to path, and
// says where (or why not).
func visualize(ops []porcupine.Operation, path string, timeout time.Duration) string {
	_, info := porcupine.CheckOperationsVerbose(accountModel, ops, timeout)
	if err := porcupine.VisualizePath(accountModel, info, path); err != nil {
		return "visualization failed: " + err.Error()
	}
	return "visualization: " + path
}
