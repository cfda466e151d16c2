package raftfsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// checkedLogStore is the group's raft.LogStore: raft-boltdb with every
// entry sealed as it is appended and checked as it is read back, for apply
// and for replication alike, so a damaged entry is neither applied nor sent
// to a peer. A failed check is recorded (damageMarker) and reported; Raft
// stops the process if it was reading the entry to apply it (it panics on a
// log read error there), and the group stops otherwise (onDamage).
type checkedLogStore struct {
	*raftboltdb.BoltStore
	group       uint32
	dir, file   string
	checkedFrom uint64
	onDamage    func(error)
	once        sync.Once
}

// GetLog reads and checks entry index. A missing entry is not damage: Raft
// asks for entries compacted away, and sends a snapshot instead.
func (s *checkedLogStore) GetLog(index uint64, l *raft.Log) error {
	err := s.BoltStore.GetLog(index, l)
	if errors.Is(err, raft.ErrLogNotFound) {
		return err
	}
	if err != nil {
		return s.damaged(&DamageError{Group: s.group, File: s.file, Index: index, What: fmt.Sprintf("does not decode: %v", err)})
	}
	if err := checkEntry(l, index, s.checkedFrom); err != nil {
		return s.damaged(&DamageError{Group: s.group, File: s.file, Index: index, What: err.Error()})
	}
	return nil
}

// StoreLog seals and stores one entry.
func (s *checkedLogStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs seals what this node appends as leader and checks what a leader
// sent: an entry that arrived damaged is refused (the leader sends it again),
// never stored.
func (s *checkedLogStore) StoreLogs(logs []*raft.Log) error {
	for _, l := range logs {
		if err := sealEntry(l); err != nil {
			return fmt.Errorf("group %d: refusing to store %w", s.group, err)
		}
	}
	return s.BoltStore.StoreLogs(logs)
}

// damaged records err once in the group's directory, reports it, and
// returns it.
func (s *checkedLogStore) damaged(err error) error {
	s.once.Do(func() {
		if rerr := recordDamage(s.dir, err); rerr != nil {
			err = errors.Join(err, rerr)
		}
		if s.onDamage != nil {
			s.onDamage(err)
		}
	})
	return err
}

// checkedStable is the group's raft.StableStore: Raft's term and vote, each
// value followed by the CRC-32C of its key and value and a format byte. A
// voter that read a damaged term or vote could vote twice in one term.
type checkedStable struct {
	*raftboltdb.BoltStore
	group uint32
	file  string
}

const stableV1 = 0x5e

func encodeStable(key, v []byte) []byte {
	b := append(append([]byte(nil), v...), 0, 0, 0, 0, stableV1)
	binary.BigEndian.PutUint32(b[len(v):], stableSum(key, v))
	return b
}

func stableSum(key, v []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, v)
}

// decodeStable checks and strips a value's checksum.
func decodeStable(key, b []byte) ([]byte, error) {
	if len(b) < 5 || b[len(b)-1] != stableV1 {
		return nil, fmt.Errorf("%q: value %x: %w", key, b, errUnknownFormat)
	}
	v := b[:len(b)-5]
	if sum, stored := stableSum(key, v), binary.BigEndian.Uint32(b[len(v):]); sum != stored {
		return nil, fmt.Errorf("%q: CRC-32C %08x, stored %08x: %w", key, sum, stored, errSealMismatch)
	}
	return v, nil
}

func (s *checkedStable) Set(key, v []byte) error { return s.BoltStore.Set(key, encodeStable(key, v)) }

// Get returns raft-boltdb's own error for a missing key: Raft tells it apart
// by its text.
func (s *checkedStable) Get(key []byte) ([]byte, error) {
	b, err := s.BoltStore.Get(key)
	if err != nil {
		return nil, err
	}
	v, err := decodeStable(key, b)
	if err != nil {
		return nil, &DamageError{Group: s.group, File: s.file, What: "Raft state " + err.Error()}
	}
	return v, nil
}

func (s *checkedStable) SetUint64(key []byte, v uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, v))
}

func (s *checkedStable) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, &DamageError{Group: s.group, File: s.file, What: fmt.Sprintf("Raft state %q: %d bytes, want 8", key, len(v))}
	}
	return binary.BigEndian.Uint64(v), nil
}
