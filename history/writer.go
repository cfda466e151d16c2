package history

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Rows applied but not yet written. Commit hands an entry's rows to one
// writer goroutine, which writes entries to Pebble in log order, several to
// a batch, while Apply goes on: the sort and the memtable insertion, about
// half of apply's time with the store (docs/design.md), leave Raft's FSM
// goroutine. Until an entry is written its rows are served from memory:
// Apply's lookups by id and the readers' from byID, the account queries by
// scanning the unwritten entries (unwrittenRows) and merging them over a
// Pebble iterator taken at the same moment.

// Default bounds of the rows applied but not yet written (Options): Apply
// waits while the writer is further behind (Throttle), so memory stays
// bounded when the disk or a compaction is slower than apply. 8 MiB holds
// the rows of about 30,000 transfers, some 100 ms of apply at full speed:
// slack for a memtable flush. 16 MiB measured no faster
// (BenchmarkApplyWithHistory), for twice the memory. An account query scans
// them all (BenchmarkAccountQueryOverUnwrittenRows).
const (
	unwrittenBytesMaxDefault   = 8 << 20
	unwrittenEntriesMaxDefault = 1024
)

// rowIndexBytes is what a row's index costs besides its bytes, counted
// against the bound.
const rowIndexBytes = 24

// memtableRowBytes is what Pebble counts a row in a memtable or a batch
// beyond its key and value (a skiplist node with the tallest tower, the
// key's trailer, padding: 195 bytes in Pebble v2). A batch of more than
// half a memtable, so counted, becomes a memtable of its own, flushed at
// once to a small sstable: the writer's batches stay below a quarter.
const memtableRowBytes = 200

// rowsBytesPresizeMax bounds the buffers an entry starts with.
const rowsBytesPresizeMax = 4 << 20

// entry is one Raft entry's rows, as Commit hands them to the writer. It is
// never modified afterwards: queries read it without a lock while the
// writer writes it.
type entry struct {
	seq    uint64
	newest uint64   // the newest timestamp of its rows
	rows   rows     // in the order Apply wrote them (the writer sorts an index)
	ids    []string // the transfers it put, to drop from byID once written
	size   int      // bytes held, counted against the bound
	// memtableBytes is what Pebble counts its rows (memtableRowBytes).
	memtableBytes int
}

// unwrittenTransfer is the newest version of a transfer that is not written
// yet: its row's value and the entry that put it.
type unwrittenTransfer struct {
	seq   uint64
	value []byte
}

// writer is the queue between Commit and the writer goroutine, and the
// watermark of what is written. The writer waits until a full batch is
// queued (batchBytesMax), or until someone waits for what is queued (want):
// woken per entry, it took 10% more CPU than apply writing the rows itself
// under load of one transfer per request (a wake-up and a Pebble commit per
// small entry), and a full batch makes one long sorted run in the memtable.
type writer struct {
	mu          sync.Mutex
	cond        sync.Cond // any change below
	queue       []*entry  // committed, not yet taken by the writer
	queuedBytes int       // their memtable bytes
	queued      uint64    // seq of the last entry committed
	want        uint64    // seq a caller waits to see written
	written     atomic.Uint64
	// Rows committed and not yet written (queued or being written), for
	// the bound.
	bytes, entries int
	bytesMax       int
	entriesMax     int
	batchBytesMax  int   // memtable bytes (memtableRowBytes) per Pebble batch
	err            error // the write that failed: the writer stopped
	closing        bool
	done           chan struct{}
}

func (w *writer) init(o Options, batchBytesMax int) {
	w.cond.L = &w.mu
	w.bytesMax, w.entriesMax, w.batchBytesMax = o.UnwrittenBytesMax, o.UnwrittenEntriesMax, batchBytesMax
	w.done = make(chan struct{})
}

// push hands an entry to the writer; it returns the error that stopped
// the writer, if one did.
func (w *writer) push(e *entry) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queue = append(w.queue, e)
	w.queuedBytes += e.memtableBytes
	w.queued = e.seq
	w.bytes += e.size
	w.entries++
	if w.due() {
		w.cond.Broadcast()
	}
	return w.err
}

// due tells whether the writer should write what is queued.
func (w *writer) due() bool {
	return w.closing || w.queuedBytes >= w.batchBytesMax || w.want > w.written.Load()
}

// wantAll asks the writer to write every entry queued, however few, and
// returns the last one's seq.
func (w *writer) wantAll() uint64 {
	if w.want < w.queued {
		w.want = w.queued
		w.cond.Broadcast()
	}
	return w.queued
}

