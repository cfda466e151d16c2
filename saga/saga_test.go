package saga

import (
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

const sec = uint64(1e9)

func row(id string, attempt uint64, creditShard uint32) shard.OutboxRow {
	return shard.OutboxRow{Transfer: transport.Transfer{ID: id, Timestamp: attempt}, CreditShard: creditShard}
}

func ids(rows []shard.OutboxRow) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.Transfer.ID)
	}
	return out
}

func TestDueResendsOnlyWhatWasNotAnswered(t *testing.T) {
	d := &Dispatch{Shard: 1, ResendAfter: 2 * sec, AbortAfter: 60 * sec, PerMessage: 10}
	rows := []shard.OutboxRow{row("a", 100*sec, 2), row("b", 100*sec, 3)}
	now := 100 * sec
	if got := ids(d.Due(rows, now)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first scan: %v", got)
	}
	d.Messages(rows[:1], now) // a was sent
	if got := ids(d.Due(rows, now+sec)); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("a second later: %v", got)
	}
	if got := ids(d.Due(rows, now+2*sec)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after ResendAfter: %v", got)
	}
	if got := ids(d.Due(rows, now-sec)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("a clock that went back resends: %v", got)
	}
	// A row gone from the outbox is forgotten: back, it is due at once.
	d.Due(rows[1:], now+sec)
	if got := ids(d.Due(rows, now+sec)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("a row that left and came back: %v", got)
	}
}

func TestMessagesGroupCreditsAndAbortsByShard(t *testing.T) {
	d := &Dispatch{Shard: 1, ResendAfter: 2 * sec, AbortAfter: 60 * sec, PerMessage: 2}
	now := 200 * sec
	rows := []shard.OutboxRow{row("c1", 190*sec, 3), row("c2", 191*sec, 2), row("c3", 192*sec, 3), row("c4", 193*sec, 3),
		row("old", 100*sec, 2)}
	var got []string
	for _, m := range d.Messages(rows, now) {
		s := map[shard.Kind]string{shard.KindCredit: "credit", shard.KindAbort: "abort"}[m.Cmd.Kind]
		for _, c := range m.Cmd.Credits {
			if c.DebitShard != 1 {
				t.Fatalf("credit %s from shard %d", c.Transfer.ID, c.DebitShard)
			}
			s += " " + c.Transfer.ID
		}
		got = append(got, s+" →"+string(rune('0'+m.To)))
	}
	want := []string{"credit c2 →2", "credit c1 c3 →3", "credit c4 →3", "abort old →2"}
	if !slices.Equal(got, want) {
		t.Fatalf("messages %q, want %q", got, want)
	}
	if due := d.Due(rows, now+sec); len(due) != 0 {
		t.Fatalf("rows just sent are due again: %v", ids(due))
	}
}

func TestAnswersDropStaleOnes(t *testing.T) {
	got := Answers([]shard.Answer{{ID: "a", Outcome: shard.OutcomeCredited}, {ID: "b", Outcome: shard.OutcomeStale}, {ID: "c", Outcome: shard.OutcomeRefused}})
	if len(got) != 2 || got[0].ID != "a" || got[1].ID != "c" {
		t.Fatalf("answers %+v", got)
	}
	if c := Resolve(got); c.Kind != shard.KindResolve || len(c.Answers) != 2 {
		t.Fatalf("resolve %+v", c)
	}
}

func TestForgetsUntilAcknowledged(t *testing.T) {
	d := &Dispatch{Shard: 2}
	if got := d.Forgets([]uint32{1, 2, 3}, 50); len(got) != 3 || got[1].To != 2 || got[1].Cmd.Forget.DebitShard != 2 || got[1].Cmd.Forget.Below != 50 {
		t.Fatalf("forgets %+v", got)
	}
	d.Forgot(1, 50)
	d.Forgot(3, 70)
	d.Forgot(3, 60) // an older acknowledgment changes nothing
	var to []uint32
	for _, m := range d.Forgets([]uint32{1, 2, 3}, 60) {
		to = append(to, m.To)
	}
	if !slices.Equal(to, []uint32{1, 2}) {
		t.Fatalf("forgets to %v, want 1 and 2", to)
	}
}

