package raftfsm

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
)

// bbolt trusts its pages: opening a file whose freelist is not synced
// (NoFreelistSync, as raft.db is opened) walks every page reachable from the
// root in a goroutine of its own, which panics on a page whose header is
// damaged ("Page expected to be: 7, but self identifies as 0"), and no
// recover can catch that. walkPages walks the same pages first, from the
// meta page bbolt would open (the valid one with the higher transaction id),
// with every bound checked, so that such damage is an error.

// bbolt's page layout (go.etcd.io/bbolt/internal/common).
const (
	pageHeaderSize  = 16 // id u64, flags u16, count u16, overflow u32
	pageElementSize = 16 // branch: pos, ksize, pgid u64; leaf: flags, pos, ksize, vsize
	branchPageFlag  = 0x01
	leafPageFlag    = 0x02
	bucketLeafFlag  = 0x01
	inBucketSize    = 16 // root pgid u64, sequence u64
	metaRootOffset  = 16 // magic, version, page size, flags
	metaPgidOffset  = 40 // after the root bucket and the freelist page
)

type pageWalk struct {
	fh       *os.File
	size     int64 // of the file
	pageSize int
	hw       uint64 // the high-water page id: every page is below it
	seen     map[uint64]bool
}

// walkPages checks every page reachable from raft.db's root.
func walkPages(path string) error {
	head, err := readHead(path)
	if err != nil {
		return err
	}
	size := metaPageSize(head)
	if size == 0 {
		return fmt.Errorf("no valid meta page")
	}
	meta := newestMeta(head, size)
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	w := &pageWalk{fh: fh, size: fi.Size(), pageSize: size, hw: binary.NativeEndian.Uint64(meta[metaPgidOffset:]), seen: map[uint64]bool{}}
	return w.walk(binary.NativeEndian.Uint64(meta[metaRootOffset:]))
}

// newestMeta is the meta bbolt opens: the valid one with the higher
// transaction id.
func newestMeta(head []byte, size int) []byte {
	var best []byte
	var txid uint64
	for i := range 2 {
		p := head[i*size : (i+1)*size]
		if checkMetaPage(p, i, size) != "" && !metaSumHolds(p) {
			continue
		}
		m := p[pageHeaderSize : pageHeaderSize+boltMetaSize]
		if t := binary.NativeEndian.Uint64(m[48:]); best == nil || t > txid {
			best, txid = m, t
		}
	}
	return best
}

// metaSumHolds reports whether a meta page's checksum holds (bbolt opens
// from it even if the rest of the page is damaged).
func metaSumHolds(p []byte) bool {
	m := p[pageHeaderSize : pageHeaderSize+boltMetaSize]
	h := fnv.New64a()
	h.Write(m[:boltMetaSize-8])
	return binary.NativeEndian.Uint32(m) == 0xED0CDAED && binary.NativeEndian.Uint64(m[boltMetaSize-8:]) == h.Sum64()
}

// walk checks page id and the pages below it.
func (w *pageWalk) walk(id uint64) error {
	if id < 2 || id >= w.hw {
		return fmt.Errorf("page id %d outside 2..%d", id, w.hw)
	}
	if w.seen[id] {
		return fmt.Errorf("page %d reached twice", id)
	}
	w.seen[id] = true
	p, err := w.read(id)
	if err != nil {
		return err
	}
	return w.elements(id, p)
}

// read reads page id with its overflow pages, checking its header.
func (w *pageWalk) read(id uint64) ([]byte, error) {
	hdr := make([]byte, pageHeaderSize)
	if _, err := w.fh.ReadAt(hdr, int64(id)*int64(w.pageSize)); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	ne := binary.NativeEndian
	overflow := uint64(ne.Uint32(hdr[12:]))
	switch {
	case ne.Uint64(hdr) != id:
		return nil, fmt.Errorf("page %d identifies itself as %d", id, ne.Uint64(hdr))
	case id+overflow >= w.hw || int64(id+overflow+1)*int64(w.pageSize) > w.size:
		return nil, fmt.Errorf("page %d: %d overflow pages run past the file", id, overflow)
	}
	p := make([]byte, (overflow+1)*uint64(w.pageSize))
	if _, err := w.fh.ReadAt(p, int64(id)*int64(w.pageSize)); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	return p, nil
}

// elements checks a branch or leaf page's elements and walks its children:
// the pages a branch points to, the buckets a leaf holds.
func (w *pageWalk) elements(id uint64, p []byte) error {
	ne := binary.NativeEndian
	flags, count := ne.Uint16(p[8:]), int(ne.Uint16(p[10:]))
	if flags != branchPageFlag && flags != leafPageFlag {
		return fmt.Errorf("page %d of type %#x in the tree", id, flags)
	}
	if pageHeaderSize+count*pageElementSize > len(p) {
		return fmt.Errorf("page %d: %d elements do not fit", id, count)
	}
	for i := range count {
		at := pageHeaderSize + i*pageElementSize
		e := p[at : at+pageElementSize]
		if flags == branchPageFlag {
			if at+int(ne.Uint32(e))+int(ne.Uint32(e[4:])) > len(p) {
				return fmt.Errorf("page %d: key %d runs past the page", id, i)
			}
			if err := w.walk(ne.Uint64(e[8:])); err != nil {
				return err
			}
			continue
		}
		pos, ksize, vsize := int(ne.Uint32(e[4:])), int(ne.Uint32(e[8:])), int(ne.Uint32(e[12:]))
		end := at + pos + ksize + vsize
		if end > len(p) || end < at {
			return fmt.Errorf("page %d: element %d runs past the page", id, i)
		}
		if ne.Uint32(e)&bucketLeafFlag != 0 {
			if err := w.bucket(id, p[at+pos+ksize:end]); err != nil {
				return err
			}
		}
	}
	return nil
}

// bucket walks a sub-bucket: its root page, or its inline page.
func (w *pageWalk) bucket(id uint64, v []byte) error {
	if len(v) < inBucketSize {
		return fmt.Errorf("page %d: a bucket header of %d bytes", id, len(v))
	}
	if root := binary.NativeEndian.Uint64(v); root != 0 {
		return w.walk(root)
	}
	inline := v[inBucketSize:]
	if len(inline) < pageHeaderSize {
		return fmt.Errorf("page %d: an inline bucket of %d bytes", id, len(inline))
	}
	if binary.NativeEndian.Uint16(inline[8:]) != leafPageFlag {
		return fmt.Errorf("page %d: an inline bucket that is no leaf", id)
	}
	return w.elements(id, inline)
}
