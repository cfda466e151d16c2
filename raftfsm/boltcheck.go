package raftfsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// What a group's raft.db holds besides Raft's log: the bucket names of
// raft-boltdb, Raft's own keys, and this package's format marker.
var (
	bucketLogs   = []byte("logs")
	bucketConf   = []byte("conf")
	raftKeys     = [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")}
	keyFormat    = []byte("ledgerd-storage-format")
	keyTerm      = raftKeys[0]
	boltTimeout  = 5 * time.Second
	boltMetaSize = 64 // bbolt's meta page: magic ... txid, checksum
)

// storeFormat is the format of a group's raft.db this release writes: 2,
// every entry sealed (checksum.go) from the marker's checkedFrom on, Raft's
// term and vote checksummed. Format 1, implicit (no marker), is the release
// without checksums: its entries are read unchecked, and its term and vote
// are rewritten with checksums when it is first opened.
const storeFormat = 2

// storeMarker is the value of keyFormat (itself checksummed like Raft's
// values): the format, then the first index whose entry must be sealed.
type storeMarker struct {
	format      byte
	checkedFrom uint64
}

func (m storeMarker) encode() []byte {
	return encodeStable(keyFormat, binary.BigEndian.AppendUint64([]byte{m.format}, m.checkedFrom))
}

// boltFacts is what checking raft.db found, for the snapshot checks and for
// salvage.
type boltFacts struct {
	exists      bool
	keys        []logKey // every key of the log, in order
	checkedFrom uint64
	terms       map[uint64]uint64             // the term of each entry asked for
	configs     map[uint64]raft.Configuration // the configuration entries asked for
	broken      bool                          // pages bbolt cannot read: salvage cannot help
	damage      []error
	// sealedWithoutMarker: an entry carries a seal in a file without a
	// format marker, which only damage to the marker explains.
	sealedWithoutMarker bool
	newer               error // a format this release does not know: not damage, not touched
	// For salvage: the last entry without a seal, the highest term of a
	// good entry.
	lastUnsealed, maxTerm uint64
}

type logKey struct {
	index uint64
	bad   bool
}

func (f *boltFacts) last() uint64 {
	if len(f.keys) == 0 {
		return 0
	}
	return f.keys[len(f.keys)-1].index
}

// checkBolt checks every byte of raft.db that matters before raft-boltdb
// opens it: both meta pages (bbolt falls back to the older one silently), the
// page structure, every log entry, Raft's term and vote; it records the
// format marker of a new or old-format file. wanted names the entries whose
// term and configuration the snapshot checks compare with.
func checkBolt(path string, group uint32, wanted map[uint64]bool) (*boltFacts, error) {
	f := &boltFacts{terms: map[uint64]uint64{}, configs: map[uint64]raft.Configuration{}}
	damage := func(index uint64, what string, args ...any) {
		f.damage = append(f.damage, &DamageError{Group: group, File: path, Index: index, What: fmt.Sprintf(what, args...)})
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 { // empty: created, never written
		f.exists = true
		if what := checkMetaPages(path); what != "" {
			damage(0, "%s: the transactions it recorded, and entries this node acknowledged, may be lost", what)
		}
		if err := walkPages(path); err != nil {
			f.broken = true
			damage(0, "bbolt page structure: %v", err)
			return f, nil
		}
	}
	db, err := openBolt(path)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("group %d: %s is locked: is another ledgerd using this data directory? %w", group, path, err)
	}
	if err != nil {
		f.broken = true
		damage(0, "bbolt cannot open it: %v", err)
		return f, nil
	}
	defer db.Close()
	if err := db.View(func(tx *bbolt.Tx) error {
		if errs := checkPages(tx); len(errs) > 0 {
			f.broken = true
			damage(0, "bbolt page structure: %v", errors.Join(errs...))
			return nil
		}
		f.checkLog(tx, wanted, damage)
		f.checkConf(tx, damage)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("group %d: read %s: %w", group, path, err)
	}
	if f.newer != nil {
		return nil, fmt.Errorf("group %d: %s: %w", group, path, f.newer)
	}
	if len(f.damage) > 0 || f.checkedFrom != 0 { // damaged, or marked already
		return f, nil
	}
	return f, db.Update(f.markFormat)
}

func openBolt(path string) (db *bbolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some damaged pages
			err = fmt.Errorf("bbolt: %v", r)
		}
	}()
	return bbolt.Open(path, 0o600, &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, Timeout: boltTimeout})
}

