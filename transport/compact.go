package transport

import (
	"fmt"
	"sync/atomic"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// The compact encodings of the cluster's internal hops (router → shard
// command, shard → router results, the Raft log). A client never sees them:
// its bodies and replies stay the maps of docs/protocol.md.

// transferFields is the length of a positional transfer. Fields are only
// ever appended: a decoder skips the ones it does not know.
const transferFields = 12

// EncodeArray writes t as a msgpack array of its fields in a fixed order
// (id, debit_account_id, credit_account_id, amount, ledger, code, flags,
// pending_id, timeout, metadata or nil, timestamp, state): no field names,
// so a command is about half the bytes and decodes without a key lookup.
func (t *Transfer) EncodeArray(enc *msgpack.Encoder) error {
	e := fieldEncoder{enc: enc}
	if e.err == nil {
		e.err = enc.EncodeArrayLen(transferFields)
	}
	e.bare(t.ID)
	e.bare(t.DebitAccountID)
	e.bare(t.CreditAccountID)
	e.bareUint(t.Amount)
	e.bareUint(uint64(t.Ledger))
	e.bareUint(uint64(t.Code))
	e.bareUint(uint64(t.Flags))
	e.bare(t.PendingID)
	e.bareUint(uint64(t.Timeout))
	if e.err == nil {
		if t.Metadata == nil {
			e.err = enc.EncodeNil()
		} else {
			e.err = encodeMetadata(enc, t.Metadata)
		}
	}
	e.bareUint(t.Timestamp)
	e.bare(t.State)
	return e.err
}

// bare writes a string without a key.
func (e *fieldEncoder) bare(v string) {
	if e.err == nil {
		e.err = e.enc.EncodeString(v)
	}
}

// bareUint writes an unsigned integer without a key.
func (e *fieldEncoder) bareUint(v uint64) {
	if e.err == nil {
		e.err = e.enc.EncodeUint(v)
	}
}

// DecodeAny reads a transfer in either encoding: the positional array of
// EncodeArray, or the map clients send (which commands logged before the
// array existed also hold), with the same strict types and ranges.
func (t *Transfer) DecodeAny(dec *msgpack.Decoder) error {
	c, err := dec.PeekCode()
	if err != nil {
		return malformed("transfer", err)
	}
	if !msgpcode.IsFixedArray(c) && c != msgpcode.Array16 && c != msgpcode.Array32 {
		return t.DecodeMsgpack(dec)
	}
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return malformed("transfer", err)
	}
	if n < transferFields {
		return malformed("transfer", fmt.Errorf("a positional transfer of %d fields, want %d", n, transferFields))
	}
	if err := t.decodeFields(dec); err != nil {
		return err
	}
	for range n - transferFields {
		if err := skipValue(dec); err != nil {
			return malformed("transfer", err)
		}
	}
	return nil
}

// decodeFields reads the fields of a positional transfer, in order.
func (t *Transfer) decodeFields(dec *msgpack.Decoder) error {
	var err error
	field := ""
	str := func(name string, v *string) {
		if err == nil {
			field = name
			*v, err = decodeStr(dec)
		}
	}
	str("id", &t.ID)
	str("debit_account_id", &t.DebitAccountID)
	str("credit_account_id", &t.CreditAccountID)
	if err == nil {
		field = "amount"
		t.Amount, err = decodeU64(dec)
	}
	if err == nil {
		field = "ledger"
		t.Ledger, err = decodeU32(dec)
	}
	if err == nil {
		field = "code"
		t.Code, err = decodeU16(dec)
	}
	if err == nil {
		field = "flags"
		t.Flags, err = decodeU32(dec)
	}
	str("pending_id", &t.PendingID)
	if err == nil {
		field = "timeout"
		t.Timeout, err = decodeU32(dec)
	}
	if err == nil {
		field = "metadata"
		t.Metadata, err = decodeMetadata(dec)
	}
	if err == nil {
		field = "timestamp"
		t.Timestamp, err = decodeU64(dec)
	}
	str("state", &t.State)
	if err != nil {
		return malformed("transfer."+field, err)
	}
	return nil
}

// CompactResults are a create command's results on the hop from a shard's
// leader to the router: an array of [code name, timestamp] pairs, the index
// being the position (the router sets each result's client index,
// plan.Part.Merge). No field names: a reply of 1000 results is about a
// third of the bytes. Codes go by name, so a router and a leader whose
// builds number codes differently still agree.
type CompactResults []Result

// EncodeMsgpack implements msgpack.CustomEncoder: pairs once the cluster
// writes WireV2, result maps before.
func (rs CompactResults) EncodeMsgpack(enc *msgpack.Encoder) error {
	if !WireV2() {
		return enc.Encode([]Result(rs))
	}
	if err := enc.EncodeArrayLen(len(rs)); err != nil {
		return err
	}
	for i := range rs {
		if err := enc.EncodeArrayLen(2); err != nil {
			return err
		}
		if err := enc.EncodeString(rs[i].Code.String()); err != nil {
			return err
		}
		if err := enc.EncodeUint(rs[i].Timestamp); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack implements msgpack.CustomDecoder. It also reads the
// results of a leader built before CompactResults (an array of result
// maps), so a router upgraded first understands it.
func (rs *CompactResults) DecodeMsgpack(dec *msgpack.Decoder) error {
	n, err := decodeArrayLen(dec)
	if err != nil {
		return malformed("results", err)
	}
	out := make([]Result, n)
	for i := range out {
		c, err := dec.PeekCode()
		if err != nil {
			return malformed("results", err)
		}
		if msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32 {
			err = out[i].DecodeMsgpack(dec)
		} else {
			err = out[i].decodePair(dec)
		}
		if err != nil {
			return err
		}
		out[i].Index = uint32(i)
	}
	*rs = out
	if n == 0 {
		*rs = nil
	}
	return nil
}

// decodePair reads one [code name, timestamp] result.
func (r *Result) decodePair(dec *msgpack.Decoder) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return malformed("result", err)
	}
	if n != 2 {
		return malformed("result", fmt.Errorf("%d values, want [code, timestamp]", n))
	}
	var buf [32]byte
	name, err := decodeKey(dec, &buf)
	if err != nil {
		return malformed("result.code", err)
	}
	code, ok := codesByName[string(name)]
	if !ok {
		return malformed("result.code", fmt.Errorf("unknown result code %q", name))
	}
	r.Code = code
	if r.Timestamp, err = decodeU64(dec); err != nil {
		return malformed("result.timestamp", err)
	}
	return nil
}

// The internal hops' compact encodings (positional transfers in shard
// commands, result pairs from shards to routers) are read by this release
// in every form, but written only once every node can read them: a node
// of the release before would refuse a positional command from a router
// (the request fails) or, worse, stop a group whose log holds one. So the
// process writes the old forms until it is told the whole cluster reads
// the new ones (SetWireV2), and a mixed-version cluster of a rolling
// upgrade keeps working.
var wireV2 atomic.Bool

// WireVersion is the newest internal protocol this release reads and, once
// the cluster's meta state says every node reads it, writes: 2, the
// compact forms; 3, splits (shard.KindFreeze, shard.KindSplit and the
// fields they add), which an older node would not apply.
const WireVersion = 3

// SetWireV2 makes this process write the compact internal encodings.
func SetWireV2(on bool) { wireV2.Store(on) }

// WireV2 reports whether this process writes the compact internal
// encodings.
func WireV2() bool { return wireV2.Load() }
