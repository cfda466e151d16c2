// Package history is a shard's history on disk: every final transfer by id,
// each account's transfers and balances in timestamp order. It implements
// shard.Archive on Pebble, so a shard keeps in memory only its accounts and
// open transfers, however many transfers it has made.
//
// Apply writes a batch per Raft entry (Commit, no fsync, no write-ahead log:
// the Raft log is the write-ahead log). Before Raft may drop log entries, a
// snapshot calls Sync, which flushes everything committed to sstables on disk
// and records the applied index it covers. After a crash, the rows written
// since the last Sync are gone and the Raft log replays them, byte for byte.
//
// A failing disk panics inside the Archive methods: Apply has no way to
// report it, and a replica that went on without its history would diverge.
package history

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/ledgerd/ledgerd/transport"
)

// Key prefixes. Persisted: never change.
const (
	prefixTransfer = 't' // t id -> at(8) transfer
	prefixAccount  = 'a' // a len(account) account ts(8) -> rowCopy transfer | rowRef id
	prefixBalance  = 'b' // b len(account) account ts(8) -> 5 x u64
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

// Store is one shard's history. The Archive methods are for Apply only (one
// goroutine); the query methods are safe for concurrent use and read what
// Apply committed.
type Store struct {
	db *pebble.DB
	// The entry being applied (between Begin and Commit): its writes, the
	// transfers among them by id (read back within the entry), and one
	// iterator over the store as it was when the entry began, reused for
	// every id looked up (a Get per id costs 10x more: it builds its own
	// iterator stack each time).
	batch   *pebble.Batch
	written map[string][]byte
	it      *pebble.Iterator
}

// Options size the store's memory. Zero values take the defaults.
type Options struct {
	CacheBytes    int64  // block cache; default 32 MiB
	MemTableBytes uint64 // each memtable; default 16 MiB
	Logger        *slog.Logger
}

// Open opens (or creates) the store in dir.
func Open(dir string, o Options) (*Store, error) {
	if o.CacheBytes == 0 {
		o.CacheBytes = 32 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref()
	opts := &pebble.Options{
		Cache:        cache,
		MemTableSize: o.MemTableBytes,
		DisableWAL:   true,
		Logger:       logger{o.Logger.With("component", "history")},
	}
	// Ids are looked up on every new transfer and almost never found:
	// bloom filters answer those without reading a block.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloomPolicy
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open history store %s: %w", dir, err)
	}
	return &Store{db: db}, nil
}

// Close closes the store. Rows committed since the last Sync may be lost;
// the Raft log still holds them.
func (s *Store) Close() error { return s.db.Close() }

// Begin starts an entry: Apply's writes go to one batch until Commit.
func (s *Store) Begin() {
	s.batch = s.db.NewBatch()
	if s.written == nil {
		s.written = make(map[string][]byte)
	}
}

// Transfer implements shard.Archive. Within an entry: the entry's own writes
// first, then the store through the entry's iterator. Between entries (a
// reader holding the machine's read lock): the store.
func (s *Store) Transfer(id string) (transport.Transfer, uint64, bool) {
	key := transferKey(id)
	if s.batch == nil {
		v, closer, err := s.db.Get(key)
		if errors.Is(err, pebble.ErrNotFound) {
			return transport.Transfer{}, 0, false
		}
		if err != nil {
			panic(fmt.Sprintf("history: read transfer %q: %v", id, err))
		}
		defer closer.Close()
		return mustDecodeTransfer(id, v)
	}
	if v, ok := s.written[id]; ok {
		return mustDecodeTransfer(id, v)
	}
	if s.it == nil {
		it, err := s.db.NewIter(nil)
		if err != nil {
			panic(fmt.Sprintf("history: iterator: %v", err))
		}
		s.it = it
	}
	if !s.it.SeekPrefixGE(key) || !bytes.Equal(s.it.Key(), key) {
		if err := s.it.Error(); err != nil {
			panic(fmt.Sprintf("history: read transfer %q: %v", id, err))
		}
		return transport.Transfer{}, 0, false
	}
	v, err := s.it.ValueAndErr()
	if err != nil {
		panic(fmt.Sprintf("history: read transfer %q: %v", id, err))
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
	v := appendTransfer(binary.BigEndian.AppendUint64(nil, at), t)
	s.set(transferKey(t.ID), v)
	s.written[t.ID] = v
}

// PutAccountTransfer implements shard.Archive.
func (s *Store) PutAccountTransfer(account string, ts uint64, t *transport.Transfer) {
	s.set(accountKey(prefixAccount, account, ts), appendTransfer([]byte{rowCopy}, t))
}

// PutAccountTransferRef implements shard.Archive.
func (s *Store) PutAccountTransferRef(account string, ts uint64, id string) {
	s.set(accountKey(prefixAccount, account, ts), append([]byte{rowRef}, id...))
}

// PutBalance implements shard.Archive.
func (s *Store) PutBalance(account string, b *transport.Balance) {
	v := make([]byte, 0, 32)
	for _, x := range [4]uint64{b.DebitsPending, b.DebitsPosted, b.CreditsPending, b.CreditsPosted} {
		v = binary.BigEndian.AppendUint64(v, x)
	}
	s.set(accountKey(prefixBalance, account, b.Timestamp), v)
}

func (s *Store) set(key, value []byte) {
	if err := s.batch.Set(key, value, nil); err != nil {
		panic(fmt.Sprintf("history: write: %v", err))
	}
}

// Commit writes the entry's rows (not synced; see Sync) and ends it.
func (s *Store) Commit() error {
	b := s.batch
	s.batch = nil
	clear(s.written)
	if s.it != nil {
		err := s.it.Close()
		s.it = nil
		if err != nil {
			b.Close()
			return fmt.Errorf("history: iterator: %w", err)
		}
	}
	defer b.Close()
	if b.Empty() {
		return nil
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("history: commit: %w", err)
	}
	return nil
}

// Sync makes every committed row durable and records that the store covers
// the log up to applied. A snapshot at applied may then let Raft drop the
// entries that wrote them. Safe to call while Apply goes on.
func (s *Store) Sync(applied uint64) error {
	if err := s.db.Set(keyDurable, binary.BigEndian.AppendUint64(nil, applied), pebble.NoSync); err != nil {
		return fmt.Errorf("history: record durable index: %w", err)
	}
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("history: flush: %w", err)
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
		return 0, err
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
// their encoding would pass maxBytes.
func (s *Store) AccountTransfers(f *transport.AccountFilter, maxBytes int) ([]transport.Transfer, error) {
	var out []transport.Transfer
	size := 0
	err := s.scan(prefixAccount, f, func(_ uint64, v []byte) error {
		if len(v) == 0 {
			return errors.New("history: empty account row")
		}
		kind, v := v[0], v[1:]
		if kind == rowRef {
			id := string(v)
			ref, closer, err := s.db.Get(transferKey(id))
			if err != nil {
				return fmt.Errorf("history: transfer %q of an account row: %w", id, err)
			}
			defer closer.Close()
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
	hi := f.TimestampMax
	if hi == 0 {
		hi = ^uint64(0)
	}
	lower := accountKey(prefix, f.AccountID, f.TimestampMin)
	upper := accountKey(prefix, f.AccountID, hi)
	upper = append(upper, 0) // inclusive
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	defer it.Close()
	valid, step := it.First, it.Next
	if f.Reverse {
		valid, step = it.Last, it.Prev
	}
	n := uint32(0)
	for ok := valid(); ok && n < f.Limit; ok = step() {
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		k := it.Key()
		if err := row(binary.BigEndian.Uint64(k[len(k)-8:]), v); err != nil {
			return err
		}
		n++
	}
	return it.Error()
}

func transferKey(id string) []byte {
	return append([]byte{prefixTransfer}, id...)
}

// accountKey is prefix, the account id's length and bytes, then ts: one
// account's rows are contiguous and in timestamp order.
func accountKey(prefix byte, account string, ts uint64) []byte {
	k := make([]byte, 0, 2+len(account)+8)
	k = append(k, prefix, byte(len(account)))
	k = append(k, account...)
	return binary.BigEndian.AppendUint64(k, ts)
}

func appendTransfer(dst []byte, t *transport.Transfer) []byte {
	b, err := transport.Marshal(t)
	if err != nil {
		panic(fmt.Sprintf("history: encode transfer %q: %v", t.ID, err))
	}
	return append(dst, b...)
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
