package raftfsm

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/placement"
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

// MetaCommand changes the meta state. Every field is optional; a command
// sets one, and one that does not apply to the state (a node already
// registered, a move of a shard already moving, the end or cancel of a move
// not under way) changes nothing, so every node may propose it safely and
// a leader may propose it again after a failover.
type MetaCommand struct {
	// InitShards, when the map is empty, spreads the slots over shards
	// 1..InitShards (slot i to shard i%n+1), and with Replicas set places
	// them on Nodes. Ignored once initialised.
	InitShards uint32       `msgpack:"init_shards"`
	Replicas   uint32       `msgpack:"replicas,omitempty"`
	Nodes      []NodeRecord `msgpack:"nodes,omitempty"`
	// Register adds a node, or updates its Raft address.
	Register *NodeRecord `msgpack:"register,omitempty"`
	// Drain marks a node draining: placement moves every replica off it.
	Drain string `msgpack:"drain,omitempty"`
	// Forget removes a node that holds no replica and is not moving one.
	Forget string `msgpack:"forget,omitempty"`
	// StartMove records a replica move as under way; EndMove records it
	// done: the shard's voters are then Placement's after the move.
	// CancelMove records it given up (its added node is gone, or never
	// caught up): the placement stays as it was before the move, and the
	// shard is free for another. Both apply only to the move under way,
	// exactly as recorded.
	StartMove  *placement.Move `msgpack:"start_move,omitempty"`
	EndMove    *placement.Move `msgpack:"end_move,omitempty"`
	CancelMove *placement.Move `msgpack:"cancel_move,omitempty"`
	// Split records a split as under way (one at a time); EndSplit
	// records it done: its slots go to the new shard, placed where its
	// parent is (metasplit.go). Grow raises the number of shards wanted.
	Split    *Split `msgpack:"split,omitempty"`
	EndSplit *Split `msgpack:"end_split,omitempty"`
	Grow     uint32 `msgpack:"grow,omitempty"`
	// Wire raises the internal encoding every node writes
	// (transport.WireVersion): with InitShards, that of a new cluster; alone,
	// once every node of an older cluster reads it. It never goes down.
	Wire uint32 `msgpack:"wire,omitempty"`
}

// NodeRecord is a node as the meta group knows it.
type NodeRecord struct {
	ID       string `msgpack:"id"`
	RaftAddr string `msgpack:"raft"`
	Draining bool   `msgpack:"draining,omitempty"`
}

// MetaState is what the meta group replicates: the slot map and, once the
// cluster places replicas (Replicas > 0), its nodes, where each shard's
// voters are and the replica moves under way. A cluster created before
// placement has Replicas 0: every node holds every shard.
type MetaState struct {
	SlotMap
	Replicas  uint32                    `msgpack:"replicas,omitempty"`
	Nodes     []NodeRecord              `msgpack:"nodes,omitempty"` // sorted by ID
	Placement placement.Placement       `msgpack:"placement,omitempty"`
	Moving    map[uint32]placement.Move `msgpack:"moving,omitempty"`
	// Wire: the internal encoding every node writes (0 or 1: the maps of
	// the releases before transport.WireVersion 2).
	Wire uint32 `msgpack:"wire,omitempty"`
	// Splits (metasplit.go): the one under way, the parent of every shard
	// a split made, and the number of shards wanted.
	Splitting    *Split            `msgpack:"splitting,omitempty"`
	SplitFrom    map[uint32]uint32 `msgpack:"split_from,omitempty"`
	ShardsWanted uint32            `msgpack:"shards_wanted,omitempty"`
}

// Cluster is the placement input of the state.
func (s *MetaState) Cluster() placement.Cluster {
	c := placement.Cluster{Replicas: int(s.Replicas)}
	for _, n := range s.Nodes {
		c.Nodes = append(c.Nodes, n.ID)
		if n.Draining {
			c.Draining = append(c.Draining, n.ID)
		}
	}
	return c
}

// Node returns the record of node id.
func (s *MetaState) Node(id string) (NodeRecord, bool) {
	i, ok := s.index(id)
	if !ok {
		return NodeRecord{}, false
	}
	return s.Nodes[i], true
}

// holds reports whether node id holds or is receiving a replica.
func (s *MetaState) holds(id string) bool {
	for _, voters := range s.Placement {
		if slices.Contains(voters, id) {
			return true
		}
	}
	for _, m := range s.Moving {
		if m.Add == id || m.Remove == id {
			return true
		}
	}
	return false
}

