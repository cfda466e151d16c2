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
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/internal/wire"
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
	// Replicas is the replication factor of a new cluster: each shard
	// group has this many voters, placed on the nodes by the meta leader
	// (placement.go). 0: every node holds every shard, as a cluster from
	// before placement does. Read only when the cluster is created.
	Replicas uint32
	// Operator reports whether a request's Nats-Request-Info header (set
	// by the NATS server on a service import) names an operator: only
	// they may drain or remove nodes (drain.go). Nil: every requester is
	// one (no providers file).
	Operator func(requestInfo string) bool
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

	self transport.NodeInfo
	// meta is the meta group once open; nil while it is repaired
	// (repair.go).
	meta    atomic.Pointer[raftfsm.Group]
	metaM   *raftfsm.MetaMachine
	servers []raft.Server // the initial configuration, if this node forms the cluster
	nodes   *nats.Subscription
	status  *nats.Subscription
	cancel  context.CancelFunc // stops the background loops
	// watchers are the loops that repair groups damaged while running.
	watchers sync.WaitGroup
	failure  failure
	mu       sync.Mutex
	// shards holds every shard of ids this node has open; a shard is out
	// of it while it is repaired. Guarded by mu.
	shards map[uint32]*shardServer
	ids    []uint32
	// kick makes followPlacement look at once (a split wrote a group).
	kick chan struct{}
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
		log: cfg.Logger, mux: mux, metaM: &raftfsm.MetaMachine{}, shards: map[uint32]*shardServer{}, kick: make(chan struct{}, 1),
	}
	self := transport.NodeInfo{ID: cfg.NodeID, RaftAddr: mux.Addr().String()}
	n.self = self
	n.failure.init()
	if n.nodes, err = n.answerNodes(self); err != nil {
		mux.Close()
		return nil, err
	}
	if n.servers, err = n.initialServers(ctx, self); err != nil {
		_ = n.nodes.Unsubscribe()
		mux.Close()
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	if err := n.openOrRepair(ctx, bg, metaGroupID); err != nil {
		cancel()
		_ = n.nodes.Unsubscribe()
		mux.Close()
		return nil, err
	}
	if n.servers == nil {
		// Restarted, or joined: a shard group that never got its first
		// entry and is not joining bootstraps with the cluster's
		// configuration, the meta group's.
		if f := n.metaGroup().Raft().GetConfiguration(); f.Error() == nil {
			n.servers = f.Configuration().Servers
		}
	}
	slots, err := n.waitSlotMap(ctx)
	if err != nil {
		n.Close()
		return nil, err
	}
	if all := slots.Shards(); cfg.Shards != 0 && uint32(len(all)) != cfg.Shards {
		n.log.Info("--shards counts only when a cluster is created; this one has its own (ledgerctl shards add adds more)", "configured", cfg.Shards, "cluster", len(all))
	}
	ids := n.placedHere(n.metaM.State())
	for _, id := range ids {
		n.addID(id)
		if err := n.openOrRepair(ctx, bg, id); err != nil {
			n.Close()
			return nil, err
		}
	}
	if n.status, err = n.answerStatus(self); err != nil {
		n.Close()
		return nil, err
	}
	for _, id := range append([]uint32{metaGroupID}, ids...) {
		n.watchers.Add(1)
		go n.watch(bg, id)
	}
	go n.balanceLeaders(bg)
	go n.promote(bg, self)
	n.watchers.Add(1)
	go n.followPlacement(bg)
	return n, nil
}

// groupDir is the directory of group id under the data directory.
func groupDir(id uint32) string {
	if id == metaGroupID {
		return "meta"
	}
	return "shard-" + strconv.FormatUint(uint64(id), 10)
}

// openMember opens group id, the meta group or a shard, joining it if its
// directory is marked so (rejoining), and makes it the node's. At start
// and in a repair alike; on error, nothing it opened stays open.
func (n *Node) openMember(ctx, bg context.Context, id uint32) error {
	if id == metaGroupID {
		// The same machine serves every opening: the slot map it holds
		// is set once (InitShards), so replaying the meta log or
		// restoring a snapshot over it gives the same map, and readers
		// (the router's slot map requests, status) keep it meanwhile.
		g, err := n.openGroup(ctx, id, n.metaM, n.serveMeta)
		if err != nil {
			return err
		}
		n.meta.Store(g)
		return nil
	}
	s, err := n.openShard(ctx, bg, id)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.shards[id] = s
	n.mu.Unlock()
	return nil
}

