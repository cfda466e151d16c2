// Package history is a shard's history on disk: every final transfer by id,
// each account's transfers and balances in timestamp order. It implements
// shard.Archive on Pebble, so a shard keeps in memory only its accounts and
// open transfers, however many transfers it has made.
//
// Apply keeps each Raft entry's rows in memory and hands them to one writer
// goroutine (Commit), which writes them to Pebble in log order, several
// entries to a batch (writer.go: no fsync, no write-ahead log: the Raft log
// is the write-ahead log). Lookups and queries see the rows not yet written
// as if they were. Apply waits while the writer is more than a bound behind
// (Throttle). Before Raft may drop log entries, a snapshot calls Sync, which
// waits for the writer, flushes everything written to sstables on disk and
// records the applied index it covers. After a crash, the rows applied
// since the last Sync may be gone (those not written are) and the Raft log
// replays them, byte for byte.
//
// A failing disk panics inside the Archive methods: Apply has no way to
// report it, and a replica that went on without its history would diverge.
// A write that fails stops the writer; Commit, Throttle and Sync return its
// error from then on (Apply panics on it).
//
// Every block Pebble writes carries a CRC-32C (Pebble's default, which it
// does not let a block go without) checked on every read from disk; its
// manifest's records carry checksums too. A check that fails is never a row:
// the store records the damage in its directory (damageMarker) and returns
// an error wrapping ErrDamaged, or panics where it cannot return one. Until
// the marker is removed (Options.Salvage), the store refuses to open.
package history

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// Key prefixes. Persisted: never change.
const (
	prefixTransfer = 't' // t id -> at(8) transfer
	prefixAccount  = 'a' // a len(account) account ts(8) -> rowCopy transfer | rowRef id
	prefixBalance  = 'b' // b len(account) account ts(8) -> u64 x 4: debits pending, posted, credits pending, posted
	prefixMeta     = 'm'
)

// An account's transfer row holds a copy of the transfer (open, or the
// credit half of a transfer archived on another shard), or the id of a
// transfer archived here (most rows: written once, not three times).
const (
	rowCopy = 'c'
	rowRef  = 'r'
)

var keyDurable = []byte{prefixMeta, 'd'} // -> applied index covered by the last Sync

// keyNewest -> the newest timestamp of a row the store holds (written by
// the writer, or copied from a peer): whether it holds rows of entries the
// state has not applied yet (MaxTimestamp).
var keyNewest = []byte{prefixMeta, 'n'}

// ErrDamaged is wrapped by every error that reports damaged storage (a
// checksum that fails). It is also raftfsm.ErrDamaged.
var ErrDamaged = errors.New("storage damaged")

// damageMarker, in the store's directory, records damage a read found: the
// next Open refuses, even if the damaged block is not read again.
const damageMarker = "DAMAGED"

// Store is one shard's history. The Archive methods are for Apply only (one
// goroutine); the query methods are safe for concurrent use and read what
// Apply committed, written or not.
type Store struct {
	db   *pebble.DB
	lock *pebble.Lock
	dir  string
	log  *slog.Logger
	// damage records the first damage a read found; damaged keeps it, and
	// notify tells onDamage once, whichever of the two comes first.
	damage   sync.Once
	damaged  atomic.Pointer[error]
	notify   sync.Once
	onDamage atomic.Pointer[func(error)]
	// The entry being applied (between Begin and Commit): its rows, the
	// transfers among them by id (their row's index, read back within the
	// entry), and one iterator over the store, opened at its first lookup
	// and reused for every id looked up (a Get per id costs 10x more: it
	// builds its own iterator stack each time).
	applying bool
	rows     rows
	written  map[string]int
	it       *pebble.Iterator
	key      []byte           // the key looked up, reused
	enc      *msgpack.Encoder // appends to rows
	// Entries committed and not yet dropped from memory (writer.go), in
	// log order, and the newest version of each transfer they put. Apply
	// changes them under mu, and reads them without it.
	mu      sync.RWMutex
	pending []*entry
	byID    map[string]unwrittenTransfer
	seq     uint64 // entries committed
	w       writer
	// entryNewest is the newest timestamp of the entry's rows (Apply's);
	// newest, of every row committed, written or copied (MaxTimestamp).
	entryNewest uint64
	newest      atomic.Uint64
	// writeFault, a test's, fails a write as a failing disk would.
	writeFault func() error
}

