package transport

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// raw is a piece of msgpack written to the body as it is.
type raw []byte

// encFn writes one msgpack item with the encoder.
type encFn func(*msgpack.Encoder) error

func mapHdr(n int) encFn { return func(e *msgpack.Encoder) error { return e.EncodeMapLen(n) } }
func arrHdr(n int) encFn { return func(e *msgpack.Encoder) error { return e.EncodeArrayLen(n) } }

// mp builds a msgpack body by hand: a raw is copied, an encFn is called,
// anything else goes through Encoder.Encode (strings as str, []byte as bin,
// nil as nil, bool, float32/float64 as floats).
func mp(t testing.TB, items ...any) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	for _, it := range items {
		var err error
		switch v := it.(type) {
		case raw:
			buf.Write(v)
		case encFn:
			err = v(e)
		default:
			err = e.Encode(v)
		}
		if err != nil {
			t.Fatalf("encoding %#v: %v", it, err)
		}
	}
	return bytes.Clone(buf.Bytes())
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatalf("Marshal(%T): %v", v, err)
	}
	return b
}

// roundTrip marshals in, unmarshals into a new value of the same type and
// requires it to be deeply equal to want.
func roundTrip[T any](t *testing.T, in *T, want *T) {
	t.Helper()
	b := mustMarshal(t, in)
	var out T
	if err := Unmarshal(b, &out); err != nil {
		t.Fatalf("Unmarshal(%T): %v\nbody % x", out, err, b)
	}
	if !reflect.DeepEqual(&out, want) {
		t.Fatalf("%T round trip:\n got  %#v\n want %#v", out, out, *want)
	}
}

// wireKeys decodes b as a generic map and returns its keys.
func wireKeys(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatalf("generic decode: %v", err)
	}
	return m
}

func sampleAccounts() []Account {
	return []Account{
		{ID: "acct-1", Ledger: 1, Code: 10},
		{ID: "wallet:alice@example.com", Ledger: 840, Code: 2, Flags: AccountDebitsMustNotExceedCredits | AccountHistory,
			Metadata: map[string]string{"owner": "alice", "tier": "gold", "note": ""}},
		{ID: "max", Ledger: math.MaxUint32, Code: math.MaxUint16, Flags: math.MaxUint32,
			DebitsPending: math.MaxUint64, DebitsPosted: math.MaxUint64 - 1, CreditsPending: 1 << 32, CreditsPosted: 1 << 63,
			Timestamp: math.MaxUint64},
		{ID: "empty-metadata", Ledger: 2, Code: 3, Metadata: map[string]string{}},
		{}, // every field zero: still encodes and decodes
	}
}

func sampleTransfers() []Transfer {
	return []Transfer{
		// Plain transfer: no metadata, pending_id, timeout or state.
		{ID: "t1", DebitAccountID: "a", CreditAccountID: "b", Amount: 100, Ledger: 1, Code: 1},
		// Pending with timeout and metadata.
		{ID: "t2", DebitAccountID: "a", CreditAccountID: "b", Amount: 5, Ledger: 1, Code: 1,
			Flags: TransferPending | TransferLinked, Timeout: 30, Metadata: map[string]string{"order": "o-17", "k": "v"}},
		// Post of a pending transfer, leaving accounts, ledger and code empty.
		{ID: "t3", PendingID: "t2", Flags: TransferPostPendingTransfer},
		// As returned by a lookup: timestamp and state.
		{ID: "t4", DebitAccountID: "a", CreditAccountID: "b", Amount: 1, Ledger: 1, Code: 1,
			Timestamp: 1_700_000_000_000_000_000, State: StatePosted},
		// Every integer at its maximum.
		{ID: "t5", DebitAccountID: "x", CreditAccountID: "y", Amount: math.MaxUint64, Ledger: math.MaxUint32,
			Code: math.MaxUint16, Flags: math.MaxUint32, Timeout: math.MaxUint32, Timestamp: math.MaxUint64,
			PendingID: "p", State: StateExpired, Metadata: map[string]string{"a": strings.Repeat("z", 1000)}},
		// Empty, not nil, metadata.
		{ID: "t6", DebitAccountID: "a", CreditAccountID: "b", Amount: 1, Ledger: 1, Code: 1, Metadata: map[string]string{}},
	}
}

func TestAccountRoundTrip(t *testing.T) {
	for i, a := range sampleAccounts() {
		t.Run(fmt.Sprint(i), func(t *testing.T) { roundTrip(t, &a, &a) })
	}
}

func TestTransferRoundTrip(t *testing.T) {
	for i, x := range sampleTransfers() {
		t.Run(fmt.Sprint(i), func(t *testing.T) { roundTrip(t, &x, &x) })
	}
}

// Nil metadata is left out of the body and comes back nil; empty metadata
// is sent as an empty map and comes back empty, not nil.
func TestMetadataNilAndEmptyKeepTheirForm(t *testing.T) {
	for _, md := range []map[string]string{nil, {}} {
		a := Account{ID: "a", Ledger: 1, Code: 1, Metadata: md}
		b := mustMarshal(t, &a)
		_, present := wireKeys(t, b)["metadata"]
		if present != (md != nil) {
			t.Errorf("metadata %#v: key present = %v", md, present)
		}
		var out Account
		if err := Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		if (out.Metadata == nil) != (md == nil) {
			t.Errorf("metadata %#v decoded as %#v", md, out.Metadata)
		}
	}
}

