package shard

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// LookupAccounts returns copies of the accounts that exist, in ids order.
func (s *State) LookupAccounts(ids []string) []transport.Account {
	out := make([]transport.Account, 0, len(ids))
	for _, id := range ids {
		if a, ok := s.accounts[id]; ok {
			out = append(out, *a)
		}
	}
	return out
}

// LookupTransfers returns the transfers debited on this shard, in ids
// order. A cross-shard transfer in flight is not visible until it is final.
// A transfer debited on an account a split moved away is its new shard's to
// answer (the history store holds it on both sides).
func (s *State) LookupTransfers(ids []string) []transport.Transfer {
	out := make([]transport.Transfer, 0, len(ids))
	for _, id := range ids {
		if t, ok := s.lookupTransfer(id); ok && s.owns(t.DebitAccountID) {
			out = append(out, t)
		}
	}
	return out
}

// Counts returns the number of accounts, of transfers ever stored here
// (final and open), and the outbox and inbox depths.
func (s *State) Counts() (accounts, transfers, outbox, inbox int) {
	return len(s.accounts), int(s.stored), len(s.outbox), len(s.inbox)
}

// OpenTransfers returns the number of pending transfers held in memory.
func (s *State) OpenTransfers() int { return len(s.transfers) }

// Totals sums balances per ledger, sorted by ledger. Each balance fits 64
// bits but their sum may not: the sums are exact (128-bit), and a sum past
// 2^64−1 is carried in the totals' Exact, never wrapped.
func (s *State) Totals() []transport.LedgerTotals {
	by := map[uint32]*transport.ExactTotals{}
	for _, a := range s.accounts {
		t := by[a.Ledger]
		if t == nil {
			t = new(transport.ExactTotals)
			by[a.Ledger] = t
		}
		t.AddAccount(a)
	}
	out := make([]transport.LedgerTotals, 0, len(by))
	for _, l := range slices.Sorted(maps.Keys(by)) {
		out = append(out, transport.NewLedgerTotals(l, *by[l]))
	}
	return out
}

// Outbox returns the outbox rows, oldest attempt first, then by key (the
// parts of a chain share its attempt).
func (s *State) Outbox() []OutboxRow {
	rows := make([]OutboxRow, 0, len(s.outbox))
	for _, r := range s.outbox {
		rows = append(rows, *r)
	}
	slices.SortFunc(rows, func(a, b OutboxRow) int {
		return cmp.Or(cmp.Compare(a.Transfer.Timestamp, b.Transfer.Timestamp), cmp.Compare(a.Transfer.ID, b.Transfer.ID))
	})
	return rows
}

// OutboxLen returns the number of outbox rows: transfers in flight, and the
// parts of chains across shards coordinated here.
func (s *State) OutboxLen() int { return len(s.outbox) }

// ForgetBelow is the watermark this shard may announce to credit shards:
// every attempt below it is resolved, and no new attempt will be below it.
func (s *State) ForgetBelow() uint64 {
	below := s.last + 1
	for _, r := range s.outbox {
		below = min(below, r.Transfer.Timestamp)
	}
	for _, c := range s.chains {
		below = min(below, c.Attempt)
	}
	return below
}

// Clone returns a copy that shares only immutable records with s, so it can
// be encoded while s goes on applying. The copy writes to the same archive. Stored transfers, outbox and inbox
// rows are never modified in place; accounts are, so they are copied.
func (s *State) Clone() *State {
	c := &State{
		id:         s.id,
		last:       s.last,
		archive:    s.archive,
		stored:     s.stored,
		accounts:   make(map[string]*transport.Account, len(s.accounts)),
		transfers:  maps.Clone(s.transfers),
		outbox:     maps.Clone(s.outbox),
		inbox:      maps.Clone(s.inbox),
		watermarks: maps.Clone(s.watermarks),
		expiring:   maps.Clone(s.expiring),
		remote:     maps.Clone(s.remote),
		origins:    maps.Clone(s.origins),

		pendingCredits: maps.Clone(s.pendingCredits),
		chains:         maps.Clone(s.chains),
		heldIDs:        maps.Clone(s.heldIDs),
		requests:       s.requests.clone(),
		chainsDone:     s.chainsDone.clone(),
	}
	for id, a := range s.accounts {
		cp := *a
		c.accounts[id] = &cp
	}
	if s.slots != nil {
		sl := *s.slots
		c.slots = &sl
	}
	return c
}

