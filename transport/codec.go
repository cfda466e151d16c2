package transport

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// ErrMalformed wraps every decoding failure of a client body: bad msgpack, a
// wrong type, or an integer that is negative or out of its field's range.
var ErrMalformed = errors.New(ErrMalformedCode)

// ErrTooManyEvents is returned when a batch is longer than BatchEventsMax.
var ErrTooManyEvents = errors.New(ErrTooManyEventsCode)

// Marshal encodes v as msgpack. The wire types encode themselves without
// reflection; other values use msgpack's struct tags. Buffers are pooled, so
// a batch is encoded without growing a buffer from nothing each time; the
// result is one exact-size copy.
func Marshal(v any) ([]byte, error) {
	buf := bufferPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer putBuffer(buf)
	enc := msgpack.GetEncoder()
	defer msgpack.PutEncoder(enc)
	enc.Reset(buf)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}

var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// pooledBufferBytesMax keeps one huge message from pinning its buffer.
const pooledBufferBytesMax = 2 * MessageBytesMax

func putBuffer(b *bytes.Buffer) {
	if b.Cap() <= pooledBufferBytesMax {
		bufferPool.Put(b)
	}
}

// Unmarshal decodes data into v after CheckBounds: data must be exactly one
// msgpack map (every body and every internal message is one; bytes after
// it, or a body of another type, are malformed), and no container may hold
// more than BatchEventsMax elements. Errors wrap ErrMalformed or
// ErrTooManyEvents. Every decode of bytes from the network goes through here.
func Unmarshal(data []byte, v any) error {
	if err := CheckBounds(data, BatchEventsMax); err != nil {
		if errors.Is(err, ErrTooManyEvents) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c := data[0]; !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		return fmt.Errorf("%w: the body is not a msgpack map (code 0x%02x)", ErrMalformed, c)
	}
	dec := msgpack.GetDecoder()
	defer msgpack.PutDecoder(dec)
	dec.Reset(bytes.NewReader(data))
	var err error
	if cd, ok := v.(msgpack.CustomDecoder); ok {
		// Called directly: through Decode, msgpack turns a nil body into
		// the zero value, but a body that is not a map is malformed.
		err = cd.DecodeMsgpack(dec)
	} else {
		err = dec.Decode(v)
	}
	if err != nil {
		if errors.Is(err, ErrTooManyEvents) || errors.Is(err, ErrMalformed) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

func malformed(field string, err error) error {
	if errors.Is(err, ErrTooManyEvents) || errors.Is(err, ErrMalformed) {
		return err
	}
	return fmt.Errorf("%w: field %s: %v", ErrMalformed, field, err)
}

// decodeUint reads an integer of any msgpack width and checks 0 <= v <= max.
// Nil, floats and every non-integer are errors.
func decodeUint(dec *msgpack.Decoder, max uint64) (uint64, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return 0, err
	}
	var v uint64
	switch {
	case msgpcode.IsFixedNum(c) || c == msgpcode.Int8 || c == msgpcode.Int16 || c == msgpcode.Int32 || c == msgpcode.Int64:
		n, err := dec.DecodeInt64()
		if err != nil {
			return 0, err
		}
		if n < 0 {
			return 0, fmt.Errorf("negative integer %d", n)
		}
		v = uint64(n)
	case c == msgpcode.Uint8 || c == msgpcode.Uint16 || c == msgpcode.Uint32 || c == msgpcode.Uint64:
		if v, err = dec.DecodeUint64(); err != nil {
			return 0, err
		}
	default:
		return 0, fmt.Errorf("want an integer, got msgpack code 0x%02x", c)
	}
	if v > max {
		return 0, fmt.Errorf("integer %d out of range (max %d)", v, max)
	}
	return v, nil
}

func decodeU64(dec *msgpack.Decoder) (uint64, error) { return decodeUint(dec, math.MaxUint64) }

func decodeU32(dec *msgpack.Decoder) (uint32, error) {
	v, err := decodeUint(dec, math.MaxUint32)
	return uint32(v), err
}

func decodeU16(dec *msgpack.Decoder) (uint16, error) {
	v, err := decodeUint(dec, math.MaxUint16)
	return uint16(v), err
}

// decodeStr reads a msgpack str (not bin, not nil).
func decodeStr(dec *msgpack.Decoder) (string, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return "", err
	}
	if !msgpcode.IsString(c) {
		return "", fmt.Errorf("want a string, got msgpack code 0x%02x", c)
	}
	return dec.DecodeString()
}

