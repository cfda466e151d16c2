package shard

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/ledgerd/ledgerd/transport"
)

// One answer per request (docs/protocol.md, "Result"): when a router re-sends a
// client's request to a new leader and finds that its earlier attempt was
// applied, the client gets the answer of that application (ok with its
// timestamp), never exists. A create command carries its client request's
// id (RequestID, the same on every re-send of one request, another for each
// request), and the shard remembers, per request id, the span of event
// timestamps its first application ticked: an event found to exist whose
// timestamp lies in the span of the same request was created by it, and is
// answered ok; one in flight is answered as its first attempt will be.
//
// The records are part of the replicated state (a new leader needs them)
// and are forgotten deterministically, by log time and by count.

// RequestIDBytes is the length of a request id.
const RequestIDBytes = 16

// RequestID identifies one client request at the router.
type RequestID [RequestIDBytes]byte

// Bounds of the request records of one shard.
const (
	// requestsRetention is how long (log time) a request is remembered:
	// far longer than the router's request deadline (5 s by default), the
	// only time in which it re-sends a request.
	requestsRetention = uint64(60e9)
	// requestsMax bounds the records in memory (about 60 bytes each): at
	// 50,000 requests/s on one shard the retention falls to 10 s.
	requestsMax = 1 << 19
)

// requestRecord: the timestamps ticked by a request's first application,
// (From, To], and the shard's clock then.
type requestRecord struct {
	ID       RequestID
	From, To uint64
}

// requests are the records in the order they were made, and an index.
type requests struct {
	order []requestRecord // oldest first; To increases
	byID  map[RequestID]int
	head  int // order[:head] are forgotten
}

func (r *requests) find(id RequestID) (requestRecord, bool) {
	i, ok := r.byID[id]
	if !ok {
		return requestRecord{}, false
	}
	return r.order[i], true
}

func (r *requests) add(rec requestRecord) {
	if r.byID == nil {
		r.byID = map[RequestID]int{}
	}
	if _, dup := r.byID[rec.ID]; dup {
		return // the re-send of a request applied earlier: its first span stands
	}
	r.byID[rec.ID] = len(r.order)
	r.order = append(r.order, rec)
}

// forget drops the records older than the retention before now, and the
// oldest past the count bound.
func (r *requests) forget(now uint64) {
	for r.head < len(r.order) {
		rec := r.order[r.head]
		if len(r.order)-r.head <= requestsMax && rec.To+requestsRetention >= now {
			break
		}
		delete(r.byID, rec.ID)
		r.head++
	}
	if r.head > len(r.order)/2 && r.head > 1024 { // compact, amortised
		live := r.order[r.head:]
		r.order = append(make([]requestRecord, 0, len(live)), live...)
		for i, rec := range r.order {
			r.byID[rec.ID] = i
		}
		r.head = 0
	}
}

func (r *requests) live() []requestRecord { return r.order[r.head:] }

// requestID returns the command's request id, if it carries a valid one.
func (c *Command) requestID() (RequestID, bool) {
	var id RequestID
	if len(c.Request) != RequestIDBytes {
		return id, false
	}
	copy(id[:], c.Request)
	return id, true
}

// answerAsFirst rewrites the results of a re-sent request: an event that
// exists because this request created it is ok, with its timestamp; one in
// flight because this request started it is answered as that attempt.
// Then it records the span this application ticked, from the clock before
// it (from). An application that ticked nothing is not recorded, so a
// later re-send that does apply is.
func (s *State) answerAsFirst(c *Command, from uint64, res []EventResult) {
	id, ok := c.requestID()
	if !ok {
		return
	}
	s.requests.forget(s.last)
	if rec, ok := s.requests.find(id); ok {
		mine := func(ts uint64) bool { return ts > rec.From && ts <= rec.To }
		for i := range res {
			r := &res[i]
			switch {
			case r.Code == transport.CodeExists && mine(r.Timestamp):
				r.Code = transport.CodeOK
			case r.InFlight && r.Retry && mine(r.Attempt):
				r.Retry = false
			}
		}
	}
	if s.last > from {
		s.requests.add(requestRecord{ID: id, From: from, To: s.last})
	}
}

// encodeRequests writes the live records, oldest first.
func (s *State) encodeRequests(enc *msgpack.Encoder) error {
	live := s.requests.live()
	if err := enc.EncodeArrayLen(len(live)); err != nil {
		return err
	}
	for _, rec := range live {
		if err := enc.EncodeMulti(rec.ID[:], rec.From, rec.To); err != nil {
			return err
		}
	}
	return nil
}

// decodeRequests reads what encodeRequests wrote.
func (s *State) decodeRequests(dec *msgpack.Decoder) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n < 0 || n > requestsMax {
		return fmt.Errorf("%d request records, at most %d", n, requestsMax)
	}
	for range n {
		var id []byte
		var rec requestRecord
		if err := dec.DecodeMulti(&id, &rec.From, &rec.To); err != nil {
			return err
		}
		if len(id) != RequestIDBytes || rec.To <= rec.From {
			return fmt.Errorf("bad request record")
		}
		copy(rec.ID[:], id)
		s.requests.add(rec)
	}
	return nil
}
