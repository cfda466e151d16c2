package metrics

import (
	"strconv"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/raftfsm"
)

// Groups is what the node collector reads at each scrape: node.Node.
type Groups interface {
	GroupStats() []node.GroupStats
}

// nodeCollector exports every group of a node, read at scrape time from
// Raft and the shard machines (node.GroupStats): nothing is counted on the
// hot path but the apply batches, under the lock Apply holds anyway.
type nodeCollector struct {
	groups Groups
	meta   []gauge
	raft   []gauge // damaged among them
	// damaged is the one series of a group closed to be repaired.
	damaged gauge
	shard   []gauge
	batch   *prometheus.Desc
}

// gauge is one per-group gauge and how to read it.
type gauge struct {
	desc  *prometheus.Desc
	value func(*node.GroupStats) float64
}

// NodeCollector returns the collector of the groups of node nodeID. Every
// series has the labels node (nodeID) and shard: the shard's id, or "meta"
// for the meta group, which has the ledgerd_raft_* series only.
func NodeCollector(groups Groups, nodeID string) prometheus.Collector {
	constLabels := prometheus.Labels{"node": nodeID}
	desc := func(subsystem, name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help, []string{"shard"}, constLabels)
	}
	damaged := gauge{desc("raft", "damaged", "1 while damaged storage keeps the group stopped or closed on this node, as it is repaired from its peers."),
		func(g *node.GroupStats) float64 { return flag(g.Damaged != nil || !g.Open) }}
	return &nodeCollector{
		groups: groups, damaged: damaged,
		raft:  append(raftGauges(desc), damaged),
		shard: shardGauges(desc),
		meta:  metaGauges(desc),
		batch: desc("shard", "apply_batch_commands",
			"Commands per Raft entry applied (the leader's batches), counted since this process started."),
	}
}

type descFunc func(subsystem, name, help string) *prometheus.Desc

func raftGauges(desc descFunc) []gauge {
	return []gauge{
		{desc("raft", "applied_index", "Last Raft index handed to the group's state machine on this node."),
			func(g *node.GroupStats) float64 { return float64(g.AppliedIndex) }},
		{desc("raft", "commit_index", "Last Raft index this node knows to be committed."),
			func(g *node.GroupStats) float64 { return float64(g.CommitIndex) }},
		{desc("raft", "last_index", "Last Raft index in this node's log (stored, maybe not committed)."),
			func(g *node.GroupStats) float64 { return float64(g.LastIndex) }},
		{desc("raft", "term", "Current Raft term of the group on this node."),
			func(g *node.GroupStats) float64 { return float64(g.Term) }},
		{desc("raft", "leader", "1 if this node leads the group, else 0."),
			func(g *node.GroupStats) float64 { return flag(g.State == raft.Leader) }},
		{desc("raft", "leader_known", "1 if this node knows a leader of the group, else 0 (an election, or cut off)."),
			func(g *node.GroupStats) float64 { return flag(g.Leader != "") }},
		{desc("raft", "voter", "1 if this node is a voter of the group, 0 while it joins as a nonvoter."),
			func(g *node.GroupStats) float64 { return flag(g.Voter) }},
	}
}

func shardGauges(desc descFunc) []gauge {
	return []gauge{
		{desc("shard", "accounts", "Accounts of the shard, as applied on this node."),
			func(g *node.GroupStats) float64 { return float64(g.Shard.Accounts) }},
		{desc("shard", "transfers", "Transfers ever stored on the shard (final and pending), as applied on this node."),
			func(g *node.GroupStats) float64 { return float64(g.Shard.Transfers) }},
		{desc("shard", "outbox_depth", "Cross-shard transfers reserved on this debit shard, waiting for their credit shard."),
			func(g *node.GroupStats) float64 { return float64(g.Shard.OutboxDepth) }},
		{desc("shard", "inbox_depth", "Credit-side decisions this shard keeps until their debit shard forgets them."),
			func(g *node.GroupStats) float64 { return float64(g.Shard.InboxDepth) }},
	}
}

// metaGauges are the meta state's, on the meta group's series (shard
// "meta"): every node's view of it, as applied there.
func metaGauges(desc descFunc) []gauge {
	return []gauge{
		{desc("meta", "slot_map_epoch", "Epoch of the slot map: it grows with each split."),
			func(g *node.GroupStats) float64 { return float64(g.Meta.Epoch) }},
		{desc("meta", "shards", "Shards the slot map has."),
			func(g *node.GroupStats) float64 { return float64(g.Meta.Shards) }},
		{desc("meta", "shards_wanted", "Shards the cluster splits shards until it has (ledgerctl shards add); 0: never asked."),
			func(g *node.GroupStats) float64 { return float64(g.Meta.ShardsWanted) }},
		{desc("meta", "splits_in_progress", "1 while a shard split is under way (its slots frozen, or its new shard starting)."),
			func(g *node.GroupStats) float64 { return float64(g.Meta.Splitting) }},
		{desc("meta", "replica_moves_in_progress", "Replica moves under way."),
			func(g *node.GroupStats) float64 { return float64(g.Meta.Moving) }},
	}
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, gauges := range [][]gauge{c.raft, c.shard, c.meta} {
		for _, g := range gauges {
			ch <- g.desc
		}
	}
	ch <- c.batch
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, g := range c.groups.GroupStats() {
		label := "meta"
		if !g.IsMeta() {
			label = strconv.FormatUint(uint64(g.ID), 10)
		}
		if !g.Open {
			// Closed while it is repaired: no index to tell, only that.
			ch <- prometheus.MustNewConstMetric(c.damaged.desc, prometheus.GaugeValue, c.damaged.value(&g), label)
			continue
		}
		for _, m := range c.raft {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, m.value(&g), label)
		}
		if g.Meta != nil {
			for _, m := range c.meta {
				ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, m.value(&g), label)
			}
		}
		if g.Shard == nil {
			continue
		}
		for _, m := range c.shard {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, m.value(&g), label)
		}
		ch <- batchHistogram(c.batch, &g.Shard.Batches, label)
	}
}

// batchHistogram turns the machine's bucket counts into a histogram.
func batchHistogram(desc *prometheus.Desc, b *raftfsm.ApplyBatches, label string) prometheus.Metric {
	buckets := make(map[float64]uint64, raftfsm.ApplyBatchBuckets)
	var cumulative uint64
	for i, n := range b.Buckets {
		cumulative += n
		if i < raftfsm.ApplyBatchBuckets-1 { // the last one is +Inf's alone
			buckets[float64(raftfsm.ApplyBatchBound(i))] = cumulative
		}
	}
	return prometheus.MustNewConstHistogram(desc, b.Entries, float64(b.Commands), buckets, label)
}
