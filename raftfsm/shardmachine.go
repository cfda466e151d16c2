package raftfsm

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// ShardMachine replicates a shard.State, whose history lives in a
// history.Store on disk. Apply is its only writer (Raft's FSM goroutine);
// Read lets leader-side goroutines look at it between entries.
type ShardMachine struct {
	mu      sync.RWMutex
	st      *shard.State
	store   *history.Store
	applied uint64
	// fetch, once set, copies the history up to (at least) applied from a
	// peer into store: what a replica lacks when it is sent a snapshot.
	fetch func(applied uint64) error
	// batches counts the entries applied by size, for metrics.
	batches ApplyBatches
	// splits receives the shards splits make (split.go).
	splits SplitSink
	// stale is told when Restore refuses a snapshot older than the state
	// (SetStale).
	stale func()
}

// SetStale sets what Restore calls, without blocking, when it refuses a
// snapshot older than the state applied here: the leader sends that same
// snapshot again until it takes a newer one, which a shard without new
// entries (all its slots split off, a quiet ledger) may never do.
func (m *ShardMachine) SetStale(fn func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stale = fn
}

// SetFetch sets how Restore fills a history store that does not cover a
// snapshot sent by the leader (a new, wiped or lagging replica). It is set
// once the group is open, so that restoring a node's own snapshot at start
// never waits for a peer that may need this node to elect a leader.
func (m *ShardMachine) SetFetch(fetch func(applied uint64) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fetch = fetch
}

// NewShardMachine returns the machine of an empty shard with its history in
// store (which may hold rows of entries Raft will replay: they are rewritten
// identically).
func NewShardMachine(id uint32, store *history.Store) *ShardMachine {
	return &ShardMachine{st: shard.New(id, store), store: store}
}

func (m *ShardMachine) notifyDamage(fn func(error)) { m.store.OnDamage(fn) }

// History returns the shard's history store, for queries.
func (m *ShardMachine) History() *history.Store { return m.store }

// Apply decodes and applies each command. The result of command i is its
// *shard.Output, so a proposer learns exactly what its command did
// (including which in-flight transfers it resolved), in log order. The
// entry's history rows are written by the store's writer after Apply
// returns; Apply waits, without the lock, while the writer is too far
// behind.
func (m *ShardMachine) Apply(index, ts uint64, cmds [][]byte) []any {
	results := m.apply(index, ts, cmds)
	if err := m.store.Throttle(); err != nil {
		panic(fmt.Sprintf("shard %d log index %d: %v", m.st.ID(), index, err))
	}
	return results
}

func (m *ShardMachine) apply(index, ts uint64, cmds [][]byte) []any {
	results := make([]any, len(cmds))
	entry := shard.Entry{Timestamp: ts, Commands: make([]shard.Command, 1)}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store.Begin()
	for i, raw := range cmds {
		entry.Commands[0] = shard.Command{}
		if err := transport.Unmarshal(raw, &entry.Commands[0]); err != nil {
			// Handlers check commands before proposing them, and the
			// entry's checksum held: a bug. Skipping the command would
			// drop what its proposer may have been told; the group
			// stops instead, on every replica alike.
			panic(fmt.Sprintf("shard %d log index %d: command %d of %d does not decode: %v", m.st.ID(), index, i, len(cmds), err))
		}
		out := m.st.Apply(&entry)
		results[i] = out
		if out.Split != nil && out.Split.Child != nil && m.splits != nil {
			m.split(index, out.Split)
		}
	}
	if err := m.store.Commit(); err != nil {
		// The history of this entry, or of one before it, could not be
		// written: going on would serve a state whose history has a hole.
		// Restarting replays it (no snapshot covers it: Sync fails too).
		panic(fmt.Sprintf("shard %d log index %d: %v", m.st.ID(), index, err))
	}
	m.applied = index
	m.batches.observe(len(cmds))
	return results
}