// next waits until a batch is due and takes the oldest entries queued,
// batchBytesMax of memtable bytes of them (at least one); none once closing
// with none left.
func (w *writer) next() []*entry {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.queue) == 0 || !w.due() {
		if w.closing {
			return nil
		}
		w.cond.Wait()
	}
	n, size := 0, 0
	for n < len(w.queue) && (n == 0 || size+w.queue[n].memtableBytes <= w.batchBytesMax) {
		size += w.queue[n].memtableBytes
		n++
	}
	batch := slices.Clone(w.queue[:n])
	w.queue = slices.Delete(w.queue, 0, n)
	w.queuedBytes -= size
	return batch
}

// wrote records a batch written, or the error that stops the writer.
func (w *writer) wrote(batch []*entry, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.cond.Broadcast()
	if err != nil {
		w.err = err
		return
	}
	for _, e := range batch {
		w.bytes -= e.size
		w.entries--
	}
	w.written.Store(batch[len(batch)-1].seq)
}

// waitRoom waits until the unwritten rows are within the bounds.
func (w *writer) waitRoom() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for (w.bytes > w.bytesMax || w.entries > w.entriesMax) && w.err == nil {
		w.wantAll()
		w.cond.Wait()
	}
	return w.err
}

// waitWritten waits until every entry committed so far is written (not
// those committed meanwhile: under load it would chase them forever).
func (w *writer) waitWritten() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	target := w.wantAll()
	for w.written.Load() < target && w.err == nil {
		w.cond.Wait()
	}
	return w.err
}