// checkPages runs bbolt's own consistency check: every page reachable once,
// page types and key order.
func checkPages(tx *bbolt.Tx) []error {
	var errs []error
	for err := range tx.Check() {
		errs = append(errs, err)
	}
	return errs
}

// checkMetaPages reads raft.db's two meta pages and tells what is wrong with
// them ("" if nothing). bbolt checks a meta page's checksum but, when one
// fails, opens the file from the other (older) one without a word: the last
// transaction, entries and votes this node acknowledged, would be gone.
func checkMetaPages(path string) string {
	b, err := readHead(path)
	if err != nil {
		return fmt.Sprintf("meta pages: %v", err)
	}
	size := metaPageSize(b)
	if size == 0 {
		return "both meta pages fail their checksum"
	}
	var bad []string
	for i := range 2 {
		if what := checkMetaPage(b[i*size:(i+1)*size], i, size); what != "" {
			bad = append(bad, fmt.Sprintf("meta page %d %s", i, what))
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return fmt.Sprint(bad)
}

// metaPageSizeMax is the largest page size looked for.
const metaPageSizeMax = 64 << 10

func readHead(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b := make([]byte, 2*metaPageSizeMax)
	n, err := io.ReadFull(fh, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	return b[:n], nil
}

// metaPageSize finds the page size from whichever meta page is valid.
func metaPageSize(b []byte) int {
	for size := 1 << 10; size <= metaPageSizeMax; size <<= 1 {
		for i := range 2 {
			if len(b) >= (i+1)*size && checkMetaPage(b[i*size:(i+1)*size], i, size) == "" {
				return size
			}
		}
	}
	return 0
}

// checkMetaPage checks page i: the page header bbolt writes (id i, the meta
// flag), the meta fields and their FNV-64a checksum, and the rest of the
// page, which bbolt writes as zeros.
func checkMetaPage(p []byte, i, size int) string {
	const hdr = 16
	ne := binary.NativeEndian
	m := p[hdr : hdr+boltMetaSize]
	h := fnv.New64a()
	h.Write(m[:boltMetaSize-8])
	switch {
	case ne.Uint64(p) != uint64(i) || ne.Uint16(p[8:]) != 0x04 || ne.Uint16(p[10:]) != 0 || ne.Uint32(p[12:]) != 0:
		return "has a damaged page header"
	case ne.Uint32(m) != 0xED0CDAED || ne.Uint32(m[4:]) != 2:
		return "has no bbolt magic and version"
	case ne.Uint64(m[boltMetaSize-8:]) != h.Sum64():
		return "fails its checksum"
	case int(ne.Uint32(m[8:])) != size:
		return "names another page size"
	case bytes.ContainsFunc(p[hdr+boltMetaSize:], func(r rune) bool { return r != 0 }):
		return "has bytes after its meta that bbolt never writes"
	}
	return ""
}

// checkLog decodes and checks every entry of the log bucket, in key order.
func (f *boltFacts) checkLog(tx *bbolt.Tx, wanted map[uint64]bool, damage func(uint64, string, ...any)) {
	b := tx.Bucket(bucketLogs)
	if b == nil {
		if f.exists {
			damage(0, "no %q bucket", bucketLogs)
		}
		return
	}
	f.checkedFrom = readCheckedFrom(tx)
	var prev uint64
	err := forEach(b, func(k, v []byte) {
		if len(k) != 8 {
			damage(0, "log key %x of %d bytes", k, len(k))
			return
		}
		index := binary.BigEndian.Uint64(k)
		if index <= prev {
			damage(index, "log keys out of order (after %d)", prev)
		}
		prev = index
		what := f.checkStoredEntry(index, v, wanted)
		if what != "" {
			damage(index, "%s", what)
		}
		f.keys = append(f.keys, logKey{index: index, bad: what != ""})
	})
	if err != nil {
		damage(0, "reading the log: %v", err)
	}
}

// forEach walks a bucket, turning bbolt's panics on damaged pages into an
// error.
func forEach(b *bbolt.Bucket, fn func(k, v []byte)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bbolt: %v", r)
		}
	}()
	return b.ForEach(func(k, v []byte) error { fn(k, v); return nil })
}

// readCheckedFrom is the marker's checkedFrom, or 0 with no valid marker
// (checkConf reports why).
func readCheckedFrom(tx *bbolt.Tx) uint64 {
	conf := tx.Bucket(bucketConf)
	if conf == nil {
		return 0
	}
	m, err := decodeMarker(conf.Get(keyFormat))
	if err != nil {
		return 0
	}
	return m.checkedFrom
}

func decodeMarker(b []byte) (storeMarker, error) {
	if b == nil {
		return storeMarker{}, errNoMarker
	}
	v, err := decodeStable(keyFormat, b)
	if err != nil {
		return storeMarker{}, err
	}
	if len(v) != 9 {
		return storeMarker{}, fmt.Errorf("format marker of %d bytes: %w", len(v), errUnknownFormat)
	}
	if v[0] > storeFormat {
		return storeMarker{}, fmt.Errorf("raft.db is in storage format %d, written by a newer ledgerd; this release reads formats 1 and %d: %w", v[0], storeFormat, errNewerFormat)
	}
	if v[0] != storeFormat {
		return storeMarker{}, fmt.Errorf("storage format %d: %w", v[0], errUnknownFormat)
	}
	return storeMarker{format: v[0], checkedFrom: binary.BigEndian.Uint64(v[1:])}, nil
}

var (
	errNoMarker    = errors.New("no format marker")
	errNewerFormat = errors.New("unknown storage format")
)

// checkStoredEntry decodes one stored entry and checks it: its seal (a
// missing one only before checkedFrom, or in a file without a marker, which
// checkConf judges), its envelope, its configuration. It returns what is
// wrong ("" if nothing).
func (f *boltFacts) checkStoredEntry(index uint64, v []byte, wanted map[uint64]bool) string {
	var l raft.Log
	if err := codec.NewDecoderBytes(v, strictLogHandle).Decode(&l); err != nil {
		return fmt.Sprintf("does not decode: %v", err)
	}
	checkedFrom := f.checkedFrom
	if checkedFrom == 0 {
		checkedFrom = ^uint64(0) // no marker yet: checkConf decides
	}
	if err := checkEntry(&l, index, checkedFrom); err != nil {
		return err.Error()
	}
	if len(l.Extensions) > 0 && f.checkedFrom == 0 {
		f.sealedWithoutMarker = true
	}
	if len(l.Extensions) == 0 {
		f.lastUnsealed = index
	}
	switch l.Type {
	case raft.LogCommand:
		if _, _, err := decodeEntry(l.Data); err != nil {
			return err.Error()
		}
	case raft.LogConfiguration:
		c, err := decodeConfiguration(l.Data)
		if err != nil {
			return err.Error()
		}
		if wanted[index] {
			f.configs[index] = c
		}
	}
	if wanted[index] {
		f.terms[index] = l.Term
	}
	f.maxTerm = max(f.maxTerm, l.Term)
	return ""
}

// strictLogHandle decodes a stored entry as raft-boltdb does, but refuses a
// field it does not know: a damaged field name would otherwise drop the
// field without a word (AppendedAt's, the one field the seal leaves out).
var strictLogHandle = &codec.MsgpackHandle{BasicHandle: codec.BasicHandle{DecodeOptions: codec.DecodeOptions{ErrorIfNoField: true}}}

// decodeConfiguration is raft.DecodeConfiguration without its panic.
func decodeConfiguration(b []byte) (c raft.Configuration, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("configuration entry: %v", r)
		}
	}()
	return raft.DecodeConfiguration(b), nil
}

