package shard

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func reqID(b byte) []byte { id := make([]byte, RequestIDBytes); id[0] = b; return id }

// A re-send of one request (the same request id) is answered as its first
// application: ok with the first timestamps. Another request with the same
// events is a client's retry: exists. A refused event is decided again.
func TestResentRequestIsAnsweredAsFirstApplied(t *testing.T) {
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("a", 1, 0), acct("b", 1, transport.AccountDebitsMustNotExceedCredits))
	cmd := Command{Kind: KindCreateTransfers, Request: reqID(1), Transfers: []transport.Transfer{
		xfer("t1", "a", "b", 10), xfer("t2", "b", "a", 100), xfer("t3", "a", "b", 5)}}
	first := c.apply(s, cmd).Events[0]
	if first[0].Code != transport.CodeOK || first[1].Code != transport.CodeExceedsCredits || first[2].Code != transport.CodeOK {
		t.Fatalf("first: %+v", first)
	}
	again := c.apply(s, cmd).Events[0]
	for i := range first {
		if again[i].Code != first[i].Code || again[i].Timestamp != first[i].Timestamp {
			t.Fatalf("re-send, event %d: %+v, first %+v", i, again[i], first[i])
		}
	}
	cmd.Request = reqID(2)
	retry := c.apply(s, cmd).Events[0]
	if retry[0].Code != transport.CodeExists || retry[0].Timestamp != first[0].Timestamp || retry[1].Code != transport.CodeExceedsCredits || retry[2].Code != transport.CodeExists {
		t.Fatalf("the client's retry: %+v", retry)
	}
	cmd.Request = nil
	if r := c.apply(s, cmd).Events[0]; r[0].Code != transport.CodeExists {
		t.Fatalf("without a request id: %+v", r)
	}
	if a := account(t, s, "a"); a.DebitsPosted != 15 {
		t.Fatalf("applied more than once: %+v", a)
	}
}

// The same for accounts, and for a request whose events all existed from
// before (its own application ticked nothing): still exists.
func TestResentAccountsRequest(t *testing.T) {
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("old", 1, 0))
	cmd := Command{Kind: KindCreateAccounts, Request: reqID(7), Accounts: []transport.Account{acct("old", 1, 0), acct("new", 1, 0)}}
	first := c.apply(s, cmd).Events[0]
	again := c.apply(s, cmd).Events[0]
	if first[0].Code != transport.CodeExists || first[1].Code != transport.CodeOK || again[0].Code != transport.CodeExists ||
		again[1].Code != transport.CodeOK || again[1].Timestamp != first[1].Timestamp {
		t.Fatalf("first %+v, again %+v", first, again)
	}
}

// A cross-shard transfer still in flight when its request is re-sent is
// answered as its first attempt (Retry cleared), and one re-sent by another
// request waits to answer exists (Retry kept).
func TestResentRequestOfATransferInFlight(t *testing.T) {
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("a", 1, 0))
	cmd := Command{Kind: KindCreateTransfers, Request: reqID(3), Transfers: []transport.Transfer{xfer("x1", "a", "remote", 10)}, CreditShards: []uint32{2}}
	first := c.apply(s, cmd).Events[0]
	if !first[0].InFlight || first[0].Retry {
		t.Fatalf("first: %+v", first)
	}
	again := c.apply(s, cmd).Events[0]
	if !again[0].InFlight || again[0].Retry || again[0].Attempt != first[0].Attempt {
		t.Fatalf("re-send: %+v", again)
	}
	cmd.Request = reqID(4)
	if other := c.apply(s, cmd).Events[0]; !other[0].InFlight || !other[0].Retry {
		t.Fatalf("the client's retry: %+v", other)
	}
}

// Records are part of the state: a snapshot carries them (a new leader
// restored from it answers a re-send alike), and they are forgotten by log
// time and by count, the same way on every replica.
func TestRequestRecordsSnapshotAndForget(t *testing.T) {
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("a", 1, 0), acct("b", 1, 0))
	cmd := Command{Kind: KindCreateTransfers, Request: reqID(5), Transfers: []transport.Transfer{xfer("t1", "a", "b", 1)}}
	first := c.apply(s, cmd).Events[0]
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, err := Read(bytes.NewReader(buf.Bytes()), s.Archive())
	if err != nil {
		t.Fatal(err)
	}
	if r.Hash() != s.Hash() {
		t.Fatal("the restored state hashes differently")
	}
	if again := c.apply(r, cmd).Events[0]; again[0].Code != transport.CodeOK || again[0].Timestamp != first[0].Timestamp {
		t.Fatalf("re-send after restore: %+v", again)
	}
	// Past the retention, the request is forgotten: a re-send is exists.
	c.now += requestsRetention + 1
	mustTransfer(t, c, r, xfer("later", "a", "b", 1))
	if again := c.apply(r, cmd).Events[0]; again[0].Code != transport.CodeExists {
		t.Fatalf("re-send after the retention: %+v", again)
	}
	// By count: the oldest go first.
	var q requests
	for i := range requestsMax + 10 {
		var id RequestID
		id[0], id[1], id[2] = byte(i), byte(i>>8), byte(i>>16)
		q.add(requestRecord{ID: id, From: uint64(i), To: uint64(i + 1)})
		q.forget(uint64(i + 1))
	}
	if n := len(q.live()); n != requestsMax || len(q.byID) != requestsMax || q.live()[0].From != 10 {
		t.Fatalf("%d live, %d indexed, oldest %+v", n, len(q.byID), q.live()[0])
	}
	for i, rec := range q.live() {
		if !q.mine(rec.ID, rec.To) || q.mine(rec.ID, rec.From) {
			t.Fatalf("record %d: %+v not found by its span", i, rec)
		}
	}
}

// TestRequestAnsweredAsFirstAfterCloneAndEveryApplication: the records
// survive a Clone (every snapshot is written from one); a request applied
// again by a re-send (what its first application refused) is answered ok
// for what either application created; an event sent twice in a request
// is answered ok once, exists after, on every re-send.
func TestRequestAnsweredAsFirstAfterCloneAndEveryApplication(t *testing.T) {
	c := &clock{}
	s := New(1, nil)
	mustCreateAccounts(t, c, s, acct("a", 1, 0), acct("b", 1, 0))
	req := bytes.Repeat([]byte{7}, RequestIDBytes)
	cmd := Command{Kind: KindCreateTransfers, Request: req, Transfers: []transport.Transfer{
		xfer("t1", "a", "b", 1), xfer("t1", "a", "b", 1), xfer("t2", "a", "late", 1)}}
	codes := func(rs []EventResult) []transport.Code {
		var out []transport.Code
		for _, r := range rs {
			out = append(out, r.Code)
		}
		return out
	}
	want := func(got []EventResult, w ...transport.Code) {
		t.Helper()
		if !slices.Equal(codes(got), w) {
			t.Fatalf("answers %v, want %v", codes(got), w)
		}
	}
	want(c.apply(s, cmd).Events[0], transport.CodeOK, transport.CodeExists, transport.CodeCreditAccountNotFound)
	if s.Clone().Hash() != s.Hash() {
		t.Fatal("a clone hashes differently: it lost the request records")
	}
	mustCreateAccounts(t, c, s, acct("late", 1, 0))
	// The re-send applies t2 now: a second application.
	want(c.apply(s, cmd).Events[0], transport.CodeOK, transport.CodeExists, transport.CodeOK)
	for _, st := range []*State{s, restored(t, s.Clone())} {
		want(c.apply(st, cmd).Events[0], transport.CodeOK, transport.CodeExists, transport.CodeOK)
	}
}
