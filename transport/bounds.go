package transport

import (
	"encoding/binary"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// CheckBounds walks the msgpack value in data without decoding it and fails
// if data is not exactly one value (bytes after a body's map make it
// malformed: docs/protocol.md), if any array or map declares more than
// countMax elements (pairs, for a map) or more than the bytes left could
// hold, or if a string, binary or extension runs past the end. msgpack/v5 preallocates
// a slice of whatever length a header declares (v5.4.1 bypasses its own
// limit for slices), so an unchecked 5-byte message could ask for
// gigabytes. Every reflection-based decode of network bytes goes through
// Unmarshal, which calls this first.
// A container over countMax is ErrTooManyEvents (an over-long batch).
//
// Containers may nest at most nestingMax deep: msgpack/v5 decodes and skips
// nested values recursively, and a few MiB of 0x91 bytes would exhaust the
// goroutine's stack, a fatal error that no recover catches (and, for a
// proposed command, one every replica would hit again on replay).
func CheckBounds(data []byte, countMax int) error {
	var open containers
	pos := 0
	for {
		if pos >= len(data) {
			return fmt.Errorf("msgpack truncated at byte %d", pos)
		}
		c := data[pos]
		pos++
		skip, count, isMap, next, err := valueHeader(data, c, pos)
		if err != nil {
			return err
		}
		pos = next
		if count > countMax {
			return fmt.Errorf("%w: a msgpack container of %d elements at byte %d, at most %d", ErrTooManyEvents, count, pos, countMax)
		}
		items := count
		if isMap {
			items = 2 * count
		}
		if skip > len(data)-pos || items > len(data)-pos {
			return fmt.Errorf("msgpack value at byte %d declares more than the %d bytes left", pos, len(data)-pos)
		}
		pos += skip
		done, err := open.value(items, pos)
		if err != nil {
			return err
		}
		if done {
			if pos != len(data) {
				return fmt.Errorf("%d bytes after the msgpack value, which ends at byte %d", len(data)-pos, pos)
			}
			return nil
		}
	}
}

// nestingMax bounds how deep CheckBounds lets containers nest. The wire
// types nest four deep ({transfers: [{metadata: {}}]}); internal messages
// a few more.
const nestingMax = 256

// valueHeader decodes a value's header: the payload bytes to skip, or the
// number of elements (pairs for a map) that follow.
func valueHeader(data []byte, c byte, pos int) (skip, count int, isMap bool, next int, err error) {
	length := func(width int) int {
		if err != nil {
			return 0
		}
		if len(data)-pos < width {
			err = fmt.Errorf("msgpack truncated at byte %d", pos)
			return 0
		}
		var v uint64
		switch width {
		case 1:
			v = uint64(data[pos])
		case 2:
			v = uint64(binary.BigEndian.Uint16(data[pos:]))
		case 4:
			v = uint64(binary.BigEndian.Uint32(data[pos:]))
		}
		pos += width
		return int(v)
	}
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3: // fixint, nil, bool
	case c <= 0x8f:
		count, isMap = int(c&0x0f), true
	case c <= 0x9f:
		count = int(c & 0x0f)
	case c <= 0xbf:
		skip = int(c & 0x1f)
	case c == 0xcc, c == 0xd0:
		skip = 1
	case c == 0xcd, c == 0xd1:
		skip = 2
	case c == 0xca, c == 0xce, c == 0xd2:
		skip = 4
	case c == 0xcb, c == 0xcf, c == 0xd3:
		skip = 8
	case c >= 0xd4 && c <= 0xd8: // fixext: a type byte and 1, 2, 4, 8 or 16 bytes
		skip = 1 + 1<<(c-0xd4)
	case c == 0xc4, c == 0xd9: // bin8, str8
		skip = length(1)
	case c == 0xc5, c == 0xda:
		skip = length(2)
	case c == 0xc6, c == 0xdb:
		skip = length(4)
	case c == 0xc7: // ext8, ext16, ext32: a length, then a type byte
		skip = length(1) + 1
	case c == 0xc8:
		skip = length(2) + 1
	case c == 0xc9:
		skip = length(4) + 1
	case c == 0xdc:
		count = length(2)
	case c == 0xdd:
		count = length(4)
	case c == 0xde:
		count, isMap = length(2), true
	case c == 0xdf:
		count, isMap = length(4), true
	default: // 0xc1 is never used
		err = fmt.Errorf("msgpack code 0x%02x is invalid", c)
	}
	return skip, count, isMap, pos, err
}

// DecodeRaw reads the next msgpack value from dec and returns its bytes,
// checked as CheckBounds checks a body (containers of at most countMax
// elements, nested at most nestingMax deep) while it reads: without
// recursion, and allocating no more than the bytes the stream really holds,
// whatever lengths its headers declare. A stream too large to hold in
// memory (a shard snapshot) is so read one bounded value at a time, each
// then decoded from memory.
func DecodeRaw(dec *msgpack.Decoder, countMax int) ([]byte, error) {
	var out []byte
	read := func(n int) error { // appends the stream's next n bytes to out
		for n > 0 {
			k := min(n, rawChunkBytes)
			start := len(out)
			out = append(out, make([]byte, k)...)
			if err := dec.ReadFull(out[start:]); err != nil {
				return fmt.Errorf("msgpack truncated at byte %d: %w", start, err)
			}
			n -= k
		}
		return nil
	}
	var open containers
	for {
		start := len(out)
		if err := read(1); err != nil {
			return nil, err
		}
		c := out[start]
		if err := read(lengthWidth(c)); err != nil {
			return nil, err
		}
		skip, count, isMap, _, err := valueHeader(out, c, start+1)
		if err != nil {
			return nil, err
		}
		if count > countMax {
			return nil, fmt.Errorf("%w: a msgpack container of %d elements at byte %d, at most %d", ErrTooManyEvents, count, start, countMax)
		}
		if err := read(skip); err != nil {
			return nil, err
		}
		items := count
		if isMap {
			items = 2 * count
		}
		done, err := open.value(items, start)
		if err != nil {
			return nil, err
		}
		if done {
			return out, nil
		}
	}
}

// containers are the msgpack containers a scan is inside, each with the
// elements still to come in it.
type containers struct {
	left  [nestingMax]int
	depth int
}

// value records a value whose header was read at byte pos: a container of
// items elements (items > 0) is entered; any other value is complete, and
// may complete its containers in turn. It reports whether that completed
// the outermost value.
func (c *containers) value(items, pos int) (done bool, err error) {
	if items > 0 {
		if c.depth == nestingMax {
			return false, fmt.Errorf("msgpack containers nested more than %d deep at byte %d", nestingMax, pos)
		}
		c.left[c.depth] = items
		c.depth++
		return false, nil
	}
	for c.depth > 0 {
		c.left[c.depth-1]--
		if c.left[c.depth-1] > 0 {
			return false, nil
		}
		c.depth--
	}
	return true, nil
}

// rawChunkBytes is how much DecodeRaw allocates ahead of what it has read.
const rawChunkBytes = 64 << 10

// lengthWidth is the size of the length that follows code c in a str, bin,
// ext, array or map header (0 for every other code).
func lengthWidth(c byte) int {
	switch c {
	case 0xc4, 0xd9, 0xc7: // bin8, str8, ext8
		return 1
	case 0xc5, 0xda, 0xc8, 0xdc, 0xde: // bin16, str16, ext16, array16, map16
		return 2
	case 0xc6, 0xdb, 0xc9, 0xdd, 0xdf: // bin32, str32, ext32, array32, map32
		return 4
	}
	return 0
}
