package raftfsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/ledgerd/ledgerd/transport/raftmux"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Limits of the leader's actor.
const (
	// mailboxProposalsMax bounds the commands queued for one group. A full
	// mailbox refuses (ErrBusy) instead of blocking a NATS handler.
	mailboxProposalsMax = 4096
	// entryBytesMax bounds one Raft entry: the actor stops adding commands
	// once an entry holds this much (a single larger command still goes).
	entryBytesMax = 4 << 20
	// entriesInFlightMax bounds the entries proposed but not yet applied: while
	// they are synced, new commands queue in the mailbox and go out together
	// in the next entry (measured: 64 in flight gave 1.4 commands per entry).
	entriesInFlightMax = 4
	// snapshotsRetained is how many snapshots a group keeps on disk.
	snapshotsRetained = 2
)

// ErrBusy is returned by Propose when the mailbox is full.
var ErrBusy = errors.New("raft group mailbox full")

// GroupConfig describes one Raft group on this node.
type GroupConfig struct {
	ID        uint32
	Dir       string // holds raft.db and snapshots/
	NodeID    string
	Transport raft.Transport
	// Servers is the initial configuration, used only when Dir holds no
	// Raft state yet; every initial voter must pass the same list.
	Servers []raft.Server
	Machine Machine
	Logger  *slog.Logger
	// OnLeader runs in its own goroutine each time this node becomes the
	// group's leader, after every earlier entry is applied (a barrier). Its
	// ctx is cancelled when leadership ends; it should return then.
	OnLeader func(ctx context.Context)
	// Snapshots: when to take them; zero values take the defaults.
	Snapshots SnapshotPolicy
	// QuickFirstElection: the group is new and all its replicas open at
	// once (a split made it): the first election waits for the leader
	// lease (500 ms) rather than Raft's heartbeat timeout (1 s, up to twice
	// that with the jitter), and the defaults come back once a leader is
	// known. Clients of the split's slots wait for that election.
	QuickFirstElection bool
	// Salvage starts a group whose files are damaged from the last good
	// state instead of refusing (ErrDamaged): damaged snapshots are moved
	// to damaged/, log entries past the first damaged one dropped. Entries
	// this node acknowledged may be lost: for a single node whose data
	// has no other copy, an operator's decision.
	Salvage bool
}

// SnapshotPolicy says when a group snapshots its state and compacts its
// log: once Threshold entries have gone by since the last snapshot, checked
// every Interval (jittered), keeping TrailingLogs entries behind it.
type SnapshotPolicy struct {
	Threshold    uint64        // default 4096
	Interval     time.Duration // default 30 s
	TrailingLogs uint64        // default 2048
}

func (p SnapshotPolicy) withDefaults() SnapshotPolicy {
	if p.Threshold == 0 {
		p.Threshold = 4096
	}
	if p.Interval == 0 {
		p.Interval = 30 * time.Second
	}
	if p.TrailingLogs == 0 {
		p.TrailingLogs = 2048
	}
	return p
}

// Group is one Raft group hosted on this node.
type Group struct {
	id       uint32
	raft     *raft.Raft
	store    *raftboltdb.BoltStore
	machine  Machine
	damage   chan error // damage found while running (the first), or nil: Shutdown
	damaged  atomic.Pointer[error]
	halted   chan struct{} // closed once damage has stopped Raft
	trans    raft.Transport
	mailbox  chan *proposal
	inflight chan entryInFlight
	stop     chan struct{}
	done     chan struct{} // closed when the actor, completer and watcher exit
	log      *slog.Logger
}

type proposal struct {
	cmd  []byte
	done func(result any, err error)
}

type entryInFlight struct {
	future    raft.ApplyFuture
	proposals []*proposal
}