// snapshotVersion is written first in every snapshot. Version 2: final
// transfers live in the archive, not in the snapshot. Version 3: two-phase
// transfers across shards (remote, pendingCredits). Version 4: linked
// chains across shards (chains, heldIDs). Version 5: the recent client
// requests (requests.go). Version 6: the slots owned and the origins of
// remote pending transfers (slots.go), the chains across shards requests
// committed (chainsdone.go); written only when there is one of them. Read
// takes 2 to 5 as well.
const snapshotVersion = 6

// WriteTo encodes the in-memory state deterministically (every table sorted
// by key), so equal states encode to equal bytes. The archive is not part
// of it: it is made durable on its own before a snapshot is taken.
func (s *State) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<16)
	enc := msgpack.NewEncoder(bw)
	fail := func(err error) (int64, error) { return cw.n, fmt.Errorf("encode shard %d: %w", s.id, err) }
	// A shard that never split writes version 5, which the release before
	// splits reads (a snapshot sent to one of its nodes in a rolling
	// upgrade); splits wait until every node runs this release.
	version := uint8(5)
	if s.slots != nil || len(s.origins) > 0 || len(s.chainsDone.live()) > 0 {
		version = snapshotVersion
	}
	if err := enc.EncodeMulti(version, s.id, s.last, s.stored); err != nil {
		return fail(err)
	}
	if err := enc.EncodeArrayLen(len(s.accounts)); err != nil {
		return fail(err)
	}
	for _, id := range slices.Sorted(maps.Keys(s.accounts)) {
		if err := s.accounts[id].EncodeMsgpack(enc); err != nil {
			return fail(err)
		}
	}
	if err := enc.EncodeArrayLen(len(s.transfers)); err != nil {
		return fail(err)
	}
	for _, id := range slices.Sorted(maps.Keys(s.transfers)) {
		if err := s.transfers[id].EncodeMsgpack(enc); err != nil {
			return fail(err)
		}
	}
	if err := encodeSorted(enc, s.outbox); err != nil {
		return fail(err)
	}
	if err := encodeSorted(enc, s.inbox); err != nil {
		return fail(err)
	}
	if err := enc.EncodeArrayLen(len(s.watermarks)); err != nil {
		return fail(err)
	}
	for _, ds := range slices.Sorted(maps.Keys(s.watermarks)) {
		if err := enc.EncodeMulti(ds, s.watermarks[ds]); err != nil {
			return fail(err)
		}
	}
	if err := enc.EncodeArrayLen(len(s.remote)); err != nil {
		return fail(err)
	}
	for _, id := range slices.Sorted(maps.Keys(s.remote)) {
		if err := enc.EncodeMulti(id, s.remote[id]); err != nil {
			return fail(err)
		}
	}
	if err := encodeSorted(enc, s.pendingCredits); err != nil {
		return fail(err)
	}
	if err := encodeSorted(enc, s.chains); err != nil {
		return fail(err)
	}
	if err := enc.EncodeArrayLen(len(s.heldIDs)); err != nil {
		return fail(err)
	}
	for _, id := range slices.Sorted(maps.Keys(s.heldIDs)) {
		if err := enc.EncodeMulti(id, s.heldIDs[id]); err != nil {
			return fail(err)
		}
	}
	if err := s.encodeRequests(enc); err != nil {
		return fail(err)
	}
	if version == snapshotVersion {
		if err := s.encodeSlots(enc); err != nil {
			return fail(err)
		}
		if err := s.encodeChainsDone(enc); err != nil {
			return fail(err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	return cw.n, nil
}

func encodeSorted[V any](enc *msgpack.Encoder, m map[string]*V) error {
	if err := enc.EncodeArrayLen(len(m)); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := enc.Encode(m[k]); err != nil {
			return err
		}
	}
	return nil
}

// Read decodes a state written by WriteTo, whose history is in archive (a
// fresh MemArchive if nil).
func Read(r io.Reader, archive Archive) (*State, error) {
	dec := msgpack.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	var version uint8
	var id uint32
	var last, stored uint64
	if err := dec.DecodeMulti(&version, &id); err != nil {
		return nil, fmt.Errorf("decode shard snapshot header: %w", err)
	}
	if version < 2 || version > snapshotVersion {
		return nil, fmt.Errorf("shard snapshot version %d, want 2 to %d", version, snapshotVersion)
	}
	if err := dec.DecodeMulti(&last, &stored); err != nil {
		return nil, fmt.Errorf("decode shard snapshot header: %w", err)
	}
	s := New(id, archive)
	s.last, s.stored = last, stored
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return nil, err
	}
	for range n {
		a := new(transport.Account)
		if err := a.DecodeMsgpack(dec); err != nil {
			return nil, err
		}
		s.accounts[a.ID] = a
	}
	if n, err = dec.DecodeArrayLen(); err != nil {
		return nil, err
	}
	for range n {
		t := new(transport.Transfer)
		if err := t.DecodeMsgpack(dec); err != nil {
			return nil, err
		}
		s.transfers[t.ID] = t
		if t.State == transport.StatePending && t.Timeout > 0 {
			s.expiring[t.ID] = expiresAt(t)
		}
	}
	if err := decodeRows(dec, s.outbox, func(r *OutboxRow) string { return r.Transfer.ID }); err != nil {
		return nil, err
	}
	if err := decodeRows(dec, s.inbox, func(r *InboxRow) string { return inboxKey(r.DebitShard, r.ID) }); err != nil {
		return nil, err
	}
	if n, err = dec.DecodeArrayLen(); err != nil {
		return nil, err
	}
	for range n {
		var ds uint32
		var below uint64
		if err := dec.DecodeMulti(&ds, &below); err != nil {
			return nil, err
		}
		s.watermarks[ds] = below
	}
	if version < 3 {
		return s, nil
	}
	if n, err = dec.DecodeArrayLen(); err != nil {
		return nil, err
	}
	for range n {
		var id string
		var cs uint32
		if err := dec.DecodeMulti(&id, &cs); err != nil {
			return nil, err
		}
		s.remote[id] = cs
	}
	if err := decodeRows(dec, s.pendingCredits, func(c *Credit) string { return inboxKey(c.DebitShard, c.Transfer.ID) }); err != nil {
		return nil, err
	}
	if version < 4 {
		return s, nil
	}
	if err := decodeRows(dec, s.chains, chainKey); err != nil {
		return nil, err
	}
	if n, err = dec.DecodeArrayLen(); err != nil {
		return nil, err
	}
	for range n {
		var id, key string
		if err := dec.DecodeMulti(&id, &key); err != nil {
			return nil, err
		}
		s.heldIDs[id] = key
	}
	if version < 5 {
		return s, nil
	}
	if err := s.decodeRequests(dec); err != nil {
		return nil, fmt.Errorf("decode shard snapshot requests: %w", err)
	}
	if version < 6 {
		return s, nil
	}
	if err := s.decodeSlots(dec); err != nil {
		return nil, fmt.Errorf("decode shard snapshot slots: %w", err)
	}
	if err := s.decodeChainsDone(dec); err != nil {
		return nil, fmt.Errorf("decode shard snapshot chains done: %w", err)
	}
	return s, nil
}