// The wire names of docs/protocol.md, and the optional transfer fields left out
// when zero.
func TestWireFieldNames(t *testing.T) {
	keys := func(m map[string]any) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		return ks
	}
	acc := wireKeys(t, mustMarshal(t, &Account{ID: "a", Metadata: map[string]string{}}))
	for _, k := range []string{"id", "ledger", "code", "flags", "metadata", "debits_pending", "debits_posted",
		"credits_pending", "credits_posted", "timestamp"} {
		if _, ok := acc[k]; !ok {
			t.Errorf("account body lacks %q: %v", k, keys(acc))
		}
	}
	if len(acc) != 10 {
		t.Errorf("account body has %d keys: %v", len(acc), keys(acc))
	}
	plain := wireKeys(t, mustMarshal(t, &sampleTransfers()[0]))
	for _, k := range []string{"pending_id", "timeout", "metadata", "state"} {
		if _, ok := plain[k]; ok {
			t.Errorf("plain transfer body has %q though it is zero", k)
		}
	}
	full := wireKeys(t, mustMarshal(t, &sampleTransfers()[4]))
	for _, k := range []string{"id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "flags",
		"pending_id", "timeout", "metadata", "timestamp", "state"} {
		if _, ok := full[k]; !ok {
			t.Errorf("transfer body lacks %q: %v", k, keys(full))
		}
	}
	res := wireKeys(t, mustMarshal(t, &Result{Index: 3, Code: CodeExceedsCredits, Timestamp: 9}))
	if res["code"] != "exceeds_credits" || len(res) != 3 {
		t.Errorf("result body %v", res)
	}
	for _, c := range []struct {
		v   any
		key string
	}{
		{&CreateAccountsRequest{}, "accounts"},
		{&CreateTransfersRequest{}, "transfers"},
		{&LookupRequest{}, "ids"},
		{&ResultsReply{}, "results"},
		{&AccountsReply{}, "accounts"},
		{&TransfersReply{}, "transfers"},
		{&ResultsReply{Error: &Error{Code: ErrTimeoutCode}}, "error"},
		{&AccountsReply{Error: &Error{Code: ErrTimeoutCode}}, "error"},
		{&TransfersReply{Error: &Error{Code: ErrTimeoutCode}}, "error"},
	} {
		m := wireKeys(t, mustMarshal(t, c.v))
		if _, ok := m[c.key]; !ok || len(m) != 1 {
			t.Errorf("%T body %v: want exactly key %q", c.v, m, c.key)
		}
	}
}

func TestRequestAndReplyRoundTrip(t *testing.T) {
	allCodes := make([]Result, codeCount)
	for c := range codeCount {
		allCodes[c] = Result{Index: uint32(c), Code: c, Timestamp: uint64(c) * 1000}
	}
	allCodes = append(allCodes, Result{Index: math.MaxUint32, Code: CodeOK, Timestamp: math.MaxUint64})
	e := &Error{Code: ErrMalformedCode, Message: "field transfers: want an array"}

	t.Run("CreateAccountsRequest", func(t *testing.T) {
		roundTrip(t, &CreateAccountsRequest{Accounts: sampleAccounts()}, &CreateAccountsRequest{Accounts: sampleAccounts()})
		roundTrip(t, &CreateAccountsRequest{Accounts: []Account{}}, &CreateAccountsRequest{Accounts: []Account{}})
	})
	t.Run("CreateTransfersRequest", func(t *testing.T) {
		roundTrip(t, &CreateTransfersRequest{Transfers: sampleTransfers()}, &CreateTransfersRequest{Transfers: sampleTransfers()})
		// A nil batch is sent as an empty list and comes back empty.
		roundTrip(t, &CreateTransfersRequest{}, &CreateTransfersRequest{Transfers: []Transfer{}})
	})
	t.Run("LookupRequest", func(t *testing.T) {
		ids := []string{"a", "wallet:alice@example.com", "", strings.Repeat("x", 64)}
		roundTrip(t, &LookupRequest{IDs: ids}, &LookupRequest{IDs: ids})
		roundTrip(t, &LookupRequest{IDs: []string{}}, &LookupRequest{IDs: []string{}})
	})
	t.Run("ResultsReply", func(t *testing.T) {
		roundTrip(t, &ResultsReply{Results: allCodes}, &ResultsReply{Results: allCodes})
		roundTrip(t, &ResultsReply{Results: []Result{}}, &ResultsReply{Results: []Result{}})
	})
	t.Run("ResultsReplyWithError", func(t *testing.T) {
		roundTrip(t, &ResultsReply{Error: e}, &ResultsReply{Error: e})
		// The error replaces the results on the wire.
		roundTrip(t, &ResultsReply{Results: allCodes, Error: e}, &ResultsReply{Error: e})
		for _, code := range []string{ErrMalformedCode, ErrTooManyEventsCode, ErrUnauthorizedCode, ErrUnavailableCode, ErrTimeoutCode} {
			in := &ResultsReply{Error: &Error{Code: code, Message: "m"}}
			roundTrip(t, in, in)
		}
	})
	t.Run("AccountsReply", func(t *testing.T) {
		roundTrip(t, &AccountsReply{Accounts: sampleAccounts()}, &AccountsReply{Accounts: sampleAccounts()})
		roundTrip(t, &AccountsReply{Accounts: []Account{}}, &AccountsReply{Accounts: []Account{}})
		roundTrip(t, &AccountsReply{Error: e}, &AccountsReply{Error: e})
	})
	t.Run("TransfersReply", func(t *testing.T) {
		roundTrip(t, &TransfersReply{Transfers: sampleTransfers()}, &TransfersReply{Transfers: sampleTransfers()})
		roundTrip(t, &TransfersReply{Transfers: []Transfer{}}, &TransfersReply{Transfers: []Transfer{}})
		roundTrip(t, &TransfersReply{Error: e}, &TransfersReply{Error: e})
	})
	t.Run("StatusReply", func(t *testing.T) {
		in := &StatusReply{
			Nodes: []NodeStatus{{ID: "n1", Version: "v1.2.3"}, {ID: "n2", Version: "dev"}},
			Shards: []ShardStatus{{ID: 1, Leader: "n1", Term: 3, CommitIndex: 10, AppliedIndex: 9, Slots: []uint16{0, 1, 4095},
				Accounts: 2, Transfers: 5, OutboxDepth: 1, InboxDepth: 0, StateHash: "abc",
				Ledgers: []LedgerTotals{{Ledger: 1, DebitsPosted: 7, CreditsPosted: 7, DebitsPending: 1, CreditsPending: 0}}},
				{ID: 2, Error: "no leader", Slots: []uint16{}, Ledgers: []LedgerTotals{}}},
		}
		roundTrip(t, in, in)
		// An error is the whole reply: {error}, as every reply's.
		roundTrip(t, &StatusReply{Nodes: []NodeStatus{}, Shards: []ShardStatus{}, Error: e}, &StatusReply{Error: e})
	})
}

// Every result code of docs/protocol.md, in its order of precedence.
var protocolCodeNames = []string{
	"ok", "exists", "unauthorized",
	"id_invalid", "flags_invalid", "ledger_invalid", "code_invalid", "amount_invalid", "timeout_invalid",
	"metadata_invalid", "timestamp_must_be_zero", "balances_must_be_zero", "pending_id_invalid",
	"accounts_must_be_different", "exists_with_different_fields", "debit_account_not_found",
	"credit_account_not_found", "ledger_mismatch", "account_closed", "pending_transfer_not_found",
	"pending_transfer_mismatch", "pending_transfer_not_pending", "pending_transfer_already_posted",
	"pending_transfer_already_voided", "pending_transfer_expired", "exceeds_pending_transfer_amount",
	"exceeds_credits", "exceeds_debits", "overflow", "linked_event_failed", "linked_event_chain_open",
}

