// Package node hosts a ledgerd process's Raft groups (the meta group and the
// shards) and serves their NATS subjects while it leads them.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/raftmux"
	"github.com/nats-io/nats.go"
)

// metaGroupID is the Raft group id of the meta group; shards are 1..N.
const metaGroupID = 0

// Config configures a node.
type Config struct {
	NodeID        string
	DataDir       string
	RaftListen    string // host:port for every group's Raft traffic
	RaftAdvertise string // address peers dial; defaults to the listener's
	// RaftTLS, if not nil, makes the Raft port mutual TLS (nodetls.Load).
	RaftTLS *tls.Config
	Shards  uint32 // shard count when the cluster is created
	Conn    *nats.Conn
	Prefix  string
	Logger  *slog.Logger
	// SagaFault, for fault-injection tests only, is asked about every saga
	// message (credit, abort, forget) this node sends; nil in production.
	SagaFault func(to uint32, cmd *shard.Command) Fault
	// Snapshots is every group's snapshot policy (zero: the defaults).
	Snapshots raftfsm.SnapshotPolicy
	// BootstrapExpect is the number of nodes that form a new cluster
	// (discover.go); 0 or 1: this node alone.
	BootstrapExpect int
	// Join adds this node, if it has no data, to the cluster running on
	// this NATS: every group's leader adds it as a nonvoter, then a voter
	// once it has caught up (discover.go).
	Join bool
	// Salvage starts a single node's groups whose storage is damaged from
	// their last good state (raftfsm.GroupConfig.Salvage) instead of
	// refusing to start. A node with peers repairs from them instead
	// (repair.go): salvage could make it vote from a log that lost entries.
	Salvage bool
}

// Fault is what happens to one saga message in a fault-injection test.
type Fault struct {
	Drop      bool          // never sent
	Duplicate bool          // sent twice
	Delay     time.Duration // sent late
	LoseReply bool          // sent and applied, but the answer is lost
}

// Node is one ledgerd process's share of the cluster.
type Node struct {
	cfg      Config
	nc       *nats.Conn
	subjects transport.Subjects
	log      *slog.Logger
	mux      *raftmux.Mux

	meta    *raftfsm.Group
	metaM   *raftfsm.MetaMachine
	servers []raft.Server // the initial configuration, if this node forms the cluster
	nodes   *nats.Subscription
	opened  atomic.Pointer[raftfsm.Group] // the meta group, once open (answerNodes reads it)
	status  *nats.Subscription
	cancel  context.CancelFunc // stops the background loops
	mu      sync.Mutex
	shards  map[uint32]*shardServer
	ids     []uint32
}

// Start opens the meta group, waits for the slot map, then opens every
// shard in it. It returns once every group is open (not yet led).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := transport.ValidNodeID(cfg.NodeID); err != nil {
		return nil, err
	}
	if cfg.BootstrapExpect <= 1 && !cfg.Join {
		if err := refuseSecondCluster(cfg.Conn, transport.Subjects{Prefix: cfg.Prefix}); err != nil {
			return nil, err
		}
	}
	var adv net.Addr
	if cfg.RaftAdvertise != "" {
		adv = advertiseAddr(cfg.RaftAdvertise)
	}
	mux, err := raftmux.Listen(cfg.RaftListen, adv, cfg.RaftTLS, cfg.Logger)
	if err != nil {
		return nil, err
	}
	mux.DialVia = raftDialVia
	n := &Node{
		cfg: cfg, nc: cfg.Conn, subjects: transport.Subjects{Prefix: cfg.Prefix},
		log: cfg.Logger, mux: mux, metaM: &raftfsm.MetaMachine{}, shards: map[uint32]*shardServer{},
	}
	self := transport.NodeInfo{ID: cfg.NodeID, RaftAddr: mux.Addr().String()}
	if n.nodes, err = n.answerNodes(self); err != nil {
		mux.Close()
		return nil, err
	}
	if n.servers, err = n.initialServers(ctx, self); err != nil {
		_ = n.nodes.Unsubscribe()
		mux.Close()
		return nil, err
	}
	n.meta, err = n.openGroup(ctx, self, metaGroupID, "meta", n.metaM, n.serveMeta)
	if n.repairable(err) {
		if err = n.dropDamaged("meta", err); err == nil {
			n.meta, err = n.openGroup(ctx, self, metaGroupID, "meta", n.metaM, n.serveMeta)
		}
	}
	if err != nil {
		_ = n.nodes.Unsubscribe()
		mux.Close()
		return nil, err
	}
	n.opened.Store(n.meta)
	if n.servers == nil {
		// Restarted, or joined: a shard group that never got its first
		// entry and is not joining bootstraps with the cluster's
		// configuration, the meta group's.
		if f := n.meta.Raft().GetConfiguration(); f.Error() == nil {
			n.servers = f.Configuration().Servers
		}
	}
	bg, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	slots, err := n.waitSlotMap(ctx)
	if err != nil {
		n.Close()
		return nil, err
	}
	ids := slots.Shards()
	if cfg.Shards != 0 && uint32(len(ids)) != cfg.Shards {
		n.log.Warn("shard count is fixed at cluster creation; ignoring the flag", "configured", cfg.Shards, "cluster", len(ids))
	}
	for _, id := range ids {
		dir := "shard-" + strconv.FormatUint(uint64(id), 10)
		s, err := n.openShard(ctx, bg, self, id, dir)
		if n.repairable(err) {
			if err = n.dropDamaged(dir, err); err == nil {
				s, err = n.openShard(ctx, bg, self, id, dir)
			}
		}
		if err != nil {
			n.Close()
			return nil, err
		}
		n.mu.Lock()
		n.shards[id] = s
		n.ids = append(n.ids, id)
		n.mu.Unlock()
	}
	if n.status, err = n.answerStatus(self); err != nil {
		n.Close()
		return nil, err
	}
	go n.balanceLeaders(bg)
	go n.promote(bg, self)
	return n, nil
}

