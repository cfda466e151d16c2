package main

import (
	"io"
	"math"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func twoShards() *transport.StatusReply {
	return &transport.StatusReply{
		Nodes: []transport.NodeStatus{{ID: "node-0", Version: "v1"}, {ID: "node-1", Version: "v1"}},
		Shards: []transport.ShardStatus{
			{ID: 0, Leader: "node-0", Term: 2, CommitIndex: 10, AppliedIndex: 9, Slots: []uint16{0, 1, 2}, Accounts: 4, Transfers: 7,
				Ledgers: []transport.LedgerTotals{{Ledger: 2, DebitsPosted: 5}, {Ledger: 1, DebitsPosted: 10, CreditsPosted: 3}}},
			{ID: 1, Leader: "node-1", Term: 3, CommitIndex: 20, AppliedIndex: 20, Slots: []uint16{3}, Accounts: 2, Transfers: 1, InboxDepth: 1,
				Ledgers: []transport.LedgerTotals{{Ledger: 1, CreditsPosted: 7}, {Ledger: 2, CreditsPosted: 5}}},
		},
	}
}

func TestConservationComparesPostedSumsOnlyWithEmptyOutboxes(t *testing.T) {
	st := twoShards()
	got := conservation(st)
	if len(got) != 2 || got[0].Ledger != 1 || got[0].DebitsPosted != 10 || got[0].CreditsPosted != 10 || got[0].Conservation != balanced {
		t.Fatalf("conservation %+v, want ledger 1 balanced at 10 first", got)
	}

	st.Shards[1].Ledgers[0].CreditsPosted = 6
	if got := conservation(st); got[0].Conservation != unbalanced || got[1].Conservation != balanced {
		t.Fatalf("conservation %+v, want ledger 1 UNBALANCED, ledger 2 balanced", got)
	}

	st.Shards[0].OutboxDepth = 1
	st.Shards[0].Ledgers[1].DebitsPending = 1
	if got := conservation(st); got[0].Conservation != inFlight || got[0].DebitsPending != 1 {
		t.Fatalf("conservation %+v, want in flight", got)
	}

	st.Shards[1].Error = "no leader"
	if got := conservation(st); got[0].Conservation != unknown {
		t.Fatalf("conservation %+v, want unknown", got)
	}
}

func TestStatusTableShowsShardsNodesAndLedgers(t *testing.T) {
	st := twoShards()
	st.Shards[1].Error = "no leader"
	st.Shards[0].Replicas = []transport.ReplicaStatus{{Node: "node-0", State: "Leader", AppliedIndex: 9}, {Node: "node-1", State: "Follower", AppliedIndex: 7, Lag: 2}}
	st.Nodes[0].Health, st.Nodes[0].RaftAddr, st.Nodes[0].Build = "up", "10.0.0.1:7400", "7f616d2c4e1a go1.26.8"
	st.Nodes[0].Groups = []transport.GroupStatus{{ID: 0, State: "Leader", Term: 2, AppliedIndex: 5}, {ID: 1, State: "Follower", Term: 3, AppliedIndex: 20}}
	st.Nodes[1] = transport.NodeStatus{ID: "node-1", Health: "unreachable"}
	a, out := testApp("table")
	v := newStatusView(st)
	if err := a.print(v, func(w io.Writer) { statusTable(w, v) }); err != nil {
		t.Fatal(err)
	}
	want := `SHARD  LEADER  TERM  COMMIT  APPLIED  SLOTS  ACCOUNTS  TRANSFERS  OUTBOX  INBOX  REPLICAS (lag)
0      node-0  2     10      9        3      4         7          0       0      node-0*(0) node-1(2)
1      node-1  3     20      20       1      2         1          0       1      
shard 1: no leader

NODE    VERSION  BUILD                  HEALTH       RAFT           LEADS  FOLLOWS  GROUPS (state/term/applied)
node-0  v1       7f616d2c4e1a go1.26.8  up           10.0.0.1:7400  1      1        meta:leader/2/5 shard-1:follower/3/20
node-1                                  unreachable                 0      0        

LEDGER  DEBITS_POSTED  CREDITS_POSTED  DEBITS_PENDING  CREDITS_PENDING  CONSERVATION
1       10             10              0               0                unknown
2       5              5               0               0                unknown
`
	if got := out.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestStatusJSONAddsConservationToTheReply(t *testing.T) {
	st := twoShards()
	a, out := testApp("json")
	if err := a.print(newStatusView(st), nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"shards": [`, `"slots": [
        "0-2"
      ]`, `"commit_index": 10`, `"outbox_depth": 0`, `"conservation": "balanced"`, `"nodes": [`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("JSON lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out.String(), `"error"`) {
		t.Errorf("JSON shows an empty error:\n%s", out)
	}
}

// A shard that omitted ledgers reported its lowest ones: a ledger above the
// last it reported cannot be judged.
func TestConservationIsUnknownAboveAShardsOmittedLedgers(t *testing.T) {
	st := &transport.StatusReply{Shards: []transport.ShardStatus{
		{ID: 1, LedgersOmitted: 3, Ledgers: []transport.LedgerTotals{{Ledger: 1, DebitsPosted: 4, CreditsPosted: 4}, {Ledger: 2}}},
		{ID: 2, Ledgers: []transport.LedgerTotals{{Ledger: 1}, {Ledger: 9, DebitsPosted: 1, CreditsPosted: 1}}},
	}}
	got := conservation(st)
	if len(got) != 3 || got[0].Conservation != balanced || got[1].Conservation != balanced || got[2].Ledger != 9 || got[2].Conservation != unknown {
		t.Fatalf("conservation %+v: ledgers 1 and 2 balanced, 9 unknown", got)
	}
}

// A shard owns thousands of slots: JSON shows them as ranges.
func TestSlotRangesFoldConsecutiveSlots(t *testing.T) {
	for _, c := range []struct {
		slots []uint16
		want  string
	}{
		{nil, ""},
		{[]uint16{7}, "7"},
		{[]uint16{3, 0, 1, 2, 5, 7, 8, 4095}, "0-3 5 7-8 4095"},
	} {
		if got := strings.Join(slotRanges(c.slots), " "); got != c.want {
			t.Errorf("slotRanges(%v) = %q, want %q", c.slots, got, c.want)
		}
	}
	all := make([]uint16, transport.SlotCount)
	for i := range all {
		all[i] = uint16(i)
	}
	a, out := testApp("json")
	if err := a.print(newStatusView(&transport.StatusReply{Shards: []transport.ShardStatus{{ID: 1, Slots: all}}}), nil); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n > 40 || !strings.Contains(out.String(), `"0-4095"`) {
		t.Fatalf("%d lines for one shard:\n%s", n, out)
	}
}

// Sums of uint64 balances pass 2^64: conservation compares them exactly,
// and neither the table nor the JSON shows a wrapped number. Wrapped,
// debits of 2^64+5 against credits of 5 were a balanced 5/5.
func TestConservationIsExactPastTwoToThe64(t *testing.T) {
	top := transport.U128(math.MaxUint64)
	three, _ := top.Add(top)
	three, _ = three.Add(top)
	st := &transport.StatusReply{Shards: []transport.ShardStatus{
		{ID: 1, Ledgers: []transport.LedgerTotals{
			transport.NewLedgerTotals(1, transport.ExactTotals{DebitsPosted: three, CreditsPosted: top, DebitsPending: top}),
			transport.NewLedgerTotals(2, transport.ExactTotals{DebitsPosted: transport.Uint128{Hi: 1, Lo: 5}, CreditsPosted: transport.U128(5)}),
		}},
		{ID: 2, Ledgers: []transport.LedgerTotals{
			transport.NewLedgerTotals(1, transport.ExactTotals{CreditsPosted: transport.Uint128{Hi: 1, Lo: math.MaxUint64 - 1}, DebitsPending: top}),
		}},
	}}
	got := conservation(st)
	if len(got) != 2 || got[0].Conservation != balanced || got[1].Conservation != unbalanced {
		t.Fatalf("conservation %+v: want ledger 1 balanced, ledger 2 UNBALANCED", got)
	}
	if s := got[0].Sums(); s.DebitsPosted != three || s.CreditsPosted != three || s.DebitsPending.String() != "36893488147419103230" {
		t.Fatalf("ledger 1 sums %+v", s)
	}

	a, out := testApp("table")
	v := newStatusView(st)
	if err := a.print(v, func(w io.Writer) { statusTable(w, v) }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"55340232221128654845  55340232221128654845  36893488147419103230", "18446744073709551621  5"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	a, out = testApp("json")
	if err := a.print(newStatusView(st), nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"debits_posted": 18446744073709551615`, `"debits_posted": "55340232221128654845"`, `"conservation": "UNBALANCED"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("JSON lacks %s:\n%s", want, out)
		}
	}
}

// A sum past 2^128−1 cannot come from a shard's accounts: unknown, not wrapped.
func TestConservationOfImpossibleTotalsIsUnknown(t *testing.T) {
	huge := transport.NewLedgerTotals(1, transport.ExactTotals{
		DebitsPosted:  transport.Uint128{Hi: math.MaxUint64, Lo: math.MaxUint64},
		CreditsPosted: transport.Uint128{Hi: math.MaxUint64, Lo: math.MaxUint64}})
	st := &transport.StatusReply{Shards: []transport.ShardStatus{{ID: 1, Ledgers: []transport.LedgerTotals{huge}}, {ID: 2, Ledgers: []transport.LedgerTotals{huge}}}}
	if got := conservation(st); len(got) != 1 || got[0].Conservation != unknown {
		t.Fatalf("conservation %+v, want unknown", got)
	}
}
