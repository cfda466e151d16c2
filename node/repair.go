package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// repairable reports whether err is damage this node repairs from its
// peers.
func (n *Node) repairable(err error) bool {
	return errors.Is(err, raftfsm.ErrDamaged) && n.hasPeers()
}

// salvage reports whether damaged groups start from their last good state:
// asked for, and no peer to repair from.
func (n *Node) salvage() bool { return n.cfg.Salvage && !n.hasPeers() }

// hasPeers reports whether this node belongs to a cluster of several nodes:
// formed by several, joined, or (once the meta group is open) configured
// with other servers.
func (n *Node) hasPeers() bool {
	if n.cfg.BootstrapExpect > 1 || n.cfg.Join {
		return true
	}
	if n.meta == nil {
		return false
	}
	f := n.meta.Raft().GetConfiguration()
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