// rows are an entry's writes, in the order Apply wrote them, until the
// writer hands them to Pebble in key order.
type rows struct {
	buf  []byte // each row's key then value, back to back
	rows []row
}

// row is a key at buf[key:value] and its value at buf[value:end].
type row struct{ key, value, end int }

// add ends the row whose key starts at key and whose value at value (the
// value runs to the end of buf), and returns its index.
func (r *rows) add(key, value int) int {
	r.rows = append(r.rows, row{key, value, len(r.buf)})
	return len(r.rows) - 1
}

// key and value return row i's key and value.
func (r *rows) key(i int) []byte { x := r.rows[i]; return r.buf[x.key:x.value:x.value] }

func (r *rows) value(i int) []byte { x := r.rows[i]; return r.buf[x.value:x.end:x.end] }

// Write and WriteByte let an encoder append to buf.
func (r *rows) Write(p []byte) (int, error) {
	r.buf = append(r.buf, p...)
	return len(p), nil
}

func (r *rows) WriteByte(c byte) error {
	r.buf = append(r.buf, c)
	return nil
}

// rowsBytesRetainedMax keeps one huge entry from pinning its rows' memory
// (an entry of 1000 transfers writes about 250 KiB).
const rowsBytesRetainedMax = 1 << 20

func (r *rows) reset() {
	if cap(r.buf) > rowsBytesRetainedMax {
		r.buf, r.rows = nil, nil
		return
	}
	r.buf, r.rows = r.buf[:0], r.rows[:0]
}

// memTablesMax bounds the memtables (the one written and those waiting to
// be flushed) before writes wait.
const memTablesMax = 2

// Options size the store's memory. Zero values take the defaults.
type Options struct {
	CacheBytes    int64  // block cache, besides the memtables; default 32 MiB
	MemTableBytes uint64 // each memtable; default 16 MiB
	Logger        *slog.Logger
	// Salvage opens a store whose damage was recorded (damageMarker),
	// removing the record: reads of a damaged block still fail.
	Salvage bool
	// Rows applied but not yet written, beyond which Apply waits
	// (Throttle); defaults unwrittenBytesMaxDefault and
	// unwrittenEntriesMaxDefault.
	UnwrittenBytesMax   int
	UnwrittenEntriesMax int
	// WriteFault is for tests (nil otherwise): called before each write,
	// an error it returns fails the write, as a failing disk would.
	WriteFault func() error
}