func TestCodeNamesMatchProtocolOrder(t *testing.T) {
	if int(codeCount) != len(protocolCodeNames) {
		t.Fatalf("%d codes, PROTOCOL.md lists %d", codeCount, len(protocolCodeNames))
	}
	for i, name := range protocolCodeNames {
		if got := Code(i).String(); got != name {
			t.Errorf("Code(%d) = %q, want %q", i, got, name)
		}
	}
}

func TestCodeWireNamesRoundTrip(t *testing.T) {
	seen := map[string]Code{}
	for c := range codeCount {
		name := c.String()
		if prev, dup := seen[name]; dup {
			t.Errorf("codes %d and %d share the name %q", prev, c, name)
		}
		seen[name] = c
		if got, ok := ParseCode(name); !ok || got != c {
			t.Errorf("ParseCode(%q) = %v, %v; want %d", name, got, ok, c)
		}
		text, err := c.MarshalText()
		if err != nil || string(text) != name {
			t.Errorf("%d.MarshalText() = %q, %v", c, text, err)
		}
		b := mustMarshal(t, c)
		if !bytes.Equal(b, mp(t, name)) {
			t.Errorf("code %q encodes as % x, want a msgpack string", name, b)
		}
		var got Code // a bare string, not a body: Unmarshal takes maps only
		if err := msgpack.Unmarshal(b, &got); err != nil || got != c {
			t.Errorf("Unmarshal(%q) = %v, %v", name, got, err)
		}
	}
	if s := codeCount.String(); s != "code(31)" {
		t.Errorf("out-of-range code prints as %q", s)
	}
}

func TestParseCodeRejectsUnknownNames(t *testing.T) {
	for _, name := range []string{"", "OK", "Exists", "ok ", " ok", "code(0)", "code(30)", "unknown",
		ErrMalformedCode, ErrTooManyEventsCode, ErrTimeoutCode, "exceeds_credits\x00", "linked_event"} {
		if c, ok := ParseCode(name); ok {
			t.Errorf("ParseCode(%q) = %v, true", name, c)
		}
	}
	// An unknown code in a reply fails the whole reply.
	body := mp(t, mapHdr(1), "results", arrHdr(1), mapHdr(3), "index", 0, "code", "nope", "timestamp", 0)
	var r ResultsReply
	if err := Unmarshal(body, &r); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown result code: err = %v", err)
	}
}

// intWidth is one msgpack integer encoding.
type intWidth struct {
	name     string
	isCode   func(c byte) bool // the body's first byte is of this width
	maxPos   uint64            // largest positive value the width holds
	pos      func(e *msgpack.Encoder, v uint64) error
	negs     []int64 // negative values to try; none for unsigned widths
	negative func(e *msgpack.Encoder, v int64) error
}

func is(code byte) func(byte) bool { return func(c byte) bool { return c == code } }

var intWidths = []intWidth{
	{name: "fixint", isCode: func(c byte) bool { return c <= 0x7f }, maxPos: 127,
		pos: func(e *msgpack.Encoder, v uint64) error { return e.EncodeInt(int64(v)) }},
	{name: "negative fixint", isCode: func(c byte) bool { return c >= 0xe0 }, negs: []int64{-1, -32},
		negative: func(e *msgpack.Encoder, v int64) error { return e.EncodeInt(v) }},
	{name: "int8", isCode: is(0xd0), maxPos: math.MaxInt8, negs: []int64{-1, math.MinInt8},
		pos:      func(e *msgpack.Encoder, v uint64) error { return e.EncodeInt8(int8(v)) },
		negative: func(e *msgpack.Encoder, v int64) error { return e.EncodeInt8(int8(v)) }},
	{name: "int16", isCode: is(0xd1), maxPos: math.MaxInt16, negs: []int64{-1, math.MinInt16},
		pos:      func(e *msgpack.Encoder, v uint64) error { return e.EncodeInt16(int16(v)) },
		negative: func(e *msgpack.Encoder, v int64) error { return e.EncodeInt16(int16(v)) }},
	{name: "int32", isCode: is(0xd2), maxPos: math.MaxInt32, negs: []int64{-1, math.MinInt32},
		pos:      func(e *msgpack.Encoder, v uint64) error { return e.EncodeInt32(int32(v)) },
		negative: func(e *msgpack.Encoder, v int64) error { return e.EncodeInt32(int32(v)) }},
	{name: "int64", isCode: is(0xd3), maxPos: math.MaxInt64, negs: []int64{-1, math.MinInt64},
		pos:      func(e *msgpack.Encoder, v uint64) error { return e.EncodeInt64(int64(v)) },
		negative: func(e *msgpack.Encoder, v int64) error { return e.EncodeInt64(v) }},
	{name: "uint8", isCode: is(0xcc), maxPos: math.MaxUint8,
		pos: func(e *msgpack.Encoder, v uint64) error { return e.EncodeUint8(uint8(v)) }},
	{name: "uint16", isCode: is(0xcd), maxPos: math.MaxUint16,
		pos: func(e *msgpack.Encoder, v uint64) error { return e.EncodeUint16(uint16(v)) }},
	{name: "uint32", isCode: is(0xce), maxPos: math.MaxUint32,
		pos: func(e *msgpack.Encoder, v uint64) error { return e.EncodeUint32(uint32(v)) }},
	{name: "uint64", isCode: is(0xcf), maxPos: math.MaxUint64,
		pos: func(e *msgpack.Encoder, v uint64) error { return e.EncodeUint64(v) }},
}

// intField is one integer field of Account or Transfer: decode reads a
// body holding only that field and returns the field's value.
type intField struct {
	name   string
	max    uint64
	decode func([]byte) (uint64, error)
}

func accountField(get func(*Account) uint64) func([]byte) (uint64, error) {
	return func(b []byte) (uint64, error) {
		var a Account
		err := Unmarshal(b, &a)
		return get(&a), err
	}
}

func transferField(get func(*Transfer) uint64) func([]byte) (uint64, error) {
	return func(b []byte) (uint64, error) {
		var x Transfer
		err := Unmarshal(b, &x)
		return get(&x), err
	}
}

