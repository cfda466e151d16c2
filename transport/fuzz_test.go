package transport

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// normaliseMetadata makes nil and empty metadata alike: the codec keeps
// the difference, but no rule of the protocol depends on it.
func normaliseMetadata(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

// normalise makes a nil list and an empty one alike (a body without the
// list, or with nil, decodes as nil or empty; either encodes as []).
func normalise(v any) {
	switch r := v.(type) {
	case *CreateTransfersRequest:
		if len(r.Transfers) == 0 {
			r.Transfers = nil
		}
		for i := range r.Transfers {
			r.Transfers[i].Metadata = normaliseMetadata(r.Transfers[i].Metadata)
		}
	case *CreateAccountsRequest:
		if len(r.Accounts) == 0 {
			r.Accounts = nil
		}
		for i := range r.Accounts {
			r.Accounts[i].Metadata = normaliseMetadata(r.Accounts[i].Metadata)
		}
	case *LookupRequest:
		if len(r.IDs) == 0 {
			r.IDs = nil
		}
	case *ResultsReply:
		if len(r.Results) == 0 || r.Error != nil { // a reply with an error carries nothing else
			r.Results = nil
		}
	case *AccountsReply:
		if len(r.Accounts) == 0 || r.Error != nil { // a reply with an error carries nothing else
			r.Accounts = nil
		}
		for i := range r.Accounts {
			r.Accounts[i].Metadata = normaliseMetadata(r.Accounts[i].Metadata)
		}
	case *TransfersReply:
		if len(r.Transfers) == 0 || r.Error != nil { // a reply with an error carries nothing else
			r.Transfers = nil
		}
		for i := range r.Transfers {
			r.Transfers[i].Metadata = normaliseMetadata(r.Transfers[i].Metadata)
		}
	case *BalancesReply:
		if len(r.Balances) == 0 || r.Error != nil { // a reply with an error carries nothing else
			r.Balances = nil
		}
	}
}

// fuzzRoundTrip decodes data into a new *T. If that succeeds, the value
// must encode, decode again to an equal value, and encode to the same
// bytes (the encoding is canonical: fixed field order, sorted metadata).
func fuzzRoundTrip[T any](t *testing.T, data []byte, batch func(*T) int) {
	var first T
	if err := Unmarshal(data, &first); err != nil {
		return
	}
	checkOneMap[T](t, data)
	if n := batch(&first); n > BatchEventsMax {
		t.Fatalf("decoded a batch of %d", n)
	}
	b1, err := Marshal(&first)
	if err != nil {
		t.Fatalf("Marshal of a decoded %T: %v", first, err)
	}
	var second T
	if err := Unmarshal(b1, &second); err != nil {
		t.Fatalf("re-decoding %T: %v\nbody % x", second, err, b1)
	}
	b2, err := Marshal(&second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1, b2) {
		t.Fatalf("encoding not stable:\n% x\n% x", b1, b2)
	}
	normalise(&first)
	normalise(&second)
	if !reflect.DeepEqual(first, second) {
		t.Fatalf("round trip changed the value:\n%#v\n%#v", first, second)
	}
}

// checkOneMap: data, which decoded as a T, is one msgpack map
// (docs/protocol.md: a body is exactly one map), and with any byte after
// it, it is malformed.
func checkOneMap[T any](t *testing.T, data []byte) {
	t.Helper()
	if c := data[0]; !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		t.Fatalf("a %T decoded from a body that is not a map: % x", *new(T), data)
	}
	for _, tail := range []byte{0x80, 0xc0, 0xc1} {
		if err := Unmarshal(append(bytes.Clone(data), tail), new(T)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%T with the trailing byte %02x: err = %v, want ErrMalformed", *new(T), tail, err)
		}
	}
}

