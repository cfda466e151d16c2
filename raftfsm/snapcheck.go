package raftfsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
)

// A group's snapshots are hashicorp/raft's FileSnapshotStore: snapshots/<id>/
// with state.bin (the machine's encoding) and meta.json (index, term,
// configuration, size and the CRC-64 of state.bin). Raft checks the CRC when
// it opens a snapshot, but on a mismatch, or a meta.json it cannot parse, it
// logs and falls back to an older snapshot, or to none: a state rewound
// without a word, or a panic later for a log entry compacted away. So every
// snapshot is checked here first: state.bin against its CRC, and meta.json,
// which has no checksum of its own, field by field against everything that
// repeats it (its directory name, the file's size, the log's entries at its
// index and configuration index, the machine's own index in state.bin).

// snapInfo is one snapshot directory and what checking it found.
type snapInfo struct {
	id      string
	meta    raft.SnapshotMeta
	bad     []string // what is wrong with it
	covered bool     // the machine can restore it on its own (coverer)
	// machineDamage is damage the machine found in its own storage while
	// reading the snapshot's head (a history store that fails a checksum).
	machineDamage error
}

func (s *snapInfo) good() bool { return len(s.bad) == 0 }

// fileSnapshotMeta is meta.json (hashicorp/raft's fileSnapshotMeta).
type fileSnapshotMeta struct {
	raft.SnapshotMeta
	CRC []byte
}

// listSnapshots reads every snapshot's meta.json and checks what it can
// without the log: newest first, as Raft lists them.
func listSnapshots(dir string) ([]*snapInfo, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "snapshots"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []*snapInfo
	for _, e := range entries {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") { // .tmp: cut short, ignored by Raft
			continue
		}
		s := &snapInfo{id: e.Name()}
		s.checkMeta(filepath.Join(dir, "snapshots", s.id))
		list = append(list, s)
	}
	slices.SortFunc(list, func(a, b *snapInfo) int { // newest first, as Raft sorts
		if c := compareUint(b.meta.Term, a.meta.Term); c != 0 {
			return c
		}
		if c := compareUint(b.meta.Index, a.meta.Index); c != 0 {
			return c
		}
		return strings.Compare(b.id, a.id)
	})
	return list, nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkMeta parses meta.json strictly and checks it against the directory
// name (term-index-millis), state.bin's size, and itself.
func (s *snapInfo) checkMeta(path string) {
	b, err := os.ReadFile(filepath.Join(path, "meta.json"))
	if err != nil {
		s.bad = append(s.bad, fmt.Sprintf("meta.json: %v", err))
		return
	}
	var m fileSnapshotMeta
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // a damaged field name would drop the field
	if err := dec.Decode(&m); err != nil {
		s.bad = append(s.bad, fmt.Sprintf("meta.json does not parse: %v", err))
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		s.bad = append(s.bad, "meta.json: bytes after its object")
	}
	s.meta = m.SnapshotMeta
	term, index, ok := parseSnapshotID(s.id)
	if fi, err := os.Stat(filepath.Join(path, "state.bin")); err != nil {
		s.bad = append(s.bad, fmt.Sprintf("state.bin: %v", err))
	} else if fi.Size() != m.Size {
		s.bad = append(s.bad, fmt.Sprintf("meta.json: size %d, state.bin has %d bytes", m.Size, fi.Size()))
	}
	switch {
	case m.Version != raft.SnapshotVersionMax:
		s.bad = append(s.bad, fmt.Sprintf("meta.json: version %d, Raft writes %d", m.Version, raft.SnapshotVersionMax))
	case m.ID != s.id || !ok || term != m.Term || index != m.Index:
		s.bad = append(s.bad, fmt.Sprintf("meta.json: id %q, term %d, index %d do not match the directory", m.ID, m.Term, m.Index))
	case m.ConfigurationIndex > m.Index || m.ConfigurationIndex == 0:
		s.bad = append(s.bad, fmt.Sprintf("meta.json: configuration index %d, snapshot index %d", m.ConfigurationIndex, m.Index))
	case len(m.CRC) != 8:
		s.bad = append(s.bad, fmt.Sprintf("meta.json: a CRC of %d bytes", len(m.CRC)))
	}
	if what := checkConfiguration(m.Configuration); what != "" {
		s.bad = append(s.bad, "meta.json: "+what)
	} else if !bytes.Equal(m.Peers, encodePeers(m.Configuration)) {
		s.bad = append(s.bad, "meta.json: peers do not match the configuration")
	}
}

