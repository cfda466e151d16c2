package transport

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
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
