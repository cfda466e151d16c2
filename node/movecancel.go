package node

import (
	"context"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
)

// Cancelling a replica move (mover.go's protocol, step 2). A move waits for
// its added node to become a voter; a node that died, or was drained, before
// that would hold the shard "moving" for ever, and placement makes no other
// move for a moving shard. So the meta leader gives a move up when:
//   - its added node is gone: no longer registered, draining, or out of the
//     meta group's configuration (/admin/remove-node); at once;
//   - its added node is not a voter yet and has been silent for moveStall:
//     it answered none of the meta leader's status rounds (liveness).
//
// Liveness is whether the node answers its status on NATS (the signal
// RemoveNode's grace period and the drain's progress use): a node that
// answers is up and may still be catching up (a large snapshot), so it is
// waited for; one that answers nothing for minutes is down, paused or cut
// off, and a move to it holds nothing but the shard. The meta leader learns
// it anew in each of its terms: a node not heard from yet counts as heard
// when the term (or the node's registration) began.
//
// A cancel undoes what the move did: the added node leaves the shard's
// configuration if it was added (a nonvoter, or a voter while the replaced
// node is still one: the shard keeps its voters of before the move), then
// CancelMove drops the move from the meta state, whose placement never
// changed. The added node, if it runs, sees the shard no longer placed on
// it and deletes its copy (placement.go). A move whose added node is a
// voter and whose replaced node is already out is finished instead: its
// added node is one of the voters the shard counts. Each step is read back
// from the shard's configuration and the meta state, so a new meta leader
// resumes a cancel as it resumes a move.
//
// A node that has been silent for moveStall, or is out of the meta
// configuration, is unready (placement.Cluster.Unready): placement plans
// no new replica onto it, so a cancelled move is not started again towards
// the same silent node; it receives replicas again once it answers.

// moveStallDefault bounds how long a move waits for an added node that
// does not answer: longer than a restart, a failover or a pause; short
// enough that a pod lost while it received a replica frees its shard
// without an operator.
const moveStallDefault = 2 * time.Minute

// moveStallEnv is a test hook: LEDGERD_TEST_MOVE_STALL=3s shortens
// moveStallDefault. It is read when a meta leader's term begins, not at
// init, so that a test running its nodes in its own process can set it.
const moveStallEnv = "LEDGERD_TEST_MOVE_STALL"

// livenessEveryMax and livenessEveryMin space the meta leader's status
// rounds (each asks every node and waits up to a second for the answers).
const (
	livenessEveryMax = 5 * time.Second
	livenessEveryMin = 100 * time.Millisecond
)

// moveStall returns the bound on a silent added node.
func moveStall() time.Duration {
	if d, err := time.ParseDuration(os.Getenv(moveStallEnv)); err == nil && d > 0 {
		return d
	}
	return moveStallDefault
}

// liveness is when the meta leader last heard each node answer its status,
// during one term.
type liveness struct {
	stall time.Duration
	mu    sync.Mutex
	known map[string]time.Time // when this term first knew of the node
	heard map[string]time.Time // when the node last answered
}

func newLiveness(stall time.Duration) *liveness {
	return &liveness{stall: stall, known: map[string]time.Time{}, heard: map[string]time.Time{}}
}

// every is how often watch asks: several times within the bound.
func (l *liveness) every() time.Duration {
	return max(livenessEveryMin, min(livenessEveryMax, l.stall/8))
}

// watch runs status rounds until the term (ctx) ends.
func (l *liveness) watch(ctx context.Context, n *Node) {
	for {
		asked := time.Now()
		statuses := wire.NodeStatuses(ctx, n.nc, n.subjects)
		l.mu.Lock()
		for _, s := range statuses {
			l.heard[s.ID] = asked
		}
		l.mu.Unlock()
		if !sleepCtx(ctx, l.every()) {
			return
		}
	}
}

// silent reports whether node id has not answered for the bound (counted
// from the first time this term knew of it).
func (l *liveness) silent(id string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	since, ok := l.known[id]
	if !ok {
		l.known[id] = now
		since = now
	}
	if h := l.heard[id]; h.After(since) {
		since = h
	}
	return now.Sub(since) >= l.stall
}

// heardSince reports whether node id answered a round asked after t.
func (l *liveness) heardSince(id string, t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heard[id].After(t)
}

