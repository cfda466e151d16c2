package sim

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Simulated time is in nanoseconds, like the leader clocks that enter the log.
const (
	us     = uint64(1_000)
	ms     = uint64(1_000_000)
	second = uint64(1_000_000_000)
)

// Params is one seed's world: its size, its workload and its faults. Every
// seed draws its own (swarm testing, as TigerBeetle's VOPR): each fault kind
// is on or off for the whole run, with its own rate, so that rare
// combinations (no drops but many crashes, partitions without lag, ...) each
// get seeds of their own.
type Params struct {
	Shards, Replicas   int
	Clients            int
	Accounts, Ghosts   int // accounts created; ids never created
	Ledgers            int
	RequestsPerClient  int
	BatchMax           int // events per client request
	HotP               float64
	DoomP              float64 // share of transfers built to be refused or repeated
	IDReuseOtherShardP float64 // a reused id with a debit account on any shard
	TwoPhaseP          float64 // share of transfer events that are pending, post or void
	ChainP             float64 // share of transfer events that start a linked chain
	BalancingP         float64 // share of ordinary transfers that are balancing ones (a quarter across shards, given several)
	PendingTimeoutMax  uint32  // seconds: pending timeouts are drawn up to it

	// Network. Every message between two endpoints (client or shard).
	NetDelayMin, NetDelayMean uint64
	DropP, DupP               float64
	ClientNetFaults           bool    // drops, duplicates and partitions between clients and shards too
	PartitionEvery            uint64  // mean time between partitions (0: none)
	PartitionMean             uint64  // mean partition length
	ClogP                     float64 // share of partitions that only delay (a clogged path)

	// Raft model.
	CommitDelayMean    uint64
	EntriesInFlightMax int
	MailboxMax         int
	LeaderCrashEvery   uint64 // mean time between leader crashes per group (0: none)
	FollowerCrashEvery uint64
	DeposeEvery        uint64 // leader deposed by a partition from its followers
	ZombieMean         uint64 // how long a deposed leader goes on acting (0: steps down at once)
	RestartMean        uint64
	KeepDownP          float64 // a crashed replica stays down until the liveness phase
	ElectionMean       uint64
	ProposalLostP      float64 // per entry: never committed, the leader steps down
	ReplyLostP         float64 // per entry: committed, the leader steps down before replying
	LagMean            uint64  // follower apply lag
	SnapshotEvery      int     // per replica, entries between snapshots (0: never)
	InstallSnapshotP   float64 // a restarting replica gets the leader's snapshot
	ClockSkew          uint64  // max |offset| of a replica's clock
	Codec              bool    // every command goes through msgpack, as on the wire
	HashEvery          int     // replica state hashes compared at indexes divisible by this

	// Leader-side timers (node/dispatcher.go, router), scaled per seed.
	RequestDeadline      uint64
	ClientRetryMean      uint64
	ScanEvery            uint64
	ResendAfter          uint64
	AbortAfter           uint64
	ForgetEvery          uint64
	ExpireEvery          uint64 // the expire loop's ticker (node/shardserver.go)
	SagaTimeout          uint64
	SendsInFlightMax     int // also the answers channel's capacity, as in production
	CreditsPerMessageMax int
	WaiterTTL            uint64
	OutboxRowsMax        int

	SafetyTimeMax   uint64 // the workload phase ends by then
	LivenessTimeMax uint64 // the liveness phase must be quiet by then
}

func on(r *rand.Rand, p float64) bool { return r.Float64() < p }

func between(r *rand.Rand, lo, hi uint64) uint64 { return lo + r.Uint64N(hi-lo+1) }

