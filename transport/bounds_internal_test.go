package transport

import (
	"errors"
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