// Open opens (or creates and bootstraps) a group and starts its goroutines.
// It checks every file of the group first (checkFiles): damage is an error
// wrapping ErrDamaged, unless cfg.Salvage. The group owns cfg.Transport:
// Shutdown closes it, and so does an Open that fails.
func Open(cfg GroupConfig) (g *Group, err error) {
	defer func() {
		if c, ok := cfg.Transport.(io.Closer); ok && err != nil {
			c.Close()
		}
	}()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	hlog := raftmux.HCLogger(cfg.Logger, "raft", cfg.ID)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("raft_group", cfg.ID)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, snapshotsRetained, hlog)
	if err != nil {
		return nil, fmt.Errorf("group %d: snapshot store: %w", cfg.ID, err)
	}
	in, err := checkFiles(cfg, snaps, logger)
	if err != nil {
		return nil, err
	}
	if err := dropUncovered(cfg.Dir, in.snaps, logger); err != nil {
		return nil, fmt.Errorf("group %d: %w", cfg.ID, err)
	}
	g = &Group{id: cfg.ID, trans: cfg.Transport, machine: cfg.Machine, damage: make(chan error, 1), halted: make(chan struct{}), log: logger}
	if d, ok := cfg.Machine.(damageNotifier); ok {
		d.notifyDamage(g.found)
	}
	if err := g.start(cfg, hlog, snaps, in.bolt.checkedFrom); err != nil {
		return nil, err
	}
	g.mailbox = make(chan *proposal, mailboxProposalsMax)
	g.inflight = make(chan entryInFlight, entriesInFlightMax)
	g.stop, g.done = make(chan struct{}), make(chan struct{})
	actorDone, completerDone, watcherDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { defer close(actorDone); g.actor() }()
	go func() { defer close(completerDone); g.completer() }()
	go func() { defer close(watcherDone); g.watchLeadership(cfg.OnLeader) }()
	go func() {
		<-actorDone
		<-completerDone
		<-watcherDone
		close(g.done)
	}()
	return g, nil
}

// start opens the group's checked stores and starts Raft.
func (g *Group) start(cfg GroupConfig, hlog hclog.Logger, snaps raft.SnapshotStore, checkedFrom uint64) error {
	path := filepath.Join(cfg.Dir, "raft.db")
	store, err := openBoltStore(path)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("group %d: %s is locked: is another ledgerd using this data directory? %w", cfg.ID, cfg.Dir, err)
	}
	if err != nil {
		return fmt.Errorf("group %d: open bolt store: %w", cfg.ID, err)
	}
	checked := &checkedLogStore{BoltStore: store, group: cfg.ID, dir: cfg.Dir, file: path, checkedFrom: checkedFrom, onDamage: g.found}
	stable := &checkedStable{BoltStore: store, group: cfg.ID, file: path}
	logs, err := raft.NewLogCache(512, checked)
	if err != nil {
		store.Close()
		return err
	}
	rc := raftConfig(cfg.NodeID, hlog, cfg.Snapshots.withDefaults())
	defaults := *rc
	if cfg.QuickFirstElection {
		rc.HeartbeatTimeout, rc.ElectionTimeout = rc.LeaderLeaseTimeout, rc.LeaderLeaseTimeout
	}
	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		store.Close()
		return fmt.Errorf("group %d: %w", cfg.ID, err)
	}
	if !existing && len(cfg.Servers) > 0 { // none: a joining node, added by the leader
		if err := raft.BootstrapCluster(rc, logs, stable, snaps, cfg.Transport, raft.Configuration{Servers: cfg.Servers}); err != nil {
			store.Close()
			return fmt.Errorf("group %d: bootstrap: %w", cfg.ID, err)
		}
	}
	f := &fsm{m: cfg.Machine, group: cfg.ID, log: g.log}
	f.starting.Store(true)
	r, err := raft.NewRaft(rc, f, logs, stable, snaps, cfg.Transport)
	f.starting.Store(false)
	switch {
	case f.startErr != nil && err == nil:
		err = errors.Join(f.startErr, r.Shutdown().Error())
	case f.startErr != nil:
		err = errors.Join(f.startErr, err)
	}
	if err != nil {
		store.Close()
		return fmt.Errorf("group %d: start raft: %w", cfg.ID, err)
	}
	g.raft, g.store = r, store
	go g.watchDamage()
	if cfg.QuickFirstElection {
		go g.restoreTimeouts(defaults)
	}
	return nil
}