// unready returns the registered nodes that must receive no new replica:
// silent for the bound, or out of the meta group's configuration meta
// (nil: not known this round).
func unready(st raftfsm.MetaState, meta *members, l *liveness, now time.Time) []string {
	var out []string
	for _, rec := range st.Nodes {
		if l.silent(rec.ID, now) || meta != nil && !meta.has(rec.ID) {
			out = append(out, rec.ID)
		}
	}
	return out
}

// metaMembers is the meta group's configuration, nil while unknown.
func metaMembers(g *raftfsm.Group) *members {
	m := membersOf(g)
	if m.Retry != "" {
		return nil
	}
	return &m
}

// has reports whether node id is in the configuration.
func (m members) has(id string) bool {
	return slices.Contains(m.Voters, id) || slices.Contains(m.Nonvoters, id)
}

// goneWhy says why node id may receive no replica at all ("": it may).
func goneWhy(st raftfsm.MetaState, meta *members, id string) string {
	rec, ok := st.Node(id)
	switch {
	case !ok:
		return "no longer registered"
	case rec.Draining:
		return "draining"
	case meta != nil && !meta.has(id):
		return "removed from the meta group"
	}
	return ""
}

// addedNode is what the meta leader knows of a move's added node.
type addedNode struct {
	gone    string // why it is gone, "" if not
	silent  bool   // it has not answered for the bound
	answers bool   // it answered since the move's driver began
}

// moveStep is a move's next step.
type moveStep int

const (
	stepWait   moveStep = iota // the added node is not a voter yet
	stepAdopt                  // it answers but is not in the configuration: add it
	stepFinish                 // remove the replaced node if still there, record the end
	stepCancel                 // remove the added node if there, record the cancel
)

// nextStep decides move m's next step from its shard's configuration cur.
//
// The added node is asked to join again on its own behalf (stepAdopt) when
// it answers but is in no seat of the group: a node that held a copy of
// the shard from a cancelled move (it was down when the move was given
// up) reopens that copy when a later move adds it again, and does not ask
// to join a group whose log it already has. Adding it as a nonvoter is
// what its own join would do, and takes no vote from the quorum.
func nextStep(m placement.Move, cur members, a addedNode) moveStep {
	if m.Add == "" {
		return stepFinish
	}
	voter := slices.Contains(cur.Voters, m.Add)
	switch {
	case voter && m.Remove != "" && !cur.has(m.Remove):
		// The replaced node is out already: the added one is a voter the
		// shard counts, and removing it would leave one voter fewer.
		return stepFinish
	case a.gone != "" || !voter && a.silent:
		return stepCancel
	case voter:
		return stepFinish
	case !cur.has(m.Add) && a.answers:
		return stepAdopt
	}
	return stepWait
}

// cancelMove removes m's added node from the shard's configuration cur if
// it is there, then records the move cancelled; why is logged.
func (n *Node) cancelMove(ctx context.Context, g *raftfsm.Group, m placement.Move, cur members, why string, start time.Time) {
	if n.metaM.State().Wire < transport.WireVersion {
		// A node of the release before would not apply the cancel and
		// would keep the move: wait until every node runs this one.
		return
	}
	if cur.has(m.Add) {
		if err := n.removeFrom(ctx, m.Shard, m.Add); err != nil {
			n.log.Warn("replica move: cancel: remove the added node", "shard", m.Shard, "node", m.Add, "err", err)
			return
		}
	}
	if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{CancelMove: &m}); err != nil {
		n.log.Warn("replica move: record the cancel", "shard", m.Shard, "err", err)
		return
	}
	n.log.Warn("replica move: cancelled", "shard", m.Shard, "add", m.Add, "remove", m.Remove, "added node", why, "took", time.Since(start).Round(time.Millisecond))
}

// adopt asks shard m.Shard's leader to add m's added node as a nonvoter,
// as the node's own join would (nextStep).
func (n *Node) adopt(ctx context.Context, st raftfsm.MetaState, m placement.Move) {
	rec, ok := st.Node(m.Add)
	if !ok {
		return
	}
	j := wire.Join{Node: transport.NodeInfo{ID: rec.ID, RaftAddr: rec.RaftAddr}}
	var reply wire.Reply
	err := n.request(ctx, n.subjects.Shard(m.Shard), wire.OpJoin, &j, &reply)
	if err == nil && reply.Retry == "" && reply.Invalid == "" {
		n.log.Info("replica move: added node joined on its behalf", "shard", m.Shard, "node", m.Add)
		return
	}
	n.log.Debug("replica move: join on the added node's behalf", "shard", m.Shard, "node", m.Add, "err", err, "retry", reply.Retry, "invalid", reply.Invalid)
}
