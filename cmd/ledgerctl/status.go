package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

// metaStatusWait bounds `status`'s question to the meta leader: the status
// is shown without the moves rather than wait for an election.
const metaStatusWait = 2 * time.Second

// Conservation states of one ledger, as `status` shows them.
const (
	balanced   = "balanced"
	unbalanced = "UNBALANCED"
	inFlight   = "in flight" // some outbox is not empty: posted sums may differ
	unknown    = "unknown"   // some shard did not report
)

// ledgerBalance sums one ledger over every shard.
type ledgerBalance struct {
	transport.LedgerTotals
	Conservation string `json:"conservation"`
}

// statusView is the status reply with the conservation verdicts added and
// each shard's slots as ranges.
type statusView struct {
	*transport.StatusReply
	Shards  []shardView     `json:"shards"` // shadows StatusReply.Shards in JSON
	Ledgers []ledgerBalance `json:"ledgers"`
	// From the meta leader (withMeta): the replica moves under way and the
	// draining nodes, both null with MetaError when it did not answer.
	Moves     []nodeops.Move `json:"moves"`
	Draining  []drainingNode `json:"draining"`
	MetaError string         `json:"meta_error,omitempty"`
	// Splitting: the shard split under way (ledgerctl shards add), if any.
	Splitting *nodeops.SplitView `json:"splitting,omitempty"`
}

// drainingNode is a node that ledgerctl nodes drain marked, with the
// replicas the placement still lists on it.
type drainingNode struct {
	Node     string `json:"node"`
	Replicas int    `json:"replicas"`
}

// withMeta adds the meta state's moves and draining nodes to v; meta nil:
// the meta leader did not answer, for the reason merr gives.
func (v statusView) withMeta(meta *nodeops.Meta, merr error) statusView {
	if meta == nil {
		if merr != nil {
			v.MetaError = merr.Error()
		}
		return v
	}
	v.Moves, v.Draining, v.Splitting = append([]nodeops.Move{}, meta.Moves...), []drainingNode{}, meta.Splitting
	for _, n := range meta.Nodes {
		if !n.Draining {
			continue
		}
		d := drainingNode{Node: n.ID}
		for _, s := range meta.Shards {
			if slices.Contains(s.Placement, n.ID) {
				d.Replicas++
			}
		}
		v.Draining = append(v.Draining, d)
	}
	return v
}

func newStatusView(st *transport.StatusReply) statusView {
	v := statusView{StatusReply: st, Ledgers: conservation(st)}
	for _, s := range st.Shards {
		v.Shards = append(v.Shards, shardView{ShardStatus: s, Slots: slotRanges(s.Slots)})
	}
	return v
}

// shardView is a shard's status with its slots as ranges: a shard owns
// thousands of slots, mostly consecutive, and JSON listed one a line.
type shardView struct {
	transport.ShardStatus
	Slots []string `json:"slots"` // "0-2047", or "7" for one slot
}

// slotRanges folds sorted slots into ranges of consecutive ones.
func slotRanges(slots []uint16) []string {
	sorted := slices.Sorted(slices.Values(slots))
	out := []string{}
	for i := 0; i < len(sorted); {
		j := i
		for j+1 < len(sorted) && sorted[j+1] == sorted[j]+1 {
			j++
		}
		if i == j {
			out = append(out, strconv.Itoa(int(sorted[i])))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", sorted[i], sorted[j]))
		}
		i = j + 1
	}
	return out
}

func newStatusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's shards, nodes and per-ledger conservation",
		Long: `Show the cluster's shards, nodes and per-ledger conservation, and, from the
meta group's leader, the replica moves in progress and the draining nodes.

Shards report one at a time, not at one instant, so under load a ledger may
show UNBALANCED for a moment; a real imbalance persists at quiescence.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.doConn(cmd.Context(), func(ctx context.Context, nc *nats.Conn, c *client.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				mctx, cancel := context.WithTimeout(ctx, metaStatusWait)
				meta, merr := a.askMeta(mctx, nc, nodeops.MetaRequest{})
				cancel()
				v := newStatusView(st).withMeta(meta, merr)
				if err := a.print(v, func(w io.Writer) { statusTable(w, v) }); err != nil {
					return err
				}
				for _, l := range v.Ledgers {
					if l.Conservation == unbalanced {
						return errReported
					}
				}
				return nil
			})
		},
	}
}

// conservation sums each ledger's totals over the shards, exactly (128-bit:
// a sum of uint64 balances may pass 2^64), and judges them.
// Cross-shard money in flight shows as debits_pending on the debit shard
// only, so posted sums are compared only when every outbox is empty.
func conservation(st *transport.StatusReply) []ledgerBalance {
	sums := map[uint32]*transport.ExactTotals{}
	wrapped := map[uint32]bool{} // a sum passed 2^128−1: only a broken shard reports that
	verdict := balanced
	// A shard that omitted ledgers reported its lowest ones by number: the
	// totals of any ledger above the last it reported may be incomplete.
	cutoff := uint32(math.MaxUint32)
	for _, s := range st.Shards {
		if s.LedgersOmitted > 0 && len(s.Ledgers) > 0 {
			cutoff = min(cutoff, s.Ledgers[len(s.Ledgers)-1].Ledger)
		}
	}
	for _, s := range st.Shards {
		switch {
		case s.Error != "":
			verdict = unknown
		case s.OutboxDepth > 0 && verdict != unknown:
			verdict = inFlight
		}
		for _, l := range s.Ledgers {
			t := sums[l.Ledger]
			if t == nil {
				t = new(transport.ExactTotals)
				sums[l.Ledger] = t
			}
			// Exact sums (128-bit): the sums of uint64 balances pass 2^64.
			if t.Add(l.Sums()) != nil {
				wrapped[l.Ledger] = true
			}
		}
	}
	out := make([]ledgerBalance, 0, len(sums))
	for ledger, t := range sums {
		v := verdict
		switch {
		case ledger > cutoff || wrapped[ledger]:
			v = unknown
		case v == balanced && t.DebitsPosted != t.CreditsPosted:
			v = unbalanced
		}
		out = append(out, ledgerBalance{LedgerTotals: transport.NewLedgerTotals(ledger, *t), Conservation: v})
	}
	slices.SortFunc(out, func(a, b ledgerBalance) int { return cmp.Compare(a.Ledger, b.Ledger) })
	return out
}

func statusTable(w io.Writer, v statusView) {
	fmt.Fprintln(w, "SHARD\tLEADER\tTERM\tCOMMIT\tAPPLIED\tSLOTS\tACCOUNTS\tTRANSFERS\tOUTBOX\tINBOX\tREPLICAS (lag)")
	for _, s := range v.Shards {
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", s.ID, s.Leader, s.Term, s.CommitIndex, s.AppliedIndex,
			len(s.ShardStatus.Slots), s.Accounts, s.Transfers, s.OutboxDepth, s.InboxDepth, replicas(s.Replicas))
	}
	for _, s := range v.Shards {
		if s.Error != "" {
			fmt.Fprintf(w, "shard %d: %s\n", s.ID, s.Error)
		}
	}
	if v.MetaError != "" {
		fmt.Fprintf(w, "meta: %s\n", v.MetaError)
	}
	if sp := v.Splitting; sp != nil {
		fmt.Fprintf(w, "\nSPLITTING SHARD\tNEW SHARD\tSLOTS\n%d\t%d\t%d\n", sp.Parent, sp.Child, sp.Slots)
	}
	if len(v.Moves) > 0 {
		fmt.Fprintln(w, "\nMOVING SHARD\tADDING\tREMOVING")
		for _, m := range v.Moves {
			fmt.Fprintf(w, "%d\t%s\t%s\n", m.Shard, m.Add, m.Remove)
		}
	}
	fmt.Fprintln(w)
	nodesTable(w, v.Nodes)
	if len(v.Draining) > 0 {
		fmt.Fprintln(w, "\nDRAINING NODE\tREPLICAS LEFT")
		for _, d := range v.Draining {
			fmt.Fprintf(w, "%s\t%d\n", d.Node, d.Replicas)
		}
	}
	fmt.Fprintln(w, "\nLEDGER\tDEBITS_POSTED\tCREDITS_POSTED\tDEBITS_PENDING\tCREDITS_PENDING\tCONSERVATION")
	for _, l := range v.Ledgers {
		sums := l.Sums() // exact, past 2^64 too
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", l.Ledger, sums.DebitsPosted, sums.CreditsPosted, sums.DebitsPending, sums.CreditsPending, l.Conservation)
	}
}

// replicas lists a shard's replicas as node(lag), the leader marked *.
func replicas(rs []transport.ReplicaStatus) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r.Node)
		if r.State == "Leader" {
			b.WriteByte('*')
		}
		fmt.Fprintf(&b, "(%d)", r.Lag)
	}
	return b.String()
}

// nodesTable lists the nodes: health, Raft address, and how many groups
// each leads and follows.
func nodesTable(w io.Writer, nodes []transport.NodeStatus) {
	fmt.Fprintln(w, "NODE\tVERSION\tBUILD\tHEALTH\tRAFT\tLEADS\tFOLLOWS\tGROUPS (state/term/applied)")
	for _, n := range nodes {
		leads, follows := 0, 0
		var groups []string
		for _, g := range n.Groups {
			switch g.State {
			case "Leader":
				leads++
			case "Follower":
				follows++
			}
			name := fmt.Sprintf("shard-%d", g.ID)
			if g.ID == 0 {
				name = "meta"
			}
			groups = append(groups, fmt.Sprintf("%s:%s/%d/%d", name, strings.ToLower(g.State), g.Term, g.AppliedIndex))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", n.ID, n.Version, n.Build, n.Health, n.RaftAddr, leads, follows, strings.Join(groups, " "))
	}
}

func newNodesCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the cluster's nodes, their health and the groups each leads or follows",
		Long: `List the cluster's nodes: every node that answered (health up) with its Raft
address and its view of every group (state, term, applied index), and every
node of the cluster's configuration that did not answer (unreachable). Exits
non-zero when a node is unreachable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				if err := a.print(st.Nodes, func(w io.Writer) { nodesTable(w, st.Nodes) }); err != nil {
					return err
				}
				for _, n := range st.Nodes {
					if n.Health != "up" {
						return errReported
					}
				}
				return nil
			})
		},
	}
	cmd.AddCommand(newNodesDrainCmd(a), newNodesRemoveCmd(a))
	return cmd
}