// checkConf checks Raft's term and vote and the format marker, and that the
// bucket holds nothing else (a damaged key name would hide a value).
func (f *boltFacts) checkConf(tx *bbolt.Tx, damage func(uint64, string, ...any)) {
	conf := tx.Bucket(bucketConf)
	if conf == nil {
		if f.exists {
			damage(0, "no %q bucket", bucketConf)
		}
		return
	}
	_, err := decodeMarker(conf.Get(keyFormat))
	legacy := errors.Is(err, errNoMarker)
	switch {
	case errors.Is(err, errNewerFormat):
		f.newer = err
		return
	case legacy && f.sealedWithoutMarker:
		damage(0, "entries carry checksums but the format marker is missing")
	case err != nil && !legacy:
		damage(0, "format marker: %v", err)
	}
	hasTerm := false
	err = forEach(conf, func(k, v []byte) {
		switch {
		case bytes.Equal(k, keyFormat):
		case !isRaftKey(k):
			damage(0, "unknown key %q in Raft's state", k)
		case legacy:
			hasTerm = hasTerm || bytes.Equal(k, keyTerm)
			if !bytes.Equal(k, raftKeys[2]) && len(v) != 8 {
				damage(0, "Raft state %q of %d bytes, want 8", k, len(v))
			}
		default:
			hasTerm = hasTerm || bytes.Equal(k, keyTerm)
			if v, err := decodeStable(k, v); err != nil {
				damage(0, "Raft state %v", err)
			} else if !bytes.Equal(k, raftKeys[2]) && len(v) != 8 {
				damage(0, "Raft state %q of %d bytes, want 8", k, len(v))
			}
		}
	})
	if err != nil {
		damage(0, "reading Raft's state: %v", err)
	}
	if !hasTerm && len(f.keys) > 0 {
		damage(0, "a log of %d entries but no current term", len(f.keys))
	}
}

