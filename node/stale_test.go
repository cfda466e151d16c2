package node

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
)

// Only the copies of shards placed on other nodes, neither held nor being
// opened here, are deleted: not a shard the meta state does not place yet
// (a split's child written before its split is recorded done), not a
// temporary directory, not the meta group's.
func TestDropStaleCopies(t *testing.T) {
	dir := t.TempDir()
	n := &Node{cfg: Config{DataDir: dir, NodeID: "n1"}, log: slog.New(slog.DiscardHandler), ids: []uint32{5}}
	for _, d := range []string{"meta", "shard-1", "shard-2", "shard-3", "shard-4.split", "shard-5", "shard-6"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	st := raftfsm.MetaState{Replicas: 3, Placement: placement.Placement{
		1: {"n2", "n3"}, 2: {"n1"}, 5: {"n2"}, 6: {"n2"}, 4: {"n2"},
	}}
	n.dropStaleCopies(st, []uint32{2}, map[uint32]bool{6: true})
	for d, kept := range map[string]bool{"meta": true, "shard-1": false, "shard-2": true, "shard-3": true, "shard-4.split": true, "shard-5": true, "shard-6": true} {
		_, err := os.Stat(filepath.Join(dir, d))
		if exists := err == nil; exists != kept {
			t.Errorf("%s: exists %t, want %t", d, exists, kept)
		}
	}
}
