package client

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ledgerd/ledgerd/transport"
)

// envelopeBytesMax bounds what a request body holds besides its events:
// {field: [...]} is a map header, the field name and an array header.
const envelopeBytesMax = 32

// encoded holds a batch's events, each encoded once, so that splitting it
// knows each event's exact size and sending it copies bytes instead of
// encoding again.
type encoded struct {
	buf    []byte // the events' msgpack encodings, back to back
	off    []int  // event i is buf[off[i]:off[i+1]]
	linked []bool // linked[i]: event i is chained to event i+1
}

// span is the events [start, end) of one request.
type span struct{ start, end int }

// encodeEvents encodes each item as it appears in a request's array.
func encodeEvents[T any](items []T, linked func(*T) bool) (*encoded, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	e := &encoded{off: make([]int, 1, len(items)+1), linked: make([]bool, len(items))}
	for i := range items {
		if err := enc.Encode(&items[i]); err != nil {
			return nil, fmt.Errorf("encode event %d: %w", i, err)
		}
		e.off = append(e.off, buf.Len())
		e.linked[i] = linked(&items[i])
	}
	e.buf = buf.Bytes()
	return e, nil
}

func (e *encoded) len() int { return len(e.off) - 1 }

func (e *encoded) size(i int) int { return e.off[i+1] - e.off[i] }

// split cuts the batch into requests of at most countMax events that fit in
// a message. It cuts only where a linked chain ends, because the cluster
// keeps a chain atomic only within one request; a chain open at the end of
// the whole batch is sent as is, for the cluster to refuse.
func (e *encoded) split(countMax int) ([]span, error) {
	const bytesMax = transport.MessageBytesMax - envelopeBytesMax
	var spans []span
	for start := 0; start < e.len(); {
		end, n, cut := start, 0, -1 // cut: the last chain end in [start+1, end]
		for end < e.len() && end-start < countMax && n+e.size(end) <= bytesMax {
			n += e.size(end)
			end++
			if !e.linked[end-1] || end == e.len() {
				cut = end
			}
		}
		switch {
		case end == start:
			return nil, fmt.Errorf("event %d encodes to %d bytes: more than a message holds (%d)", start, e.size(start), bytesMax)
		case cut < 0:
			return nil, fmt.Errorf("linked chain from event %d is longer than one request holds (%d events, %d bytes)", start, countMax, bytesMax)
		}
		spans = append(spans, span{start, cut})
		start = cut
	}
	return spans, nil
}

// body returns the request {field: [events of s]}, byte for byte what
// transport.Marshal makes of the request type holding those events.
func (e *encoded) body(field string, s span) []byte {
	events := e.buf[e.off[s.start]:e.off[s.end]]
	b := bytes.NewBuffer(make([]byte, 0, envelopeBytesMax+len(events)))
	writeEnvelope(b, field, s.end-s.start)
	b.Write(events)
	return b.Bytes()
}

// writeEnvelope writes what precedes n events in a request {field: [...]}.
func writeEnvelope(b *bytes.Buffer, field string, n int) {
	enc := msgpack.GetEncoder()
	defer msgpack.PutEncoder(enc)
	enc.Reset(b)
	// Writes to a bytes.Buffer cannot fail.
	_ = enc.EncodeMapLen(1)
	_ = enc.EncodeString(field)
	_ = enc.EncodeArrayLen(n)
}
