package transport

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestTransferArrayRoundTrip(t *testing.T) {
	ts := sampleTransfers()
	ts = append(ts, Transfer{ID: "m", Metadata: map[string]string{}}, Transfer{ID: "s", State: StateVoided, Timestamp: 1 << 62})
	for _, want := range ts {
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		if err := want.EncodeArray(enc); err != nil {
			t.Fatal(err)
		}
		var got Transfer
		if err := got.DecodeAny(msgpack.NewDecoder(&buf)); err != nil {
			t.Fatalf("%s: %v", want.ID, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip\n got %+v\nwant %+v", got, want)
		}
	}
}

// TestTransferDecodeAnyReadsMaps: the form of clients and of the log
// before positional transfers.
func TestTransferDecodeAnyReadsMaps(t *testing.T) {
	for _, want := range sampleTransfers() {
		b := mustMarshal(t, &want)
		var got Transfer
		if err := got.DecodeAny(msgpack.NewDecoder(bytes.NewReader(b))); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("map decode\n got %+v\nwant %+v", got, want)
		}
	}
}

// TestTransferArrayStrict: a positional transfer is checked as a map's
// fields are: too few fields, a negative or too wide integer, a wrong type.
func TestTransferArrayStrict(t *testing.T) {
	fields := func(ledger any) []any {
		return []any{"id", "a", "b", 1, ledger, 1, 0, "", 0, nil, 0, ""}
	}
	for name, v := range map[string][]any{
		"short":          fields(1)[:11],
		"negative":       fields(-1),
		"ledger too big": fields(uint64(1) << 33),
		"string ledger":  fields("1"),
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var got Transfer
		if err := got.DecodeAny(msgpack.NewDecoder(bytes.NewReader(b))); err == nil {
			t.Errorf("%s: decoded %+v", name, got)
		}
	}
	// Fields appended later are skipped.
	b, _ := msgpack.Marshal(append(fields(7), "later", map[string]int{"x": 1}))
	var got Transfer
	if err := got.DecodeAny(msgpack.NewDecoder(bytes.NewReader(b))); err != nil || got.Ledger != 7 {
		t.Fatalf("with extra fields: %+v, %v", got, err)
	}
}

// withWireV2 makes the test write the compact forms.
func withWireV2(t testing.TB) {
	SetWireV2(true)
	t.Cleanup(func() { SetWireV2(false) })
}

// Until the cluster writes the compact forms, results are the maps a
// router of the release before decodes, byte for byte.
func TestCompactResultsBeforeWireV2AreMaps(t *testing.T) {
	rs := []Result{{Index: 0, Code: CodeOK, Timestamp: 5}, {Index: 1, Code: CodeExists, Timestamp: 9}}
	type oldReply struct {
		Results []Result `msgpack:"r,omitempty"`
	}
	if got, want := mustMarshal(t, &compactReply{Results: rs}), mustMarshal(t, &oldReply{Results: rs}); !bytes.Equal(got, want) {
		t.Fatalf("results before wire v2:\n% x\nwant\n% x", got, want)
	}
}

func TestCompactResultsRoundTrip(t *testing.T) {
	withWireV2(t)
	want := compactReply{Results: CompactResults{{Index: 0, Code: CodeOK, Timestamp: 5}, {Index: 1, Code: CodeLinkedEventChainOpen}, {Index: 2, Code: CodeExists, Timestamp: 1 << 63}}}
	b := mustMarshal(t, &want)
	var got compactReply
	if err := Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip\n got %+v\nwant %+v", got, want)
	}
	// An older leader's results: maps, as a client's.
	type oldReply struct {
		Results []Result `msgpack:"r,omitempty"`
	}
	old := mustMarshal(t, &oldReply{Results: want.Results})
	if len(b) >= len(old) {
		t.Fatalf("compact results %d bytes, maps %d", len(b), len(old))
	}
	got = compactReply{}
	if err := Unmarshal(old, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("old form\n got %+v\nwant %+v", got, want)
	}
}

// TestCompactResultsWholeBatch: a shard's part may hold a whole batch;
// its results pass Unmarshal's bounds.
func TestCompactResultsWholeBatch(t *testing.T) {
	withWireV2(t)
	want := compactReply{Results: make(CompactResults, BatchEventsMax)}
	for i := range want.Results {
		want.Results[i] = Result{Index: uint32(i), Code: CodeExceedsCredits, Timestamp: uint64(i)}
	}
	var got compactReply
	if err := Unmarshal(mustMarshal(t, &want), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("a whole batch of results does not round-trip")
	}
}

// BenchmarkResultsDecode: the router's decode of a shard's 1000 results,
// as pairs and as the maps before them.
func BenchmarkResultsDecode(b *testing.B) {
	withWireV2(b)
	type oldReply struct {
		Results []Result `msgpack:"r,omitempty"`
	}
	rs := make([]Result, benchTransfers)
	for i := range rs {
		rs[i] = Result{Index: uint32(i), Timestamp: uint64(1<<60 + i)}
	}
	for _, f := range []struct {
		name string
		body []byte
	}{{"maps", mustMarshal(b, &oldReply{Results: rs})}, {"pairs", mustMarshal(b, &compactReply{Results: rs})}} {
		b.Run(f.name, func(b *testing.B) {
			b.SetBytes(int64(len(f.body)))
			b.ReportAllocs()
			for b.Loop() {
				var r compactReply
				if err := Unmarshal(f.body, &r); err != nil {
					b.Fatal(err)
				}
			}
			reportPerTransfer(b)
		})
	}
}