// drawParams draws a seed's world from its own stream.
func drawParams(r *rand.Rand) Params {
	p := Params{Replicas: 3, EntriesInFlightMax: 4, MailboxMax: 4096, SendsInFlightMax: 16, CreditsPerMessageMax: 4096, OutboxRowsMax: 100_000}
	p.Shards = []int{1, 2, 2, 3, 3, 3, 4, 5}[r.IntN(8)]
	p.Clients = 1 + r.IntN(5)
	p.Ledgers = 1 + r.IntN(2)
	p.Accounts = p.Ledgers + 4 + r.IntN(20)
	p.Ghosts = 1 + r.IntN(3)
	p.RequestsPerClient = 8 + r.IntN(30)
	p.BatchMax = []int{1, 1, 2, 4, 8, 16}[r.IntN(6)]
	p.HotP = r.Float64() * 0.9
	p.DoomP = 0.05 + r.Float64()*0.35
	if on(r, 0.3) {
		p.IDReuseOtherShardP = 0.3
	}

	p.NetDelayMin = between(r, 50*us, 2*ms)
	p.NetDelayMean = between(r, 100*us, 30*ms)
	if on(r, 0.6) {
		p.DropP = r.Float64() * 0.2
	}
	if on(r, 0.5) {
		p.DupP = r.Float64() * 0.1
	}
	p.ClientNetFaults = on(r, 0.5)
	if on(r, 0.5) {
		p.PartitionEvery = between(r, 200*ms, 5*second)
		p.PartitionMean = between(r, 50*ms, 5*second)
		p.ClogP = r.Float64() * 0.5
	}

	p.CommitDelayMean = between(r, 200*us, 10*ms)
	if on(r, 0.2) {
		p.EntriesInFlightMax = 1 + r.IntN(3)
	}
	if on(r, 0.1) {
		p.MailboxMax = 2 + r.IntN(8)
	}
	if on(r, 0.5) {
		p.LeaderCrashEvery = between(r, 300*ms, 10*second)
	}
	if on(r, 0.3) {
		p.FollowerCrashEvery = between(r, 300*ms, 10*second)
	}
	if on(r, 0.4) {
		p.DeposeEvery = between(r, 300*ms, 10*second)
		if on(r, 0.6) {
			p.ZombieMean = between(r, 10*ms, 2*second)
		}
	}
	p.RestartMean = between(r, 50*ms, 3*second)
	if on(r, 0.3) {
		p.KeepDownP = r.Float64() * 0.3
	}
	p.ElectionMean = between(r, 20*ms, 1500*ms)
	if on(r, 0.4) {
		p.ProposalLostP = r.Float64() * 0.05
	}
	if on(r, 0.4) {
		p.ReplyLostP = r.Float64() * 0.05
	}
	if on(r, 0.6) {
		p.LagMean = between(r, 100*us, 200*ms)
	}
	if on(r, 0.6) {
		p.SnapshotEvery = 5 + r.IntN(100)
		p.InstallSnapshotP = r.Float64()
	}
	if on(r, 0.4) {
		p.ClockSkew = between(r, 1*ms, 3*second)
	}
	p.Codec = on(r, 0.3)
	p.HashEvery = []int{8, 16, 32, 64, 128}[r.IntN(5)]

	p.RequestDeadline = between(r, 100*ms, 5*second)
	p.ClientRetryMean = between(r, 1*ms, 200*ms)
	// The dispatcher's periods keep production's ratios, scaled down in
	// most seeds so that aborts (one minute in production) happen.
	scale := []float64{1, 0.5, 0.2, 0.1, 0.05, 0.02}[r.IntN(6)]
	p.ScanEvery = uint64(scale * float64(500*ms))
	p.ResendAfter = uint64(scale * float64(2*second))
	p.AbortAfter = uint64(scale * float64(60*second))
	p.ForgetEvery = uint64(scale * float64(second))
	p.SagaTimeout = uint64(scale * float64(5*second))
	if on(r, 0.1) {
		// Production's bounds scaled down, so that a run of this size
		// fills them: message slots, credits per message.
		p.SendsInFlightMax = 1 + r.IntN(3)
		p.CreditsPerMessageMax = 1 + r.IntN(4)
	}
	if on(r, 0.15) {
		p.OutboxRowsMax = 1 + r.IntN(8)
	}
	if on(r, 0.8) {
		p.TwoPhaseP = 0.1 + r.Float64()*0.4
		p.PendingTimeoutMax = []uint32{1, 2, 3, 5, 10}[r.IntN(5)]
	}
	p.ExpireEvery = []uint64{50 * ms, 250 * ms, 250 * ms, 1 * second}[r.IntN(4)]
	if on(r, 0.8) {
		p.ChainP = 0.05 + r.Float64()*0.2
	}
	if on(r, 0.7) {
		p.BalancingP = 0.03 + r.Float64()*0.12
	}
	// The deadline is at least a try's critical path (production: thousands
	// of network delays), because some tries redo their whole saga on
	// every retry: a refused cross-shard transfer, and a chain across
	// shards, whose credit sides are held again even when every leg
	// exists. A plain try is a lookup across every shard, then a saga of
	// four hops and three commits: 12 delays. A chain is two sagas. With
	// one message in flight per shard, a shard's messages to its peers go
	// one after the other. Below that, a retry may never finish.
	hops := uint64(12)
	if p.ChainP > 0 {
		hops *= 2
	}
	if p.SendsInFlightMax == 1 {
		hops *= uint64(p.Shards)
	}
	p.RequestDeadline = max(p.RequestDeadline, hops*(p.NetDelayMin+p.NetDelayMean))
	p.WaiterTTL = 2 * p.RequestDeadline // production: 10 s for a 5 s deadline
	p.SafetyTimeMax = 120 * second
	p.LivenessTimeMax = 15 * 60 * second
	return p
}

