package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

// metaRetryEvery is how often askMeta asks again while no meta leader
// serves the subject (an election).
const metaRetryEvery = 200 * time.Millisecond

// Replica states of `shards`: the shard's leader, the other voters, and
// the nonvoters (a node joining the group, catching up before it votes).
// unknown: the shard's leader did not give its configuration, and the
// placement does not list the node.
const (
	replicaLeader   = "leader"
	replicaVoter    = "voter"
	replicaNonvoter = "nonvoter"
	replicaUnknown  = "unknown"
)

func newShardsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shards",
		Short: "List the shards: slots, replicas, leader, accounts and transfers",
		Long: `List every shard: how many hash slots it owns (they sum to 4096), its
replicas and the state of each (leader, voter, or nonvoter while it joins),
its leader, its accounts and transfers, and the replica move under way.
Each shard's leader is asked for its group's configuration through the meta
group's leader; a replica that did not report the group is marked silent.
-o json gives the same as JSON. Exits non-zero when a shard's leader or the
meta group's leader did not answer (what they did answer is shown).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.doConn(cmd.Context(), func(ctx context.Context, nc *nats.Conn, c *client.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				meta, merr := a.askMeta(ctx, nc, nodeops.MetaRequest{Members: true})
				v := newShardsView(st, meta, merr)
				if err := a.print(v, func(w io.Writer) { shardsTable(w, v) }); err != nil {
					return err
				}
				if v.MetaError != "" || slices.ContainsFunc(v.Shards, func(s shardRow) bool { return s.Error != "" }) {
					return errReported
				}
				return nil
			})
		},
	}
	cmd.AddCommand(newShardsAddCmd(a))
	return cmd
}

// askMeta asks the meta leader for its state, again while none serves the
// subject, until ctx ends.
func (a *app) askMeta(ctx context.Context, nc *nats.Conn, req nodeops.MetaRequest) (*nodeops.Meta, error) {
	body, err := transport.Marshal(&req)
	if err != nil {
		return nil, err
	}
	subject := nodeops.MetaSubject(transport.Subjects{Prefix: a.prefix})
	for {
		msg, err := nc.RequestWithContext(ctx, subject, body)
		switch {
		case errors.Is(err, nats.ErrNoResponders) && sleep(ctx, metaRetryEvery):
			continue
		case err != nil:
			return nil, fmt.Errorf("the meta group's leader did not answer on %s (%w): an election, or a leader of a release without it", subject, err)
		}
		var m nodeops.Meta
		if err := transport.Unmarshal(msg.Data, &m); err != nil {
			return nil, fmt.Errorf("bad meta reply: %w", err)
		}
		if m.Error != "" {
			return nil, errors.New(m.Error)
		}
		return &m, nil
	}
}

// sleep waits d, false if ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// shardsView is what `shards` shows: cluster.status's shards with the
// meta state's slot counts, configurations and moves.
type shardsView struct {
	Epoch uint64 `json:"slot_map_epoch"`
	// Replicas is the replication factor; 0: every node holds every shard.
	Replicas uint32     `json:"replication_factor"`
	Shards   []shardRow `json:"shards"`
	// MetaError: the meta leader did not answer; slots and replicas are
	// then the shards' own reports.
	MetaError string `json:"meta_error,omitempty"`
}

// shardRow is one shard.
type shardRow struct {
	ID        uint32         `json:"id"`
	Slots     int            `json:"slots"`
	Leader    string         `json:"leader"`
	Accounts  uint64         `json:"accounts"`
	Transfers uint64         `json:"transfers"`
	Replicas  []shardReplica `json:"replicas"`
	Move      *nodeops.Move  `json:"move,omitempty"` // the replica move under way
	Error     string         `json:"error,omitempty"`
}

// shardReplica is one replica of a shard.
type shardReplica struct {
	Node  string `json:"node"`
	State string `json:"state"` // leader, voter, nonvoter or unknown
	Lag   uint64 `json:"lag"`   // entries applied fewer than the leader
	// Silent: the node did not report the group (down, cut off, or not
	// opened yet); its lag is unknown.
	Silent bool `json:"silent,omitempty"`
}

// newShardsView merges the status with the meta state (nil when the meta
// leader did not answer: merr says why).
func newShardsView(st *transport.StatusReply, meta *nodeops.Meta, merr error) shardsView {
	v := shardsView{Shards: []shardRow{}}
	reported := map[uint32]transport.ShardStatus{}
	for _, s := range st.Shards {
		reported[s.ID] = s
	}
	placed := map[uint32]nodeops.MetaShard{}
	moves := map[uint32]nodeops.Move{}
	if meta != nil {
		v.Epoch, v.Replicas = meta.Epoch, meta.Replicas
		for _, s := range meta.Shards {
			placed[s.ID] = s
		}
		for _, m := range meta.Moves {
			moves[m.Shard] = m
		}
	} else if merr != nil {
		v.MetaError = merr.Error()
	}
	ids := slices.Sorted(maps.Keys(reported))
	for id := range placed {
		if _, ok := reported[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		v.Shards = append(v.Shards, newShardRow(id, reported, placed, moves))
	}
	return v
}

func newShardRow(id uint32, reported map[uint32]transport.ShardStatus, placed map[uint32]nodeops.MetaShard, moves map[uint32]nodeops.Move) shardRow {
	s, ok := reported[id]
	row := shardRow{ID: id, Slots: len(s.Slots), Leader: s.Leader, Accounts: s.Accounts, Transfers: s.Transfers, Error: s.Error}
	if !ok {
		row.Error = "not in the cluster status"
	}
	ms, isPlaced := placed[id]
	if isPlaced {
		row.Slots = ms.Slots // the map's own count, also for a shard without a leader
	}
	if m, moving := moves[id]; moving {
		row.Move = &m
	}
	row.Replicas = replicaRows(s.Replicas, ms)
	return row
}

// replicaRows lists the shard's replicas by node: the nodes of its group's
// configuration, or, when its leader did not give it, of its placement and
// of the replicas that reported the group.
func replicaRows(reported []transport.ReplicaStatus, ms nodeops.MetaShard) []shardReplica {
	states := map[string]string{}
	if len(ms.Voters) > 0 {
		for _, n := range ms.Voters {
			states[n] = replicaVoter
		}
		for _, n := range ms.Nonvoters {
			states[n] = replicaNonvoter
		}
	} else {
		for _, n := range ms.Placement {
			states[n] = replicaVoter
		}
	}
	byNode := map[string]transport.ReplicaStatus{}
	for _, r := range reported {
		byNode[r.Node] = r
		if states[r.Node] == "" {
			states[r.Node] = replicaUnknown
		}
	}
	out := []shardReplica{}
	for _, n := range slices.Sorted(maps.Keys(states)) {
		r := shardReplica{Node: n, State: states[n]}
		rep, ok := byNode[n]
		switch {
		case !ok:
			r.Silent = true
		case rep.State == "Leader":
			r.State, r.Lag = replicaLeader, rep.Lag
		default:
			r.Lag = rep.Lag
		}
		out = append(out, r)
	}
	return out
}

func shardsTable(w io.Writer, v shardsView) {
	switch {
	case v.MetaError != "":
		fmt.Fprintf(w, "meta: %s\n", v.MetaError)
	case v.Replicas == 0:
		fmt.Fprintf(w, "slot map epoch %d; every node holds every shard\n", v.Epoch)
	default:
		fmt.Fprintf(w, "slot map epoch %d; %d replicas a shard\n", v.Epoch, v.Replicas)
	}
	fmt.Fprintln(w, "SHARD\tSLOTS\tLEADER\tACCOUNTS\tTRANSFERS\tREPLICAS\tMOVING")
	for _, s := range v.Shards {
		fmt.Fprintf(w, "%d\t%d\t%s\t%d\t%d\t%s\t%s\n", s.ID, s.Slots, s.Leader, s.Accounts, s.Transfers, replicaCells(s.Replicas), moveCell(s.Move))
	}
	for _, s := range v.Shards {
		if s.Error != "" {
			fmt.Fprintf(w, "shard %d: %s\n", s.ID, s.Error)
		}
	}
}

// replicaCells shows replicas as node:state, with the lag when there is
// one and silent when the node did not report the group.
func replicaCells(rs []shardReplica) string {
	cells := make([]string, 0, len(rs))
	for _, r := range rs {
		c := r.Node + ":" + r.State
		switch {
		case r.Silent:
			c += "(silent)"
		case r.Lag > 0:
			c += fmt.Sprintf("(lag %d)", r.Lag)
		}
		cells = append(cells, c)
	}
	return strings.Join(cells, " ")
}

// moveCell shows a move as +added -removed.
func moveCell(m *nodeops.Move) string {
	if m == nil {
		return ""
	}
	var parts []string
	if m.Add != "" {
		parts = append(parts, "+"+m.Add)
	}
	if m.Remove != "" {
		parts = append(parts, "-"+m.Remove)
	}
	return strings.Join(parts, " ")
}
