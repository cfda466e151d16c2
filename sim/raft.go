package sim

import (
	"bytes"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// epoch makes simulated clocks look like Unix nanoseconds.
const epoch = uint64(1_700_000_000) * second

// Replica is one member of a shard's Raft group: its own shard.State, which
// applies the committed log at its own pace, and its last snapshot (on disk:
// it survives a crash; the state does not).
type Replica struct {
	g       *Group
	idx     int
	st      *shard.State
	applied uint64
	up      bool
	// cut: a deposed leader still acting as one, partitioned from the
	// group; it applies nothing until it rejoins.
	cut        bool
	keepDown   bool
	gen        uint64 // bumped by a crash: pending work of the old life is void
	applying   bool
	skew       int64
	snap       []byte
	snapIndex  uint64
	snapOffset int
	// archive is the replica's history store, on its disk: it survives a
	// crash, rows of entries the replica will replay included.
	archive *shard.MemArchive
}

// Group models one shard's Raft group. The committed log is the group's
// (Raft guarantees every leader holds it); what the model varies is what
// Raft lets its users see: which entries commit, when each replica applies
// them, who leads, and what a leader loses when it stops leading.
type Group struct {
	w       *World
	id      uint32
	log     []shard.Entry // committed entries; log index i is log[i-1]
	reps    []*Replica
	leader  *Term
	zombies []*Term
	term    uint64
	// checked: entries whose commands have been applied once (the first
	// application of an index, on whichever replica, runs the checks).
	checked      uint64
	electing     bool
	lastCommitAt uint64
	hashes       map[uint64]hashAt
}

type hashAt struct {
	h   uint64
	who string
}

func newGroup(w *World, i int) *Group {
	g := &Group{w: w, id: uint32(i + 1), hashes: map[uint64]hashAt{}}
	for j := range w.p.Replicas {
		r := &Replica{g: g, idx: j, archive: shard.NewMemArchive(), up: true}
		r.st = shard.New(g.id, r.archive)
		if w.p.ClockSkew > 0 {
			r.skew = int64(w.rngRaft.Uint64N(2*w.p.ClockSkew+1)) - int64(w.p.ClockSkew)
		}
		if w.p.SnapshotEvery > 0 {
			r.snapOffset = w.rngRaft.IntN(w.p.SnapshotEvery)
		}
		g.reps = append(g.reps, r)
	}
	return g
}

func (g *Group) name() string { return "shard" + itoa(int(g.id)) }

func (r *Replica) name() string { return fmt.Sprintf("shard%d/r%d", r.g.id, r.idx) }

// clock is the replica's wall clock: the simulated time plus its skew.
func (r *Replica) clock() uint64 { return uint64(int64(epoch+r.g.w.now) + r.skew) }

func (g *Group) start() {
	w := g.w
	g.scheduleElection()
	loop := func(every uint64, fn func()) {
		if every == 0 {
			return
		}
		var tick func()
		tick = func() {
			if w.liveness {
				return
			}
			fn()
			w.after(exp(w.rngFault, every)+ms, tick)
		}
		w.after(exp(w.rngFault, every)+ms, tick)
	}
	loop(w.p.LeaderCrashEvery, func() {
		if g.leader != nil {
			g.crash(g.leader.r)
		}
	})
	loop(w.p.FollowerCrashEvery, func() {
		var fs []*Replica
		for _, r := range g.reps {
			if r.up && (g.leader == nil || g.leader.r != r) {
				fs = append(fs, r)
			}
		}
		if len(fs) > 0 {
			g.crash(fs[w.rngFault.IntN(len(fs))])
		}
	})
	loop(w.p.DeposeEvery, func() {
		if g.leader != nil {
			g.depose(g.leader, -1, false)
		}
	})
}

// serving lists the terms that take requests on the shard's subject now.
func (g *Group) serving() []*Term {
	var ts []*Term
	if g.leader != nil && g.leader.serving {
		ts = append(ts, g.leader)
	}
	for _, z := range g.zombies {
		if z.serving && !z.dead {
			ts = append(ts, z)
		}
	}
	return ts
}

func (g *Group) scheduleElection() {
	if g.electing || g.leader != nil {
		return
	}
	g.electing = true
	g.w.after(exp(g.w.rngRaft, g.w.p.ElectionMean)+ms, g.elect)
}

// elect makes a reachable replica leader if a majority is reachable. The new
// leader applies the whole committed log (hashicorp/raft's barrier, which
// raftfsm waits for before serving), then serves.
func (g *Group) elect() {
	w := g.w
	g.electing = false
	if g.leader != nil {
		return
	}
	var cands []*Replica
	for _, r := range g.reps {
		if r.up && !r.cut {
			cands = append(cands, r)
		}
	}
	if len(cands) < len(g.reps)/2+1 {
		if w.tracing() {
			w.tracef("%s: no majority (%d of %d reachable), no leader", g.name(), len(cands), len(g.reps))
		}
		return // a restart or a rejoin elects again
	}
	r := cands[w.rngRaft.IntN(len(cands))]
	g.term++
	w.stats.Elections++
	r.catchUp()
	t := newTerm(g, r, g.term)
	g.leader = t
	if w.tracing() {
		w.tracef("%s: %s leads term %d at index %d", g.name(), r.name(), g.term, len(g.log))
	}
	w.after(exp(w.rngRaft, w.p.CommitDelayMean), func() {
		if g.leader == t {
			r.catchUp()
			t.serve()
		}
	})
	for _, o := range g.reps {
		o.kick()
	}
}

// propose (from a term's actor) schedules the entry's commit.
func (g *Group) schedule(t *Term, pe *pendingEntry) {
	w := g.w
	at := max(g.lastCommitAt, w.now+exp(w.rngRaft, w.p.CommitDelayMean)+10*us)
	g.lastCommitAt = at
	w.after(at-w.now, func() { g.commit(t, pe) })
}

// commit commits a term's oldest in-flight entry, unless the seed makes the
// proposal fail: lost (never committed) or committed with the leader
// stepping down before its reply. Either way the leader loses its term.
func (g *Group) commit(t *Term, pe *pendingEntry) {
	w := g.w
	if g.leader != t || len(t.inflight) == 0 || t.inflight[0] != pe {
		return
	}
	switch {
	case on(w.rngFault, w.p.ProposalLostP):
		if w.tracing() {
			w.tracef("%s: proposal lost (%d commands), leader steps down", g.name(), len(pe.e.Commands))
		}
		g.depose(t, 0, false)
		return
	case on(w.rngFault, w.p.ReplyLostP):
		if w.tracing() {
			w.tracef("%s: entry commits but the leader steps down before replying", g.name())
		}
		g.depose(t, 1, false)
		return
	}
	t.inflight = t.inflight[1:]
	g.append(pe.e)
	outs := t.r.applyOne(false)
	for o := range g.reps {
		g.reps[o].kick()
	}
	for i, p := range pe.props {
		p.done(outs[i], nil)
	}
	t.kickActor()
}

// append adds a committed entry to the log; with Codec each command goes
// through msgpack first, as the FSM decodes what the leader encoded.
func (g *Group) append(e shard.Entry) {
	w := g.w
	if w.p.Codec {
		cmds := make([]shard.Command, len(e.Commands))
		for i := range e.Commands {
			b, err := transport.Marshal(&e.Commands[i])
			if err == nil {
				err = transport.Unmarshal(b, &cmds[i])
			}
			if err != nil {
				w.fail("codec", "%s: command %d of kind %d does not round-trip: %v", g.name(), i, e.Commands[i].Kind, err)
				cmds[i] = e.Commands[i]
			}
		}
		e.Commands = cmds
	}
	g.log = append(g.log, e)
	if w.tracing() {
		w.tracef("%s: commit index %d ts %d: %s", g.name(), len(g.log), rel(e.Timestamp), describeEntry(&e))
	}
}

// depose ends t's leadership. cut < 0 draws how many of its in-flight
// entries were replicated to a majority and so commit (with the next
// leader); the rest are lost. A leader that did not crash may go on acting
// as one for a while (a zombie: its subject subscription and dispatcher
// live on until it notices), unless the seed has no zombies.
func (g *Group) depose(t *Term, cut int, crashed bool) {
	w := g.w
	if g.leader != t {
		return
	}
	w.stats.Deposes++
	g.leader = nil
	n := len(t.inflight)
	if cut < 0 {
		cut = w.rngRaft.IntN(n + 1)
	}
	cut = min(cut, n)
	for _, pe := range t.inflight[:cut] {
		g.append(pe.e)
	}
	zombie := !crashed && w.p.ZombieMean > 0 && !w.liveness
	if w.tracing() {
		w.tracef("%s: %s loses term %d (crashed=%v zombie=%v): %d of %d in-flight entries commit", g.name(), t.r.name(), t.n, crashed, zombie, cut, n)
	}
	if zombie {
		t.zombie = true
		t.r.cut = true
		g.zombies = append(g.zombies, t)
		w.after(exp(w.rngRaft, w.p.ZombieMean)+ms, func() { g.endZombie(t) })
	} else {
		t.end()
	}
	for _, r := range g.reps {
		r.kick()
	}
	g.scheduleElection()
}

// endZombie: the deposed leader notices; its proposals fail, it rejoins.
func (g *Group) endZombie(t *Term) {
	for i, z := range g.zombies {
		if z == t {
			g.zombies = append(g.zombies[:i], g.zombies[i+1:]...)
			break
		}
	}
	if t.dead {
		return
	}
	if g.w.tracing() {
		g.w.tracef("%s: %s notices it lost term %d", g.name(), t.r.name(), t.n)
	}
	t.end()
	t.r.cut = false
	t.r.kick()
	g.scheduleElection()
}

// crash loses a replica's state (not its snapshot, not the log).
func (g *Group) crash(r *Replica) {
	w := g.w
	if !r.up {
		return
	}
	w.stats.Crashes++
	if w.tracing() {
		w.tracef("%s: crash (applied %d)", r.name(), r.applied)
	}
	if g.leader != nil && g.leader.r == r {
		g.depose(g.leader, -1, true)
	}
	for _, z := range g.zombies {
		if z.r == r {
			g.endZombie(z)
			break
		}
	}
	r.up, r.st, r.applied, r.applying, r.cut = false, nil, 0, false, false
	r.gen++
	if on(w.rngFault, w.p.KeepDownP) {
		r.keepDown = true
		return
	}
	gen := r.gen
	w.after(exp(w.rngRaft, w.p.RestartMean)+ms, func() {
		if r.gen == gen {
			r.restart()
		}
	})
}

// restart rebuilds a replica from its snapshot, or the leader's (an install
// snapshot), or from nothing, then replays the log after it.
func (r *Replica) restart() {
	g, w := r.g, r.g.w
	if r.up {
		return
	}
	// An installed snapshot comes with a copy of the leader's history.
	snap, index, from := r.snap, r.snapIndex, "own snapshot"
	if g.leader != nil && g.leader.r.snap != nil && g.leader.r.snapIndex > index && on(w.rngRaft, w.p.InstallSnapshotP) {
		snap, index, from = g.leader.r.snap, g.leader.r.snapIndex, "leader's snapshot"
		r.archive = g.leader.r.archive.Clone()
		w.stats.Installs++
	}
	r.up, r.keepDown, r.gen = true, false, r.gen+1
	if snap == nil {
		r.st, r.applied, from = shard.New(g.id, r.archive), 0, "empty state"
	} else {
		st, err := shard.Read(bytes.NewReader(snap), r.archive)
		if err != nil {
			w.fail("snapshot", "%s: restore from %s at index %d: %v", r.name(), from, index, err)
			return
		}
		if st.ID() != g.id {
			w.fail("snapshot", "%s: snapshot of shard %d", r.name(), st.ID())
		}
		r.st, r.applied = st, index
		g.recordHash(index, st.Hash(), r.name()+" restored")
	}
	if w.tracing() {
		w.tracef("%s: restart from %s at index %d (log at %d)", r.name(), from, r.applied, len(g.log))
	}
	r.kick()
	g.scheduleElection()
}

// heal (liveness phase): deposed leaders notice, every replica restarts.
func (g *Group) heal() {
	for len(g.zombies) > 0 {
		g.endZombie(g.zombies[0])
	}
	for _, r := range g.reps {
		if !r.up {
			r.restart()
		}
	}
	g.scheduleElection()
}

// kick makes a follower apply what is committed, after its lag.
func (r *Replica) kick() {
	g, w := r.g, r.g.w
	if !r.up || r.cut || r.applying || r.applied >= uint64(len(g.log)) {
		return
	}
	if g.leader != nil && g.leader.r == r {
		r.catchUp() // a leader applies as entries commit
		return
	}
	r.applying = true
	gen := r.gen
	w.after(exp(w.rngRaft, w.p.LagMean), func() {
		if r.gen != gen {
			return
		}
		r.applying = false
		if !r.up || r.cut {
			return
		}
		n := uint64(len(g.log)) - r.applied
		if w.p.LagMean > 0 && n > 1 {
			n = 1 + w.rngRaft.Uint64N(n)
		}
		for range n {
			r.applyOne(true)
			if w.failure != nil {
				return
			}
		}
		r.kick()
	})
}

// catchUp applies everything committed, at once.
func (r *Replica) catchUp() {
	for r.applied < uint64(len(r.g.log)) && r.g.w.failure == nil {
		r.applyOne(false)
	}
}

// applyOne applies the next committed entry, one command at a time as
// raftfsm.ShardMachine does. The first application of an index anywhere runs
// the per-command checks; every application at a sampled index is hashed.
func (r *Replica) applyOne(follower bool) []*shard.Output {
	g, w := r.g, r.g.w
	i := r.applied + 1
	e := &g.log[i-1]
	first := i > g.checked
	if follower && !first && w.mut == MutReplicaSkip && on(w.rngFault, 0.02) {
		if w.tracing() {
			w.tracef("%s: MUTATION skips index %d", r.name(), i)
		}
		r.applied = i
		return nil
	}
	outs := make([]*shard.Output, len(e.Commands))
	for j := range e.Commands {
		one := shard.Entry{Timestamp: e.Timestamp, Commands: e.Commands[j : j+1]}
		outs[j] = r.st.Apply(&one)
		if first {
			w.chk.command(g, e.Timestamp, &e.Commands[j], outs[j], r.st)
		}
	}
	if first {
		g.checked = i
		w.stats.Entries++
		w.stats.Commands += uint64(len(e.Commands))
	}
	r.applied = i
	if w.p.HashEvery > 0 && i%uint64(w.p.HashEvery) == 0 {
		g.recordHash(i, r.st.Hash(), r.name())
	}
	if w.p.SnapshotEvery > 0 && (int(i)+r.snapOffset)%w.p.SnapshotEvery == 0 {
		r.snapshot()
	}
	return outs
}

// snapshot clones the state now and encodes the clone later, while the
// replica goes on applying (as raftfsm's Snapshot and Persist do): a clone
// that shared mutable records would change under the encoder.
func (r *Replica) snapshot() {
	g, w := r.g, r.g.w
	clone, index, gen := r.st.Clone(), r.applied, r.gen
	w.stats.Snapshots++
	w.after(exp(w.rngRaft, w.p.LagMean+ms), func() {
		if r.gen != gen {
			return // crashed before the snapshot was persisted
		}
		var buf bytes.Buffer
		if _, err := clone.WriteTo(&buf); err != nil {
			w.fail("snapshot", "%s: encode at index %d: %v", r.name(), index, err)
			return
		}
		if index > r.snapIndex || r.snap == nil {
			r.snap, r.snapIndex = buf.Bytes(), index
		}
		g.recordHash(index, xxhash.Sum64(buf.Bytes()), r.name()+" snapshot")
	})
}

// recordHash compares a state hash with the first one recorded at index.
func (g *Group) recordHash(index, h uint64, who string) {
	if prev, ok := g.hashes[index]; ok {
		if prev.h != h {
			g.w.fail("replica-hash", "%s index %d: %s has state hash %016x, %s had %016x", g.name(), index, who, h, prev.who, prev.h)
		}
		return
	}
	g.hashes[index] = hashAt{h, who}
}

func (g *Group) quiet() bool {
	t := g.leader
	if t == nil || !t.serving || len(g.zombies) > 0 || len(t.mailbox) > 0 || len(t.inflight) > 0 {
		return false
	}
	for _, r := range g.reps {
		if !r.up || r.applied != uint64(len(g.log)) {
			return false
		}
	}
	_, _, outbox, inbox := t.r.st.Counts()
	_, expiring := t.r.st.NextExpiry()
	return outbox == 0 && inbox == 0 && !expiring
}

func (g *Group) busy() string {
	if g.quiet() {
		return ""
	}
	s := g.name() + ":"
	if g.leader == nil {
		s += " no leader;"
	} else {
		_, _, outbox, inbox := g.leader.r.st.Counts()
		s += fmt.Sprintf(" leader %s serving=%v mailbox %d in-flight entries %d outbox %d inbox %d;",
			g.leader.r.name(), g.leader.serving, len(g.leader.mailbox), len(g.leader.inflight), outbox, inbox)
		s += " " + g.leader.d.state() + ";"
		if next, ok := g.leader.r.st.NextExpiry(); ok {
			s += fmt.Sprintf(" a pending transfer due to expire at %d (leader clock %d);", rel(next), rel(g.leader.r.clock()))
		}
		for _, row := range g.leader.r.st.Outbox() {
			s += fmt.Sprintf(" row %s attempt %d to shard %d;", row.Transfer.ID, rel(row.Transfer.Timestamp), row.CreditShard)
		}
	}
	for _, r := range g.reps {
		s += fmt.Sprintf(" r%d up=%v applied %d/%d;", r.idx, r.up, r.applied, len(g.log))
	}
	return s
}

func describeEntry(e *shard.Entry) string {
	var b bytes.Buffer
	for i := range e.Commands {
		if i > 0 {
			b.WriteString(", ")
		}
		describeCommand(&b, &e.Commands[i])
	}
	return b.String()
}

func describeCommand(b *bytes.Buffer, c *shard.Command) {
	switch c.Kind {
	case shard.KindCreateAccounts:
		fmt.Fprintf(b, "accounts[")
		for i, a := range c.Accounts {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(a.ID)
		}
		b.WriteString("]")
	case shard.KindCreateTransfers:
		fmt.Fprintf(b, "transfers[")
		for i := range c.Transfers {
			if i > 0 {
				b.WriteString(" ")
			}
			b.Write(appendTransfer(nil, &c.Transfers[i]))
		}
		b.WriteString("]")
	case shard.KindCredit, shard.KindAbort:
		if c.Kind == shard.KindCredit {
			b.WriteString("credit[")
		} else {
			b.WriteString("abort[")
		}
		for i, cr := range c.Credits {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(b, "%s@%d/s%d", cr.Transfer.ID, rel(cr.Transfer.Timestamp), cr.DebitShard)
			switch t := &cr.Transfer; {
			case holds(t):
				b.WriteString(":pending")
			case t.Flags&resolves != 0: // a settlement
				fmt.Fprintf(b, ":%s(%s)", resolutionKind(isPost(t)), t.PendingID)
			}
		}
		b.WriteString("]")
	case shard.KindResolve:
		b.WriteString("resolve[")
		for i, a := range c.Answers {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(b, "%s@%d=%d/%s", a.ID, rel(a.Attempt), a.Outcome, a.Code)
		}
		b.WriteString("]")
	case shard.KindForget:
		if c.Forget != nil {
			fmt.Fprintf(b, "forget[s%d below %d]", c.Forget.DebitShard, rel(c.Forget.Below))
		}
	case shard.KindExpire:
		b.WriteString("expire")
	default:
		fmt.Fprintf(b, "kind%d", c.Kind)
	}
}

// rel shows a cluster timestamp relative to the simulation's epoch.
func rel(ts uint64) int64 { return int64(ts - epoch) }
