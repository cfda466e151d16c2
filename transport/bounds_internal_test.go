package transport

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// A 5-byte array32 header claiming 4 billion elements must be refused before
// msgpack/v5 preallocates them (it bypasses its own limit for slices).
func TestUnmarshalRefusesHugeDeclaredLengthsWithoutAllocating(t *testing.T) {
	type cmd struct {
		Transfers []Transfer `msgpack:"t"`
	}
	huge := []byte{0x81, 0xa1, 't', 0xdd, 0xff, 0xff, 0xff, 0xff}
	allocs := testing.AllocsPerRun(10, func() {
		var c cmd
		if err := Unmarshal(huge, &c); !errors.Is(err, ErrTooManyEvents) {
			t.Fatalf("got %v, want ErrTooManyEvents", err)
		}
	})
	if allocs > 10 {
		t.Fatalf("%v allocations to refuse a 8-byte message", allocs)
	}
	// Within the count limit but longer than the bytes left: malformed.
	short := []byte{0x81, 0xa1, 't', 0xdc, 0x10, 0x00}
	if err := Unmarshal(short, &cmd{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("array longer than its message: %v", err)
	}
	for _, b := range [][]byte{{0xdb, 0xff, 0xff, 0xff, 0xff}, {0xc6, 0, 0, 0, 9, 1}, {0xc9, 0, 0, 0, 5, 1}, {0xc1}, {}} {
		if err := CheckBounds(b, BatchEventsMax); err == nil {
			t.Fatalf("% x passed", b)
		}
	}
}

// Every value msgpack/v5 itself encodes passes CheckBounds.
func TestCheckBoundsAcceptsWhatMsgpackEncodes(t *testing.T) {
	values := []any{nil, true, -1, -200, 1 << 40, uint64(1) << 63, 1.5, float32(2.5), "x", string(make([]byte, 300)),
		make([]byte, 70000), []int{1, 2, 3}, make([]string, 20), map[string]any{"a": []any{1, "b", map[string]int{"c": 3}}},
		msgpack.RawMessage{0xd4, 1, 2}, &Transfer{ID: "t", Metadata: map[string]string{"k": "v"}}}
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckBounds(b, BatchEventsMax); err != nil {
			t.Fatalf("%T %v: %v", v, v, err)
		}
	}
	if err := CheckBounds([]byte{0xdc, 0x20, 0x00}, 100); !errors.Is(err, ErrTooManyEvents) {
		t.Fatalf("array16 over the count limit: %v", err)
	}
}

// DecodeRaw reads a stream value by value, each exactly its bytes.
func TestDecodeRawReadsOneValueAtATime(t *testing.T) {
	values := []any{nil, 7, "x", string(make([]byte, 100_000)), []int{1, 2, 3}, map[string]any{"a": []any{1, "b", map[string]int{"c": 3}}},
		&Transfer{ID: "t", Metadata: map[string]string{"k": "v"}}, []any{}, map[string]any{}}
	var stream []byte
	var want [][]byte
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, b...)
		want = append(want, b)
	}
	dec := msgpack.NewDecoder(bytes.NewReader(stream))
	for i, w := range want {
		got, err := DecodeRaw(dec, BatchEventsMax)
		if err != nil || !bytes.Equal(got, w) {
			t.Fatalf("value %d: % x, %v; want % x", i, got, err, w)
		}
	}
	if _, err := DecodeRaw(dec, BatchEventsMax); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last value: %v", err)
	}
}

// Declared lengths cost nothing until the bytes are there; counts and
// nesting are bounded as CheckBounds bounds them, without recursion.
func TestDecodeRawBoundsHostileHeaders(t *testing.T) {
	for _, c := range []struct {
		name     string
		data     []byte
		countMax int
		want     error // nil: any error
	}{
		{"array32 of 4 billion", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, BatchEventsMax, ErrTooManyEvents},
		{"map32 of 4 billion", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, BatchEventsMax, ErrTooManyEvents},
		{"array of 3, at most 2", []byte{0x93, 1, 2, 3}, 2, ErrTooManyEvents},
		{"map of 2 pairs, at most 1", []byte{0x82, 1, 2, 3, 4}, 1, ErrTooManyEvents},
		{"str32 of 4 GiB", append([]byte{0xdb, 0xff, 0xff, 0xff, 0xff}, make([]byte, 1000)...), BatchEventsMax, io.ErrUnexpectedEOF},
		{"bin32 of 4 GiB", []byte{0xc6, 0xff, 0xff, 0xff, 0xff, 1}, BatchEventsMax, io.ErrUnexpectedEOF},
		{"ext32 of 4 GiB", []byte{0xc9, 0xff, 0xff, 0xff, 0xff, 1, 2}, BatchEventsMax, io.ErrUnexpectedEOF},
		{"array16 past the end", []byte{0xdc, 0x00, 0x10, 1, 2}, BatchEventsMax, io.EOF},
		{"a header cut short", []byte{0xda, 0x01}, BatchEventsMax, io.ErrUnexpectedEOF},
		{"fixext16 cut short", []byte{0xd8, 1, 2}, BatchEventsMax, io.ErrUnexpectedEOF},
		{"an empty stream", nil, BatchEventsMax, io.EOF},
		{"a million levels deep", bytes.Repeat([]byte{0x91}, 1<<20), BatchEventsMax, nil},
		{"the never-used code", []byte{0xc1}, BatchEventsMax, nil},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		got, err := DecodeRaw(msgpack.NewDecoder(bytes.NewReader(c.data)), c.countMax)
		runtime.ReadMemStats(&after)
		if err == nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: % x, %v; want %v", c.name, got, err, c.want)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
			t.Errorf("%s: allocated %d bytes", c.name, n)
		}
	}
}