// restoreTimeouts gives Raft back its default timeouts once the group has
// a leader (QuickFirstElection).
func (g *Group) restoreTimeouts(defaults raft.Config) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for g.raft.Leader() == "" {
		select {
		case <-g.halted:
			return
		case <-t.C:
		}
		if g.raft.State() == raft.Shutdown {
			return
		}
	}
	var rc raft.ReloadableConfig
	rc.TrailingLogs, rc.SnapshotInterval, rc.SnapshotThreshold = defaults.TrailingLogs, defaults.SnapshotInterval, defaults.SnapshotThreshold
	rc.HeartbeatTimeout, rc.ElectionTimeout = defaults.HeartbeatTimeout, defaults.ElectionTimeout
	if err := g.raft.ReloadConfig(rc); err != nil {
		g.log.Warn("restore Raft's timeouts after the first election", "err", err)
	}
}

func openBoltStore(path string) (*raftboltdb.BoltStore, error) {
	return raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, Timeout: boltTimeout},
	})
}

// found is told of damage found while the group runs, already recorded in
// the group's directory: a read of the log (sending an entry to a peer,
// comparing one with a leader's) or of the machine's own storage (a shard's
// history store: a read, a compaction). The group stops here (watchDamage),
// so that it neither serves nor votes from damaged storage. Raft stops the
// process itself if it was reading the entry to apply it (it panics on that
// read's error), and so does a machine that finds damage in apply.
func (g *Group) found(err error) {
	select {
	case g.damage <- err:
	default:
	}
}

// watchDamage stops Raft on the first damage found, then closes halted for
// whoever repairs the group (the node: repair.go). Shutdown ends it (nil).
func (g *Group) watchDamage() {
	err := <-g.damage
	if err == nil {
		return
	}
	g.damaged.Store(&err)
	g.log.Error("storage damaged: the group stops on this node, neither serving nor voting; a node with peers repairs it from them, a single node stops", "err", err)
	if f := g.raft.Shutdown(); f.Error() != nil {
		g.log.Warn("stopping the damaged group", "err", f.Error())
	}
	close(g.halted)
}

// unwatchDamage ends watchDamage at Shutdown, unless damage came first.
func (g *Group) unwatchDamage() { g.found(nil) }

// damageNotifier is a machine with storage of its own (a shard's history
// store) that reports damage its reads find.
type damageNotifier interface {
	notifyDamage(fn func(error))
}

// Damaged returns the damage that stopped the group, if any.
func (g *Group) Damaged() error {
	if p := g.damaged.Load(); p != nil {
		return *p
	}
	return nil
}

// Halted is closed once damage found while the group ran has stopped its
// Raft on this node (Damaged says what was found). The group serves and
// votes no more; what is left is Shutdown, by whoever repairs it.
func (g *Group) Halted() <-chan struct{} { return g.halted }

// raftConfig keeps the library's failover timeouts (docs/design.md: measured
// tighter timeouts lose leadership under load on 2 cores) and sizes the log
// for large batched entries.
func raftConfig(nodeID string, hlog hclog.Logger, snaps SnapshotPolicy) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(nodeID)
	c.Logger = hlog
	c.BatchApplyCh = true
	// Entries carry up to entryBytesMax of commands, so keep fewer of them
	// between snapshots than the defaults (8192 / 10240) would.
	c.SnapshotThreshold = snaps.Threshold
	c.TrailingLogs = snaps.TrailingLogs
	c.SnapshotInterval = snaps.Interval
	return c
}

// ID returns the group id.
func (g *Group) ID() uint32 { return g.id }