// fuzzStable decodes data into a new *T, which the codec encodes by
// reflection (no canonical form for nil and empty lists): if that succeeds,
// it encodes, and that encoding decodes and encodes again to the same bytes.
// It returns the decoded value, or nil.
func fuzzStable[T any](t *testing.T, data []byte) *T {
	var first T
	if err := Unmarshal(data, &first); err != nil {
		return nil
	}
	checkOneMap[T](t, data)
	b1, err := Marshal(&first)
	if err != nil {
		t.Fatalf("Marshal of a decoded %T: %v", first, err)
	}
	var second T
	if err := Unmarshal(b1, &second); err != nil {
		t.Fatalf("re-decoding %T: %v\nbody % x", second, err, b1)
	}
	if b2 := mustMarshal(t, &second); !bytes.Equal(b1, b2) {
		t.Fatalf("%T: encoding not stable:\n% x\n% x", first, b1, b2)
	}
	return &first
}

// seed adds valid encodings and hand-made edge cases.
func seed(f *testing.F, bodies ...[]byte) {
	for _, b := range bodies {
		f.Add(b)
	}
}

func FuzzDecodeCreateTransfersRequest(f *testing.F) {
	seed(f,
		mustMarshal(f, &CreateTransfersRequest{Transfers: sampleTransfers()}),
		mustMarshal(f, &CreateTransfersRequest{Transfers: sampleTransfers()[:1]}),
		mustMarshal(f, &CreateTransfersRequest{}),
		mp(f, mapHdr(1), "transfers", nil),
		mp(f, mapHdr(2), "x", []any{1, map[string]any{"y": nil}}, "transfers", arrHdr(1),
			mapHdr(4), "amount", encFn(func(e *msgpack.Encoder) error { return e.EncodeUint64(5) }),
			"ledger", encFn(func(e *msgpack.Encoder) error { return e.EncodeInt32(1) }),
			"metadata", map[string]string{"k": "v", "": ""}, strings.Repeat("u", 40), 1),
		mp(f, mapHdr(1), "transfers", raw{0xdd, 0, 0, 0x1f, 0xfe}),
		[]byte{0xc0},
		[]byte{},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRoundTrip(t, data, func(r *CreateTransfersRequest) int { return len(r.Transfers) })
	})
}

func FuzzDecodeCreateAccountsRequest(f *testing.F) {
	seed(f,
		mustMarshal(f, &CreateAccountsRequest{Accounts: sampleAccounts()}),
		mustMarshal(f, &CreateAccountsRequest{Accounts: sampleAccounts()[1:2]}),
		mustMarshal(f, &CreateAccountsRequest{}),
		mp(f, mapHdr(1), "accounts", nil),
		mp(f, mapHdr(1), "accounts", arrHdr(2), mapHdr(0),
			mapHdr(3), "code", encFn(func(e *msgpack.Encoder) error { return e.EncodeInt64(65535) }),
			"metadata", nil, "flags", encFn(func(e *msgpack.Encoder) error { return e.EncodeUint16(31) })),
		mp(f, mapHdr(1), "accounts", arrHdr(1), mapHdr(1), "ledger", -1),
		[]byte{0x80},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRoundTrip(t, data, func(r *CreateAccountsRequest) int { return len(r.Accounts) })
	})
}

func FuzzDecodeLookupRequest(f *testing.F) {
	seed(f,
		mustMarshal(f, &LookupRequest{IDs: []string{"a", "wallet:alice@example.com", ""}}),
		mustMarshal(f, &LookupRequest{}),
		mp(f, mapHdr(1), "ids", nil),
		mp(f, mapHdr(2), "ids", []string{strings.Repeat("i", 300)}, "accounts", []int{1}),
		mp(f, mapHdr(1), "ids", arrHdr(2), "a", 1),
		[]byte{0x81, 0xa3, 'i', 'd', 's', 0x91, 0xa1, 'x'},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRoundTrip(t, data, func(r *LookupRequest) int { return len(r.IDs) })
	})
}