func (o *Options) defaults() {
	if o.CacheBytes == 0 {
		o.CacheBytes = 32 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.UnwrittenBytesMax == 0 {
		o.UnwrittenBytesMax = unwrittenBytesMaxDefault
	}
	if o.UnwrittenEntriesMax == 0 {
		o.UnwrittenEntriesMax = unwrittenEntriesMaxDefault
	}
}

// Open opens (or creates) the store in dir.
func Open(dir string, o Options) (*Store, error) {
	o.defaults()
	if err := checkRecordedDamage(dir, o); err != nil {
		return nil, err
	}
	// Pebble reserves its memtables in the block cache: sized CacheBytes
	// alone, two 16 MiB memtables left the cache no room at all (0 blocks,
	// a 16% hit rate over 1M lookups, each miss a filter block read again).
	cache := pebble.NewCache(o.CacheBytes + memTablesMax*int64(o.MemTableBytes))
	defer cache.Unref()
	opts := &pebble.Options{
		Cache:                       cache,
		MemTableSize:                o.MemTableBytes,
		MemTableStopWritesThreshold: memTablesMax,
		DisableWAL:                  true,
		Logger:                      logger{o.Logger.With("component", "history")},
	}
	// Pebble's default on a checksum that fails is to stop the process
	// (Logger.Fatalf), from whatever read found it. The read returns the
	// error as well: the store records the damage and returns it.
	s := &Store{dir: dir, log: o.Logger, written: make(map[string]int), byID: make(map[string]unwrittenTransfer), writeFault: o.WriteFault}
	var err error
	opts.EventListener = &pebble.EventListener{
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			_ = s.check(fmt.Errorf("%s: %w", info.Path, info.Details))
		},
		// A compaction that meets a damaged block fails in the background
		// and is retried forever: damage, like a read's.
		BackgroundError: func(err error) { _ = s.check(err) },
	}
	// Ids are looked up on every new transfer and almost never found:
	// bloom filters answer those without reading a block.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloomPolicy
	}
	if s.db, s.lock, err = openPebble(dir, opts); err != nil {
		return nil, err
	}
	s.enc = msgpack.NewEncoder(&s.rows)
	if v, closer, err := s.db.Get(keyNewest); err == nil {
		if len(v) == 8 {
			s.newest.Store(binary.BigEndian.Uint64(v))
		}
		closer.Close()
	}
	// A batch stays below Pebble's large-batch threshold (half a
	// memtable), beyond which it would become a memtable of its own.
	s.w.init(o, int(o.MemTableBytes/4))
	go s.writeLoop()
	return s, nil
}

// openPebble locks the directory first, so that an error of Open itself is
// about the files: damage (a record, a checksum, a file the manifest lists
// gone), unless the disk refused (permissions, no space).
func openPebble(dir string, opts *pebble.Options) (*pebble.DB, *pebble.Lock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("open history store %s: %w", dir, err)
	}
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		return nil, nil, fmt.Errorf("history store %s is locked: is another ledgerd using this data directory? %w", dir, err)
	}
	opts.Lock = lock
	db, err := pebble.Open(dir, opts)
	switch {
	case err == nil:
		return db, lock, nil
	case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EROFS):
		err = fmt.Errorf("open history store %s: %w", dir, err)
	default:
		err = fmt.Errorf("open history store %s: %w: %w", dir, ErrDamaged, err)
	}
	return nil, nil, errors.Join(err, lock.Close())
}

// Close lets the writer write what was committed, then closes the store.
// Rows committed since the last Sync may be lost; the Raft log still holds
// them.
func (s *Store) Close() error { return errors.Join(s.w.close(), s.db.Close(), s.lock.Close()) }

// Begin starts an entry: Apply's writes are kept until Commit. The entries
// written since the last Begin leave memory.
func (s *Store) Begin() {
	s.applying, s.entryNewest = true, 0
	s.trim()
}

// Transfer implements shard.Archive. Within an entry: the entry's own writes
// first, then those not yet written, then the store through the entry's
// iterator. Between entries (a reader holding the machine's read lock):
// those not yet written, then the store.
func (s *Store) Transfer(id string) (transport.Transfer, uint64, bool) {
	if !s.applying {
		if v, ok := s.unwrittenTransfer(id); ok {
			return mustDecodeTransfer(id, v)
		}
		v, closer, err := s.db.Get(appendTransferKey(nil, id))
		if errors.Is(err, pebble.ErrNotFound) {
			return transport.Transfer{}, 0, false
		}
		if err != nil {
			panic(fmt.Sprintf("history: read transfer %q: %v", id, s.check(err)))
		}
		defer closer.Close()
		return mustDecodeTransfer(id, v)
	}
	if i, ok := s.written[id]; ok {
		return mustDecodeTransfer(id, s.rows.value(i))
	}
	// Apply alone changes byID: it reads it without the lock. The
	// iterator, opened after Begin dropped the entries written, sees
	// every row byID does not hold.
	if u, ok := s.byID[id]; ok {
		return mustDecodeTransfer(id, u.value)
	}
	if s.it == nil {
		it, err := s.db.NewIter(nil)
		if err != nil {
			panic(fmt.Sprintf("history: iterator: %v", s.check(err)))
		}
		s.it = it
	}
	s.key = appendTransferKey(s.key[:0], id)
	if !s.it.SeekPrefixGE(s.key) || !bytes.Equal(s.it.Key(), s.key) {
		if err := s.it.Error(); err != nil {
			panic(fmt.Sprintf("history: read transfer %q: %v", id, s.check(err)))
		}
		return transport.Transfer{}, 0, false
	}
	v, err := s.it.ValueAndErr()
	if err != nil {
		panic(fmt.Sprintf("history: read transfer %q: %v", id, s.check(err)))
	}
	return mustDecodeTransfer(id, v)
}