var accountIntFields = []intField{
	{"ledger", math.MaxUint32, accountField(func(a *Account) uint64 { return uint64(a.Ledger) })},
	{"code", math.MaxUint16, accountField(func(a *Account) uint64 { return uint64(a.Code) })},
	{"flags", math.MaxUint32, accountField(func(a *Account) uint64 { return uint64(a.Flags) })},
	{"debits_pending", math.MaxUint64, accountField(func(a *Account) uint64 { return a.DebitsPending })},
	{"debits_posted", math.MaxUint64, accountField(func(a *Account) uint64 { return a.DebitsPosted })},
	{"credits_pending", math.MaxUint64, accountField(func(a *Account) uint64 { return a.CreditsPending })},
	{"credits_posted", math.MaxUint64, accountField(func(a *Account) uint64 { return a.CreditsPosted })},
	{"timestamp", math.MaxUint64, accountField(func(a *Account) uint64 { return a.Timestamp })},
}

var transferIntFields = []intField{
	{"amount", math.MaxUint64, transferField(func(x *Transfer) uint64 { return x.Amount })},
	{"ledger", math.MaxUint32, transferField(func(x *Transfer) uint64 { return uint64(x.Ledger) })},
	{"code", math.MaxUint16, transferField(func(x *Transfer) uint64 { return uint64(x.Code) })},
	{"flags", math.MaxUint32, transferField(func(x *Transfer) uint64 { return uint64(x.Flags) })},
	{"timeout", math.MaxUint32, transferField(func(x *Transfer) uint64 { return uint64(x.Timeout) })},
	{"timestamp", math.MaxUint64, transferField(func(x *Transfer) uint64 { return x.Timestamp })},
}

// fieldBody is {"id": "x", name: <value>, "zz": 1}: the field between two
// others, so a decoder that loses its place fails.
func fieldBody(t *testing.T, name string, value encFn) []byte {
	return mp(t, mapHdr(3), "id", "x", name, value, "zz", 1)
}

// valueStart is the offset of the field's value in fieldBody.
func valueStart(name string) int { return 1 + 3 + 2 + 1 + len(name) }

func testIntegerStrictness(t *testing.T, fields []intField) {
	for _, f := range fields {
		t.Run(f.name, func(t *testing.T) {
			accept := func(w intWidth, v uint64) {
				t.Helper()
				b := fieldBody(t, f.name, func(e *msgpack.Encoder) error { return w.pos(e, v) })
				if c := b[valueStart(f.name)]; !w.isCode(c) {
					t.Fatalf("%s %d encoded with code 0x%02x", w.name, v, c)
				}
				got, err := f.decode(b)
				if err != nil || got != v {
					t.Errorf("%s %d: got %d, %v", w.name, v, got, err)
				}
			}
			reject := func(what string, b []byte) {
				t.Helper()
				if _, err := f.decode(b); !errors.Is(err, ErrMalformed) {
					t.Errorf("%s: err = %v, want ErrMalformed", what, err)
				}
			}
			for _, w := range intWidths {
				if w.pos != nil {
					accept(w, 0)
					accept(w, 1)
					accept(w, min(w.maxPos, f.max))
					if w.maxPos > f.max {
						v := f.max + 1
						reject(fmt.Sprintf("%s %d (out of range)", w.name, v),
							fieldBody(t, f.name, func(e *msgpack.Encoder) error { return w.pos(e, v) }))
						v = w.maxPos
						reject(fmt.Sprintf("%s %d (out of range)", w.name, v),
							fieldBody(t, f.name, func(e *msgpack.Encoder) error { return w.pos(e, v) }))
					}
				}
				for _, v := range w.negs {
					b := fieldBody(t, f.name, func(e *msgpack.Encoder) error { return w.negative(e, v) })
					if c := b[valueStart(f.name)]; !w.isCode(c) {
						t.Fatalf("%s %d encoded with code 0x%02x", w.name, v, c)
					}
					reject(fmt.Sprintf("%s %d", w.name, v), b)
				}
			}
			for _, bad := range notIntegers(t) {
				reject(bad.name, fieldBody(t, f.name, bad.value))
			}
		})
	}
}

type namedValue struct {
	name  string
	value encFn
}

func val(v any) encFn {
	return func(e *msgpack.Encoder) error { return e.Encode(v) }
}

func rawValue(b ...byte) encFn {
	return func(e *msgpack.Encoder) error { _, err := e.Writer().Write(b); return err }
}

func notIntegers(t *testing.T) []namedValue {
	return []namedValue{
		{"nil", val(nil)},
		{"float32", val(float32(1))},
		{"float64", val(float64(1))},
		{"float64 whole", val(float64(7))},
		{"string", val("1")},
		{"empty string", val("")},
		{"true", val(true)},
		{"false", val(false)},
		{"bin", val([]byte{1})},
		{"array", val([]int{1})},
		{"map", val(map[string]int{"a": 1})},
		{"fixext", rawValue(0xd4, 0x01, 0x01)},
		{"timestamp ext", val(time.Unix(1, 0))},
	}
}

func TestAccountIntegerStrictness(t *testing.T)  { testIntegerStrictness(t, accountIntFields) }
func TestTransferIntegerStrictness(t *testing.T) { testIntegerStrictness(t, transferIntFields) }

// One bad integer in one event fails the whole request.
func TestBadIntegerFailsWholeRequest(t *testing.T) {
	good := func() encFn {
		return func(e *msgpack.Encoder) error {
			x := Transfer{ID: "t", DebitAccountID: "a", CreditAccountID: "b", Amount: 1, Ledger: 1, Code: 1}
			return x.EncodeMsgpack(e)
		}
	}
	body := mp(t, mapHdr(1), "transfers", arrHdr(3), good(),
		mapHdr(2), "id", "bad", "amount", encFn(func(e *msgpack.Encoder) error { return e.EncodeInt8(-1) }),
		good())
	var r CreateTransfersRequest
	if err := Unmarshal(body, &r); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	body = mp(t, mapHdr(1), "accounts", arrHdr(2), mapHdr(1), "ledger", 1,
		mapHdr(1), "code", encFn(func(e *msgpack.Encoder) error { return e.EncodeUint32(1 << 16) }))
	var ra CreateAccountsRequest
	err := Unmarshal(body, &ra)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "code") {
		t.Errorf("error does not name the field: %v", err)
	}
}