// FuzzDecodeAccountFilter: the body of accounts.transfers and
// accounts.balances round-trips, and a filter that passes Check is within
// the documented bounds.
func FuzzDecodeAccountFilter(f *testing.F) {
	seed(f,
		mustMarshal(f, &AccountFilter{AccountID: "wallet", TimestampMin: 1, TimestampMax: math.MaxUint64, Limit: HistoryLimitMax, Reverse: true}),
		mustMarshal(f, &AccountFilter{}),
		mp(f, mapHdr(3), "account_id", "a", "limit", encFn(func(e *msgpack.Encoder) error { return e.EncodeInt8(1) }), "reverse", 1),
		mp(f, mapHdr(2), "limit", uint64(1)<<32, "timestamp_min", -1),
		[]byte{0x80, 0x80},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRoundTrip(t, data, func(*AccountFilter) int { return 0 })
		var fl AccountFilter
		if Unmarshal(data, &fl) != nil || fl.Check() != nil {
			return
		}
		if !ValidID(fl.AccountID) || fl.Limit < 1 || fl.Limit > HistoryLimitMax || fl.TimestampMax != 0 && fl.TimestampMin > fl.TimestampMax {
			t.Fatalf("Check passed %+v", fl)
		}
	})
}

// FuzzDecodeStatusRequest: the body of cluster.status is one map, of
// anything (unknown fields are skipped), and nothing else.
func FuzzDecodeStatusRequest(f *testing.F) {
	seed(f, []byte{0x80}, mp(f, map[string]any{"x": []any{1, map[string]any{"y": nil}}}), []byte{0x80, 0x00}, []byte{0xc0}, []byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if fuzzStable[StatusRequest](t, data) != nil && !bytes.Equal(mustMarshal(t, &StatusRequest{}), []byte{0x80}) {
			t.Fatal("a status request does not encode as {}")
		}
	})
}

// FuzzDecodeReplies decodes the input as each reply a client decodes
// (client.request): every one that decodes round-trips, and its lists and
// exact totals are within their bounds.
func FuzzDecodeReplies(f *testing.F) {
	big := NewLedgerTotals(1, ExactTotals{DebitsPosted: Uint128{Hi: 2, Lo: 5}, CreditsPosted: Uint128{Hi: 2, Lo: 5}})
	seed(f,
		mustMarshal(f, &ResultsReply{Results: []Result{{Index: 3, Code: CodeExceedsCredits, Timestamp: 1 << 40}}}),
		mustMarshal(f, &ResultsReply{Error: &Error{Code: ErrTimeoutCode, Message: "later"}}),
		mustMarshal(f, &AccountsReply{Accounts: sampleAccounts()}),
		mustMarshal(f, &TransfersReply{Transfers: sampleTransfers()}),
		mustMarshal(f, &BalancesReply{Balances: []Balance{{Timestamp: 1, DebitsPosted: math.MaxUint64}}}),
		mustMarshal(f, &StatusReply{Nodes: []NodeStatus{{ID: "n1", Health: "up", Groups: []GroupStatus{{ID: 1, State: "Leader"}}}},
			Shards: []ShardStatus{{ID: 1, Slots: []uint16{0, 4095}, Ledgers: []LedgerTotals{big, {Ledger: 2, DebitsPosted: 1}}}}}),
		mp(f, mapHdr(1), "results", arrHdr(1), mapHdr(1), "code", "nonsense"),
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRoundTrip(t, data, func(r *ResultsReply) int { return len(r.Results) })
		fuzzRoundTrip(t, data, func(r *AccountsReply) int { return len(r.Accounts) })
		fuzzRoundTrip(t, data, func(r *TransfersReply) int { return len(r.Transfers) })
		fuzzRoundTrip(t, data, func(r *BalancesReply) int { return len(r.Balances) })
		st := fuzzStable[StatusReply](t, data)
		if st == nil {
			return
		}
		for _, sh := range st.Shards {
			if len(sh.Slots) > BatchEventsMax || len(sh.Ledgers) > BatchEventsMax {
				t.Fatalf("shard %d: %d slots, %d ledgers", sh.ID, len(sh.Slots), len(sh.Ledgers))
			}
			for _, l := range sh.Ledgers {
				s := l.Sums()
				for _, v := range []Uint128{s.DebitsPosted, s.CreditsPosted, s.DebitsPending, s.CreditsPending} {
					if back, err := ParseUint128(v.String()); err != nil || back != v {
						t.Fatalf("total %+v prints %s, parses %+v, %v", v, v, back, err)
					}
				}
			}
		}
	})
}