// Raft exposes the underlying Raft for status and membership.
func (g *Group) Raft() *raft.Raft { return g.raft }

// IsLeader reports whether this node currently leads the group.
func (g *Group) IsLeader() bool { return g.raft.State() == raft.Leader }

// Propose queues one command for the next entry without blocking. done is
// called once, from the completer goroutine, with the command's result
// after the entry is applied, or with an error: then the command may or may
// not have been applied, and only an idempotent retry is safe. A command the
// machine could not decode is never proposed: done gets the refusal as its
// result (from a goroutine of its own), as a machine's refusal of a whole
// command, since apply would stop the group on it (ErrUndecodable).
func (g *Group) Propose(cmd []byte, done func(result any, err error)) error {
	select {
	case <-g.stop:
		return raft.ErrRaftShutdown
	default:
	}
	if err := g.checkCommand(cmd); err != nil {
		go done(err, nil)
		return nil
	}
	select {
	case g.mailbox <- &proposal{cmd: cmd, done: done}:
		return nil
	default:
		return ErrBusy
	}
}

// ErrUndecodable is the result of a command the machine cannot decode.
var ErrUndecodable = errors.New("command does not decode")

// commandChecker is a machine that tells, before a command is proposed,
// whether apply will decode it: once in the log, a command that does not
// decode stops the group (a bug or damage), it is never skipped.
type commandChecker interface {
	CheckCommand(cmd []byte) error
}

func (g *Group) checkCommand(cmd []byte) error {
	c, ok := g.machine.(commandChecker)
	if !ok {
		return nil
	}
	if err := c.CheckCommand(cmd); err != nil {
		return fmt.Errorf("group %d: %w: %w", g.id, ErrUndecodable, err)
	}
	return nil
}