func (s *MetaState) clone() MetaState {
	c := MetaState{
		SlotMap:  SlotMap{Epoch: s.Epoch, Slots: slices.Clone(s.Slots)},
		Replicas: s.Replicas, Nodes: slices.Clone(s.Nodes), Moving: maps.Clone(s.Moving), Wire: s.Wire,
		SplitFrom: maps.Clone(s.SplitFrom), ShardsWanted: s.ShardsWanted,
	}
	if s.Splitting != nil {
		sp := s.Splitting.clone()
		c.Splitting = &sp
	}
	if s.Placement != nil {
		c.Placement = placement.Placement{}
		for id, voters := range s.Placement {
			c.Placement[id] = slices.Clone(voters)
		}
	}
	return c
}

// apply applies one command (see MetaCommand).
func (s *MetaState) apply(c *MetaCommand) {
	if c.InitShards == 0 {
		s.Wire = max(s.Wire, c.Wire)
	}
	switch {
	case c.InitShards > 0:
		if len(s.Slots) != 0 {
			return
		}
		slots := make([]uint32, transport.SlotCount)
		for i := range slots {
			slots[i] = uint32(i)%c.InitShards + 1
		}
		s.SlotMap = SlotMap{Epoch: s.Epoch + 1, Slots: slots}
		s.Wire = max(s.Wire, c.Wire)
		if c.Replicas > 0 {
			s.Replicas = c.Replicas
			for _, n := range c.Nodes {
				s.register(n)
			}
			s.Placement = placement.Initial(nil, s.Shards(), s.Cluster())
		}
	case c.Register != nil:
		s.register(*c.Register)
	case c.Drain != "":
		if i, ok := s.index(c.Drain); ok {
			s.Nodes[i].Draining = true
		}
	case c.Forget != "":
		if i, ok := s.index(c.Forget); ok && !s.holds(c.Forget) {
			s.Nodes = slices.Delete(s.Nodes, i, i+1)
		}
	case c.StartMove != nil:
		m := *c.StartMove
		if _, moving := s.Moving[m.Shard]; moving || s.Placement == nil || s.Placement[m.Shard] == nil || s.splitting(m.Shard) {
			return
		}
		if s.Moving == nil {
			s.Moving = map[uint32]placement.Move{}
		}
		s.Moving[m.Shard] = m
	case c.EndMove != nil:
		m := *c.EndMove
		if s.Moving[m.Shard] != m {
			return
		}
		delete(s.Moving, m.Shard)
		s.Placement = placement.Apply(s.Placement, m)
	case c.Split != nil, c.EndSplit != nil, c.Grow != 0:
		s.applySplit(c)
	case c.CancelMove != nil:
		m := *c.CancelMove
		if s.Moving[m.Shard] != m {
			return
		}
		delete(s.Moving, m.Shard)
	}
}

func (s *MetaState) index(id string) (int, bool) {
	return slices.BinarySearchFunc(s.Nodes, id, func(n NodeRecord, id string) int { return strings.Compare(n.ID, id) })
}

func (s *MetaState) register(n NodeRecord) {
	i, ok := s.index(n.ID)
	if ok {
		s.Nodes[i].RaftAddr = n.RaftAddr
		return
	}
	n.Draining = false
	s.Nodes = slices.Insert(s.Nodes, i, n)
}

// MetaMachine replicates the cluster's MetaState.
type MetaMachine struct {
	mu sync.RWMutex
	st MetaState
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
		m.st.apply(&c)
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
	return SlotMap{Epoch: m.st.Epoch, Slots: slices.Clone(m.st.Slots)}
}

// State returns a copy of the whole meta state.
func (m *MetaMachine) State() MetaState {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.st.clone()
}

// SlotMap returns a copy of the current slot map.
func (m *MetaMachine) SlotMap() SlotMap {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.current()
}

// Snapshot copies the state.
func (m *MetaMachine) Snapshot() (raft.FSMSnapshot, error) {
	return &metaSnapshot{st: m.State()}, nil
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
	var s MetaState
	if err := transport.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("meta snapshot: %w", err)
	}
	if err := s.check(); err != nil {
		return fmt.Errorf("meta snapshot: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st = s
	return nil
}

// check: the slot map is one the router can use, and nodes are sorted
// and unique (the state's lookups search them).
func (s *MetaState) check() error {
	if err := s.SlotMap.check(); err != nil {
		return err
	}
	if !slices.IsSortedFunc(s.Nodes, func(a, b NodeRecord) int { return strings.Compare(a.ID, b.ID) }) ||
		len(slices.CompactFunc(slices.Clone(s.Nodes), func(a, b NodeRecord) bool { return a.ID == b.ID })) != len(s.Nodes) {
		return errors.New("nodes are not sorted and unique")
	}
	return nil
}

// A meta snapshot of the release before placement is a bare SlotMap (keys
// epoch and slots): a MetaState with the same keys and no others, so it
// restores as a cluster with Replicas 0.
type metaSnapshot struct{ st MetaState }

func (s *metaSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := msgpack.NewEncoder(sink).Encode(&s.st); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *metaSnapshot) Release() {}