// decodeBool reads a msgpack bool (not an integer, not nil).
func decodeBool(dec *msgpack.Decoder) (bool, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return false, err
	}
	if c != msgpcode.True && c != msgpcode.False {
		return false, fmt.Errorf("want a bool, got msgpack code 0x%02x", c)
	}
	return dec.DecodeBool()
}

// decodeKey reads a map key into buf without allocating; keys longer than
// buf are returned truncated to nothing so they match no known field.
func decodeKey(dec *msgpack.Decoder, buf *[32]byte) ([]byte, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return nil, err
	}
	if !msgpcode.IsString(c) {
		return nil, fmt.Errorf("want a string map key, got msgpack code 0x%02x", c)
	}
	n, err := dec.DecodeBytesLen()
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, errors.New("nil map key")
	}
	if n > len(buf) {
		// Unknown (too long for any field name): read and discard.
		for n > 0 {
			k := min(n, len(buf))
			if err := dec.ReadFull(buf[:k]); err != nil {
				return nil, err
			}
			n -= k
		}
		return nil, nil
	}
	if err := dec.ReadFull(buf[:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// decodeMapLen reads a map header; nil is not a map.
func decodeMapLen(dec *msgpack.Decoder) (int, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return 0, err
	}
	if !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		return 0, fmt.Errorf("want a map, got msgpack code 0x%02x", c)
	}
	return dec.DecodeMapLen()
}

// decodeArrayLen reads an array header bounded by BatchEventsMax.
func decodeArrayLen(dec *msgpack.Decoder) (int, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return 0, err
	}
	if c == msgpcode.Nil {
		_ = dec.DecodeNil()
		return 0, nil
	}
	if !msgpcode.IsFixedArray(c) && c != msgpcode.Array16 && c != msgpcode.Array32 {
		return 0, fmt.Errorf("want an array, got msgpack code 0x%02x", c)
	}
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return 0, err
	}
	if n < 0 || n > BatchEventsMax { // n < 0: an array32 length past MaxInt on 32-bit platforms
		return 0, fmt.Errorf("%w: %d events, at most %d", ErrTooManyEvents, n, BatchEventsMax)
	}
	return n, nil
}

// skipValue skips one value of any type and nesting. Unlike Decoder.Skip it
// does not recurse: an unknown field nested millions of levels deep (a few
// MiB of 0x91 bytes fit in one request) would otherwise exhaust the
// goroutine's stack, a fatal error that no recover catches.
func skipValue(dec *msgpack.Decoder) error {
	for pending := uint64(1); pending > 0; pending-- {
		c, err := dec.PeekCode()
		if err != nil {
			return err
		}
		switch {
		case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
			n, err := dec.DecodeArrayLen()
			if err != nil {
				return err
			}
			if n < 0 {
				return fmt.Errorf("array of %d elements", n)
			}
			pending += uint64(n)
		case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
			n, err := dec.DecodeMapLen()
			if err != nil {
				return err
			}
			if n < 0 {
				return fmt.Errorf("map of %d pairs", n)
			}
			pending += 2 * uint64(n)
		default: // a scalar, string, bin or ext: Skip does not recurse
			if err := dec.Skip(); err != nil {
				return err
			}
		}
	}
	return nil
}

// decodeMetadata reads a map of strings. Its limits are checked by the
// shard (metadata_invalid); here only the message size bounds it.
func decodeMetadata(dec *msgpack.Decoder) (map[string]string, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return nil, err
	}
	if c == msgpcode.Nil {
		return nil, dec.DecodeNil()
	}
	n, err := decodeMapLen(dec)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, min(n, MetadataPairsMax+1))
	for range n {
		k, err := decodeStr(dec)
		if err != nil {
			return nil, err
		}
		v, err := decodeStr(dec)
		if err != nil {
			return nil, err
		}
		m[k] = v
	}
	return m, nil
}

func encodeMetadata(enc *msgpack.Encoder, m map[string]string) error {
	if err := enc.EncodeMapLen(len(m)); err != nil {
		return err
	}
	for _, k := range sortedKeys(m) {
		if err := enc.EncodeString(k); err != nil {
			return err
		}
		if err := enc.EncodeString(m[k]); err != nil {
			return err
		}
	}
	return nil
}