// ProposeWait proposes and waits for the result or ctx.
func (g *Group) ProposeWait(ctx context.Context, cmd []byte) (any, error) {
	type reply struct {
		res any
		err error
	}
	ch := make(chan reply, 1)
	if err := g.Propose(cmd, func(res any, err error) { ch <- reply{res, err} }); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.res, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// actor batches whatever is queued into one entry: no timer, so a lone
// command goes at once and a burst shares one entry (and one fsync).
func (g *Group) actor() {
	defer close(g.inflight)
	for {
		var first *proposal
		select {
		case first = <-g.mailbox:
		case <-g.stop:
			g.failQueued()
			return
		}
		batch := []*proposal{first}
		size := len(first.cmd)
	drain:
		for size < entryBytesMax {
			select {
			case p := <-g.mailbox:
				batch = append(batch, p)
				size += len(p.cmd)
			default:
				break drain
			}
		}
		if g.raft.State() != raft.Leader {
			failAll(batch, raft.ErrNotLeader)
			continue
		}
		cmds := make([][]byte, len(batch))
		for i, p := range batch {
			cmds[i] = p.cmd
		}
		// The leader's clock enters the log here, and only here; the
		// entry's checksum starts here too (checksum.go).
		data := encodeEntry(uint64(time.Now().UnixNano()), cmds)
		f := g.raft.ApplyLog(raft.Log{Data: data, Extensions: proposalSeal(data)}, 0)
		select {
		case g.inflight <- entryInFlight{future: f, proposals: batch}:
		case <-g.stop:
			failAll(batch, raft.ErrRaftShutdown)
			g.failQueued()
			return
		}
	}
}

func (g *Group) failQueued() {
	for {
		select {
		case p := <-g.mailbox:
			p.done(nil, raft.ErrRaftShutdown)
		default:
			return
		}
	}
}

func failAll(batch []*proposal, err error) {
	for _, p := range batch {
		p.done(nil, err)
	}
}

// completer hands each applied entry's results to its proposals, in order.
func (g *Group) completer() {
	for e := range g.inflight {
		if err := e.future.Error(); err != nil {
			failAll(e.proposals, err)
			continue
		}
		results, _ := e.future.Response().([]any)
		if len(results) != len(e.proposals) {
			panic(fmt.Sprintf("group %d: entry applied %d commands, proposed %d", g.id, len(results), len(e.proposals)))
		}
		for i, p := range e.proposals {
			p.done(results[i], nil)
		}
	}
}

// watchLeadership runs onLeader for each term this node leads. LeaderCh
// may coalesce signals, so the state is also polled.
func (g *Group) watchLeadership(onLeader func(context.Context)) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var term termContext
	defer term.end()
	for {
		select {
		case <-g.raft.LeaderCh():
		case <-tick.C:
		case <-g.stop:
			return
		}
		leading := g.raft.State() == raft.Leader
		if leading == term.active() {
			continue
		}
		if !leading {
			term.end()
			g.log.Debug("lost leadership")
			continue
		}
		ctx := term.begin()
		g.log.Debug("became leader", "term", g.raft.CurrentTerm())
		if onLeader != nil {
			go func() {
				// Apply everything committed by earlier terms before
				// serving, so reads and the outbox see it. A barrier
				// fails while a leadership transfer is in progress; if
				// the transfer fails, this node still leads and must
				// serve: try again for as long as the term lasts (giving
				// up once left a leader that never served, "no
				// responders" until the next election, which the chaos
				// test hit).
				for {
					err := g.raft.Barrier(0).Error()
					if err == nil {
						break
					}
					g.log.Warn("leader barrier failed", "err", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
				onLeader(ctx)
			}()
		}
	}
}

// termContext is the context of the term this node leads, if any.
type termContext struct{ cancel context.CancelFunc }

func (t *termContext) active() bool { return t.cancel != nil }

func (t *termContext) begin() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	return ctx
}

func (t *termContext) end() {
	if t.cancel != nil {
		t.cancel()
		t.cancel = nil
	}
}

// Shutdown stops the group: queued commands fail, Raft stops, stores close.
func (g *Group) Shutdown() error {
	g.unwatchDamage()
	close(g.stop)
	err := g.raft.Shutdown().Error()
	<-g.done
	if c, ok := g.trans.(io.Closer); ok {
		err = errors.Join(err, c.Close())
	}
	return errors.Join(err, g.store.Close())
}

// coverer is a machine whose snapshots need more than themselves to be
// restored (a shard's history store on disk).
type coverer interface {
	// Covers reads a snapshot's head and tells whether the machine can
	// restore it on its own.
	Covers(snapshot io.Reader) (bool, error)
}

// dropUncovered deletes the snapshots Raft must not start from (all of
// them checked by checkFiles, which found whether the machine covers them):
//   - the ones the machine could not restore on its own. Only one kind
//     exists: a snapshot the leader sent, persisted by Raft before Restore,
//     whose history copy a crash cut short (a node's own snapshots are
//     written after their history is durable). Raft would fail to start on
//     it; without it, the node starts from its older state and the leader
//     sends it again. The node never acknowledged it: Restore makes the
//     history durable before Raft answers the leader.
//   - the ones listed before a restorable snapshot with a higher index.
//     Raft tries the list in order (newest term first): a snapshot a
//     leader sent that was older than this node's state (Restore refused
//     it, but Raft had persisted it) would rewind the state at start.
func dropUncovered(dir string, list []*snapInfo, log *slog.Logger) error {
	for i, s := range list {
		older := slices.ContainsFunc(list[i+1:], func(later *snapInfo) bool {
			return later.meta.Index > s.meta.Index && later.covered
		})
		switch {
		case !s.covered:
			log.Warn("dropping a snapshot whose history copy was cut short; the leader sends it again", "snapshot", s.id, "index", s.meta.Index)
		case older:
			log.Warn("dropping a snapshot listed before a newer one", "snapshot", s.id, "index", s.meta.Index)
		default:
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, "snapshots", s.id)); err != nil {
			return err
		}
	}
	return nil
}
