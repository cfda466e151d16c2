// Package fuzzcheck holds the check every fuzz target of a msgpack body
// makes: a body that decodes is exactly one body, and its value encodes to
// bytes that decode and encode again to the same bytes.
package fuzzcheck

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// Stable decodes data as a *T with transport.Unmarshal and returns it, or
// nil if it does not decode. If it does, data with a byte after it must be
// malformed, and the value's encoding must be stable.
func Stable[T any](t testing.TB, data []byte) *T {
	t.Helper()
	var v T
	if transport.Unmarshal(data, &v) != nil {
		return nil
	}
	OneBody[T](t, data)
	b1, err := transport.Marshal(&v)
	if err != nil {
		t.Fatalf("encoding a decoded %T: %v", v, err)
	}
	var back T
	if err := transport.Unmarshal(b1, &back); err != nil {
		t.Fatalf("re-decoding %T: %v", v, err)
	}
	if b2, err := transport.Marshal(&back); err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("%T: encoding not stable (%v):\n% x\n% x", v, err, b1, b2)
	}
	return &v
}

// OneBody fails t unless data, which decoded as a T, is malformed with a
// byte after it.
func OneBody[T any](t testing.TB, data []byte) {
	t.Helper()
	for _, tail := range []byte{0x80, 0xc0, 0xc1} {
		if err := transport.Unmarshal(append(bytes.Clone(data), tail), new(T)); !errors.Is(err, transport.ErrMalformed) {
			t.Fatalf("%T with the trailing byte %02x: %v", *new(T), tail, err)
		}
	}
}
