package shard

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Chains across shards answered as first. A router re-sends a request whose
// answer it did not get, with the same request id (requests.go); the legs a
// chain across shards commits are ticked by its participants, not by the
// coordinator's application of the request, so the request's records do not
// cover them, and a re-send after the chain committed would run it again and
// answer exists on every leg. The coordinator keeps, for as long as it keeps
// request records, each chain a request committed: its re-send by the same
// request is answered ok with the legs' timestamps, as the first was.

// chainsDoneMax bounds the chains kept (about 100 bytes each).
const chainsDoneMax = 1 << 16

// doneChain is a chain across shards a request committed, by its first
// leg's id.
type doneChain struct {
	chain   string
	request RequestID
	at      uint64   // the coordinator's clock when it committed
	stamps  []uint64 // the legs' timestamps
}

// chainsDone are the chains kept, oldest first, and an index.
type chainsDone struct {
	order []*doneChain
	byID  map[string]*doneChain
	head  int
}

// done records that request committed chain at now with the legs' stamps.
func (d *chainsDone) done(c *doneChain) {
	if d.byID == nil {
		d.byID = map[string]*doneChain{}
	}
	d.byID[c.chain] = c
	d.order = append(d.order, c)
}

// answer is the first answer of chain (legs legs long) to a re-send by
// request, if that request committed it.
func (d *chainsDone) answer(chain string, legs int, request []byte) ([]uint64, bool) {
	c, ok := d.byID[chain]
	if !ok || len(c.stamps) != legs || !bytes.Equal(c.request[:], request) {
		return nil, false
	}
	return c.stamps, true
}

// forget drops the chains older than the request retention before now, and
// the oldest past the count bound.
func (d *chainsDone) forget(now uint64) {
	for d.head < len(d.order) {
		c := d.order[d.head]
		if len(d.order)-d.head <= chainsDoneMax && c.at+requestsRetention >= now {
			break
		}
		if d.byID[c.chain] == c {
			delete(d.byID, c.chain)
		}
		d.order[d.head] = nil
		d.head++
	}
	if d.head > len(d.order)/2 && d.head > 1024 {
		d.order = append([]*doneChain(nil), d.order[d.head:]...)
		d.head = 0
	}
}

func (d *chainsDone) live() []*doneChain { return d.order[d.head:] }

// clone copies the live chains (immutable once recorded).
func (d *chainsDone) clone() chainsDone {
	c := chainsDone{order: append([]*doneChain(nil), d.live()...), byID: make(map[string]*doneChain, len(d.byID))}
	for _, x := range c.order {
		c.byID[x.chain] = x
	}
	return c
}

// committed records row's chain if a request started it.
func (s *State) committed(row *ChainRow, results []Resolved, now uint64) {
	id, ok := (&Command{Request: row.Request}).requestID()
	if !ok {
		return
	}
	c := &doneChain{chain: row.Legs[0].ID, request: id, at: now, stamps: make([]uint64, len(results))}
	for k, r := range results {
		c.stamps[k] = r.Timestamp
	}
	s.chainsDone.done(c)
}

func (s *State) encodeChainsDone(enc *msgpack.Encoder) error {
	live := s.chainsDone.live()
	if err := enc.EncodeArrayLen(len(live)); err != nil {
		return err
	}
	for _, c := range live {
		if err := enc.EncodeMulti(c.chain, c.request[:], c.at, c.stamps); err != nil {
			return err
		}
	}
	return nil
}

func (s *State) decodeChainsDone(dec *msgpack.Decoder) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n > chainsDoneMax {
		return fmt.Errorf("%d chains done, at most %d", n, chainsDoneMax)
	}
	for range n {
		c := &doneChain{}
		var request []byte
		if err := dec.DecodeMulti(&c.chain, &request, &c.at, &c.stamps); err != nil {
			return err
		}
		if len(request) != RequestIDBytes || c.chain == "" || len(c.stamps) == 0 {
			return errors.New("bad chain record")
		}
		copy(c.request[:], request)
		s.chainsDone.done(c)
	}
	return nil
}