func isRaftKey(k []byte) bool {
	for _, r := range raftKeys {
		if bytes.Equal(k, r) {
			return true
		}
	}
	return false
}

// markFormat writes the format marker of a new file, or of a file written
// by the release without checksums, whose term and vote it rewrites with
// checksums in the same transaction: from then on every value is checked,
// and every entry from checkedFrom on. It creates raft-boltdb's buckets if
// missing (a new file).
func (f *boltFacts) markFormat(tx *bbolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketLogs); err != nil {
		return err
	}
	conf, err := tx.CreateBucketIfNotExists(bucketConf)
	if err != nil {
		return err
	}
	if conf.Get(keyFormat) != nil {
		return nil
	}
	for _, k := range raftKeys {
		if v := conf.Get(k); v != nil {
			if err := conf.Put(k, encodeStable(k, bytes.Clone(v))); err != nil {
				return err
			}
		}
	}
	f.checkedFrom = f.last() + 1
	return conf.Put(keyFormat, storeMarker{format: storeFormat, checkedFrom: f.checkedFrom}.encode())
}

// salvageBolt removes the dropped log entries, then rebuilds what of Raft's
// state failed its checks: unknown keys go, a damaged term becomes the
// highest good one seen, a damaged vote is forgotten (a single node votes
// for itself again in a later term), a missing or damaged marker is written
// anew requiring seals after the last unsealed entry. Two transactions, so
// that both meta pages are written afresh.
func salvageBolt(path string, f *boltFacts, drop []uint64) error {
	db, err := openBolt(path)
	if err != nil {
		return err
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		logs, err := tx.CreateBucketIfNotExists(bucketLogs)
		if err != nil {
			return err
		}
		for _, index := range drop {
			if err := logs.Delete(binary.BigEndian.AppendUint64(nil, index)); err != nil {
				return err
			}
		}
		f.keys = slices.DeleteFunc(f.keys, func(k logKey) bool { _, found := slices.BinarySearch(drop, k.index); return found })
		return f.salvageConf(tx)
	})
	if err != nil {
		return err
	}
	return db.Update(func(tx *bbolt.Tx) error { // the other meta page
		conf := tx.Bucket(bucketConf)
		return conf.Put(keyFormat, bytes.Clone(conf.Get(keyFormat)))
	})
}

func (f *boltFacts) salvageConf(tx *bbolt.Tx) error {
	conf, err := tx.CreateBucketIfNotExists(bucketConf)
	if err != nil {
		return err
	}
	marker, merr := decodeMarker(conf.Get(keyFormat))
	legacy := errors.Is(merr, errNoMarker) && !f.sealedWithoutMarker
	values := map[string][]byte{} // Raft's good values, decoded
	var keys [][]byte
	if err := forEach(conf, func(k, _ []byte) { keys = append(keys, bytes.Clone(k)) }); err != nil {
		return err
	}
	for _, k := range keys {
		v, err := conf.Get(k), error(nil)
		if !legacy && isRaftKey(k) {
			v, err = decodeStable(k, v)
		}
		if err == nil && isRaftKey(k) && (bytes.Equal(k, raftKeys[2]) || len(v) == 8) {
			values[string(k)] = bytes.Clone(v)
		}
		if err := conf.Delete(k); err != nil {
			return err
		}
	}
	if _, ok := values[string(keyTerm)]; !ok {
		values[string(keyTerm)] = binary.BigEndian.AppendUint64(nil, f.maxTerm)
	}
	if len(values[string(raftKeys[1])]) == 0 || len(values[string(raftKeys[2])]) == 0 {
		delete(values, string(raftKeys[1])) // half a vote is none
		delete(values, string(raftKeys[2]))
	}
	for k, v := range values {
		if err := conf.Put([]byte(k), encodeStable([]byte(k), v)); err != nil {
			return err
		}
	}
	switch {
	case merr == nil:
	case legacy: // as any file of the release before checksums
		marker = storeMarker{format: storeFormat, checkedFrom: f.last() + 1}
	default:
		marker = storeMarker{format: storeFormat, checkedFrom: f.lastUnsealed + 1}
	}
	return conf.Put(keyFormat, marker.encode())
}