// faultFree turns every fault off (the liveness phase keeps the delays).
func (p *Params) faultFree() {
	p.DropP, p.DupP = 0, 0
	p.PartitionEvery = 0
	p.LeaderCrashEvery, p.FollowerCrashEvery, p.DeposeEvery = 0, 0, 0
	p.ProposalLostP, p.ReplyLostP = 0, 0
}

func dur(ns uint64) string {
	switch {
	case ns == 0:
		return "0"
	case ns >= second:
		return fmt.Sprintf("%.2fs", float64(ns)/float64(second))
	case ns >= ms:
		return fmt.Sprintf("%.1fms", float64(ns)/float64(ms))
	}
	return fmt.Sprintf("%dus", ns/us)
}

// String lists the world and the faults that are on.
func (p Params) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "shards=%d clients=%d accounts=%d ghosts=%d ledgers=%d requests/client=%d batch<=%d hot=%.2f doom=%.2f",
		p.Shards, p.Clients, p.Accounts, p.Ghosts, p.Ledgers, p.RequestsPerClient, p.BatchMax, p.HotP, p.DoomP)
	if p.IDReuseOtherShardP > 0 {
		b.WriteString(" id-reuse-other-shard")
	}
	if p.TwoPhaseP > 0 {
		fmt.Fprintf(&b, " two-phase=%.2f timeout<=%ds", p.TwoPhaseP, p.PendingTimeoutMax)
	}
	if p.ChainP > 0 {
		fmt.Fprintf(&b, " chains=%.2f", p.ChainP)
	}
	if p.BalancingP > 0 {
		fmt.Fprintf(&b, " balancing=%.2f", p.BalancingP)
	}
	fmt.Fprintf(&b, "\n  net delay=%s+exp(%s)", dur(p.NetDelayMin), dur(p.NetDelayMean))
	if p.DropP > 0 {
		fmt.Fprintf(&b, " drop=%.3f", p.DropP)
	}
	if p.DupP > 0 {
		fmt.Fprintf(&b, " dup=%.3f", p.DupP)
	}
	if p.PartitionEvery > 0 {
		fmt.Fprintf(&b, " partitions every~%s for~%s clog=%.2f", dur(p.PartitionEvery), dur(p.PartitionMean), p.ClogP)
	}
	if p.ClientNetFaults {
		b.WriteString(" client-path-faults")
	}
	fmt.Fprintf(&b, "\n  raft commit~%s inflight<=%d mailbox<=%d election~%s", dur(p.CommitDelayMean), p.EntriesInFlightMax, p.MailboxMax, dur(p.ElectionMean))
	if p.LeaderCrashEvery > 0 {
		fmt.Fprintf(&b, " leader-crash every~%s", dur(p.LeaderCrashEvery))
	}
	if p.FollowerCrashEvery > 0 {
		fmt.Fprintf(&b, " follower-crash every~%s", dur(p.FollowerCrashEvery))
	}
	if p.LeaderCrashEvery > 0 || p.FollowerCrashEvery > 0 {
		fmt.Fprintf(&b, " restart~%s keep-down=%.2f", dur(p.RestartMean), p.KeepDownP)
	}
	if p.DeposeEvery > 0 {
		fmt.Fprintf(&b, " depose every~%s zombie~%s", dur(p.DeposeEvery), dur(p.ZombieMean))
	}
	if p.ProposalLostP > 0 {
		fmt.Fprintf(&b, " proposal-lost=%.3f", p.ProposalLostP)
	}
	if p.ReplyLostP > 0 {
		fmt.Fprintf(&b, " reply-lost=%.3f", p.ReplyLostP)
	}
	if p.LagMean > 0 {
		fmt.Fprintf(&b, " lag~%s", dur(p.LagMean))
	}
	if p.SnapshotEvery > 0 {
		fmt.Fprintf(&b, " snapshot every %d install=%.2f", p.SnapshotEvery, p.InstallSnapshotP)
	}
	if p.ClockSkew > 0 {
		fmt.Fprintf(&b, " skew<=%s", dur(p.ClockSkew))
	}
	if p.Codec {
		b.WriteString(" codec")
	}
	fmt.Fprintf(&b, " hash-every=%d", p.HashEvery)
	fmt.Fprintf(&b, "\n  timers deadline=%s client-retry~%s scan=%s resend=%s abort=%s forget=%s saga-timeout=%s sends<=%d outbox<=%d",
		dur(p.RequestDeadline), dur(p.ClientRetryMean), dur(p.ScanEvery), dur(p.ResendAfter), dur(p.AbortAfter),
		dur(p.ForgetEvery), dur(p.SagaTimeout), p.SendsInFlightMax, p.OutboxRowsMax)
	fmt.Fprintf(&b, " credits/message<=%d waiter-ttl=%s expire-every=%s", p.CreditsPerMessageMax, dur(p.WaiterTTL), dur(p.ExpireEvery))
	return b.String()
}