// openShard opens shard id's history store and group in dir; on error,
// nothing it opened stays open.
func (n *Node) openShard(ctx, bg context.Context, self transport.NodeInfo, id uint32, dir string) (*shardServer, error) {
	store, err := history.Open(filepath.Join(n.cfg.DataDir, dir, "history"), history.Options{Logger: n.log.With("shard", id), Salvage: n.salvage()})
	if err != nil {
		return nil, err
	}
	s := &shardServer{n: n, id: id, m: raftfsm.NewShardMachine(id, store), log: n.log.With("shard", id), reads: make(chan struct{}, readsInFlightMax)}
	s.m.SetFetch(func(applied uint64) error { return s.fetchHistory(bg, applied) })
	if s.history, err = s.serveHistory(); err != nil {
		store.Close()
		return nil, err
	}
	s.g, err = n.openGroup(ctx, self, id, dir, s.m, s.serve)
	if err != nil {
		_ = s.history.Unsubscribe()
		store.Close()
		return nil, err
	}
	return s, nil
}

// refuseSecondCluster fails if a meta leader already answers on this NATS
// and prefix. A single node (--bootstrap-expect 1, no --join) bootstraps
// its groups alone: it would be a second, independent ledger sharing the
// queue groups, where requests, retries included, would land on either, and
// idempotency holds only within one.
func refuseSecondCluster(nc *nats.Conn, subjects transport.Subjects) error {
	_, err := nc.Request(subjects.Meta(), nil, 500*time.Millisecond)
	switch {
	case err == nil:
		return fmt.Errorf("a ledger cluster already serves prefix %q on this NATS: start this node with --join to add it to that cluster", subjects.Prefix)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout):
		return nil
	default:
		return fmt.Errorf("checking for another cluster on this NATS: %w", err)
	}
}

// openGroup opens group id in dir. A group this node is joining (rejoin)
// is opened without a configuration and silent in elections, and joined
// before openGroup returns.
func (n *Node) openGroup(ctx context.Context, self transport.NodeInfo, id uint32, dir string, m raftfsm.Machine, onLeader func(context.Context)) (*raftfsm.Group, error) {
	rejoin, err := n.rejoining(dir)
	if err != nil {
		return nil, err
	}
	layer, err := n.mux.Group(id)
	if err != nil {
		return nil, err
	}
	nt := raftmux.NewTransport(layer, n.log)
	var trans raft.Transport = nt
	var gate *raftmux.VoteGate
	servers := n.servers
	if rejoin {
		gate = raftmux.NewVoteGate(nt)
		trans, servers = gate, nil
	}
	g, err := raftfsm.Open(raftfsm.GroupConfig{
		ID:        id,
		Dir:       filepath.Join(n.cfg.DataDir, dir),
		NodeID:    n.cfg.NodeID,
		Transport: trans,
		Servers:   servers,
		Machine:   m,
		Logger:    n.log,
		OnLeader:  onLeader,
		Snapshots: n.cfg.Snapshots,
		Salvage:   n.salvage(),
	})
	if err != nil || !rejoin {
		return g, err
	}
	if err := n.join(ctx, n.groupSubject(id), id, shard.Join{Node: self}); err != nil {
		g.Shutdown()
		return nil, err
	}
	gate.Allow()
	if err := n.rejoined(dir); err != nil {
		g.Shutdown()
		return nil, err
	}
	return g, nil
}