func (w *writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// close lets the writer write what is queued, then stop.
func (w *writer) close() error {
	w.mu.Lock()
	w.closing = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
	if err := w.failed(); err != nil {
		return fmt.Errorf("history: rows of applied entries left unwritten (the Raft log replays them): %w", err)
	}
	return nil
}

// writeLoop is the writer goroutine. It reuses one Pebble batch, whose
// buffer (at most batchBytesMax) it keeps.
func (s *Store) writeLoop() {
	defer close(s.w.done)
	b := s.db.NewBatch(pebble.WithMaxRetainedSizeBytes(s.w.batchBytesMax))
	defer b.Close()
	var m runMerger
	for {
		batch := s.w.next()
		if len(batch) == 0 {
			return
		}
		err := s.write(b, batch, &m)
		s.w.wrote(batch, err)
		if err != nil {
			s.log.Error("history: writing applied entries failed: the shard stops applying", "err", err)
			return
		}
	}
}

// write writes the entries' rows in key order: the memtable's skiplist
// inserts a sorted run for less than the same keys scattered, each search
// walking nodes the last one left in the CPU cache. Rows of one key stay in
// log order, so the last one written wins, as if each entry had been a
// batch of its own. The rows go in Pebble batches of at most batchBytesMax
// (memtable bytes): the entries are visible from memory until the last is
// written, so an entry may span two.
func (s *Store) write(b *pebble.Batch, batch []*entry, m *runMerger) error {
	if s.writeFault != nil {
		if err := s.writeFault(); err != nil {
			return s.check(fmt.Errorf("history: write: %w", err))
		}
	}
	m.reset(batch)
	size := 0
	for {
		k, v, ok := m.next()
		if !ok {
			break
		}
		row := len(k) + len(v) + memtableRowBytes
		if size > 0 && size+row > s.w.batchBytesMax {
			if err := s.commit(b); err != nil {
				return err
			}
			size = 0
		}
		if err := b.Set(k, v, nil); err != nil {
			return s.check(fmt.Errorf("history: write: %w", err))
		}
		size += row
	}
	newest := uint64(0)
	for _, e := range batch {
		newest = max(newest, e.newest)
	}
	if newest > 0 { // with the rows, so that a crash keeps both or neither
		// Never below what a copy from a peer brought (Import).
		if err := b.Set(keyNewest, binary.BigEndian.AppendUint64(nil, max(newest, s.newest.Load())), nil); err != nil {
			return s.check(fmt.Errorf("history: write: %w", err))
		}
		size++
	}
	if size == 0 {
		return nil
	}
	return s.commit(b)
}

// commit commits the writer's batch and empties it for the next rows.
func (s *Store) commit(b *pebble.Batch) error {
	defer b.Reset()
	if err := b.Commit(pebble.NoSync); err != nil {
		return s.check(fmt.Errorf("history: commit: %w", err))
	}
	return nil
}

// publish makes the entry applied so far visible to lookups and queries and
// hands it to the writer. Apply's goroutine only.
func (s *Store) publish() error {
	r := s.rows
	if len(r.rows) == 0 {
		s.rows.reset()
		clear(s.written)
		return s.w.failed()
	}
	s.seq++
	s.raiseNewest(s.entryNewest)
	e := &entry{seq: s.seq, rows: r, newest: s.entryNewest, ids: make([]string, 0, len(s.written)),
		size: len(r.buf) + len(r.rows)*rowIndexBytes, memtableBytes: len(r.buf) + len(r.rows)*memtableRowBytes}
	s.mu.Lock()
	for id, i := range s.written {
		s.byID[id] = unwrittenTransfer{seq: e.seq, value: r.value(i)}
		e.ids = append(e.ids, id)
	}
	s.pending = append(s.pending, e)
	s.mu.Unlock()
	clear(s.written)
	// The next entry's rows get buffers of their own, sized for one like
	// this one (growing one copies it): this one's are the writer's and
	// the readers' now.
	s.rows = rows{
		buf:  make([]byte, 0, min(len(r.buf)+len(r.buf)/8, rowsBytesPresizeMax)),
		rows: make([]row, 0, min(len(r.rows)+len(r.rows)/8, rowsBytesPresizeMax/rowIndexBytes)),
	}
	return s.w.push(e)
}

// trim drops the entries the writer has written from memory: Pebble serves
// their rows now. Apply's goroutine only (it reads byID without the lock).
func (s *Store) trim() {
	written := s.w.written.Load()
	n := 0
	for n < len(s.pending) && s.pending[n].seq <= written {
		n++
	}
	if n == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.pending[:n] {
		for _, id := range e.ids {
			if u, ok := s.byID[id]; ok && u.seq == e.seq {
				delete(s.byID, id)
			}
		}
	}
	s.pending = slices.Delete(s.pending, 0, n)
}

// unwrittenTransfer returns the newest unwritten version of a transfer's
// row, for a reader that is not Apply.
func (s *Store) unwrittenTransfer(id string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.byID[id]
	return u.value, ok
}

// kv is a row read from memory.
type kv struct{ key, value []byte }

// view returns the unwritten rows with keys in [lower, upper), in key order
// (the newest version of each key), and a Pebble iterator over the same
// bounds, both as of the last entry committed: the entries it scans are
// those the writer had not written when the iterator was opened.
func (s *Store) view(lower, upper []byte) ([]kv, *pebble.Iterator, error) {
	s.mu.RLock()
	written := s.w.written.Load()
	var unwritten []*entry
	for i, e := range s.pending {
		if e.seq > written {
			unwritten = slices.Clone(s.pending[i:])
			break
		}
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	s.mu.RUnlock()
	if err != nil {
		return nil, nil, err
	}
	return unwrittenRows(unwritten, lower, upper), it, nil
}

// unwrittenRows scans the entries (in log order) for rows with keys in
// [lower, upper), and returns the newest version of each in key order.
func unwrittenRows(entries []*entry, lower, upper []byte) []kv {
	var out []kv
	for _, e := range entries {
		r := &e.rows
		for _, x := range r.rows {
			k := r.buf[x.key:x.value]
			if bytes.Compare(k, lower) >= 0 && bytes.Compare(k, upper) < 0 {
				out = append(out, kv{k, r.buf[x.value:x.end]})
			}
		}
	}
	// Stable: of equal keys, the last in log order ends the run and wins.
	slices.SortStableFunc(out, func(a, b kv) int { return bytes.Compare(a.key, b.key) })
	n := 0
	for i := range out {
		if i+1 < len(out) && bytes.Equal(out[i].key, out[i+1].key) {
			continue
		}
		out[n] = out[i]
		n++
	}
	return out[:n]
}

// merged visits the rows of the iterator and of the unwritten rows (which
// win over the iterator's for the same key) in key order, or reverse key
// order, until visit returns false or an error.
func merged(it *pebble.Iterator, unwritten []kv, reverse bool, visit func(k, v []byte) (bool, error)) error {
	valid, step, dir := it.First, it.Next, 1
	i, iStep := 0, 1
	if reverse {
		valid, step, dir = it.Last, it.Prev, -1
		i, iStep = len(unwritten)-1, -1
	}
	ok := valid()
	for {
		mem := i >= 0 && i < len(unwritten)
		if !ok && !mem {
			return it.Error()
		}
		c := 1 // > 0: the unwritten row comes first
		if ok && mem {
			c = dir * bytes.Compare(it.Key(), unwritten[i].key)
		} else if ok {
			c = -1
		}
		var k, v []byte
		if c < 0 {
			var err error
			if v, err = it.ValueAndErr(); err != nil {
				return err
			}
			k = it.Key()
		} else {
			k, v = unwritten[i].key, unwritten[i].value
		}
		// The iterator's key and value last until it moves: visit first.
		if more, err := visit(k, v); err != nil || !more {
			return errors.Join(err, it.Error())
		}
		if c <= 0 {
			ok = step()
		}
		if c >= 0 {
			i += iStep
		}
	}
}
