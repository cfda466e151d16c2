package shard

import (
	"fmt"
	"slices"

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

// requestRecord: the timestamps ticked by one application of a request,
// (From, To]. A request applied more than once (a re-send that applied
// what its first application refused) has a record per application.
type requestRecord struct {
	ID       RequestID
	From, To uint64
	prev     int // the index in order of the request's previous record, -1 if none; derived
}

// requests are the records in the order they were made, and an index of
// each request's latest one. The index is derived from order (index), so
// a Clone that copies order alone answers as the original.
type requests struct {
	order []requestRecord // oldest first; To increases
	byID  map[RequestID]int
	head  int // order[:head] are forgotten
}

// mine reports whether timestamp ts was ticked by an application of
// request id.
func (r *requests) mine(id RequestID, ts uint64) bool {
	r.index()
	i, ok := r.byID[id]
	for ok && i >= r.head {
		if rec := r.order[i]; ts > rec.From && ts <= rec.To {
			return true
		}
		i = r.order[i].prev
	}
	return false
}

func (r *requests) known(id RequestID) bool {
	r.index()
	_, ok := r.byID[id]
	return ok
}

// index builds byID and the prev links from order if they are missing.
func (r *requests) index() {
	if r.byID != nil {
		return
	}
	r.byID = make(map[RequestID]int, len(r.order)-r.head)
	for i := r.head; i < len(r.order); i++ {
		r.link(i)
	}
}

func (r *requests) link(i int) {
	rec := &r.order[i]
	rec.prev = -1
	if p, ok := r.byID[rec.ID]; ok {
		rec.prev = p
	}
	r.byID[rec.ID] = i
}

func (r *requests) add(rec requestRecord) {
	r.index()
	r.order = append(r.order, rec)
	r.link(len(r.order) - 1)
}

// forget drops the records older than the retention before now, and the
// oldest past the count bound.
func (r *requests) forget(now uint64) {
	r.index()
	for r.head < len(r.order) {
		rec := r.order[r.head]
		if len(r.order)-r.head <= requestsMax && rec.To+requestsRetention >= now {
			break
		}
		if r.byID[rec.ID] == r.head { // its latest record: the request is gone
			delete(r.byID, rec.ID)
		}
		r.head++
	}
	if r.head > len(r.order)/2 && r.head > 1024 { // compact, amortised
		r.order = append(make([]requestRecord, 0, len(r.order)-r.head), r.order[r.head:]...)
		r.head, r.byID = 0, nil
		r.index()
	}
}

func (r *requests) live() []requestRecord { return r.order[r.head:] }

// clone copies the live records; the index is rebuilt when first used.
func (r *requests) clone() requests {
	return requests{order: slices.Clone(r.live())}
}

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
	s.chainsDone.forget(s.last)
	if s.requests.known(id) {
		// An event sent twice in the request was answered ok once, then
		// exists: only its first copy answering exists here was the one.
		answered := map[string]bool{}
		first := func(i int) bool {
			event := c.eventID(i)
			was := answered[event]
			answered[event] = true
			return !was
		}
		for i := range res {
			r := &res[i]
			switch {
			case r.Code == transport.CodeExists && s.requests.mine(id, r.Timestamp) && first(i):
				r.Code = transport.CodeOK
			case r.InFlight && r.Retry && s.requests.mine(id, r.Attempt) && first(i):
				r.Retry = false
			}
		}
	}
	if s.last > from {
		s.requests.add(requestRecord{ID: id, From: from, To: s.last})
	}
}

// eventID is the id of the command's event i.
func (c *Command) eventID(i int) string {
	switch {
	case c.Kind == KindCreateAccounts && i < len(c.Accounts):
		return c.Accounts[i].ID
	case i < len(c.Transfers):
		return c.Transfers[i].ID
	}
	return ""
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