// decodeRows reads a table of rows, each read whole and bounded first
// (transport.DecodeRaw): decoded straight from the stream, a corrupt row
// could declare a slice of billions of elements, which msgpack/v5 would
// allocate. A row without a key is corrupt.
func decodeRows[V any](dec *msgpack.Decoder, m map[string]*V, key func(*V) string) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	for range n {
		raw, err := transport.DecodeRaw(dec, snapshotRowElementsMax)
		if err != nil {
			return err
		}
		v := new(V)
		if err := msgpack.Unmarshal(raw, v); err != nil {
			return err
		}
		k := key(v)
		if k == "" {
			return fmt.Errorf("a %T without its key", v)
		}
		m[k] = v
	}
	return nil
}

// snapshotRowElementsMax bounds a row's lists: a chain's votes, two per leg,
// are the longest.
const snapshotRowElementsMax = 2 * transport.BatchEventsMax

// chainKey is a chain row's key, its first leg's id ("" for a corrupt row
// without legs).
func chainKey(r *ChainRow) string {
	if len(r.Legs) == 0 {
		return ""
	}
	return r.Legs[0].ID
}

// Hash is a digest of the in-memory state: replicas at the same applied
// index have the same hash. It encodes everything, so it costs O(state).
// The archive is derived from the same log, row for row.
func (s *State) Hash() uint64 {
	h := xxhash.New()
	if _, err := s.WriteTo(h); err != nil {
		panic(err) // the hash writer never fails
	}
	return h.Sum64()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
