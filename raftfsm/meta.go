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
			// Refused alike on every replica; nothing changes.
			out[i] = fmt.Errorf("meta log index %d: undecodable command: %w", index, err)
			continue
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

// Restore replaces the map.
func (m *MetaMachine) Restore(r io.Reader) error {
	var s SlotMap
	if err := msgpack.NewDecoder(r).Decode(&s); err != nil {
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
