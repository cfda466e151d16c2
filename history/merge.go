package history

import (
	"bytes"
	"cmp"
	"slices"
)

// runMerger yields the rows of a batch of entries in key order, rows of one
// key in log order. Each entry's rows are sorted apart (an index of the
// writer's own: queries read the entry's rows meanwhile), then the sorted
// runs merged through a heap: n log k comparisons, against n log n for one
// sort of the whole batch, which cost the writer twice the sorting of the
// entries apart (profile of BenchmarkApplyWithHistory).
type runMerger struct {
	runs []run // a heap: runs[0] holds the least next row
	idx  []int32
}

// run is an entry's rows in key order, from pos on.
type run struct {
	e   *entry
	idx []int32
	pos int
}

func (r *run) key() []byte { return r.e.rows.key(int(r.idx[r.pos])) }

// reset sorts each entry's rows and heaps the runs.
func (m *runMerger) reset(batch []*entry) {
	n := 0
	for _, e := range batch {
		n += len(e.rows.rows)
	}
	m.idx = slices.Grow(m.idx[:0], n)[:n]
	clear(m.runs)
	m.runs = m.runs[:0]
	start := 0
	for _, e := range batch {
		idx := m.idx[start : start+len(e.rows.rows)]
		start += len(idx)
		if len(idx) == 0 {
			continue
		}
		for i := range idx {
			idx[i] = int32(i)
		}
		r := &e.rows
		slices.SortFunc(idx, func(a, b int32) int {
			if c := bytes.Compare(r.key(int(a)), r.key(int(b))); c != 0 {
				return c
			}
			return cmp.Compare(a, b) // the last written wins
		})
		m.runs = append(m.runs, run{e: e, idx: idx})
	}
	for i := len(m.runs)/2 - 1; i >= 0; i-- {
		m.down(i)
	}
}

// next returns the least row left, or false once none is.
func (m *runMerger) next() (key, value []byte, ok bool) {
	if len(m.runs) == 0 {
		return nil, nil, false
	}
	r := &m.runs[0]
	i := int(r.idx[r.pos])
	key, value = r.e.rows.key(i), r.e.rows.value(i)
	if r.pos++; r.pos == len(r.idx) {
		last := len(m.runs) - 1
		m.runs[0] = m.runs[last]
		m.runs[last] = run{}
		m.runs = m.runs[:last]
	}
	if len(m.runs) > 1 {
		m.down(0)
	}
	return key, value, true
}

// less orders runs by their next row's key, then log order.
func (m *runMerger) less(a, b int) bool {
	if c := bytes.Compare(m.runs[a].key(), m.runs[b].key()); c != 0 {
		return c < 0
	}
	return m.runs[a].e.seq < m.runs[b].e.seq
}

func (m *runMerger) down(i int) {
	for {
		least, l, r := i, 2*i+1, 2*i+2
		if l < len(m.runs) && m.less(l, least) {
			least = l
		}
		if r < len(m.runs) && m.less(r, least) {
			least = r
		}
		if least == i {
			return
		}
		m.runs[i], m.runs[least] = m.runs[least], m.runs[i]
		i = least
	}
}
