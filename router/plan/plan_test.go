package plan

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// RefuseChains decides which events reach a shard: unauthorized events,
// chains cut across shards and open chains are answered here, and a chain
// with one refused event fails whole.
func TestRefuseChains(t *testing.T) {
	const L = true
	for _, tc := range []struct {
		name    string
		linked  []bool
		shards  []uint32
		allowed []bool
		want    []string // "" for sent
	}{
		{"all sent", []bool{false, L, false}, []uint32{1, 2, 2}, []bool{true, true, true}, []string{"", "", ""}},
		{"one unauthorized", []bool{false, false}, []uint32{1, 1}, []bool{true, false}, []string{"", "unauthorized"}},
		{"unauthorized fails its chain", []bool{L, L, false, false}, []uint32{1, 1, 1, 1}, []bool{true, false, true, true},
			[]string{"linked_event_failed", "unauthorized", "linked_event_failed", ""}},
		{"the first refusal names the chain's failure", []bool{L, L, false}, []uint32{1, 2, 2}, []bool{true, true, false},
			[]string{"linked_event_failed", "flags_invalid", "linked_event_failed"}},
		{"an open chain", []bool{false, L, L}, []uint32{1, 1, 1}, []bool{true, false, true},
			[]string{"", "linked_event_chain_open", "linked_event_chain_open"}},
	} {
		results := make([]transport.Result, len(tc.linked))
		sent := RefuseChains(results, tc.shards, func(i int) bool { return tc.linked[i] }, func(i int) bool { return tc.allowed[i] })
		var got []string
		for i, r := range results {
			if sent[i] {
				got = append(got, "")
				continue
			}
			if r.Index != uint32(i) {
				t.Errorf("%s: result %d has index %d", tc.name, i, r.Index)
			}
			got = append(got, r.Code.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// shardOf places ids by their first letter: a→1, b→2, anything else→3.
func shardOf(id string) uint32 {
	switch {
	case strings.HasPrefix(id, "a"):
		return 1
	case strings.HasPrefix(id, "b"):
		return 2
	}
	return 3
}

func tr(id, debit, credit string, flags uint32) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: 1, Ledger: 1, Code: 1, Flags: flags}
}

// describe renders a plan: per part its shard, its events' batch indexes,
// their credit and debit shards; then the codes the router answered.
func describe(p *Plan) string {
	var b strings.Builder
	for _, pt := range p.Parts {
		fmt.Fprintf(&b, "%d:%v cs%v ds%v;", pt.Shard, pt.Index, pt.Cmd.CreditShards, pt.Cmd.DebitShards)
	}
	inPart := map[int]bool{}
	for _, pt := range p.Parts {
		for _, i := range pt.Index {
			inPart[i] = true
		}
	}
	for i, r := range p.Results {
		if !inPart[i] {
			fmt.Fprintf(&b, " %d=%s", i, r.Code)
		}
	}
	return b.String()
}

func TestTransfersPlan(t *testing.T) {
	const (
		L    = transport.TransferLinked
		post = transport.TransferPostPendingTransfer
	)
	for _, tc := range []struct {
		name    string
		ts      []transport.Transfer
		debitOf map[string]string
		owner   *transport.Owner
		want    string
	}{
		{"each transfer to its debit account's shard", []transport.Transfer{tr("t1", "a1", "b1", 0), tr("t2", "b1", "b2", 0), tr("t3", "a2", "a1", 0)}, nil, nil,
			"1:[0 2] cs[2 1] ds[1 1];2:[1] cs[2] ds[2];"},
		{"a post goes where its pending transfer is", []transport.Transfer{{ID: "t1", PendingID: "p", Flags: post}}, map[string]string{"p": "b9"}, nil,
			"2:[0] cs[3] ds[2];"},
		{"a post found nowhere goes with its chain", []transport.Transfer{tr("t1", "b1", "b2", L), {ID: "t2", PendingID: "p", Flags: post}}, nil, nil,
			"2:[0 1] cs[2 3] ds[2 2];"},
		{"a chain leaving its shard goes whole to its coordinator", []transport.Transfer{tr("t1", "a1", "a2", L), tr("t2", "b1", "a1", 0), tr("t3", "b1", "b2", 0)}, nil, nil,
			"1:[0 1] cs[1 1] ds[1 2];2:[2] cs[2] ds[2];"},
		{"an owner's foreign debit fails its chain", []transport.Transfer{tr("a-1", "a-x", "b-y", L), tr("a-2", "b-y", "a-x", 0)},
			nil, &transport.Owner{Prefixes: []string{"a-"}, Ledgers: []uint32{1}}, " 0=linked_event_failed 1=unauthorized"},
		{"the owner travels in the command", []transport.Transfer{tr("a-1", "a-x", "b-y", 0)},
			nil, &transport.Owner{Prefixes: []string{"a-"}, Ledgers: []uint32{1}}, "1:[0] cs[2] ds[1];"},
	} {
		p := Transfers(tc.ts, shardOf, tc.debitOf, tc.owner)
		if got := describe(p); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
		for _, pt := range p.Parts {
			if pt.Cmd.Owner != tc.owner || pt.Cmd.Kind != shard.KindCreateTransfers {
				t.Errorf("%s: part %d: owner %v kind %d", tc.name, pt.Shard, pt.Cmd.Owner, pt.Cmd.Kind)
			}
		}
	}
}

func TestAccountsPlanRefusesAChainAcrossShards(t *testing.T) {
	as := []transport.Account{{ID: "a1", Flags: transport.AccountLinked}, {ID: "b1"}, {ID: "a2"}, {ID: "b2"}}
	if got, want := describe(Accounts(as, shardOf, nil)), "1:[2] cs[] ds[];2:[3] cs[] ds[]; 0=linked_event_failed 1=flags_invalid"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestLocate(t *testing.T) {
	post := transport.TransferPostPendingTransfer
	ts := []transport.Transfer{
		{ID: "p1", DebitAccountID: "a1", Flags: transport.TransferPending},
		{ID: "t1", PendingID: "p1", Flags: post},                       // created by the batch
		{ID: "t2", PendingID: "p2", Flags: post},                       // to look up
		{ID: "t3", PendingID: "p3", DebitAccountID: "b1", Flags: post}, // names its debit account
	}
	debitOf, ids := Locate(ts)
	if !slices.Equal(ids, []string{"p2"}) || debitOf["p1"] != "a1" || len(debitOf) != 1 {
		t.Fatalf("Locate: %v %v", debitOf, ids)
	}
}

// A part too big for one message is cut between chains, and a shard's
// results land at their events' batch indexes.
func TestCutSliceMerge(t *testing.T) {
	L := transport.TransferLinked
	ts := []transport.Transfer{tr("t0", "a", "a", 0), tr("t1", "a", "a", L), tr("t2", "a", "a", L), tr("t3", "a", "a", 0), tr("t4", "a", "a", 0)}
	p := Transfers(ts, shardOf, nil, nil).Parts[0]
	cut := p.Cut()
	if cut != 1 && cut != 4 {
		t.Fatalf("cut at %d splits the chain t1..t3", cut)
	}
	if (&Part{Index: []int{0, 1}, Cmd: shard.Command{Transfers: []transport.Transfer{tr("x", "a", "a", L), tr("y", "a", "a", 0)}}}).Cut() != 0 {
		t.Fatal("one chain was cut")
	}
	results := make([]transport.Result, len(ts))
	for _, half := range []*Part{p.Slice(0, cut), p.Slice(cut, len(ts))} {
		rs := make([]transport.Result, len(half.Index))
		for j := range rs {
			rs[j] = transport.Result{Index: uint32(j), Code: transport.CodeOK, Timestamp: uint64(half.Index[j] + 100)}
		}
		if err := half.Merge(results, rs); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range results {
		if r.Index != uint32(i) || r.Timestamp != uint64(i+100) {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if err := p.Merge(results, results[:1]); err == nil {
		t.Fatal("a short answer was merged")
	}
}

func TestPendingOpens(t *testing.T) {
	P, L := transport.TransferPending, transport.TransferLinked
	for _, tc := range []struct {
		name      string
		ts        []transport.Transfer
		opens     map[uint32]int
		preflight bool
	}{
		{"none", []transport.Transfer{tr("t", "a1", "b1", 0)}, map[uint32]int{}, false},
		{"one shard", []transport.Transfer{tr("t1", "a1", "b1", P), tr("t2", "a2", "a1", P), tr("t3", "b1", "b1", 0)}, map[uint32]int{1: 2}, false},
		{"two shards", []transport.Transfer{tr("t1", "a1", "b1", P), tr("t2", "b2", "a1", P)}, map[uint32]int{1: 1, 2: 1}, true},
		{"a chain leg held off its coordinator", []transport.Transfer{tr("t1", "a1", "a2", L), tr("t2", "b1", "b2", P)}, map[uint32]int{2: 1}, true},
	} {
		opens, preflight := Transfers(tc.ts, shardOf, nil, nil).PendingOpens()
		if !maps.Equal(opens, tc.opens) || preflight != tc.preflight {
			t.Errorf("%s: opens %v preflight %v, want %v %v", tc.name, opens, preflight, tc.opens, tc.preflight)
		}
	}
}