func TestStringFieldsRejectOtherTypes(t *testing.T) {
	bad := []namedValue{
		{"int", val(1)},
		{"negative int", val(-1)},
		{"bin", val([]byte("abc"))},
		{"nil", val(nil)},
		{"bool", val(true)},
		{"float", val(1.5)},
		{"array", val([]string{"a"})},
		{"map", val(map[string]string{"a": "b"})},
	}
	check := func(t *testing.T, field string, decode func([]byte) error) {
		for _, v := range bad {
			body := mp(t, mapHdr(2), field, v.value, "ledger", 1)
			if err := decode(body); !errors.Is(err, ErrMalformed) {
				t.Errorf("%s = %s: err = %v, want ErrMalformed", field, v.name, err)
			}
		}
		// A str of any width is accepted.
		for _, s := range []string{"", "x", strings.Repeat("s", 40), strings.Repeat("m", 300), strings.Repeat("l", 70000)} {
			if err := decode(mp(t, mapHdr(1), field, s)); err != nil {
				t.Errorf("%s = %d-byte string: %v", field, len(s), err)
			}
		}
	}
	t.Run("account", func(t *testing.T) {
		check(t, "id", func(b []byte) error { var a Account; return Unmarshal(b, &a) })
	})
	for _, f := range []string{"id", "debit_account_id", "credit_account_id", "pending_id", "state"} {
		t.Run("transfer."+f, func(t *testing.T) {
			check(t, f, func(b []byte) error { var x Transfer; return Unmarshal(b, &x) })
		})
	}
	t.Run("lookup ids", func(t *testing.T) {
		for _, v := range bad {
			body := mp(t, mapHdr(1), "ids", arrHdr(2), "ok", v.value)
			var r LookupRequest
			if err := Unmarshal(body, &r); !errors.Is(err, ErrMalformed) {
				t.Errorf("ids element %s: err = %v, want ErrMalformed", v.name, err)
			}
		}
	})
}

func TestMetadataTypes(t *testing.T) {
	decode := func(md encFn) (map[string]string, error) {
		var a Account
		err := Unmarshal(mp(t, mapHdr(2), "metadata", md, "id", "a"), &a)
		return a.Metadata, err
	}
	kv := func(items ...any) encFn {
		return func(e *msgpack.Encoder) error {
			if err := e.EncodeMapLen(len(items) / 2); err != nil {
				return err
			}
			for _, it := range items {
				if err := e.Encode(it); err != nil {
					return err
				}
			}
			return nil
		}
	}
	for _, c := range []struct {
		name string
		md   encFn
	}{
		{"int value", kv("k", 1)},
		{"nil value", kv("k", nil)},
		{"bin value", kv("k", []byte("v"))},
		{"bool value", kv("k", true)},
		{"map value", kv("k", map[string]string{})},
		{"second value bad", kv("a", "1", "b", 2)},
		{"int key", kv(1, "v")},
		{"bin key", kv([]byte("k"), "v")},
		{"nil key", kv(nil, "v")},
		{"array", val([]string{"k", "v"})},
		{"string", val("k=v")},
		{"int", val(0)},
	} {
		if _, err := decode(c.md); !errors.Is(err, ErrMalformed) {
			t.Errorf("metadata %s: err = %v, want ErrMalformed", c.name, err)
		}
	}
	var a Account
	if err := Unmarshal(mp(t, mapHdr(1), "metadata", raw{0x82}, "k", "v", "k2"), &a); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated metadata: err = %v, want ErrMalformed", err)
	}
	got, err := decode(kv("b", "2", "a", "1", "a", "3"))
	if err != nil || !reflect.DeepEqual(got, map[string]string{"a": "3", "b": "2"}) {
		t.Errorf("repeated key: %v, %v (the last one wins)", got, err)
	}
	got, err = decode(val(nil))
	if err != nil || got != nil {
		t.Errorf("nil metadata (optional): %v, %v", got, err)
	}
	// Limits are the shard's (metadata_invalid), not the codec's.
	many := make([]any, 0, 40)
	for i := range 20 {
		many = append(many, fmt.Sprint("k", i), "v")
	}
	if got, err := decode(kv(many...)); err != nil || len(got) != 20 {
		t.Errorf("20 pairs: %d, %v", len(got), err)
	}
}

func TestMapKeysMustBeStrings(t *testing.T) {
	for _, key := range []any{1, -1, nil, true, []byte("id"), 1.5, []int{}} {
		bodies := map[string][]byte{
			"account":  mp(t, mapHdr(2), "id", "a", key, 1),
			"transfer": mp(t, mapHdr(2), "id", "a", key, 1),
			"request":  mp(t, mapHdr(2), key, 1, "transfers", arrHdr(0)),
			"result":   mp(t, mapHdr(1), "results", arrHdr(1), mapHdr(1), key, 1),
		}
		var a Account
		var x Transfer
		var r CreateTransfersRequest
		var rr ResultsReply
		for what, err := range map[string]error{
			"account":  Unmarshal(bodies["account"], &a),
			"transfer": Unmarshal(bodies["transfer"], &x),
			"request":  Unmarshal(bodies["request"], &r),
			"result":   Unmarshal(bodies["result"], &rr),
		} {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s with key %#v: err = %v, want ErrMalformed", what, key, err)
			}
		}
	}
}