func mustDecodeTransfer(id string, v []byte) (transport.Transfer, uint64, bool) {
	t, at, err := decodeTransfer(v)
	if err != nil {
		panic(fmt.Sprintf("history: transfer %q: %v", id, err))
	}
	return t, at, true
}

// PutTransfer implements shard.Archive.
func (s *Store) PutTransfer(t *transport.Transfer, at uint64) {
	s.entryNewest = max(s.entryNewest, at)
	r := &s.rows
	key := len(r.buf)
	r.buf = appendTransferKey(r.buf, t.ID)
	value := len(r.buf)
	r.buf = binary.BigEndian.AppendUint64(r.buf, at)
	s.encode(t)
	s.written[t.ID] = r.add(key, value)
}

// PutAccountTransfer implements shard.Archive.
func (s *Store) PutAccountTransfer(account string, ts uint64, t *transport.Transfer) {
	s.entryNewest = max(s.entryNewest, ts)
	r := &s.rows
	key := len(r.buf)
	r.buf = appendAccountKey(r.buf, prefixAccount, account, ts)
	value := len(r.buf)
	r.buf = append(r.buf, rowCopy)
	s.encode(t)
	r.add(key, value)
}

// PutAccountTransferRef implements shard.Archive.
func (s *Store) PutAccountTransferRef(account string, ts uint64, id string) {
	s.entryNewest = max(s.entryNewest, ts)
	r := &s.rows
	key := len(r.buf)
	r.buf = appendAccountKey(r.buf, prefixAccount, account, ts)
	value := len(r.buf)
	r.buf = append(append(r.buf, rowRef), id...)
	r.add(key, value)
}

// PutBalance implements shard.Archive.
func (s *Store) PutBalance(account string, b *transport.Balance) {
	s.entryNewest = max(s.entryNewest, b.Timestamp)
	r := &s.rows
	key := len(r.buf)
	r.buf = appendAccountKey(r.buf, prefixBalance, account, b.Timestamp)
	value := len(r.buf)
	for _, x := range [4]uint64{b.DebitsPending, b.DebitsPosted, b.CreditsPending, b.CreditsPosted} {
		r.buf = binary.BigEndian.AppendUint64(r.buf, x)
	}
	r.add(key, value)
}

// Commit ends the entry: its rows are visible to every reader from now on,
// and the writer writes them (not synced; see Sync). It returns the error
// that stopped the writer, if a write failed (this entry's or an earlier
// one's).
func (s *Store) Commit() error {
	s.applying = false
	if s.it != nil {
		err := s.it.Close()
		s.it = nil
		if err != nil {
			return fmt.Errorf("history: iterator: %w", s.check(err))
		}
	}
	return s.publish()
}

// Throttle waits while the rows committed and not yet written are beyond
// the bounds (Options.UnwrittenBytesMax, UnwrittenEntriesMax), so that
// apply slows to the writer's pace rather than fill memory. Apply calls it
// after Commit, without holding what readers need. It returns the error
// that stopped the writer, if one did.
func (s *Store) Throttle() error { return s.w.waitRoom() }

// Drain waits until the writer has written every entry committed so far
// (not synced), or returns the error that stopped it.
func (s *Store) Drain() error { return s.w.waitWritten() }

