// Package raftfsm runs state machines as hashicorp/raft groups: the log
// envelope, the FSM adapter with snapshots and restore, the group's stores on
// disk, and the leader's actor that batches queued commands into one entry.
package raftfsm

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// Machine is a deterministic state machine replicated by a Group.
type Machine interface {
	// Apply applies one entry: the proposing leader's clock and the
	// commands (each one msgpack value, as proposed), and returns one result
	// per command. It must not read a clock or do I/O.
	Apply(index uint64, ts uint64, cmds [][]byte) []any
	// Snapshot returns a point-in-time copy quickly; Persist runs while
	// Apply goes on.
	Snapshot() (raft.FSMSnapshot, error)
	// Restore replaces the state with a snapshot's.
	Restore(r io.Reader) error
}

// envelopeVersion is the first byte of every command entry.
const envelopeVersion = 1

// encodeEntry builds an entry: version, the timestamp, then each command with
// a uvarint length prefix. The commands stay opaque bytes here, so the
// actor never re-encodes what a handler encoded.
func encodeEntry(ts uint64, cmds [][]byte) []byte {
	n := 1 + binary.MaxVarintLen64 + binary.MaxVarintLen64
	for _, c := range cmds {
		n += binary.MaxVarintLen64 + len(c)
	}
	b := make([]byte, 0, n)
	b = append(b, envelopeVersion)
	b = binary.AppendUvarint(b, ts)
	b = binary.AppendUvarint(b, uint64(len(cmds)))
	for _, c := range cmds {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	return b
}

// decodeEntry is encodeEntry's inverse. The commands alias data.
func decodeEntry(data []byte) (ts uint64, cmds [][]byte, err error) {
	if len(data) == 0 || data[0] != envelopeVersion {
		return 0, nil, fmt.Errorf("entry envelope: unknown version")
	}
	data = data[1:]
	next := func() (uint64, error) {
		v, k := binary.Uvarint(data)
		if k <= 0 {
			return 0, fmt.Errorf("entry envelope: bad varint")
		}
		data = data[k:]
		return v, nil
	}
	if ts, err = next(); err != nil {
		return 0, nil, err
	}
	count, err := next()
	if err != nil {
		return 0, nil, err
	}
	if count > uint64(len(data)) {
		return 0, nil, fmt.Errorf("entry envelope: %d commands in %d bytes", count, len(data))
	}
	cmds = make([][]byte, count)
	for i := range cmds {
		l, err := next()
		if err != nil {
			return 0, nil, err
		}
		if l > uint64(len(data)) {
			return 0, nil, fmt.Errorf("entry envelope: command of %d bytes in %d", l, len(data))
		}
		cmds[i], data = data[:l:l], data[l:]
	}
	return ts, cmds, nil
}

// fsm adapts a Machine to raft.FSM and raft.BatchingFSM.
type fsm struct {
	m     Machine
	group uint32
	log   *slog.Logger
	// starting is set while raft.NewRaft restores the newest snapshot:
	// Raft falls back to an older one, or none, if Restore fails, and
	// Open refuses instead (startErr).
	starting atomic.Bool
	startErr error
}

var _ raft.BatchingFSM = (*fsm)(nil)

func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch applies committed logs in order. An entry whose seal fails
// (damaged in memory since it was checked) or that does not decode (a bug:
// its seal held) stops the process: continuing would let replicas diverge,
// and skipping it would drop what was acknowledged.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	for i, l := range logs {
		if len(l.Extensions) > 0 {
			if err := verifySeal(l); err != nil {
				panic(fmt.Sprintf("group %d: %v: refusing to apply it", f.group, err))
			}
		}
		if l.Type != raft.LogCommand {
			f.m.Apply(l.Index, 0, nil) // advances the applied index only
			continue
		}
		ts, cmds, err := decodeEntry(l.Data)
		if err != nil {
			panic(fmt.Sprintf("group %d: raft log index %d: %v", f.group, l.Index, err))
		}
		out[i] = f.m.Apply(l.Index, ts, cmds)
	}
	return out
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return f.m.Snapshot() }

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.m.Restore(rc); err != nil {
		if f.starting.Load() && f.startErr == nil {
			f.startErr = fmt.Errorf("restore the newest snapshot: %w", err)
		}
		return err
	}
	f.log.Info("restored from snapshot")
	return nil
}