func TestUnknownFieldsAreSkipped(t *testing.T) {
	long := strings.Repeat("k", 40)
	long32 := strings.Repeat("q", 32)
	// A key longer than any field name that starts with one.
	ledgerLong := "ledger" + strings.Repeat("_", 30)
	nested := map[string]any{"a": []any{1, "x", map[string]any{"b": nil, "c": []any{[]any{}, 1.5}}}, "d": []byte{1, 2}}
	body := mp(t, mapHdr(1+8), "transfers", arrHdr(1),
		mapHdr(2+9),
		"zz_nested", nested,
		"id", "t1",
		long, "a value of an unknown long key",
		long32, 5,
		ledgerLong, 99,
		"", "empty key",
		"x_array", []any{[]any{[]any{[]any{}}}},
		"x_ext", rawValue(0xc7, 0x03, 0x05, 1, 2, 3),
		"x_time", time.Unix(100, 5),
		"x_neg", -1, // unknown fields are not range-checked
		"ledger", 7,
		// unknown top-level fields, before and after the batch
		"version", 1,
		long, nested,
		"accounts", "not the field of this request",
		"ids", []int{1},
		"error", map[string]any{"code": 1},
		"x_float", 2.5,
		"x_nil", nil,
		"x_bin", []byte("bin"),
	)
	var r CreateTransfersRequest
	if err := Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	want := []Transfer{{ID: "t1", Ledger: 7}}
	if !reflect.DeepEqual(r.Transfers, want) {
		t.Fatalf("got %#v", r.Transfers)
	}

	var a Account
	if err := Unmarshal(mp(t, mapHdr(3), "debits_posted_", -5, "code", 3, long, nested), &a); err != nil || a.Code != 3 {
		t.Fatalf("account: %#v, %v", a, err)
	}
	var lr LookupRequest
	if err := Unmarshal(mp(t, mapHdr(2), "transfers", []int{-1}, "ids", []string{"a"}), &lr); err != nil || !reflect.DeepEqual(lr.IDs, []string{"a"}) {
		t.Fatalf("lookup: %#v, %v", lr, err)
	}
	var rr ResultsReply
	if err := Unmarshal(mp(t, mapHdr(2), "results", arrHdr(1), mapHdr(4), "index", 1, "x", nested, "code", "exists", "timestamp", 2, "extra", 1), &rr); err != nil ||
		!reflect.DeepEqual(rr.Results, []Result{{Index: 1, Code: CodeExists, Timestamp: 2}}) {
		t.Fatalf("results: %#v, %v", rr, err)
	}
	// An unknown field must still be well-formed msgpack.
	if err := Unmarshal(mp(t, mapHdr(2), "zz", raw{0xc1}, "id", "a"), &a); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown field holding the reserved code 0xc1: err = %v", err)
	}
}

// nested is {"x": [[...[0]...]], "transfers": [{"id": "t"}]} with the
// given number of arrays.
func nested(t *testing.T, arrays int) []byte {
	var b bytes.Buffer
	b.Write(mp(t, mapHdr(2), "x"))
	b.Write(bytes.Repeat([]byte{0x91}, arrays))
	b.WriteByte(0x00)
	b.Write(mp(t, "transfers", arrHdr(1), mapHdr(1), "id", "t"))
	return b.Bytes()
}

// Unknown fields may nest up to nestingMax containers deep in all (the body
// map counts as one); deeper is malformed. A few MiB of nesting, as one
// request within NATS max_payload may carry, must not overflow the stack (a
// fatal error, not a panic) of the wire types' decoders or of a reflection
// decode.
func TestNestingLimit(t *testing.T) {
	var r CreateTransfersRequest
	if err := Unmarshal(nested(t, nestingMax-1), &r); err != nil {
		t.Fatalf("%d deep: %v", nestingMax, err)
	}
	if len(r.Transfers) != 1 || r.Transfers[0].ID != "t" {
		t.Fatalf("got %#v", r.Transfers)
	}
	var generic map[string]any
	if err := Unmarshal(nested(t, nestingMax-1), &generic); err != nil {
		t.Fatalf("%d deep, decoded by reflection: %v", nestingMax, err)
	}
	for _, arrays := range []int{nestingMax, MessageBytesMax - 64} {
		body := nested(t, arrays)
		for _, v := range []any{new(CreateTransfersRequest), new(StatusReply), &generic} {
			if err := Unmarshal(body, v); !errors.Is(err, ErrMalformed) {
				t.Errorf("%d deep into %T: err = %v, want ErrMalformed", arrays+1, v, err)
			}
		}
	}
	// Nested maps, unterminated.
	var b bytes.Buffer
	b.Write(mp(t, mapHdr(1), "x"))
	for range MessageBytesMax / 3 {
		b.Write([]byte{0x81, 0xa0}) // {"": ...
	}
	if err := Unmarshal(b.Bytes(), &r); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unterminated nesting: err = %v", err)
	}
}

// skipValue, which the wire types use for unknown fields, does not recurse:
// it skips any nesting even when called without CheckBounds first (as when
// msgpack decodes a wire type inside another value).
func TestSkipValueDoesNotRecurse(t *testing.T) {
	// With a 16 MiB stack limit, a recursive skip of this depth would die
	// (msgpack's Skip takes about 120 bytes of stack a level).
	defer debug.SetMaxStack(debug.SetMaxStack(16 << 20))
	depth := 1 << 19
	body := append(bytes.Repeat([]byte{0x91}, depth), 0x81, 0xa1, 'k', 0xc0, 0x07)
	dec := msgpack.NewDecoder(bytes.NewReader(body))
	if err := skipValue(dec); err != nil {
		t.Fatal(err)
	}
	if n, err := dec.DecodeInt64(); err != nil || n != 7 {
		t.Fatalf("after the skipped value: %d, %v", n, err)
	}
	// Through a wire type's decoder, bypassing Unmarshal.
	x := append(mp(t, mapHdr(2), "x"), body[:len(body)-1]...)
	x = append(x, mp(t, "amount", 5)...)
	var tr Transfer
	if err := msgpack.Unmarshal(x, &tr); err != nil || tr.Amount != 5 {
		t.Fatalf("transfer: %#v, %v", tr, err)
	}
	for _, bad := range [][]byte{{0x92, 0x00}, {0x81, 0x00}, {0xc1}, {0xdd, 0xff, 0xff, 0xff, 0xff, 0x00}, {}} {
		if err := skipValue(msgpack.NewDecoder(bytes.NewReader(bad))); err == nil {
			t.Errorf("skipValue(% x) succeeded", bad)
		}
	}
}

func transfersBody(t testing.TB, n int) []byte {
	t.Helper()
	xs := make([]Transfer, n)
	for i := range xs {
		xs[i] = Transfer{ID: fmt.Sprintf("t-%d", i), DebitAccountID: "a", CreditAccountID: "b", Amount: uint64(i + 1), Ledger: 1, Code: 1}
	}
	return mustMarshal(t, &CreateTransfersRequest{Transfers: xs})
}

