package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ledgerd/ledgerd/auth"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// Adding shards online (raftfsm/metasplit.go plans, shard/slots.go
// applies). While the meta group wants more shards than the slot map has,
// its leader (driveSplits) records the next split, then asks the parent
// shard's leader to make it (OpSplit) until it answers done, and records
// it done (EndSplit), which gives the slots to the new shard. Every step
// is idempotent and read back from the meta state and the parent's, so a
// new meta leader resumes a split its predecessor began.
//
// The parent's leader (handleSplit) freezes the slots (KindFreeze: client
// commands on them are answered Moved, frozen, and the router sends them
// again shortly), proposes KindSplit until no saga of theirs is in flight,
// and thaws them if that takes longer than splitWaitMax. Every replica of
// the parent that applies the split writes the new shard's group
// directory (raftfsm.WriteGenesis) and opens it at once; the new group
// elects a leader among them. A command routed with the old map is
// answered Moved with the new epoch, and the router fetches the map again.

const (
	// splitEvery paces the meta leader's splits.
	splitEvery = 100 * time.Millisecond
	// splitWaitMax is how long a parent keeps slots frozen waiting for
	// their transfers in flight to end; then it thaws them and the split
	// is tried again at the meta leader's next round.
	splitWaitMax = 2 * time.Second
	// splitRetryEvery paces a parent's KindSplit proposals while its slots
	// are frozen.
	splitRetryEvery = 5 * time.Millisecond
	// splitBackoffMin and splitBackoffMax bound the wait before a split
	// the parent thawed is tried again.
	splitBackoffMin = time.Second
	splitBackoffMax = time.Minute
)

// driveSplits splits shards while the meta group wants more, until the
// term (ctx) ends.
func (n *Node) driveSplits(ctx context.Context, g *raftfsm.Group) {
	t := time.NewTicker(splitEvery)
	defer t.Stop()
	// After a split the parent could not make (its slots thawed), the
	// next try waits, longer each time: the slots' clients are not kept
	// frozen 2 s out of every few while a shard their sagas need is away.
	var next time.Time
	backoff := splitBackoffMin
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if now.Before(next) {
				continue
			}
		}
		st := n.metaM.State()
		if st.Wire < transport.WireVersion {
			continue // a node of an older release would not apply a split
		}
		if st.Splitting == nil {
			backoff = splitBackoffMin
			sp, ok := raftfsm.NextSplit(&st)
			if !ok || !n.splitsServed(ctx, &st) {
				continue
			}
			if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{Split: &sp}); err != nil {
				n.log.Warn("record a split", "err", err)
			}
			continue
		}
		if n.runSplit(ctx, g, st, *st.Splitting) {
			backoff = splitBackoffMin
			continue
		}
		next, backoff = time.Now().Add(backoff), min(2*backoff, splitBackoffMax)
	}
}

// runSplit asks the parent's leader to make the split under way, and
// records it done once it is; false: not done.
func (n *Node) runSplit(ctx context.Context, g *raftfsm.Group, st raftfsm.MetaState, sp raftfsm.Split) bool {
	cmd := shard.SlotCommand{Epoch: sp.Epoch, Slots: sp.Slots, To: sp.Child}
	for slot, id := range st.Slots {
		if id == sp.Parent {
			cmd.Owned = append(cmd.Owned, uint16(slot))
		}
	}
	for _, v := range st.Placement[sp.Parent] {
		if rec, ok := st.Node(v); ok {
			cmd.Voters = append(cmd.Voters, shard.Voter{ID: rec.ID, Addr: rec.RaftAddr})
		}
	}
	var reply wire.Reply
	err := n.request(ctx, n.subjects.Shard(sp.Parent), wire.OpSplit, &cmd, &reply)
	switch {
	case err != nil:
		n.log.Debug("split", "parent", sp.Parent, "child", sp.Child, "err", err)
		return true // no leader for a moment: no backoff
	case reply.Retry != "" || reply.Invalid != "":
		n.log.Info("split not made yet", "parent", sp.Parent, "child", sp.Child, "why", reply.Retry+reply.Invalid)
		return false
	}
	if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{EndSplit: &sp}); err != nil {
		n.log.Warn("record a split done", "err", err)
		return true
	}
	n.log.Info("split a shard", "parent", sp.Parent, "child", sp.Child, "slots", len(sp.Slots), "epoch", sp.Epoch)
	return true
}

// splitsServed reports whether every shard a split made has a leader: the
// next split waits for it, so that the slots of one split are not frozen
// again before their new shard serves them.
func (n *Node) splitsServed(ctx context.Context, st *raftfsm.MetaState) bool {
	for child := range st.SplitFrom {
		var reply wire.Reply
		if err := n.request(ctx, n.subjects.Shard(child), wire.OpStatus, nil, &reply); err != nil || reply.Status == nil {
			return false
		}
	}
	return true
}