// member returns group id as the node holds it now (nil: not open).
func (n *Node) member(id uint32) *raftfsm.Group {
	if id == metaGroupID {
		return n.meta.Load()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.shards[id]; ok {
		return s.g
	}
	return nil
}

// openShard opens shard id's history store and group; on error, nothing
// it opened stays open.
func (n *Node) openShard(ctx, bg context.Context, id uint32) (*shardServer, error) {
	store, err := history.Open(filepath.Join(n.cfg.DataDir, groupDir(id), "history"), history.Options{Logger: n.log.With("shard", id), Salvage: n.salvage()})
	if err != nil {
		return nil, err
	}
	life, cancel := context.WithCancel(bg)
	s := &shardServer{n: n, id: id, m: raftfsm.NewShardMachine(id, store), log: n.log.With("shard", id), reads: make(chan struct{}, readsInFlightMax), cancel: cancel}
	s.m.SetFetch(func(applied uint64) error { return s.fetchHistory(life, applied) })
	s.m.SetSplits(n.writeSplit)
	s.m.SetStale(s.askSnapshot)
	if s.history, err = s.serveHistory(); err != nil {
		cancel()
		store.Close()
		return nil, err
	}
	s.g, err = n.openGroup(ctx, id, s.m, s.serve)
	if err != nil {
		cancel()
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

// openGroup opens group id in its directory. A group this node is joining
// (rejoin) is opened without a configuration and silent in elections, and
// joined before openGroup returns.
func (n *Node) openGroup(ctx context.Context, id uint32, m raftfsm.Machine, onLeader func(context.Context)) (*raftfsm.Group, error) {
	dir := groupDir(id)
	rejoin, err := n.rejoining(id, dir, n.addedHere(id))
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
	servers := n.bootstrapServers(id)
	if rejoin {
		gate = raftmux.NewVoteGate(nt)
		trans, servers = gate, nil
	}
	g, err := raftfsm.Open(raftfsm.GroupConfig{
		QuickFirstElection: n.newSplitGroup(id),
		ID:                 id,
		Dir:                filepath.Join(n.cfg.DataDir, dir),
		NodeID:             n.cfg.NodeID,
		Transport:          trans,
		Servers:            servers,
		Machine:            m,
		Logger:             n.log,
		OnLeader:           onLeader,
		Snapshots:          n.cfg.Snapshots,
		Salvage:            n.salvage(),
	})
	if err != nil || !rejoin {
		return g, err
	}
	if err := n.join(ctx, n.groupSubject(id), id, wire.Join{Node: n.self}); err != nil {
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
	g := n.opening(ctx)
	if g == nil {
		return
	}
	if len(n.metaM.SlotMap().Slots) == 0 {
		if err := n.createSlotMap(ctx, g); err != nil {
			n.log.Error("create slot map", "err", err)
			return
		}
	}
	sub, err := n.nc.QueueSubscribe(n.subjects.Meta(), "meta", func(msg *nats.Msg) {
		switch msg.Header.Get(wire.OpHeader) {
		case wire.OpJoin:
			go respond(msg, n.metaJoinReply(g, msg.Data))
			return
		case wire.OpRemove:
			go respond(msg, removeReply(g, msg.Data))
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
	defer sub.Unsubscribe()
	ops, err := n.serveOperators(g)
	if err != nil {
		n.log.Error("subscribe operator subjects", "err", err)
		return
	}
	defer ops.Unsubscribe()
	defer n.serveMetaView(g)()
	defer n.serveShardsAdd(g)()
	go n.driveSplits(ctx, g)
	n.drive(ctx, g) // until the term ends
}

// createSlotMap proposes the slot map of a new cluster and, with
// Config.Replicas, its placement on the meta group's servers.
func (n *Node) createSlotMap(ctx context.Context, g *raftfsm.Group) error {
	// A new cluster's nodes all run this release: they read its encoding.
	cmd := raftfsm.MetaCommand{InitShards: max(n.cfg.Shards, 1), Wire: transport.WireVersion}
	if n.cfg.Replicas > 0 {
		f := g.Raft().GetConfiguration()
		if err := f.Error(); err != nil {
			return err
		}
		cmd.Replicas = n.cfg.Replicas
		for _, s := range f.Configuration().Servers {
			cmd.Nodes = append(cmd.Nodes, raftfsm.NodeRecord{ID: string(s.ID), RaftAddr: string(s.Address)})
		}
	}
	b, err := transport.Marshal(&cmd)
	if err != nil {
		return err
	}
	if _, err := g.ProposeWait(ctx, b); err != nil {
		return err
	}
	n.log.Debug("created slot map", "shards", cmd.InitShards, "replicas", cmd.Replicas)
	return nil
}

// metaGroup returns the meta group, nil while it is not open.
func (n *Node) metaGroup() *raftfsm.Group { return n.member(metaGroupID) }

// opening returns the meta group for its leader's term (ctx): a term may
// begin before openGroup has returned the group to be stored.
func (n *Node) opening(ctx context.Context) *raftfsm.Group {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if g := n.metaGroup(); g != nil {
			return g
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// shardIDs returns the ids of every shard of the cluster (not only those
// placed here).
func (n *Node) shardIDs() []uint32 {
	m := n.metaM.SlotMap()
	return m.Shards()
}

// addID adds shard id to the shards this node holds. ids is copied on
// write: readers keep the slice they took.
func (n *Node) addID(id uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !slices.Contains(n.ids, id) {
		n.ids = append(slices.Clone(n.ids), id)
	}
}

// dropID removes shard id from the shards this node holds.
func (n *Node) dropID(id uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ids = slices.DeleteFunc(slices.Clone(n.ids), func(x uint32) bool { return x == id })
}

// heldIDs returns the shards this node holds (open or being repaired).
func (n *Node) heldIDs() []uint32 {
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

// Ready reports whether every group is open here and has a leader: not
// while a group damaged while running is repaired.
func (n *Node) Ready() bool {
	if !led(n.metaGroup()) {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, id := range n.ids {
		if s, ok := n.shards[id]; !ok || !led(s.g) {
			return false
		}
	}
	return true
}

// led reports whether g is open, not stopped on damage, and has a leader.
func led(g *raftfsm.Group) bool {
	if g == nil || halted(g) {
		return false
	}
	_, id := g.Raft().LeaderWithID()
	return id != ""
}

// halted reports whether damage found while g ran has stopped it.
func halted(g *raftfsm.Group) bool {
	select {
	case <-g.Halted():
		return true
	default:
		return false
	}
}

// Close stops every group; what was acknowledged is on disk already. A
// group this node leads hands its leadership to another voter first, so the
// cluster does not wait out an election timeout.
func (n *Node) Close() error {
	if n.cancel != nil {
		n.cancel()
	}
	n.watchers.Wait() // a repair cut short leaves its group closed or the node's
	n.transferLeadership()
	n.mu.Lock()
	shards := n.shards
	n.shards = map[uint32]*shardServer{}
	n.mu.Unlock()
	meta := n.meta.Swap(nil)
	var errs []error
	for _, s := range shards {
		errs = append(errs, s.close())
	}
	if meta != nil {
		errs = append(errs, meta.Shutdown())
	}
	for _, sub := range []*nats.Subscription{n.nodes, n.status} {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
	}
	errs = append(errs, n.mux.Close())
	return errors.Join(errs...)
}

// groups returns the meta group and every shard group this node has open:
// not one stopped on damage or being repaired (status, the balancer and
// promotion leave it out), nor any once Close has begun.
func (n *Node) groups() []*raftfsm.Group {
	n.mu.Lock()
	defer n.mu.Unlock()
	var groups []*raftfsm.Group
	if g := n.meta.Load(); g != nil && !halted(g) {
		groups = append(groups, g)
	}
	for _, id := range n.ids {
		if s, ok := n.shards[id]; ok && !halted(s.g) {
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