func TestBatchLimit(t *testing.T) {
	if err := Unmarshal(transfersBody(t, BatchEventsMax), new(CreateTransfersRequest)); err != nil {
		t.Fatalf("%d transfers: %v", BatchEventsMax, err)
	}
	err := Unmarshal(transfersBody(t, BatchEventsMax+1), new(CreateTransfersRequest))
	if !errors.Is(err, ErrTooManyEvents) {
		t.Fatalf("%d transfers: err = %v, want ErrTooManyEvents", BatchEventsMax+1, err)
	}

	// The other batches, as lists of empty maps or strings.
	list := func(field string, n int, elem []byte) []byte {
		return append(mp(t, mapHdr(1), field, arrHdr(n)), bytes.Repeat(elem, n)...)
	}
	for _, c := range []struct {
		name   string
		field  string
		elem   []byte
		target func() any
	}{
		{"accounts", "accounts", []byte{0x80}, func() any { return new(CreateAccountsRequest) }},
		{"transfers", "transfers", []byte{0x80}, func() any { return new(CreateTransfersRequest) }},
		{"lookup", "ids", []byte{0xa1, 'x'}, func() any { return new(LookupRequest) }},
		{"results", "results", mp(t, mapHdr(1), "code", "ok"), func() any { return new(ResultsReply) }},
	} {
		if err := Unmarshal(list(c.field, BatchEventsMax, c.elem), c.target()); err != nil {
			t.Errorf("%s: %d: %v", c.name, BatchEventsMax, err)
		}
		if err := Unmarshal(list(c.field, BatchEventsMax+1, c.elem), c.target()); !errors.Is(err, ErrTooManyEvents) {
			t.Errorf("%s: %d: err = %v, want ErrTooManyEvents", c.name, BatchEventsMax+1, err)
		}
	}
}

// An array header claiming billions of events is refused from the header
// alone: nothing is allocated for the claimed length.
func TestHugeBatchHeaderDoesNotAllocate(t *testing.T) {
	bodies := [][]byte{
		mp(t, mapHdr(1), "transfers", raw{0xdd, 0xff, 0xff, 0xff, 0xff}),
		mp(t, mapHdr(1), "accounts", raw{0xdd, 0xff, 0xff, 0xff, 0xff}),
		mp(t, mapHdr(1), "ids", raw{0xdd, 0x7f, 0xff, 0xff, 0xff}),
		mp(t, mapHdr(1), "transfers", raw{0xdc, 0x1f, 0xff}), // array16 of 8191
	}
	targets := []func() any{
		func() any { return new(CreateTransfersRequest) },
		func() any { return new(CreateAccountsRequest) },
		func() any { return new(LookupRequest) },
		func() any { return new(CreateTransfersRequest) },
	}
	for i, body := range bodies {
		v := targets[i]()
		if err := Unmarshal(body, v); !errors.Is(err, ErrTooManyEvents) {
			t.Fatalf("body % x: err = %v", body, err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		allocs := testing.AllocsPerRun(100, func() { _ = Unmarshal(body, v) })
		runtime.ReadMemStats(&after)
		perRun := (after.TotalAlloc - before.TotalAlloc) / 101
		if allocs > 16 || perRun > 4096 {
			t.Errorf("body % x: %.0f allocations, %d bytes per call", body, allocs, perRun)
		}
	}
}

// A length within the batch limit but longer than the body is malformed.
func TestLengthsPastTheEndAreMalformed(t *testing.T) {
	for _, body := range [][]byte{
		mp(t, mapHdr(1), "transfers", arrHdr(100)),
		mp(t, mapHdr(1), "transfers", arrHdr(2), mapHdr(0)),
		mp(t, mapHdr(1), "transfers", arrHdr(1), mapHdr(5), "id", "t"),
		mp(t, mapHdr(1), "transfers", arrHdr(1), mapHdr(1), "id", raw{0xda, 0x01, 0x00}, "abc"),
		mp(t, mapHdr(3), "transfers", arrHdr(0)),
	} {
		if err := Unmarshal(body, new(CreateTransfersRequest)); !errors.Is(err, ErrMalformed) {
			t.Errorf("body % x: err = %v, want ErrMalformed", body, err)
		}
	}
}

// Other huge lengths (a string, a map, an unknown array) fail at the end of
// the input without looping over the claimed length.
func TestHugeLengthsFailFast(t *testing.T) {
	for _, body := range [][]byte{
		mp(t, mapHdr(1), "transfers", arrHdr(1), mapHdr(1), "id", raw{0xdb, 0xff, 0xff, 0xff, 0xff}, "abc"),
		mp(t, mapHdr(1), "transfers", arrHdr(1), raw{0xdf, 0xff, 0xff, 0xff, 0xff}),
		mp(t, mapHdr(1), "transfers", arrHdr(1), mapHdr(1), "metadata", raw{0xdf, 0xff, 0xff, 0xff, 0xff}),
		mp(t, mapHdr(1), "x", raw{0xdd, 0xff, 0xff, 0xff, 0xff}, 1, 2),
		mp(t, mapHdr(1), "x", raw{0xdf, 0xff, 0xff, 0xff, 0xff}, 1, 2),
		mp(t, mapHdr(1), "x", raw{0xc6, 0xff, 0xff, 0xff, 0xff}, 1, 2), // bin32
		raw{0xdf, 0xff, 0xff, 0xff, 0xff},
	} {
		start := time.Now()
		// A container over BatchEventsMax is too_many_events, wherever it is.
		if err := Unmarshal(body, new(CreateTransfersRequest)); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooManyEvents) {
			t.Errorf("body % x: err = %v, want ErrMalformed or ErrTooManyEvents", body, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("body % x took %v", body, d)
		}
	}
}

func TestBodyMustBeAMap(t *testing.T) {
	for _, body := range [][]byte{
		{},                             // empty
		{0xc0},                         // nil
		{0x90},                         // []
		{0xa0},                         // ""
		{0x00},                         // 0
		{0xc3},                         // true
		{0xc4, 0x00},                   // bin
		{0xc1},                         // reserved code
		{0x91, 0x80},                   // [{}]
		{0xcb, 0, 0, 0, 0, 0, 0, 0, 0}, // 0.0
	} {
		for _, v := range []any{new(CreateAccountsRequest), new(CreateTransfersRequest), new(LookupRequest),
			new(AccountFilter), new(StatusRequest), new(ResultsReply), new(AccountsReply), new(TransfersReply),
			new(BalancesReply), new(Account), new(Transfer), new(Result),
			// Decoded by reflection, which takes nil for an empty struct:
			// Unmarshal refuses every body that is not a map first.
			new(StatusReply), new(NodeStatus), new(NodeInfo), new(struct{}), new(map[string]any)} {
			if err := Unmarshal(body, v); !errors.Is(err, ErrMalformed) {
				t.Errorf("%T from % x: err = %v, want ErrMalformed", v, body, err)
			}
		}
	}
}

func TestListFieldTypes(t *testing.T) {
	// A nil list is an empty batch.
	var r CreateTransfersRequest
	if err := Unmarshal(mp(t, mapHdr(1), "transfers", nil), &r); err != nil || len(r.Transfers) != 0 {
		t.Errorf("nil list: %#v, %v", r, err)
	}
	// An empty body map is an empty batch too.
	if err := Unmarshal(mp(t, mapHdr(0)), &r); err != nil || len(r.Transfers) != 0 {
		t.Errorf("{}: %#v, %v", r, err)
	}
	for _, c := range []struct {
		name string
		v    any
	}{
		{"string", "t1"},
		{"map", map[string]any{"id": "t1"}},
		{"int", 1},
		{"bin", []byte{0x90}},
		{"element nil", []any{nil}},
		{"element int", []any{map[string]any{}, 1}},
		{"element string", []any{"t1"}},
		{"element array", []any{[]any{}}},
	} {
		if err := Unmarshal(mp(t, mapHdr(1), "transfers", c.v), &r); !errors.Is(err, ErrMalformed) {
			t.Errorf("transfers = %s: err = %v, want ErrMalformed", c.name, err)
		}
		var ra CreateAccountsRequest
		if err := Unmarshal(mp(t, mapHdr(1), "accounts", c.v), &ra); !errors.Is(err, ErrMalformed) {
			t.Errorf("accounts = %s: err = %v, want ErrMalformed", c.name, err)
		}
	}
}

func TestResultStrictness(t *testing.T) {
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"negative index", mp(t, mapHdr(1), "index", -1)},
		{"index 1<<32", mp(t, mapHdr(1), "index", uint64(1)<<32)},
		{"negative timestamp", mp(t, mapHdr(1), "timestamp", encFn(func(e *msgpack.Encoder) error { return e.EncodeInt64(-1) }))},
		{"code as int", mp(t, mapHdr(1), "code", 0)},
		{"code nil", mp(t, mapHdr(1), "code", nil)},
		{"code unknown", mp(t, mapHdr(1), "code", "bogus")},
	} {
		if err := Unmarshal(c.body, new(Result)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", c.name, err)
		}
	}
}

