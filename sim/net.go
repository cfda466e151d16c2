package sim

import (
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// shardOf is the router's placement: the account's hash slot, and the slot
// map raftfsm creates (slot i on shard i%n+1).
func shardOf(accountID string, shards int) uint32 {
	return uint32(transport.Slot(accountID))%uint32(shards) + 1
}

// Endpoints: shard g is endpoint g-1, client c is endpoint shards+c.
type endpoint int

// path is a direction between two endpoints; its state says what the
// network does to it now.
type path struct {
	cut   bool   // partitioned: every message is lost
	clog  uint64 // extra delay while clogged
	heals uint64 // when the current partition or clog ends
}

// Network delivers messages between endpoints with the seed's faults: loss,
// duplication, delay (so reordering), partitions (one-way or both ways)
// and clogged paths. It models NATS request/reply: a request to a shard goes
// to one of the terms serving the shard's subject (the leader, or a deposed
// leader that has not noticed yet); with none, the sender hears "no
// responders" at once.
type Network struct {
	w     *World
	n     int
	paths [][]path
}

func newNetwork(w *World) *Network {
	n := w.p.Shards + w.p.Clients
	nw := &Network{w: w, n: n, paths: make([][]path, n)}
	for i := range nw.paths {
		nw.paths[i] = make([]path, n)
	}
	return nw
}

func shardEP(id uint32) endpoint { return endpoint(id - 1) }

func (n *Network) isClient(e endpoint) bool { return int(e) >= n.w.p.Shards }

func (n *Network) epName(e endpoint) string {
	if n.isClient(e) {
		return "client" + itoa(int(e)-n.w.p.Shards)
	}
	return "shard" + itoa(int(e)+1)
}

func (n *Network) start() {
	if n.w.p.PartitionEvery > 0 {
		n.w.after(exp(n.w.rngFault, n.w.p.PartitionEvery), n.partition)
	}
}

// faulty reports whether drops, duplicates and partitions apply to the path.
func (n *Network) faulty(from, to endpoint) bool {
	return n.w.p.ClientNetFaults || (!n.isClient(from) && !n.isClient(to))
}

// partition cuts or clogs a random set of paths for a while.
func (n *Network) partition() {
	w := n.w
	if w.liveness {
		return
	}
	defer w.after(exp(w.rngFault, w.p.PartitionEvery), n.partition)
	r := w.rngFault
	length := exp(r, w.p.PartitionMean) + 10*ms
	clog := on(r, w.p.ClogP)
	var pairs [][2]endpoint
	kind := r.IntN(3)
	switch {
	case kind == 0 && w.p.Shards > 1: // two shards, one way or both
		a, b := endpoint(r.IntN(w.p.Shards)), endpoint(r.IntN(w.p.Shards))
		if a == b {
			b = (a + 1) % endpoint(w.p.Shards)
		}
		pairs = append(pairs, [2]endpoint{a, b})
		if on(r, 0.5) {
			pairs = append(pairs, [2]endpoint{b, a})
		}
	case kind == 1: // one shard from everything
		a := endpoint(r.IntN(w.p.Shards))
		for b := range endpoint(n.n) {
			if b != a && n.faulty(a, b) {
				pairs = append(pairs, [2]endpoint{a, b}, [2]endpoint{b, a})
			}
		}
	default: // a client from a shard
		if !w.p.ClientNetFaults {
			return
		}
		a := endpoint(w.p.Shards + r.IntN(w.p.Clients))
		b := endpoint(r.IntN(w.p.Shards))
		pairs = append(pairs, [2]endpoint{a, b}, [2]endpoint{b, a})
	}
	if len(pairs) == 0 {
		return
	}
	w.stats.Partitions++
	extra := exp(r, 20*w.p.NetDelayMean+ms)
	for _, pr := range pairs {
		p := &n.paths[pr[0]][pr[1]]
		if clog {
			p.clog = extra
		} else {
			p.cut = true
		}
		p.heals = w.now + length
	}
	if w.tracing() {
		w.tracef("net: %s %d paths for %s, first %s->%s", map[bool]string{true: "clog", false: "cut"}[clog],
			len(pairs), dur(length), n.epName(pairs[0][0]), n.epName(pairs[0][1]))
	}
	w.after(length, func() {
		for _, pr := range pairs {
			p := &n.paths[pr[0]][pr[1]]
			if p.heals <= w.now {
				*p = path{}
			}
		}
	})
}

func (n *Network) healAll() {
	for i := range n.paths {
		for j := range n.paths[i] {
			n.paths[i][j] = path{}
		}
	}
}

// send delivers fn at to after the path's delay, unless the network loses
// the message; it may deliver it twice.
func (n *Network) send(from, to endpoint, what string, fn func()) {
	w := n.w
	w.stats.Messages++
	p := &n.paths[from][to]
	faulty := n.faulty(from, to)
	if faulty && (p.cut || on(w.rngNet, w.p.DropP)) {
		w.stats.Dropped++
		if w.tracing() {
			w.tracef("net: lost %s->%s %s", n.epName(from), n.epName(to), what)
		}
		return
	}
	copies := 1
	if faulty && on(w.rngNet, w.p.DupP) {
		copies = 2
		w.stats.Duplicated++
	}
	for range copies {
		d := w.p.NetDelayMin + exp(w.rngNet, w.p.NetDelayMean) + p.clog
		w.after(d, fn)
	}
}

// reply is what a request gets back: the shard's reply, or NATS's "no
// responders" when no term serves the shard's subject.
type reply struct {
	r            *wire.Reply
	noResponders bool
}

// request sends cmd from an endpoint to shard to. cb runs for every reply
// that arrives (the caller ignores those it no longer waits for).
func (n *Network) request(from endpoint, to uint32, cmd *shard.Command, what string, cb func(reply)) {
	w := n.w
	n.send(from, shardEP(to), what, func() {
		terms := w.group(to).serving()
		if len(terms) == 0 {
			// NATS answers no responders at once: no network fault.
			w.after(w.p.NetDelayMin, func() { cb(reply{noResponders: true}) })
			return
		}
		t := terms[0]
		if len(terms) > 1 {
			t = terms[w.rngNet.IntN(len(terms))]
		}
		if n.isClient(from) {
			w.ref.delivered(to, cmd)
		}
		t.handleCommand(cmd, func(r *wire.Reply) {
			n.send(shardEP(to), from, what+" reply", func() { cb(reply{r: r}) })
		})
	})
}

// lookupReply is a lookup's answer: the transfers found by the term that
// served it, or retry, or no responders.
type lookupReply struct {
	found        []transport.Transfer
	term         uint64
	retry        bool
	noResponders bool
}

// lookup sends a transfers lookup from a client to shard to. The term that
// serves it first confirms it still leads (shardServer.readable calls
// VerifyLeader): a deposed leader cannot reach a quorum, so its read waits
// until it notices and is answered retry. A leader reads its own replica's
// state, which has applied everything acknowledged (shardServer.handleLookup).
func (n *Network) lookup(from endpoint, to uint32, ids []string, cb func(lookupReply)) {
	w := n.w
	n.send(from, shardEP(to), "lookup", func() {
		terms := w.group(to).serving()
		if len(terms) == 0 {
			w.after(w.p.NetDelayMin, func() { cb(lookupReply{noResponders: true}) })
			return
		}
		t := terms[0]
		if len(terms) > 1 {
			t = terms[w.rngNet.IntN(len(terms))]
		}
		if t.zombie {
			t.verifying = append(t.verifying, func() {
				n.send(shardEP(to), from, "lookup reply", func() { cb(lookupReply{retry: true}) })
			})
			return
		}
		st := t.r.st
		if w.mut == MutLookupFromFollower {
			var up []*Replica
			for _, r := range w.group(to).reps {
				if r.up {
					up = append(up, r)
				}
			}
			st = up[w.rngNet.IntN(len(up))].st
		}
		rep := lookupReply{found: st.LookupTransfers(ids), term: t.n}
		n.send(shardEP(to), from, "lookup reply", func() { cb(rep) })
	})
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