// FuzzDecodeNodeMessages decodes the input as what nodes tell each other
// and the router: a NodeStatus (the status subject) and a NodeInfo
// (discovery). Each that decodes round-trips.
func FuzzDecodeNodeMessages(f *testing.F) {
	seed(f,
		mustMarshal(f, &NodeStatus{ID: "node-1", Version: Version, Health: "up", RaftAddr: "127.0.0.1:7400", Voters: []string{"node-1", "node-2"},
			Groups: []GroupStatus{{ID: 0, State: "Leader", Term: 3, LastIndex: 9, AppliedIndex: 9}, {ID: 1, State: "Follower"}}}),
		mustMarshal(f, &NodeInfo{ID: "node-2", RaftAddr: "10.0.0.2:7400", Member: true}),
		mp(f, mapHdr(2), "id", "n", "groups", arrHdr(1), mapHdr(1), "id", -1),
		[]byte{0x81, 0xa2, 'i', 'd', 0xc0},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		if st := fuzzStable[NodeStatus](t, data); st != nil && (len(st.Groups) > BatchEventsMax || len(st.Voters) > BatchEventsMax) {
			t.Fatalf("a node status of %d groups and %d voters", len(st.Groups), len(st.Voters))
		}
		fuzzStable[NodeInfo](t, data)
	})
}

// FuzzCheckBounds: CheckBounds, which guards every decode of a body, and
// DecodeRaw, which guards every value read from a snapshot stream, agree on
// every input; a value that passes decodes without panicking.
func FuzzCheckBounds(f *testing.F) {
	seed(f,
		mustMarshal(f, &CreateTransfersRequest{Transfers: sampleTransfers()}),
		[]byte{0x93, 0x01, 0xdc, 0x00, 0x01, 0xc0, 0xa1, 'x'},
		[]byte{0xdd, 0xff, 0xff, 0xff, 0xff},
		[]byte{0xc9, 0, 0, 0, 2, 7, 1, 2},
		bytes.Repeat([]byte{0x91}, 300),
		[]byte{0x80, 0x80},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		const countMax = 16
		err := CheckBounds(data, countMax)
		dec := msgpack.NewDecoder(bytes.NewReader(data))
		raw, rawErr := DecodeRaw(dec, countMax)
		whole := rawErr == nil && len(raw) == len(data)
		if (err == nil) != whole {
			t.Fatalf("CheckBounds: %v; DecodeRaw: %d of %d bytes, %v", err, len(raw), len(data), rawErr)
		}
		if rawErr == nil && !bytes.Equal(raw, data[:len(raw)]) {
			t.Fatalf("DecodeRaw returned % x, not the stream's first value", raw)
		}
		if err == nil {
			var v any
			_ = msgpack.Unmarshal(data, &v)
		}
	})
}

// compactReply carries CompactResults as the shard's reply does
// (internal/wire.Reply), so the fuzzer reaches its decoder through
// Unmarshal, as the router does.
type compactReply struct {
	Results CompactResults `msgpack:"r,omitempty"`
}

// FuzzDecodeCompactResults decodes the input as a shard's results to the
// router, in either form (pairs, or the result maps of an older leader):
// each that decodes has at most BatchEventsMax results, indexed by
// position, and round-trips.
func FuzzDecodeCompactResults(f *testing.F) {
	seed(f,
		mustMarshal(f, &compactReply{Results: CompactResults{{Code: CodeOK, Timestamp: 1 << 40}, {Index: 1, Code: CodeExceedsDebits}}}),
		mp(f, mapHdr(1), "r", arrHdr(1), mapHdr(3), "index", 0, "code", "exists", "timestamp", 9),
		mp(f, mapHdr(1), "r", arrHdr(2), arrHdr(2), "ok", 1, arrHdr(2), "nonsense", 2),
		mp(f, mapHdr(1), "r", arrHdr(1), arrHdr(3), "ok", 1, 2),
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := fuzzStable[compactReply](t, data)
		if r == nil {
			return
		}
		if len(r.Results) > BatchEventsMax {
			t.Fatalf("%d results", len(r.Results))
		}
		for i, res := range r.Results {
			if res.Index != uint32(i) || res.Code >= codeCount {
				t.Fatalf("result %d: %+v", i, res)
			}
		}
	})
}