// waitSlotMap waits until the meta group holds a slot map (the meta leader
// proposes the initial one).
func (n *Node) waitSlotMap(ctx context.Context) (raftfsm.SlotMap, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if m := n.metaM.SlotMap(); len(m.Slots) > 0 {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return raftfsm.SlotMap{}, fmt.Errorf("waiting for the slot map: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// serveMeta runs while this node leads the meta group: it creates the slot
// map if there is none and answers slot map requests.
func (n *Node) serveMeta(ctx context.Context) {
	if len(n.metaM.SlotMap().Slots) == 0 {
		shards := max(n.cfg.Shards, 1)
		b, _ := transport.Marshal(&raftfsm.MetaCommand{InitShards: shards})
		if _, err := n.meta.ProposeWait(ctx, b); err != nil {
			n.log.Error("create slot map", "err", err)
			return
		}
		n.log.Debug("created slot map", "shards", shards)
	}
	sub, err := n.nc.QueueSubscribe(n.subjects.Meta(), "meta", func(msg *nats.Msg) {
		switch msg.Header.Get(shard.OpHeader) {
		case shard.OpJoin:
			go respond(msg, joinReply(n.meta, msg.Data))
			return
		case shard.OpRemove:
			go respond(msg, removeReply(n.meta, msg.Data))
			return
		}
		m := n.metaM.SlotMap()
		b, _ := transport.Marshal(&m)
		_ = msg.Respond(b)
	})
	if err != nil {
		n.log.Error("subscribe meta subject", "err", err)
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

func (n *Node) shardIDs() []uint32 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ids
}

// shardStatus describes a shard as this node (its leader) sees it.
func (n *Node) shardStatus(s *shardServer) transport.ShardStatus {
	id, m := s.id, s.m
	r := s.g.Raft()
	_, leader := r.LeaderWithID()
	st := transport.ShardStatus{
		ID: id, Leader: string(leader), Term: r.CurrentTerm(), CommitIndex: r.CommitIndex(),
	}
	slots := n.metaM.SlotMap()
	for s, owner := range slots.Slots {
		if owner == id {
			st.Slots = append(st.Slots, uint16(s))
		}
	}
	// The hash encodes the whole state: it is cached per applied index,
	// and taken on a clone, so apply waits only for the copy (as for a
	// snapshot), not for the encoding.
	s.hash.mu.Lock()
	defer s.hash.mu.Unlock()
	var clone *shard.State
	m.Read(func(state *shard.State, applied uint64) {
		a, t, o, i := state.Counts()
		st.AppliedIndex = applied
		st.Accounts, st.Transfers, st.OutboxDepth, st.InboxDepth = uint64(a), uint64(t), uint64(o), uint64(i)
		st.Ledgers = state.Totals()
		if n := len(st.Ledgers); n > transport.StatusLedgersMax {
			st.Ledgers, st.LedgersOmitted = st.Ledgers[:transport.StatusLedgersMax], uint32(n-transport.StatusLedgersMax)
		}
		if s.hash.hash == "" || s.hash.applied != applied {
			clone = state.Clone()
		}
	})
	if clone != nil {
		s.hash.applied, s.hash.hash = st.AppliedIndex, fmt.Sprintf("%016x", clone.Hash())
	}
	st.StateHash = s.hash.hash
	return st
}

// Ready reports whether every group has a leader.
func (n *Node) Ready() bool {
	if _, id := n.meta.Raft().LeaderWithID(); id == "" {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.shards {
		if _, id := s.g.Raft().LeaderWithID(); id == "" {
			return false
		}
	}
	return true
}

// Close stops every group; what was acknowledged is on disk already. A
// group this node leads hands its leadership to another voter first, so the
// cluster does not wait out an election timeout.
func (n *Node) Close() error {
	if n.cancel != nil {
		n.cancel()
	}
	n.transferLeadership()
	n.mu.Lock()
	shards := n.shards
	n.shards = map[uint32]*shardServer{}
	n.mu.Unlock()
	var errs []error
	for _, s := range shards {
		_ = s.history.Unsubscribe()
		errs = append(errs, s.g.Shutdown(), s.m.History().Close())
	}
	if n.meta != nil {
		errs = append(errs, n.meta.Shutdown())
	}
	for _, sub := range []*nats.Subscription{n.nodes, n.status} {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
	}
	errs = append(errs, n.mux.Close())
	return errors.Join(errs...)
}

// groups returns the meta group and every shard group this node has opened.
func (n *Node) groups() []*raftfsm.Group {
	n.mu.Lock()
	defer n.mu.Unlock()
	var groups []*raftfsm.Group
	if n.meta != nil {
		groups = append(groups, n.meta)
	}
	for _, id := range n.ids {
		if s, ok := n.shards[id]; ok { // gone once Close has begun
			groups = append(groups, s.g)
		}
	}
	return groups
}

// groupSubject is the subject group id's leader serves.
func (n *Node) groupSubject(id uint32) string {
	if id == metaGroupID {
		return n.subjects.Meta()
	}
	return n.subjects.Shard(id)
}

// leadershipTransferMax bounds each group's leadership transfer at Close.
const leadershipTransferMax = 5 * time.Second

// transferLeadership hands every group this node leads to another voter,
// all groups at once.
func (n *Node) transferLeadership() {
	var wg sync.WaitGroup
	for _, g := range n.groups() {
		r := g.Raft()
		if r.State() != raft.Leader || len(r.GetConfiguration().Configuration().Servers) < 2 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := r.LeadershipTransfer()
			done := make(chan error, 1)
			go func() { done <- f.Error() }()
			select {
			case err := <-done:
				if err != nil {
					n.log.Warn("leadership transfer", "err", err)
				}
			case <-time.After(leadershipTransferMax):
				n.log.Warn("leadership transfer timed out")
			}
		}()
	}
	wg.Wait()
}

// advertiseAddr is the address peers dial, as configured.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }
