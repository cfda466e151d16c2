package raftfsm

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// SlotMap assigns every hash slot to a shard. Epoch grows with each change.
type SlotMap struct {
	Epoch uint64   `msgpack:"epoch"`
	Slots []uint32 `msgpack:"slots"` // len transport.SlotCount once initialised
}

// check: the map is empty (not initialised) or holds every slot, each
// owned by a shard (ids from 1; 0 is the meta group).
func (s *SlotMap) check() error {
	if len(s.Slots) != 0 && len(s.Slots) != transport.SlotCount {
		return fmt.Errorf("slot map of %d slots, want %d", len(s.Slots), transport.SlotCount)
	}
	for slot, id := range s.Slots {
		if id == 0 {
			return fmt.Errorf("slot %d owned by no shard", slot)
		}
	}
	return nil
}

// Shards returns the sorted distinct shard ids of the map.
func (s *SlotMap) Shards() []uint32 {
	seen := map[uint32]bool{}
	var ids []uint32
	for _, id := range s.Slots {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for i := 1; i < len(ids); i++ { // insertion sort: a handful of shards
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
	return ids
}

// MetaCommand changes the meta state.
type MetaCommand struct {
	// InitShards, when the map is empty, spreads the slots over shards
	// 1..InitShards (slot i to shard i%n+1). Ignored once initialised, so
	// every node may propose it safely.
	InitShards uint32 `msgpack:"init_shards"`
}

// MetaMachine replicates the cluster's slot map.
type MetaMachine struct {
	mu    sync.RWMutex
	slots SlotMap
}

// Apply applies meta commands; each result is the SlotMap after it.
func (m *MetaMachine) Apply(index, ts uint64, cmds [][]byte) []any {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]any, len(cmds))
	for i, raw := range cmds {
		var c MetaCommand
		if err := transport.Unmarshal(raw, &c); err != nil {
			// Proposed by this package, checksummed in the log: a bug.
			// The group stops rather than skip it.
			panic(fmt.Sprintf("meta group log index %d: command %d of %d does not decode: %v", index, i, len(cmds), err))
		}
		if c.InitShards > 0 && len(m.slots.Slots) == 0 {
			slots := make([]uint32, transport.SlotCount)
			for s := range slots {
				slots[s] = uint32(s)%c.InitShards + 1
			}
			m.slots = SlotMap{Epoch: m.slots.Epoch + 1, Slots: slots}
		}
		out[i] = m.current()
	}
	return out
}

// CheckCommand decodes a command as Apply will, before it is proposed.
func (m *MetaMachine) CheckCommand(cmd []byte) error {
	var c MetaCommand
	return transport.Unmarshal(cmd, &c)
}

func (m *MetaMachine) current() SlotMap {
	return SlotMap{Epoch: m.slots.Epoch, Slots: append([]uint32(nil), m.slots.Slots...)}
}

// SlotMap returns a copy of the current slot map.
func (m *MetaMachine) SlotMap() SlotMap {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.current()
}

// Snapshot copies the map.
func (m *MetaMachine) Snapshot() (raft.FSMSnapshot, error) {
	return &metaSnapshot{m: m.SlotMap()}, nil
}

// metaSnapshotBytesMax bounds a meta snapshot: a slot map is about 20 KiB.
const metaSnapshotBytesMax = 1 << 20

// Restore replaces the map. The snapshot is one bounded msgpack map
// (transport.Unmarshal: decoded straight from the stream, a slot list
// declaring 4 billion elements would be allocated whole), and a slot map
// the router can use: empty, or every slot owned by a shard.
func (m *MetaMachine) Restore(r io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(r, metaSnapshotBytesMax+1))
	if err != nil {
		return fmt.Errorf("meta snapshot: %w", err)
	}
	if len(data) > metaSnapshotBytesMax {
		return fmt.Errorf("meta snapshot: more than %d bytes", metaSnapshotBytesMax)
	}
	var s SlotMap
	if err := transport.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("meta snapshot: %w", err)
	}
	if err := s.check(); err != nil {
		return fmt.Errorf("meta snapshot: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.slots = s
	return nil
}

type metaSnapshot struct{ m SlotMap }

func (s *metaSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := msgpack.NewEncoder(sink).Encode(&s.m); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *metaSnapshot) Release() {}
