package raftmux

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// NetworkTransport must stay unwrapped: raft only uses pre-vote when its
// Transport satisfies this interface.
var _ raft.WithPreVote = (*raft.NetworkTransport)(nil)

// seqFSM records distinct applied sequence numbers, so an entry retried
// after an ambiguous leadership loss is not double counted.
type seqFSM struct {
	mu   sync.Mutex
	seen map[uint64]bool
}

func (f *seqFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[binary.BigEndian.Uint64(l.Data)] = true
	return nil
}

func (f *seqFSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen)
}

func (f *seqFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("not supported") }
func (f *seqFSM) Restore(io.ReadCloser) error         { return fmt.Errorf("not supported") }

type replica struct {
	r     *raft.Raft
	trans *raft.NetworkTransport
	fsm   *seqFSM
}

type node struct {
	id       raft.ServerID
	mux      *Mux
	replicas map[uint32]*replica
	down     bool
}

func (n *node) shutdown(t *testing.T) {
	if n.down {
		return
	}
	n.down = true
	for _, rp := range n.replicas {
		if err := rp.r.Shutdown().Error(); err != nil {
			t.Errorf("%s shutdown: %v", n.id, err)
		}
		rp.trans.Close()
	}
	n.mux.Close()
}

// waitFor polls cond; the deadline is only a hang guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leaderOf(nodes []*node, g uint32) *node {
	for _, n := range nodes {
		if !n.down && n.replicas[g].r.State() == raft.Leader {
			return n
		}
	}
	return nil
}

// applyRange applies seqs [from,to) to group g's leader, pipelined, and
// retries whatever failed (e.g. leadership changed) against the new leader.
func applyRange(t *testing.T, nodes []*node, g uint32, from, to uint64) {
	t.Helper()
	var todo []uint64
	for s := from; s < to; s++ {
		todo = append(todo, s)
	}
	for attempt := 0; len(todo) > 0; attempt++ {
		if attempt == 10 {
			t.Fatalf("group %d: %d entries still failing after %d attempts", g, len(todo), attempt)
		}
		var ld *node
		waitFor(t, fmt.Sprintf("leader of group %d", g), func() bool { ld = leaderOf(nodes, g); return ld != nil })
		futs := make([]raft.ApplyFuture, len(todo))
		for i, s := range todo {
			futs[i] = ld.replicas[g].r.Apply(binary.BigEndian.AppendUint64(nil, s), 10*time.Second)
		}
		var failed []uint64
		for i, f := range futs {
			if err := f.Error(); err != nil {
				failed = append(failed, todo[i])
			}
		}
		todo = failed
	}
}

func waitApplied(t *testing.T, nodes []*node, groups []uint32, want int) {
	t.Helper()
	for _, n := range nodes {
		if n.down {
			continue
		}
		for _, g := range groups {
			fsm := n.replicas[g].fsm
			waitFor(t, fmt.Sprintf("%s group %d to apply %d", n.id, g, want), func() bool { return fsm.count() == want })
		}
	}
}

func TestThreeNodesManyGroupsElectAndReplicate(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft elections take seconds")
	}
	start := time.Now()
	groups := []uint32{1, 2, 3, 40000}
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i] = &node{id: raft.ServerID(fmt.Sprintf("n%d", i)), mux: newMux(t), replicas: map[uint32]*replica{}}
		t.Cleanup(func() { nodes[i].shutdown(t) })
	}
	var voters raft.Configuration
	for _, n := range nodes {
		voters.Servers = append(voters.Servers, raft.Server{Suffrage: raft.Voter, ID: n.id, Address: raft.ServerAddress(n.mux.Addr().String())})
	}

	for _, n := range nodes {
		for _, g := range groups {
			trans := NewTransport(mustGroup(t, n.mux, g), nil)
			cfg := raft.DefaultConfig() // default timeouts on purpose: 2-core CI
			cfg.LocalID = n.id
			cfg.Logger = hclog.NewNullLogger()
			fsm := &seqFSM{seen: map[uint64]bool{}}
			logs, stable := raft.NewInmemStore(), raft.NewInmemStore()
			snaps := raft.NewInmemSnapshotStore()
			// Same configuration on every node, as raft's docs allow.
			if err := raft.BootstrapCluster(cfg, logs, stable, snaps, trans, voters); err != nil {
				t.Fatal(err)
			}
			r, err := raft.NewRaft(cfg, fsm, logs, stable, snaps, trans)
			if err != nil {
				t.Fatal(err)
			}
			n.replicas[g] = &replica{r: r, trans: trans, fsm: fsm}
		}
	}

	for _, g := range groups {
		waitFor(t, fmt.Sprintf("leader of group %d", g), func() bool { return leaderOf(nodes, g) != nil })
	}
	t.Logf("all %d groups elected after %v", len(groups), time.Since(start).Round(time.Millisecond))

	for _, g := range groups {
		applyRange(t, nodes, g, 0, 100)
	}
	waitApplied(t, nodes, groups, 100)
	t.Logf("100 entries on every replica of every group after %v", time.Since(start).Round(time.Millisecond))

	// Kill the node leading the most groups: the worst case for failover.
	var victim *node
	best := -1
	for _, n := range nodes {
		led := 0
		for _, g := range groups {
			if n.replicas[g].r.State() == raft.Leader {
				led++
			}
		}
		if led > best {
			victim, best = n, led
		}
	}
	killed := time.Now()
	victim.shutdown(t)
	t.Logf("shut down %s (led %d groups)", victim.id, best)

	for _, g := range groups {
		applyRange(t, nodes, g, 100, 110)
	}
	waitApplied(t, nodes, groups, 110)
	t.Logf("all groups re-elected and applied 10 more on both survivors %v after shutdown (total %v)",
		time.Since(killed).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