// Sync makes every committed row durable and records that the store covers
// the log up to applied: it waits for the writer to write every entry
// committed so far (all those up to applied, whose snapshot was taken
// before). A snapshot at applied may then let Raft drop the entries that
// wrote them. Safe to call while Apply goes on.
func (s *Store) Sync(applied uint64) error {
	if err := s.Drain(); err != nil {
		return err
	}
	if err := s.db.Set(keyDurable, binary.BigEndian.AppendUint64(nil, applied), pebble.NoSync); err != nil {
		return fmt.Errorf("history: record durable index: %w", err)
	}
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("history: flush: %w", s.check(err))
	}
	return nil
}

// Durable returns the applied index the last Sync covered (0 if none).
func (s *Store) Durable() (uint64, error) {
	v, closer, err := s.db.Get(keyDurable)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, s.check(err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("history: durable index of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// errFull stops a scan whose reply is full.
var errFull = errors.New("reply full")

// AccountTransfers returns the account's transfers on this shard that the
// filter selects (the filter is checked by the caller), stopping before
// their encoding would pass maxBytes. Each row carries the timestamp it is
// listed at, the event's on this shard: the credit half of a transfer
// across shards is listed when it was credited, later than the transfer's
// own timestamp (its debit shard's), and shows that time, so that rows are
// in timestamp order and the filter pages through them.
func (s *Store) AccountTransfers(f *transport.AccountFilter, maxBytes int) ([]transport.Transfer, error) {
	var out []transport.Transfer
	size := 0
	err := s.scan(prefixAccount, f, func(ts uint64, v []byte) error {
		if len(v) == 0 {
			return errors.New("history: empty account row")
		}
		kind, v := v[0], v[1:]
		if kind == rowRef {
			id := string(v)
			ref, err := s.transferRow(id)
			if err != nil {
				return fmt.Errorf("history: transfer %q of an account row: %w", id, s.check(err))
			}
			if len(ref) < 8 {
				return fmt.Errorf("history: transfer %q: row of %d bytes", id, len(ref))
			}
			v = ref[8:]
		} else if kind != rowCopy {
			return fmt.Errorf("history: account row of kind %q", kind)
		}
		if size += len(v); size > maxBytes {
			return errFull
		}
		t, err := decodeTransferValue(v)
		t.Timestamp = ts
		out = append(out, t)
		return err
	})
	if errors.Is(err, errFull) {
		err = nil
	}
	return out, err
}

// AccountBalances returns the account's balance rows that the filter selects.
func (s *Store) AccountBalances(f *transport.AccountFilter) ([]transport.Balance, error) {
	var out []transport.Balance
	err := s.scan(prefixBalance, f, func(ts uint64, v []byte) error {
		if len(v) != 32 {
			return fmt.Errorf("history: balance row of %d bytes", len(v))
		}
		out = append(out, transport.Balance{
			Timestamp:     ts,
			DebitsPending: binary.BigEndian.Uint64(v), DebitsPosted: binary.BigEndian.Uint64(v[8:]),
			CreditsPending: binary.BigEndian.Uint64(v[16:]), CreditsPosted: binary.BigEndian.Uint64(v[24:]),
		})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scan visits the rows of one account between the filter's timestamps, in
// order (newest first if Reverse), at most Limit of them, with the timestamp
// of each row's key.
func (s *Store) scan(prefix byte, f *transport.AccountFilter, row func(ts uint64, v []byte) error) error {
	return s.check(s.scanRows(prefix, f, row))
}

func (s *Store) scanRows(prefix byte, f *transport.AccountFilter, row func(ts uint64, v []byte) error) error {
	hi := f.TimestampMax
	if hi == 0 {
		hi = ^uint64(0)
	}
	lower := appendAccountKey(nil, prefix, f.AccountID, f.TimestampMin)
	upper := appendAccountKey(nil, prefix, f.AccountID, hi)
	upper = append(upper, 0) // inclusive
	unwritten, it, err := s.view(lower, upper)
	if err != nil {
		return err
	}
	n := uint32(0)
	err = merged(it, unwritten, f.Reverse, func(k, v []byte) (bool, error) {
		if n >= f.Limit {
			return false, nil
		}
		n++
		return true, row(binary.BigEndian.Uint64(k[len(k)-8:]), v)
	})
	return errors.Join(err, it.Close())
}

// transferRow returns the row of a transfer by id (a copy): the newest
// version not yet written, else the store's.
func (s *Store) transferRow(id string) ([]byte, error) {
	if v, ok := s.unwrittenTransfer(id); ok {
		return v, nil
	}
	v, closer, err := s.db.Get(appendTransferKey(nil, id))
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

func appendTransferKey(dst []byte, id string) []byte {
	return append(append(dst, prefixTransfer), id...)
}

// appendAccountKey appends prefix, the account id's length and bytes, then
// ts: one account's rows are contiguous and in timestamp order.
func appendAccountKey(dst []byte, prefix byte, account string, ts uint64) []byte {
	dst = append(dst, prefix, byte(len(account)))
	dst = append(dst, account...)
	return binary.BigEndian.AppendUint64(dst, ts)
}

// encode appends t's wire encoding (transport.Marshal's bytes) to the
// entry's rows.
func (s *Store) encode(t *transport.Transfer) {
	if err := t.EncodeMsgpack(s.enc); err != nil {
		panic(fmt.Sprintf("history: encode transfer %q: %v", t.ID, err))
	}
}

func decodeTransfer(v []byte) (transport.Transfer, uint64, error) {
	if len(v) < 8 {
		return transport.Transfer{}, 0, fmt.Errorf("row of %d bytes", len(v))
	}
	t, err := decodeTransferValue(v[8:])
	return t, binary.BigEndian.Uint64(v), err
}

func decodeTransferValue(v []byte) (transport.Transfer, error) {
	var t transport.Transfer
	err := transport.Unmarshal(bytes.Clone(v), &t)
	return t, err
}

var bloomPolicy = bloom.FilterPolicy(10)

// logger sends Pebble's log to slog: its info lines (flushes, compactions)
// at debug level.
type logger struct{ l *slog.Logger }

func (l logger) Infof(format string, args ...any) { l.l.Debug(fmt.Sprintf(format, args...)) }

func (l logger) Errorf(format string, args ...any) { l.l.Error(fmt.Sprintf(format, args...)) }

func (l logger) Fatalf(format string, args ...any) {
	l.l.Error(fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}

// Row is one key and value of a store: what a replica that installs a
// snapshot copies from a peer (the snapshot holds the state in memory, not
// the history the log entries before it wrote).
type Row struct {
	Key   []byte `msgpack:"k"`
	Value []byte `msgpack:"v"`
}

// Export returns the history rows whose keys follow after (nil: from the
// first), about maxBytes of them, and whether more follow. It waits for the
// writer to write every entry committed so far first, so a page holds the
// rows of every entry applied before it was asked for. Rows are only ever
// added or rewritten with what the log says, so a store copied page by
// page while Apply goes on holds every row up to the applied index the
// first page was read at, some maybe from later entries (which Apply
// ignores until it reaches them, and rewrites identically).
func (s *Store) Export(after []byte, maxBytes int) ([]Row, bool, error) {
	if err := s.Drain(); err != nil {
		return nil, false, err
	}
	rows, more, err := s.exportRows(after, maxBytes)
	return rows, more, s.check(err)
}

func (s *Store) exportRows(after []byte, maxBytes int) ([]Row, bool, error) {
	o := &pebble.IterOptions{}
	if after != nil {
		o.LowerBound = append(bytes.Clone(after), 0) // the next key after
	}
	it, err := s.db.NewIter(o)
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	var rows []Row
	size := 0
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if k[0] == prefixMeta {
			continue
		}
		if size >= maxBytes {
			return rows, true, it.Error()
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, false, err
		}
		rows = append(rows, Row{Key: bytes.Clone(k), Value: bytes.Clone(v)})
		size += len(k) + len(v)
	}
	return rows, false, it.Error()
}

// Import writes rows Export returned (not synced: Sync makes them durable),
// for Restore, on Apply's goroutine. The entries this replica committed are
// written first, and leave memory: written after the copy, or served over
// it from memory, they would hide the newer versions it holds.
func (s *Store) Import(rows []Row) error {
	if err := s.Drain(); err != nil {
		return err
	}
	s.trim()
	b := s.db.NewBatch()
	defer b.Close()
	for _, r := range rows {
		if err := checkRow(r.Key, r.Value); err != nil {
			return fmt.Errorf("history: import: %w", err)
		}
		if err := b.Set(r.Key, r.Value, nil); err != nil {
			return fmt.Errorf("history: import: %w", err)
		}
		s.raiseNewest(rowTimestamp(r.Key, r.Value))
	}
	if err := b.Set(keyNewest, binary.BigEndian.AppendUint64(nil, s.newest.Load()), nil); err != nil {
		return fmt.Errorf("history: import: %w", err)
	}
	return b.Commit(pebble.NoSync)
}

// raiseNewest raises the newest timestamp the store holds to ts.
func (s *Store) raiseNewest(ts uint64) {
	for {
		old := s.newest.Load()
		if ts <= old || s.newest.CompareAndSwap(old, ts) {
			return
		}
	}
}

// MaxTimestamp is the newest timestamp of a row the store holds: rows
// Apply committed (written or not), rows copied from a peer. A store newer
// than the state that uses it holds rows of entries the state has not
// applied yet (a restart from an older snapshot; a copy from a peer that
// was ahead), which Apply ignores until it reaches them.
func (s *Store) MaxTimestamp() uint64 { return s.newest.Load() }

// rowTimestamp is the timestamp of a row checkRow accepted: an account
// or balance row's key ends with it; a transfer row's value starts with
// the timestamp it was put at.
func rowTimestamp(key, value []byte) uint64 {
	if key[0] == prefixTransfer {
		return binary.BigEndian.Uint64(value)
	}
	return binary.BigEndian.Uint64(key[len(key)-8:])
}

// checkRow checks that a row copied from a peer has the shape its writer
// (PutTransfer, PutAccountTransfer, PutAccountTransferRef, PutBalance)
// gives it: once imported, a row that does not decode would fail every
// read of it, and Transfer panics on one, as on a failing disk.
func checkRow(key, value []byte) error {
	if len(key) == 0 {
		return errors.New("empty key")
	}
	switch key[0] {
	case prefixTransfer:
		if len(key) == 1 {
			return errors.New("transfer row without an id")
		}
		_, _, err := decodeTransfer(value)
		return err
	case prefixAccount, prefixBalance:
		if len(key) < 2 || len(key) != 2+int(key[1])+8 {
			return fmt.Errorf("account row key %q", key)
		}
	default:
		return fmt.Errorf("key %q of no known kind", key)
	}
	switch {
	case key[0] == prefixBalance && len(value) != 32:
		return fmt.Errorf("balance row of %d bytes", len(value))
	case key[0] == prefixBalance:
		return nil
	case len(value) > 0 && value[0] == rowCopy:
		_, err := decodeTransferValue(value[1:])
		return err
	case len(value) > 0 && value[0] == rowRef:
		return nil
	}
	return fmt.Errorf("account row %q of no known kind", value[:min(len(value), 1)])
}

// Checkpoint copies the store, as of every entry committed so far, into a
// new store in dir (hard links to the same sstables where the file system
// allows), and records that the copy covers the log up to durable: an
// index of the log of the group that will open it. It is how a split gives
// the new shard its history (raftfsm.WriteGenesis): the parent's, as of
// the split's entry. dir must not exist.
func (s *Store) Checkpoint(dir string, durable uint64) error {
	if err := s.Drain(); err != nil {
		return err
	}
	// The store writes no WAL: what is in the memtables reaches the copy
	// only as sstables.
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("history: flush: %w", s.check(err))
	}
	if err := s.db.Checkpoint(dir); err != nil {
		return fmt.Errorf("history: checkpoint to %s: %w", dir, s.check(err))
	}
	c, err := Open(dir, Options{Logger: s.log})
	if err != nil {
		return err
	}
	return errors.Join(c.Sync(durable), c.Close())
}