// handleSplit serves OpSplit on the parent's leader.
func (s *shardServer) handleSplit(msg *nats.Msg) {
	var c shard.SlotCommand
	if err := transport.Unmarshal(msg.Data, &c); err != nil || len(c.Slots) == 0 {
		respond(msg, &wire.Reply{Invalid: "bad split command"})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if why := s.split(ctx, &c); why != "" {
		respond(msg, &wire.Reply{Retry: why})
		return
	}
	respond(msg, &wire.Reply{})
}

// split freezes c's slots and splits them off; it returns why not ("":
// done, now or before).
func (s *shardServer) split(ctx context.Context, c *shard.SlotCommand) string {
	if s.splitDone(c) {
		return ""
	}
	if !s.g.IsLeader() {
		return "not the shard's leader"
	}
	freeze := shard.Command{Kind: shard.KindFreeze, Slots: &shard.SlotCommand{Epoch: c.Epoch, Slots: c.Slots}}
	if _, err := s.propose(ctx, &freeze); err != nil {
		return "freeze: " + err.Error()
	}
	split := shard.Command{Kind: shard.KindSplit, Slots: c}
	deadline := time.Now().Add(splitWaitMax)
	for {
		// Proposed once the leader's own state would take it: a split
		// waiting for sagas writes no entries meanwhile.
		var why string
		s.m.Read(func(st *shard.State, _ uint64) { why = st.SplitReady(c.Slots) })
		if why == "" {
			out, err := s.propose(ctx, &split)
			switch {
			case err != nil:
				return "split: " + err.Error()
			case out.Split != nil && out.Split.Refused == "", s.splitDone(c):
				return ""
			}
			why = out.Split.Refused
		}
		if time.Now().After(deadline) {
			thaw := shard.Command{Kind: shard.KindFreeze, Slots: &shard.SlotCommand{Epoch: c.Epoch}}
			_, _ = s.propose(ctx, &thaw)
			return "thawed after " + splitWaitMax.String() + ": " + why
		}
		if !sleepCtx(ctx, splitRetryEvery) {
			return ctx.Err().Error()
		}
	}
}

// splitDone reports whether the shard has split c's slots off already.
func (s *shardServer) splitDone(c *shard.SlotCommand) (done bool) {
	s.m.Read(func(st *shard.State, _ uint64) {
		owned, epoch, ok := st.Slots()
		done = ok && epoch >= c.Epoch && !owned.Has(c.Slots[0])
	})
	return done
}

// propose proposes one command and returns its output.
func (s *shardServer) propose(ctx context.Context, c *shard.Command) (*shard.Output, error) {
	b, err := transport.Marshal(c)
	if err != nil {
		return nil, err
	}
	res, err := s.g.ProposeWait(ctx, b)
	if err != nil {
		return nil, err
	}
	out, ok := res.(*shard.Output)
	if !ok {
		return nil, errors.New("the machine refused the command")
	}
	return out, nil
}

// writeSplit is the shard machine's SplitSink: it writes the new shard's
// group directory from the parent's state at the split (on Raft's apply
// goroutine: nothing else of the parent moves meanwhile). A failure leaves
// this replica of the new shard to start empty and receive a snapshot.
func (n *Node) writeSplit(r *shard.SplitResult, store *history.Store) {
	dir := filepath.Join(n.cfg.DataDir, groupDir(r.To))
	start := time.Now()
	if err := raftfsm.WriteGenesis(dir, r, store); err != nil {
		n.log.Error("write the group of a new shard", "shard", r.To, "err", err)
		return
	}
	n.log.Info("wrote the group of a new shard", "shard", r.To, "took", time.Since(start).Round(time.Millisecond))
	n.kickPlacement() // open it now, not at the next round
}

// shardOf is the shard that owns account in the slot map this node holds.
func (n *Node) shardOf(account string) uint32 {
	m := n.metaM.SlotMap()
	if len(m.Slots) != transport.SlotCount {
		return 0
	}
	return m.Slots[transport.Slot(account)]
}

// newSplitGroup reports whether group id is a split's new shard that has
// never run here: its replicas open together, and elect a leader quickly.
func (n *Node) newSplitGroup(id uint32) bool {
	st := n.metaM.State()
	if id == metaGroupID || !splitChild(&st, id) {
		return false
	}
	_, err := os.Stat(filepath.Join(n.cfg.DataDir, groupDir(id), "raft.db"))
	return errors.Is(err, os.ErrNotExist)
}

// splitChild reports whether shard id was made by a split (or is being):
// it never bootstraps, its replicas start from the split or a snapshot.
func splitChild(st *raftfsm.MetaState, id uint32) bool {
	_, made := st.SplitFrom[id]
	return made || st.Splitting != nil && st.Splitting.Child == id
}

// splitWritten reports whether this node wrote the group of the shard a
// split under way is making: it opens it then, before the split is
// recorded done, so that the new shard has a leader when routers learn
// of it.
func (n *Node) splitWritten(st *raftfsm.MetaState) (uint32, bool) {
	sp := st.Splitting
	if sp == nil || !slices.Contains(st.Placement[sp.Parent], n.cfg.NodeID) {
		return 0, false
	}
	_, err := os.Stat(filepath.Join(n.cfg.DataDir, groupDir(sp.Child)))
	return sp.Child, err == nil
}

// serveShardsAdd subscribes the meta leader to ledgerctl shards add; the
// returned function unsubscribes.
func (n *Node) serveShardsAdd(g *raftfsm.Group) func() {
	sub, err := n.nc.QueueSubscribe(nodeops.ShardsAddSubject(n.subjects), "meta", func(msg *nats.Msg) {
		go func() {
			p := n.shardsAdd(g, msg)
			if b, err := transport.Marshal(&p); err == nil {
				_ = msg.Respond(b)
			}
		}()
	})
	if err != nil {
		n.log.Error("subscribe the shards add subject", "err", err)
		return func() {}
	}
	return func() { _ = sub.Unsubscribe() }
}

// shardsAdd raises the shards wanted and reports the splits' progress.
func (n *Node) shardsAdd(g *raftfsm.Group, msg *nats.Msg) nodeops.ShardsProgress {
	var req nodeops.ShardsAddRequest
	switch {
	case n.cfg.Operator != nil && !n.cfg.Operator(msg.Header.Get(auth.RequestInfoHeader)):
		return nodeops.ShardsProgress{Error: "unauthorized: shards are added by operators"}
	case transport.Unmarshal(msg.Data, &req) != nil:
		return nodeops.ShardsProgress{Error: "bad request: want add or to"}
	}
	st := n.metaM.State()
	if st.Replicas == 0 {
		return nodeops.ShardsProgress{Error: "this cluster keeps every shard on every node (created before --replicas): it cannot add shards"}
	}
	have := uint32(len(st.Shards()))
	want := max(req.To, max(st.ShardsWanted, have)+req.Add)
	if req.Add > raftfsm.ShardsMax || want > raftfsm.ShardsMax {
		return nodeops.ShardsProgress{Error: fmt.Sprintf("a cluster has at most %d shards", raftfsm.ShardsMax)}
	}
	if want > st.ShardsWanted && want > have {
		ctx, cancel := context.WithTimeout(context.Background(), operatorRequestMax)
		defer cancel()
		if err := n.proposeMeta(ctx, g, &raftfsm.MetaCommand{Grow: want}); err != nil {
			return nodeops.ShardsProgress{Error: "record the shards wanted: " + err.Error()}
		}
		n.log.Info("adding shards", "have", have, "want", want)
		st = n.metaM.State()
	}
	p := shardsProgress(&st)
	if p.Done { // and every new shard serves
		ctx, cancel := context.WithTimeout(context.Background(), operatorRequestMax)
		defer cancel()
		p.Done = n.splitsServed(ctx, &st)
	}
	return p
}

// shardsProgress describes the splits of st.
func shardsProgress(st *raftfsm.MetaState) nodeops.ShardsProgress {
	counts := map[uint32]int{}
	for _, id := range st.Slots {
		counts[id]++
	}
	p := nodeops.ShardsProgress{Shards: len(counts), Wanted: max(int(st.ShardsWanted), len(counts)), MinSlots: transport.SlotCount}
	for _, c := range counts {
		p.MinSlots, p.MaxSlots = min(p.MinSlots, c), max(p.MaxSlots, c)
	}
	if sp := st.Splitting; sp != nil {
		p.Splitting = &nodeops.SplitView{Parent: sp.Parent, Child: sp.Child, Slots: len(sp.Slots)}
	}
	p.Done = p.Shards >= p.Wanted && p.Splitting == nil
	return p
}

// ShardHash returns this node's replica of shard id: its state hash and
// applied index (ok false: not open here). Tests compare replicas with it.
func (n *Node) ShardHash(id uint32) (hash, applied uint64, ok bool) {
	n.mu.Lock()
	s := n.shards[id]
	n.mu.Unlock()
	if s == nil {
		return 0, 0, false
	}
	s.m.Read(func(st *shard.State, a uint64) { hash, applied = st.Hash(), a })
	return hash, applied, true
}
