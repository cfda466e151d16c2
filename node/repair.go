package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ledgerd/ledgerd/raftfsm"
)

// Repairing a group whose storage is damaged (a checksum that fails, a
// bbolt meta page, a snapshot, the history store: raftfsm.ErrDamaged). A
// node with peers never serves from it: it moves its copy of the group
// aside, to <dir>.damaged-<unix time> for whoever looks into it, and joins
// the group again like a node that lost its data directory (discover.go):
// silent in elections until its join has made it a new member, sent a
// snapshot and the history by its peers, a voter once it has caught up. A
// single node has no peer to repair from: it refuses to start, unless
// Config.Salvage (ignored on a node with peers).
//
// Damage is found at start (raftfsm.Open, history.Open: openOrRepair) or
// while the group runs (a read of its log or history store, a compaction:
// the group stops on this node, raftfsm.Group.Halted; watch). Both take the
// same steps: the group's copy is moved aside (dropDamaged), then opened
// again as joining (openMember), while the node's other groups go on
// serving. A single node whose group stops on damage while running fails
// (Failed): a node that answered for some groups and not for another, with
// nothing to say why but a log line, would look alive to whoever watches
// it; exiting non-zero, it is restarted, and the start refuses, naming the
// damage.

// watchGoneEvery is how often watch checks that its group is still open
// here: a shard moved off the node is closed without damage.
const watchGoneEvery = time.Second

// openOrRepair opens group id; storage found damaged is repaired, on a node
// with peers, by joining the group again with a copy from them.
func (n *Node) openOrRepair(ctx, bg context.Context, id uint32) error {
	err := n.openMember(ctx, bg, id)
	if !n.repairable(err) {
		return err
	}
	if err := n.dropDamaged(groupDir(id), err); err != nil {
		return err
	}
	return n.openMember(ctx, bg, id)
}

// watch repairs group id each time damage found while it runs stops it,
// until the node closes. A repair that fails fails the node.
func (n *Node) watch(bg context.Context, id uint32) {
	defer n.watchers.Done()
	t := time.NewTicker(watchGoneEvery)
	defer t.Stop()
	for {
		g := n.member(id)
		if g == nil {
			return
		}
	wait:
		for {
			select {
			case <-bg.Done():
				return
			case <-g.Halted():
				break wait
			case <-t.C:
				if n.member(id) != g {
					return // moved off this node (placement.go) and closed
				}
			}
		}
		if bg.Err() != nil {
			return // closing: a start repairs it
		}
		if err := n.repair(bg, id, g); err != nil {
			if bg.Err() == nil {
				n.log.Error("a group damaged while running is not repaired: the node stops", "group", id, "err", err)
				n.failure.set(err)
			}
			return
		}
	}
}

// repair closes group g, stopped by damage found while it ran, moves its
// copy aside and opens it again as joining.
func (n *Node) repair(bg context.Context, id uint32, g *raftfsm.Group) error {
	found, dir := g.Damaged(), groupDir(id)
	if !n.hasPeers() {
		return fmt.Errorf("group %d (%s) stopped: storage damaged while running, and this node has no peer to repair it from: %w; "+
			"ledgerd stops, and refuses to start until the data is restored from a copy or salvaged (--salvage starts from the last good state: entries this node acknowledged may be lost)",
			id, filepath.Join(n.cfg.DataDir, dir), found)
	}
	start := time.Now()
	n.log.Warn("storage damaged while running: repairing the group from its peers; the node's other groups go on serving", "group", id, "err", found)
	if err := n.closeMember(id, g); err != nil {
		// Its files are moved aside whole, whatever state they are in.
		n.log.Warn("closing the damaged group", "group", id, "err", err)
	}
	if err := n.dropDamaged(dir, found); err != nil {
		return err
	}
	if err := n.openMember(bg, bg, id); err != nil {
		return fmt.Errorf("group %d: join again after damage: %w", id, err)
	}
	n.log.Info("repaired: the damaged group joined again; it takes part in elections once a voter, when caught up", "group", id, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// closeMember takes group id, g, from the node and closes it: for a shard,
// its history store, its history copies and its serving as well.
func (n *Node) closeMember(id uint32, g *raftfsm.Group) error {
	if id == metaGroupID {
		if !n.meta.CompareAndSwap(g, nil) {
			return nil // Close has it
		}
		return g.Shutdown()
	}
	n.mu.Lock()
	s, ok := n.shards[id]
	ok = ok && s.g == g
	if ok {
		delete(n.shards, id)
	}
	n.mu.Unlock()
	if !ok {
		return nil // Close has it
	}
	return s.close()
}

// repairable reports whether err is damage this node repairs from its
// peers.
func (n *Node) repairable(err error) bool {
	return errors.Is(err, raftfsm.ErrDamaged) && n.hasPeers()
}

// salvage reports whether damaged groups start from their last good state:
// asked for, and no peer to repair from.
func (n *Node) salvage() bool { return n.cfg.Salvage && !n.hasPeers() }

// hasPeers reports whether this node belongs to a cluster of several nodes:
// formed by several, joined, or (while the meta group is open) configured
// with other servers.
func (n *Node) hasPeers() bool {
	if n.cfg.BootstrapExpect > 1 || n.cfg.Join {
		return true
	}
	g := n.metaGroup()
	if g == nil {
		return false
	}
	f := g.Raft().GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 1
}

// dropDamaged moves the group in dir aside and marks it joining.
func (n *Node) dropDamaged(dir string, found error) error {
	from := filepath.Join(n.cfg.DataDir, dir)
	to := fmt.Sprintf("%s.damaged-%d", from, time.Now().Unix())
	n.log.Error("storage damaged: moving this node's copy of the group aside and joining it again; it takes no part in elections until it has", "dir", from, "moved_to", to, "err", found)
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("move the damaged group aside: %w", err)
	}
	if err := os.MkdirAll(from, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(from, rejoinMarker))
	if err != nil {
		return err
	}
	if err := errors.Join(f.Sync(), f.Close(), syncDir(from)); err != nil {
		return err
	}
	return syncDir(n.cfg.DataDir)
}

// failure is why the node cannot go on, once it cannot.
type failure struct {
	once sync.Once
	done chan struct{}
	err  error
}

func (f *failure) init() { f.done = make(chan struct{}) }

func (f *failure) set(err error) {
	f.once.Do(func() {
		f.err = err
		close(f.done)
	})
}

// Failed is closed when the node cannot go on serving every group: a group
// stopped on damage found while running, and this node has no peer to
// repair it from (or the repair failed). Err says why. The process should
// stop and exit non-zero; its start then refuses, naming the damage.
func (n *Node) Failed() <-chan struct{} { return n.failure.done }

// Err returns why the node failed, once Failed is closed.
func (n *Node) Err() error {
	select {
	case <-n.failure.done:
		return n.failure.err
	default:
		return nil
	}
}
