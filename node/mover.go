package node

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/placement"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// Driving the placement. The meta group's leader, for as long as its term
// lasts (drive), registers the nodes of the meta group's configuration,
// asks placement.Next for the replica moves to start, records each
// (StartMove) and drives every move the meta state lists to its end, also
// the ones a previous leader started: a move is resumable because each of
// its steps is idempotent and read back from the shard's configuration.
//
// A move of shard s adding node A and removing node R:
//  1. A sees the move in its meta state and opens s as joining
//     (placement.go): s's leader adds it as a nonvoter, Raft sends it a
//     snapshot and the log, and A asks to be promoted once it is within
//     promoteLagMax entries (discover.go);
//  2. the driver waits until s's leader lists A as a voter. It cancels the
//     move instead (movecancel.go) if A is gone (no longer registered,
//     draining, or out of the meta group's configuration), at once, or if
//     A is not a voter yet and has answered none of the meta leader's
//     status rounds for moveStall (2 minutes): the driver asks s's leader
//     to remove A if it was added, then records the move cancelled
//     (CancelMove). The placement stays as it was, A deletes its copy if
//     it runs, and placement.Next may plan another move for s, never onto
//     a node that is silent. If A is a voter and R is out already, the
//     move is finished (3, 4), never cancelled;
//  3. R hands on s's leadership if it holds it (placement.go), and the
//     driver asks s's leader to remove R (removeFrom);
//  4. the driver records the move done (EndMove): the placement now lists
//     A, not R, and R closes s and deletes its copy.
//
// A shard therefore never has fewer voters than its replication factor:
// the new voter counts before the old one goes, and a cancel removes only
// the voter the move added while the one it replaces is still there.

// driveEvery is how often the meta leader plans: a move starts within it.
const driveEvery = 500 * time.Millisecond

// moveStepEvery is how often a move's driver asks a shard's leader whether
// the added node is a voter yet.
const moveStepEvery = 200 * time.Millisecond

// opMembers asks a shard's leader for its group's configuration; the reply
// is a members, not a wire.Reply. Only nodes of this release ask it.
const opMembers = "members"

// members is a group's configuration as its leader sees it.
type members struct {
	Voters    []string `msgpack:"v"`
	Nonvoters []string `msgpack:"n"`
	Retry     string   `msgpack:"retry,omitempty"`
}

// membersOf reads g's configuration.
func membersOf(g *raftfsm.Group) members {
	f := g.Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		return members{Retry: err.Error()}
	}
	var m members
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			m.Voters = append(m.Voters, string(s.ID))
		} else {
			m.Nonvoters = append(m.Nonvoters, string(s.ID))
		}
	}
	return m
}

// respondMembers answers opMembers with g's configuration.
func respondMembers(msg *nats.Msg, g *raftfsm.Group) {
	m := membersOf(g)
	if b, err := transport.Marshal(&m); err == nil {
		_ = msg.Respond(b)
	}
}

// drive plans and drives replica moves until the term (ctx) ends.
func (n *Node) drive(ctx context.Context, g *raftfsm.Group) {
	t := time.NewTicker(driveEvery)
	var wireTried time.Time // the last status round of raiseWire
	defer t.Stop()
	live := newLiveness(moveStall())
	if n.metaM.State().Replicas > 0 { // the slot map exists: serveMeta made it
		go live.watch(ctx, n)
	}
	driving := map[uint32]bool{}
	ended := make(chan uint32)
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-ended:
			delete(driving, id)
			continue
		case <-t.C:
		}
		st := n.metaM.State()
		if time.Since(wireTried) >= raiseWireEvery {
			wireTried = time.Now()
			n.raiseWire(ctx, g, st)
		}
		if st.Replicas == 0 {
			continue
		}
		if err := n.register(ctx, g, st); err != nil {
			n.log.Warn("register nodes", "err", err)
			continue
		}
		busy := func(s uint32) bool { _, ok := st.Moving[s]; return ok }
		c := st.Cluster()
		c.Unready = unready(st, metaMembers(g), live, time.Now())
		for _, m := range placement.Next(projected(st), c, busy) {
			n.log.Info("replica move: start", "shard", m.Shard, "add", m.Add, "remove", m.Remove)
			if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{StartMove: &m}); err != nil {
				n.log.Warn("replica move: record the start", "shard", m.Shard, "err", err)
			}
		}
		// The moves just recorded are driven at once, with those found.
		for id, m := range n.metaM.State().Moving {
			if driving[id] {
				continue
			}
			driving[id] = true
			go func() {
				n.driveMove(ctx, g, m, live)
				select {
				case ended <- id:
				case <-ctx.Done():
				}
			}()
		}
		if err := n.metaSeats(g, st); err != nil {
			n.log.Warn("meta seats", "err", err)
		}
	}
}

// projected is the placement once every move under way is done. Next plans
// from it, not from the placement: counted before they end, the moves
// under way would leave their target looking empty, and every round would
// add another move to it, which later rounds move back (measured: replicas
// moved to and fro without end).
func projected(st raftfsm.MetaState) placement.Placement {
	p := st.Placement
	for _, m := range st.Moving {
		p = placement.Apply(p, m)
	}
	return p
}

// proposeMeta proposes one meta command and waits until it is applied.
func (n *Node) proposeMeta(ctx context.Context, g *raftfsm.Group, c *raftfsm.MetaCommand) error {
	b, err := transport.Marshal(c)
	if err != nil {
		return err
	}
	_, err = g.ProposeWait(ctx, b)
	return err
}