// parseSnapshotID splits hashicorp/raft's snapshot name, term-index-millis.
func parseSnapshotID(id string) (term, index uint64, ok bool) {
	parts := strings.Split(id, "-")
	if len(parts) != 3 {
		return 0, 0, false
	}
	term, err1 := strconv.ParseUint(parts[0], 10, 64)
	index, err2 := strconv.ParseUint(parts[1], 10, 64)
	_, err3 := strconv.ParseUint(parts[2], 10, 64)
	return term, index, err1 == nil && err2 == nil && err3 == nil
}

// checkConfiguration says what is wrong with a configuration ("" if
// nothing).
func checkConfiguration(c raft.Configuration) string {
	if len(c.Servers) == 0 {
		return "an empty configuration"
	}
	seen := map[raft.ServerID]bool{}
	for _, s := range c.Servers {
		switch {
		case s.Suffrage != raft.Voter && s.Suffrage != raft.Nonvoter && s.Suffrage != raft.Staging:
			return fmt.Sprintf("server %q of suffrage %d", s.ID, s.Suffrage)
		case s.ID == "" || s.Address == "" || seen[s.ID]:
			return fmt.Sprintf("server %q at %q", s.ID, s.Address)
		}
		seen[s.ID] = true
	}
	return ""
}

// encodePeers is hashicorp/raft's encodePeers for a NetworkTransport (whose
// peer encoding is the address): the voters' addresses, msgpack.
func encodePeers(c raft.Configuration) []byte {
	var peers [][]byte
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			peers = append(peers, []byte(s.Address))
		}
	}
	var b []byte
	if err := codec.NewEncoderBytes(&b, &codec.MsgpackHandle{BasicHandle: codec.BasicHandle{TimeNotBuiltin: true}}).Encode(peers); err != nil {
		return nil
	}
	return b
}

// snapshotIndexer is a machine whose snapshots begin with the index they
// were taken at (the ShardMachine's: its last command), compared with
// meta.json's.
type snapshotIndexer interface {
	SnapshotIndex(head io.Reader) (uint64, error)
}

// checkAgainstLog compares meta.json with the log's copies of what it
// repeats (when the log still holds them), then state.bin with its CRC and
// with the machine.
func (s *snapInfo) checkAgainstLog(dir string, f *boltFacts, snaps raft.SnapshotStore, m Machine) {
	if !s.good() {
		return
	}
	if term, ok := f.terms[s.meta.Index]; ok && term != s.meta.Term {
		s.bad = append(s.bad, fmt.Sprintf("meta.json: term %d, the log's entry %d has term %d", s.meta.Term, s.meta.Index, term))
	}
	if _, ok := f.terms[s.meta.ConfigurationIndex]; ok {
		c, ok := f.configs[s.meta.ConfigurationIndex]
		if !ok || !slices.Equal(c.Servers, s.meta.Configuration.Servers) {
			s.bad = append(s.bad, fmt.Sprintf("meta.json: the configuration differs from the log's entry %d", s.meta.ConfigurationIndex))
		}
	}
	_, rc, err := snaps.Open(s.id) // reads state.bin through, checking its CRC-64
	if err != nil {
		s.bad = append(s.bad, fmt.Sprintf("state.bin: %v", err))
		return
	}
	rc.Close()
	s.checkMachine(filepath.Join(dir, "snapshots", s.id, "state.bin"), m)
}

// checkMachine asks the machine what it can tell of state.bin's head: its
// index, whether its history store covers it.
func (s *snapInfo) checkMachine(path string, m Machine) {
	s.covered = true
	head := func(fn func(io.Reader) error) {
		fh, err := os.Open(path)
		if err == nil {
			err = fn(fh)
			fh.Close()
		}
		switch {
		case errors.Is(err, ErrDamaged): // the machine's own storage, not the snapshot
			s.machineDamage = err
		case err != nil:
			s.bad = append(s.bad, fmt.Sprintf("state.bin: %v", err))
		}
	}
	if ix, ok := m.(snapshotIndexer); ok {
		head(func(r io.Reader) error {
			// The machine's index is its last command; Raft's, in
			// meta.json, may be a later entry of its own (a noop, a
			// configuration, a barrier), which the machine never sees.
			index, err := ix.SnapshotIndex(r)
			if err == nil && index > s.meta.Index {
				err = fmt.Errorf("taken at index %d, after meta.json's %d", index, s.meta.Index)
			}
			return err
		})
	}
	if c, ok := m.(coverer); ok && s.good() {
		head(func(r io.Reader) (err error) {
			s.covered, err = c.Covers(r)
			return err
		})
	}
}
