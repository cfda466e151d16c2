package shard

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// PeekKind reads a command's Kind without decoding the rest, so a leader
// can route a command it proposes as is (the FSM decodes it once).
func PeekKind(data []byte) (Kind, error) {
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return 0, err
	}
	for range n {
		key, err := dec.DecodeString()
		if err != nil {
			return 0, err
		}
		if key == "k" {
			k, err := dec.DecodeUint8()
			if err != nil {
				return 0, fmt.Errorf("command kind: %w", err)
			}
			return Kind(k), nil
		}
		if err := dec.Skip(); err != nil {
			return 0, err
		}
	}
	return 0, errors.New("command without a kind")
}

// commandFields counts the fields EncodeMsgpack writes: the struct's tags
// with omitempty (a nil pointer, an empty slice left out).
func (c *Command) commandFields() int {
	n := 1 // k
	for _, set := range []bool{len(c.Accounts) > 0, len(c.Transfers) > 0, len(c.CreditShards) > 0,
		len(c.DebitShards) > 0, len(c.Credits) > 0, len(c.Answers) > 0, c.Forget != nil, c.Owner != nil, len(c.Request) > 0, c.Slots != nil} {
		if set {
			n++
		}
	}
	return n
}

// EncodeMsgpack writes the command as its struct tags say, but for its
// transfers, which go as positional arrays (transport.Transfer.EncodeArray):
// the hot path of every create, where field names were half the bytes of the
// log and most of the cost of decoding it.
func (c *Command) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeMapLen(c.commandFields()); err != nil {
		return err
	}
	if err := encodeKeyed(enc, "k", func() error { return enc.EncodeUint(uint64(c.Kind)) }); err != nil {
		return err
	}
	fields := []struct {
		key string
		set bool
		put func() error
	}{
		{"a", len(c.Accounts) > 0, func() error { return enc.Encode(c.Accounts) }},
		{"t", len(c.Transfers) > 0, func() error { return encodeTransfers(enc, c.Transfers) }},
		{"cs", len(c.CreditShards) > 0, func() error { return encodeShards(enc, c.CreditShards) }},
		{"ds", len(c.DebitShards) > 0, func() error { return encodeShards(enc, c.DebitShards) }},
		{"cr", len(c.Credits) > 0, func() error { return enc.Encode(c.Credits) }},
		{"an", len(c.Answers) > 0, func() error { return enc.Encode(c.Answers) }},
		{"f", c.Forget != nil, func() error { return enc.Encode(c.Forget) }},
		{"o", c.Owner != nil, func() error { return enc.Encode(c.Owner) }},
		{"rq", len(c.Request) > 0, func() error { return enc.EncodeBytes(c.Request) }},
		{"sl", c.Slots != nil, func() error { return enc.Encode(c.Slots) }},
	}
	for _, f := range fields {
		if !f.set {
			continue
		}
		if err := encodeKeyed(enc, f.key, f.put); err != nil {
			return err
		}
	}
	return nil
}

func encodeKeyed(enc *msgpack.Encoder, key string, put func() error) error {
	if err := enc.EncodeString(key); err != nil {
		return err
	}
	if err := put(); err != nil {
		return fmt.Errorf("command field %s: %w", key, err)
	}
	return nil
}

func encodeTransfers(enc *msgpack.Encoder, ts []transport.Transfer) error {
	if !transport.WireV2() {
		return enc.Encode(ts) // maps: what a node of the release before reads
	}
	if err := enc.EncodeArrayLen(len(ts)); err != nil {
		return err
	}
	for i := range ts {
		if err := ts[i].EncodeArray(enc); err != nil {
			return err
		}
	}
	return nil
}

func encodeShards(enc *msgpack.Encoder, ids []uint32) error {
	if err := enc.EncodeArrayLen(len(ids)); err != nil {
		return err
	}
	for _, id := range ids {
		if err := enc.EncodeUint(uint64(id)); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack reads a command in either form of its transfers:
// positional (EncodeMsgpack) or maps (every command logged before), so an
// old log replays as it did. Its bounds were checked first
// (transport.Unmarshal); unknown fields are skipped, as msgpack's struct
// decoding does.
func (c *Command) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := dec.DecodeMapLen()
	if err != nil {
		return err
	}
	if n < 0 {
		return errors.New("command is nil")
	}
	*c = Command{}
	for range n {
		key, err := dec.DecodeString()
		if err != nil {
			return fmt.Errorf("command key: %w", err)
		}
		if err := c.decodeField(dec, key); err != nil {
			return fmt.Errorf("command field %s: %w", key, err)
		}
	}
	return nil
}

func (c *Command) decodeField(dec *msgpack.Decoder, key string) error {
	switch key {
	case "k":
		k, err := dec.DecodeUint8()
		c.Kind = Kind(k)
		return err
	case "a":
		return dec.Decode(&c.Accounts)
	case "t":
		return decodeTransfers(dec, &c.Transfers)
	case "cs":
		return decodeShards(dec, &c.CreditShards)
	case "ds":
		return decodeShards(dec, &c.DebitShards)
	case "cr":
		return dec.Decode(&c.Credits)
	case "an":
		return dec.Decode(&c.Answers)
	case "f":
		return dec.Decode(&c.Forget)
	case "o":
		return dec.Decode(&c.Owner)
	case "rq":
		return dec.Decode(&c.Request)
	case "sl":
		return dec.Decode(&c.Slots)
	}
	return dec.Skip()
}

func decodeTransfers(dec *msgpack.Decoder, out *[]transport.Transfer) error {
	n, err := dec.DecodeArrayLen()
	if err != nil || n < 0 { // n < 0: nil
		return err
	}
	ts := make([]transport.Transfer, n)
	for i := range ts {
		if err := ts[i].DecodeAny(dec); err != nil {
			return err
		}
	}
	*out = ts
	return nil
}

func decodeShards(dec *msgpack.Decoder, out *[]uint32) error {
	n, err := dec.DecodeArrayLen()
	if err != nil || n < 0 {
		return err
	}
	ids := make([]uint32, n)
	for i := range ids {
		if ids[i], err = dec.DecodeUint32(); err != nil {
			return err
		}
	}
	*out = ids
	return nil
}