func TestWaitersAnswerWhatTheTransfersBecame(t *testing.T) {
	var w Waiters[string]
	events := []shard.EventResult{
		{Code: transport.CodeOK, Timestamp: 5},
		{InFlight: true, ID: "x", Attempt: 10},
		{InFlight: true, ID: "y", Attempt: 11, Retry: true},
	}
	p, waits := w.Wait("inbox.1", events, 100)
	if !waits || p.To != "inbox.1" {
		t.Fatalf("wait: %v %+v", waits, p)
	}
	// Another request retried x and waits for it too.
	p2, _ := w.Wait("inbox.2", []shard.EventResult{{InFlight: true, ID: "x", Attempt: 10, Retry: true}}, 100)
	if done := w.Resolve([]shard.Resolved{{ID: "x", Attempt: 9, Code: transport.CodeOK}}); len(done) != 0 {
		t.Fatal("an answer for an earlier attempt completed a reply")
	}
	done := w.Resolve([]shard.Resolved{{ID: "x", Attempt: 10, Code: transport.CodeOK, Timestamp: 12}})
	if len(done) != 1 || done[0] != p2 || p2.Reply.Results[0].Code != transport.CodeExists || p2.Reply.Results[0].Timestamp != 12 {
		t.Fatalf("x resolved: %+v", done)
	}
	done = w.Resolve([]shard.Resolved{{ID: "y", Attempt: 11, Code: transport.CodeOK, Timestamp: 13}})
	if len(done) != 1 || done[0] != p {
		t.Fatalf("y resolved: %+v", done)
	}
	want := []transport.Result{{Index: 0, Code: transport.CodeOK, Timestamp: 5}, {Index: 1, Code: transport.CodeOK, Timestamp: 12}, {Index: 2, Code: transport.CodeExists, Timestamp: 13}}
	if !slices.Equal(p.Reply.Results, want) {
		t.Fatalf("results %+v, want %+v", p.Reply.Results, want)
	}
	if w.Len() != 0 {
		t.Fatalf("%d transfers still waited for", w.Len())
	}
}

func TestWaitersAbortSweepAndEnd(t *testing.T) {
	var w Waiters[int]
	inflight := func(id string) []shard.EventResult { return []shard.EventResult{{InFlight: true, ID: id, Attempt: 1}} }
	if p, waits := w.Wait(0, []shard.EventResult{{Code: transport.CodeOK}}, 10); waits || p.Reply.Results[0].Code != transport.CodeOK {
		t.Fatal("a reply with nothing in flight waits")
	}
	w.Wait(1, inflight("a"), 10)
	done := w.Resolve([]shard.Resolved{{ID: "a", Attempt: 1, Aborted: true}})
	if len(done) != 1 || done[0].Reply.Retry == "" || done[0].Reply.Results != nil {
		t.Fatalf("an aborted transfer's reply: %+v", done)
	}
	w.Wait(2, inflight("b"), 10)
	w.Wait(3, inflight("c"), 30)
	w.Sweep(20)
	if done := w.Resolve([]shard.Resolved{{ID: "b", Attempt: 1, Code: transport.CodeOK}}); len(done) != 0 {
		t.Fatal("an expired reply was answered")
	}
	w.Wait(4, append(inflight("d"), inflight("c")...), 30)
	var to []int
	for _, p := range w.End() {
		to = append(to, p.To)
	}
	if !slices.Equal(to, []int{3, 4}) {
		t.Fatalf("end: replies to %v, want 3 and 4 once each", to)
	}
	if p, _ := w.Wait(5, inflight("e"), 40); p != nil {
		t.Fatal("a reply waits after the term ended")
	}
	if p, waits := w.Wait(6, []shard.EventResult{{Code: transport.CodeOK}}, 40); p == nil || waits {
		t.Fatal("a reply with nothing in flight after the end is not answered at once")
	}
}