// Decoding a valid body cut at any byte fails, and never panics.
func TestTruncatedBodiesFail(t *testing.T) {
	full := []struct {
		body   []byte
		target func() any
	}{
		{mustMarshal(t, &CreateTransfersRequest{Transfers: sampleTransfers()}), func() any { return new(CreateTransfersRequest) }},
		{mustMarshal(t, &CreateAccountsRequest{Accounts: sampleAccounts()}), func() any { return new(CreateAccountsRequest) }},
		{mustMarshal(t, &LookupRequest{IDs: []string{"a", "bb", strings.Repeat("c", 40)}}), func() any { return new(LookupRequest) }},
		{mustMarshal(t, &ResultsReply{Results: []Result{{Index: 1, Code: CodeExceedsCredits, Timestamp: 1 << 40}}}), func() any { return new(ResultsReply) }},
	}
	for _, f := range full {
		if err := Unmarshal(f.body, f.target()); err != nil {
			t.Fatalf("the full body fails: %v", err)
		}
		for n := range len(f.body) {
			v := f.target()
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("%T cut at %d of %d: panic %v", v, n, len(f.body), p)
					}
				}()
				if err := Unmarshal(f.body[:n], v); !errors.Is(err, ErrMalformed) {
					t.Errorf("%T cut at %d of %d: err = %v, want ErrMalformed", v, n, len(f.body), err)
				}
			}()
		}
	}
}

// A body is exactly one msgpack map (docs/protocol.md): bytes after it, even a
// second valid body, make it malformed, for every body type.
func TestUnmarshalRefusesTrailingBytes(t *testing.T) {
	bodies := []struct {
		body   []byte
		target func() any
	}{
		{mustMarshal(t, &CreateTransfersRequest{Transfers: sampleTransfers()}), func() any { return new(CreateTransfersRequest) }},
		{mustMarshal(t, &CreateAccountsRequest{Accounts: sampleAccounts()}), func() any { return new(CreateAccountsRequest) }},
		{mustMarshal(t, &LookupRequest{IDs: []string{"a"}}), func() any { return new(LookupRequest) }},
		{mustMarshal(t, &AccountFilter{AccountID: "a", Limit: 1}), func() any { return new(AccountFilter) }},
		{mustMarshal(t, &StatusRequest{}), func() any { return new(StatusRequest) }},
		{mustMarshal(t, &ResultsReply{Results: []Result{{Index: 1}}}), func() any { return new(ResultsReply) }},
		{mustMarshal(t, &StatusReply{Shards: []ShardStatus{{ID: 1}}}), func() any { return new(StatusReply) }},
		{mustMarshal(t, &NodeInfo{ID: "n"}), func() any { return new(NodeInfo) }},
	}
	for _, b := range bodies {
		if err := Unmarshal(b.body, b.target()); err != nil {
			t.Fatalf("%T without a tail: %v", b.target(), err)
		}
		for _, tail := range [][]byte{{0x00}, {0xc0}, {0xc1}, {0xc1, 0xff, 0x00}, {0x80}, b.body, []byte("garbage")} {
			v := b.target()
			if err := Unmarshal(append(bytes.Clone(b.body), tail...), v); !errors.Is(err, ErrMalformed) {
				t.Errorf("%T with tail % x: err = %v, want ErrMalformed", v, tail, err)
			}
		}
	}
	if err := CheckBounds([]byte{0x80, 0x80}, BatchEventsMax); err == nil || !strings.Contains(err.Error(), "1 bytes after") {
		t.Errorf("CheckBounds of two maps: %v", err)
	}
}

// Errors keep their sentinel through Unmarshal, and the message says where.
func TestErrorsWrapSentinels(t *testing.T) {
	e := Unmarshal(mp(t, mapHdr(1), "transfers", arrHdr(1), mapHdr(1), "amount", -3), new(CreateTransfersRequest))
	if !errors.Is(e, ErrMalformed) || errors.Is(e, ErrTooManyEvents) {
		t.Fatalf("err = %v", e)
	}
	if !strings.Contains(e.Error(), "amount") || !strings.HasPrefix(e.Error(), ErrMalformedCode) {
		t.Errorf("message %q", e.Error())
	}
	e = Unmarshal(transfersBody(t, BatchEventsMax+1), new(CreateTransfersRequest))
	if !errors.Is(e, ErrTooManyEvents) || !strings.HasPrefix(e.Error(), ErrTooManyEventsCode) {
		t.Errorf("err = %v", e)
	}
}
