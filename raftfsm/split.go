package raftfsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
)

// A split's new shard starts on every replica of its parent that applies
// the split (shard.KindSplit): the replica writes the new group's
// directory from its own state at that entry, as Cockroach's replicas
// create the right-hand range of a split. The group's first state is a
// Raft snapshot at index 1 whose configuration is the parent's voters, so
// the group opens as any restarted group does, with no bootstrap; its
// history store is a checkpoint of the parent's, which already holds every
// row of the slots that left. A replica that never applies the split (it
// receives a snapshot of the parent taken after it) or fails to write the
// directory opens the new group empty, without configuration, and its
// leader sends it a snapshot and the history, as to any new replica.

// genesisIndex and genesisTerm are those of a split shard's first snapshot.
const (
	genesisIndex = 1
	genesisTerm  = 1
)

// SplitSink receives a split's result inside Apply, after its entry's
// history was committed; store is the parent's history store. It must not
// call back into the machine.
type SplitSink func(r *shard.SplitResult, store *history.Store)

// SetSplits sets where Apply hands the shards splits make (nil: nowhere;
// the new shard's replicas then start empty and receive a snapshot).
func (m *ShardMachine) SetSplits(sink SplitSink) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.splits = sink
}

// split hands a split's result to the sink with the history of every
// command before it, and of none after it, in the store: the entry so far
// is committed first, and the rest of it goes on as an entry of its own.
func (m *ShardMachine) split(index uint64, r *shard.SplitResult) {
	if err := m.store.Commit(); err != nil {
		panic(fmt.Sprintf("shard %d log index %d: %v", m.st.ID(), index, err))
	}
	m.splits(r, m.store)
	m.store.Begin()
}

// WriteGenesis writes dir, the group directory of the shard r made: its
// first snapshot and its history store. It writes a temporary directory
// renamed into place, so that a crash leaves nothing or the whole; a dir
// that exists already is left as it is (the split's entry replayed after a
// restart: the group may have run since).
func WriteGenesis(dir string, r *shard.SplitResult, parent *history.Store) (err error) {
	if r.Child == nil {
		return errors.New("no new shard in the split's result")
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	// Rows of the parent's later entries (a restart from an older snapshot,
	// a history copied from a peer that was ahead) would be the child's
	// history on this replica alone: its replica starts empty instead.
	if newest, last := parent.MaxTimestamp(), r.Child.LastTimestamp(); newest > last {
		return fmt.Errorf("the history store holds rows of entries after the split (timestamp %d, the split's %d): this replica of shard %d starts empty and is sent a snapshot", newest, last, r.To)
	}
	tmp := dir + ".split"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	defer func() {
		if err != nil { // a directory opened meanwhile (the replica started the child empty), a full disk
			err = errors.Join(err, os.RemoveAll(tmp))
		}
	}()
	if err := parent.Checkpoint(filepath.Join(tmp, "history"), genesisIndex); err != nil {
		return fmt.Errorf("shard %d's history: %w", r.To, err)
	}
	if err := writeGenesisSnapshot(tmp, r); err != nil {
		return fmt.Errorf("shard %d's first snapshot: %w", r.To, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

func writeGenesisSnapshot(dir string, r *shard.SplitResult) error {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, snapshotsRetained, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	var conf raft.Configuration
	for _, v := range r.Voters {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v.ID), Address: raft.ServerAddress(v.Addr)})
	}
	if why := checkConfiguration(conf); why != "" {
		return fmt.Errorf("configuration: %s", why)
	}
	sink, err := snaps.Create(raft.SnapshotVersionMax, genesisIndex, genesisTerm, conf, genesisIndex, addrEncoder{})
	if err != nil {
		return err
	}
	if _, err := sink.Write(binary.AppendUvarint(nil, genesisIndex)); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	if _, err := r.Child.WriteTo(sink); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	return sink.Close()
}

// addrEncoder encodes peers as a NetworkTransport does (the address), for
// the legacy peers field of a snapshot's meta; nothing else of it is used.
type addrEncoder struct{ raft.Transport }

func (addrEncoder) EncodePeer(_ raft.ServerID, a raft.ServerAddress) []byte { return []byte(a) }
