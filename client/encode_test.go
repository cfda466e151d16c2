package client

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func transfers(n int) []transport.Transfer {
	ts := make([]transport.Transfer, n)
	for i := range ts {
		ts[i] = transport.Transfer{ID: "t" + strconv.Itoa(i), DebitAccountID: "a", CreditAccountID: "b", Amount: uint64(i + 1), Ledger: 1, Code: 1}
	}
	return ts
}

func linkedTransfer(t *transport.Transfer) bool { return t.Flags&transport.TransferLinked != 0 }

func encodeTransfers(t *testing.T, ts []transport.Transfer) *encoded {
	t.Helper()
	e, err := encodeEvents(ts, linkedTransfer)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestBodyIsWhatTransportMarshalMakes(t *testing.T) {
	ts := transfers(5)
	ts[1].Metadata = map[string]string{"z": "1", "a": "2"}
	ts[2].PendingID, ts[2].Timeout, ts[2].Amount = "p", 30, math.MaxUint64
	e := encodeTransfers(t, ts)
	for _, s := range []span{{0, 5}, {1, 3}, {4, 5}, {2, 2}} {
		want, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: ts[s.start:s.end]})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.body("transfers", s); !bytes.Equal(got, want) {
			t.Errorf("span %v: body %x, transport.Marshal %x", s, got, want)
		}
	}

	as := []transport.Account{{ID: "a", Ledger: 1, Code: 1, Flags: transport.AccountHistory}, {ID: "b", Ledger: 2, Code: 3}}
	ea, err := encodeEvents(as, func(*transport.Account) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	want, _ := transport.Marshal(&transport.CreateAccountsRequest{Accounts: as})
	if got := ea.body("accounts", span{0, 2}); !bytes.Equal(got, want) {
		t.Errorf("accounts body %x, transport.Marshal %x", got, want)
	}

	ids := []string{"x", "y"}
	ei, _ := encodeEvents(ids, func(*string) bool { return false })
	want, _ = transport.Marshal(&transport.LookupRequest{IDs: ids})
	if got := ei.body("ids", span{0, 2}); !bytes.Equal(got, want) {
		t.Errorf("ids body %x, transport.Marshal %x", got, want)
	}
}

func TestSplitCutsAtBatchEventsMax(t *testing.T) {
	spans, err := encodeTransfers(t, transfers(2*transport.BatchEventsMax+5)).split(transport.BatchEventsMax)
	if err != nil {
		t.Fatal(err)
	}
	want := []span{{0, 8190}, {8190, 16380}, {16380, 16385}}
	if len(spans) != len(want) {
		t.Fatalf("spans %v, want %v", spans, want)
	}
	for i := range want {
		if spans[i] != want[i] {
			t.Fatalf("spans %v, want %v", spans, want)
		}
	}
}

func TestSplitNeverCutsLinkedChain(t *testing.T) {
	ts := transfers(25)
	for i := 7; i < 12; i++ { // chain 7..12
		ts[i].Flags = transport.TransferLinked
	}
	ts[24].Flags = transport.TransferLinked // chain open at the batch's end: sent as is
	spans, err := encodeTransfers(t, ts).split(10)
	if err != nil {
		t.Fatal(err)
	}
	want := []span{{0, 7}, {7, 17}, {17, 25}}
	for i := range want {
		if i >= len(spans) || spans[i] != want[i] {
			t.Fatalf("spans %v, want %v", spans, want)
		}
	}
}

func TestSplitRefusesChainLongerThanOneRequest(t *testing.T) {
	ts := transfers(12)
	for i := range 11 {
		ts[i].Flags = transport.TransferLinked
	}
	if _, err := encodeTransfers(t, ts).split(10); err == nil || !strings.Contains(err.Error(), "linked chain from event 0") {
		t.Fatalf("err = %v, want a chain too long", err)
	}
}

func TestSplitKeepsEveryBodyWithinMessageBytesMax(t *testing.T) {
	ts := transfers(transport.BatchEventsMax)
	for i := range ts {
		ts[i].Metadata = map[string]string{"k": strings.Repeat("v", 1000)}
	}
	e := encodeTransfers(t, ts)
	spans, err := e.split(transport.BatchEventsMax)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) < 2 {
		t.Fatalf("%d bytes of events in %d request(s), want a split", len(e.buf), len(spans))
	}
	next := 0
	for _, s := range spans {
		if s.start != next {
			t.Fatalf("spans %v leave a gap", spans)
		}
		next = s.end
		if n := len(e.body("transfers", s)); n > transport.MessageBytesMax {
			t.Errorf("span %v: body of %d bytes", s, n)
		}
	}
	if next != len(ts) {
		t.Fatalf("spans %v end at %d, want %d", spans, next, len(ts))
	}
}

func TestSplitRefusesEventLargerThanMessage(t *testing.T) {
	ts := transfers(2)
	ts[1].Metadata = map[string]string{"k": strings.Repeat("v", transport.MessageBytesMax)}
	if _, err := encodeTransfers(t, ts).split(transport.BatchEventsMax); err == nil || !strings.Contains(err.Error(), "event 1 encodes") {
		t.Fatalf("err = %v, want event 1 too large", err)
	}
}

// The lookup batch size relies on replyEventBytesMax bounding the largest
// account or transfer the cluster can return.
func TestReplyEventBytesMaxBoundsLargestEvent(t *testing.T) {
	id := strings.Repeat("i", transport.IDBytesMax)
	md := map[string]string{}
	for k := range transport.MetadataPairsMax {
		md[strings.Repeat(string(rune('a'+k)), 1)] = strings.Repeat("v", transport.MetadataBytesMax/transport.MetadataPairsMax-1)
	}
	if !transport.ValidMetadata(md) {
		t.Fatal("test metadata is not valid")
	}
	const u64 = math.MaxUint64
	for _, v := range []any{
		&transport.Transfer{ID: id, DebitAccountID: id, CreditAccountID: id, Amount: u64, Ledger: math.MaxUint32, Code: math.MaxUint16,
			Flags: math.MaxUint32, PendingID: id, Timeout: math.MaxUint32, Metadata: md, Timestamp: u64, State: transport.StateExpired},
		&transport.Account{ID: id, Ledger: math.MaxUint32, Code: math.MaxUint16, Flags: math.MaxUint32, Metadata: md,
			DebitsPending: u64, DebitsPosted: u64, CreditsPending: u64, CreditsPosted: u64, Timestamp: u64},
	} {
		b, err := transport.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > replyEventBytesMax {
			t.Errorf("%T encodes to %d bytes, more than replyEventBytesMax %d", v, len(b), replyEventBytesMax)
		}
	}
}