// register records every server of the meta group's configuration that the
// state does not list, or lists with another address: a node that joined.
func (n *Node) register(ctx context.Context, g *raftfsm.Group, st raftfsm.MetaState) error {
	f := g.Raft().GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, s := range f.Configuration().Servers {
		if rec, ok := st.Node(string(s.ID)); ok && rec.RaftAddr == string(s.Address) {
			continue
		}
		n.log.Info("registering a node", "node", s.ID, "raft", s.Address)
		rec := raftfsm.NodeRecord{ID: string(s.ID), RaftAddr: string(s.Address)}
		if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{Register: &rec}); err != nil {
			return err
		}
	}
	return nil
}

// driveMove drives move m to its end, or cancels it (movecancel.go), or
// stops when the term ends (the next leader resumes it).
func (n *Node) driveMove(ctx context.Context, g *raftfsm.Group, m placement.Move, live *liveness) {
	start := time.Now()
	if m.Add == "" {
		n.finishMove(ctx, g, m, start)
		return
	}
	for !n.moveRound(ctx, g, m, live, start) {
		if !sleepCtx(ctx, moveStepEvery) {
			return
		}
	}
}

// moveRound takes move m's next step (nextStep), and reports whether its
// driver is done with it: ended, cancelled, or failed (the next plan
// round drives it again).
func (n *Node) moveRound(ctx context.Context, g *raftfsm.Group, m placement.Move, live *liveness, start time.Time) bool {
	st := n.metaM.State()
	if st.Moving[m.Shard] != m {
		return true // ended or cancelled already
	}
	var cur members
	if err := n.request(ctx, n.subjects.Shard(m.Shard), opMembers, nil, &cur); err != nil || cur.Retry != "" {
		return false
	}
	a := addedNode{gone: goneWhy(st, metaMembers(g), m.Add), silent: live.silent(m.Add, time.Now()), answers: live.heardSince(m.Add, start)}
	switch nextStep(m, cur, a) {
	case stepFinish:
		n.log.Info("replica move: added node is a voter", "shard", m.Shard, "node", m.Add, "took", time.Since(start).Round(time.Millisecond))
		n.finishMove(ctx, g, m, start)
		return true
	case stepCancel:
		why := a.gone
		if why == "" {
			why = "silent for " + live.stall.String() + " before it became a voter"
		}
		n.cancelMove(ctx, g, m, cur, why, start)
		return true
	case stepAdopt:
		n.adopt(ctx, st, m)
	}
	return false
}

// finishMove removes m's replaced node, if any, and records the move done.
func (n *Node) finishMove(ctx context.Context, g *raftfsm.Group, m placement.Move, start time.Time) {
	if m.Remove != "" {
		if err := n.removeFrom(ctx, m.Shard, m.Remove); err != nil {
			n.log.Warn("replica move: remove", "shard", m.Shard, "node", m.Remove, "err", err)
			return
		}
	}
	if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{EndMove: &m}); err != nil {
		n.log.Warn("replica move: record the end", "shard", m.Shard, "err", err)
		return
	}
	n.log.Info("replica move: done", "shard", m.Shard, "add", m.Add, "remove", m.Remove, "took", time.Since(start).Round(time.Millisecond))
}

// metaSeats moves the meta group's voting seats off draining nodes: the
// voters placement.MetaVoters wants are promoted first, then a draining
// voter is demoted to a nonvoter (it still follows the meta state until it
// is removed). This node's own seat waits for it to hand the leadership
// on (placement.go).
func (n *Node) metaSeats(g *raftfsm.Group, st raftfsm.MetaState) error {
	drain := draining(st)
	if len(drain) == 0 {
		return nil
	}
	cur := membersOf(g)
	if cur.Retry != "" {
		return fmt.Errorf("meta configuration: %s", cur.Retry)
	}
	if !slices.ContainsFunc(cur.Voters, func(v string) bool { return slices.Contains(drain, v) }) {
		return nil
	}
	r := g.Raft()
	want := placement.MetaVoters(cur.Voters, st.Cluster())
	for _, w := range want {
		rec, ok := st.Node(w)
		if ok && slices.Contains(cur.Nonvoters, w) {
			n.log.Info("meta seat: promoting a node", "node", w)
			if err := r.AddVoter(raft.ServerID(w), raft.ServerAddress(rec.RaftAddr), 0, joinTimeout).Error(); err != nil {
				return err
			}
		}
	}
	for _, v := range cur.Voters {
		if !slices.Contains(drain, v) || v == n.cfg.NodeID {
			continue
		}
		n.log.Info("meta seat: demoting a draining node", "node", v)
		if err := r.DemoteVoter(raft.ServerID(v), 0, joinTimeout).Error(); err != nil {
			return err
		}
	}
	return nil
}

// metaJoinReply is the meta leader's answer to a join: joinReply, except
// that with placement a draining node is not promoted, nor a node past
// placement.MetaVotersMax voters (it follows the meta state as a nonvoter).
func (n *Node) metaJoinReply(g *raftfsm.Group, data []byte) *wire.Reply {
	var j wire.Join
	st := n.metaM.State()
	if st.Replicas == 0 || transport.Unmarshal(data, &j) != nil || !j.Promote {
		return joinReply(g, data)
	}
	if rec, ok := st.Node(j.Node.ID); ok && rec.Draining {
		return &wire.Reply{Retry: "join: a draining node keeps no meta seat"}
	}
	if cur := membersOf(g); !slices.Contains(cur.Voters, j.Node.ID) && len(cur.Voters) >= placement.MetaVotersMax {
		return &wire.Reply{Retry: fmt.Sprintf("join: the meta group has its %d voters", placement.MetaVotersMax)}
	}
	return joinReply(g, data)
}