// CheckCommand decodes a command as Apply will, before it is proposed.
func (m *ShardMachine) CheckCommand(cmd []byte) error {
	var c shard.Command
	return transport.Unmarshal(cmd, &c)
}

// Read calls fn with the state under a read lock; fn must not keep it.
func (m *ShardMachine) Read(fn func(st *shard.State, applied uint64)) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fn(m.st, m.applied)
}

// Snapshot clones the state (O(accounts) copies, O(rows) pointer copies)
// and encodes the clone in Persist while Apply goes on.
func (m *ShardMachine) Snapshot() (raft.FSMSnapshot, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return &stateSnapshot{st: m.st.Clone(), store: m.store, applied: m.applied}, nil
}

// Restore replaces the state with a snapshot's. The history store must
// cover the snapshot: it does for the node's own snapshot (synced before it
// was written); for one the leader sent, the history is copied from a peer
// first (SetFetch). A store that lost its files cannot be rebuilt from this
// log alone.
func (m *ShardMachine) Restore(r io.Reader) error {
	br := bufio.NewReader(r)
	applied, err := binary.ReadUvarint(br)
	if err != nil {
		return fmt.Errorf("snapshot applied index: %w", err)
	}
	durable, err := m.store.Durable()
	if err != nil {
		return err
	}
	m.mu.RLock()
	fetch, current, stale := m.fetch, m.applied, m.stale
	m.mu.RUnlock()
	if applied < current {
		if stale != nil {
			stale()
		}
		// A leader sent a snapshot older than this replica's state (it
		// walked back over a divergent tail past its own compacted log).
		// Raft would rewind its applied index to it and then replay
		// entries this replica has compacted away, and panic
		// (hashicorp/raft#697). Refused, the leader tries again, with a
		// newer snapshot once it has taken one.
		return fmt.Errorf("shard %d: snapshot at index %d is older than the state applied here (%d): refused, it would rewind the state", m.st.ID(), applied, current)
	}
	if durable < applied && fetch != nil {
		if err := fetch(applied); err != nil {
			return fmt.Errorf("shard %d: copy the history up to index %d: %w", m.st.ID(), applied, err)
		}
		if err := m.store.Sync(applied); err != nil {
			return err
		}
		durable = applied
	}
	if durable < applied {
		return fmt.Errorf("shard %d: the history store covers the log up to index %d, the snapshot %d: its history is missing", m.st.ID(), durable, applied)
	}
	st, err := shard.Read(br, m.store)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if st.ID() != m.st.ID() {
		return fmt.Errorf("snapshot of shard %d restored into shard %d", st.ID(), m.st.ID())
	}
	m.st, m.applied = st, applied
	return nil
}

// Covers tells whether the history store covers a snapshot (its head).
func (m *ShardMachine) Covers(snapshot io.Reader) (bool, error) {
	applied, err := m.SnapshotIndex(snapshot)
	if err != nil {
		return false, err
	}
	durable, err := m.store.Durable()
	return durable >= applied, err
}

// SnapshotIndex reads the index a snapshot was taken at from its head.
func (m *ShardMachine) SnapshotIndex(snapshot io.Reader) (uint64, error) {
	applied, err := binary.ReadUvarint(bufio.NewReader(snapshot))
	if err != nil {
		return 0, fmt.Errorf("snapshot applied index: %w", err)
	}
	return applied, nil
}

// stateSnapshot is the applied index (a uvarint: Raft does not tell Restore)
// followed by the shard's encoding.
type stateSnapshot struct {
	st      *shard.State
	store   *history.Store
	applied uint64
}

// Persist makes the history durable up to (at least) the snapshot's index
// first: once the snapshot is written, Raft may drop the entries that wrote
// that history.
func (s *stateSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.store.Sync(s.applied); err != nil {
		sink.Cancel()
		return err
	}
	if _, err := sink.Write(binary.AppendUvarint(nil, s.applied)); err != nil {
		sink.Cancel()
		return err
	}
	if _, err := s.st.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *stateSnapshot) Release() {}
