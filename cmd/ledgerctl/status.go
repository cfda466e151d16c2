package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

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

// statusView is the status reply with the conservation verdicts added.
type statusView struct {
	*transport.StatusReply
	Ledgers []ledgerBalance `json:"ledgers"`
}

func newStatusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the cluster's shards, nodes and per-ledger conservation",
		Long: `Show the cluster's shards, nodes and per-ledger conservation.

Shards report one at a time, not at one instant, so under load a ledger may
show UNBALANCED for a moment; a real imbalance persists at quiescence.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.do(cmd.Context(), func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				v := statusView{StatusReply: st, Ledgers: conservation(st)}
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

// conservation sums each ledger's totals over the shards and judges them.
// Cross-shard money in flight shows as debits_pending on the debit shard
// only, so posted sums are compared only when every outbox is empty.
func conservation(st *transport.StatusReply) []ledgerBalance {
	sums := map[uint32]*transport.LedgerTotals{}
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
				t = &transport.LedgerTotals{Ledger: l.Ledger}
				sums[l.Ledger] = t
			}
			t.DebitsPosted += l.DebitsPosted
			t.CreditsPosted += l.CreditsPosted
			t.DebitsPending += l.DebitsPending
			t.CreditsPending += l.CreditsPending
		}
	}
	out := make([]ledgerBalance, 0, len(sums))
	for _, t := range sums {
		v := verdict
		switch {
		case t.Ledger > cutoff:
			v = unknown
		case v == balanced && t.DebitsPosted != t.CreditsPosted:
			v = unbalanced
		}
		out = append(out, ledgerBalance{LedgerTotals: *t, Conservation: v})
	}
	slices.SortFunc(out, func(a, b ledgerBalance) int { return cmp.Compare(a.Ledger, b.Ledger) })
	return out
}

func statusTable(w io.Writer, v statusView) {
	fmt.Fprintln(w, "SHARD\tLEADER\tTERM\tCOMMIT\tAPPLIED\tSLOTS\tACCOUNTS\tTRANSFERS\tOUTBOX\tINBOX\tREPLICAS (lag)")
	for _, s := range v.Shards {
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", s.ID, s.Leader, s.Term, s.CommitIndex, s.AppliedIndex,
			len(s.Slots), s.Accounts, s.Transfers, s.OutboxDepth, s.InboxDepth, replicas(s.Replicas))
	}
	for _, s := range v.Shards {
		if s.Error != "" {
			fmt.Fprintf(w, "shard %d: %s\n", s.ID, s.Error)
		}
	}
	fmt.Fprintln(w)
	nodesTable(w, v.Nodes)
	fmt.Fprintln(w, "\nLEDGER\tDEBITS_POSTED\tCREDITS_POSTED\tDEBITS_PENDING\tCREDITS_PENDING\tCONSERVATION")
	for _, l := range v.Ledgers {
		fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%d\t%s\n", l.Ledger, l.DebitsPosted, l.CreditsPosted, l.DebitsPending, l.CreditsPending, l.Conservation)
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
	fmt.Fprintln(w, "NODE\tVERSION\tHEALTH\tRAFT\tLEADS\tFOLLOWS\tGROUPS (state/term/applied)")
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", n.ID, n.Version, n.Health, n.RaftAddr, leads, follows, strings.Join(groups, " "))
	}
}

func newNodesCmd(a *app) *cobra.Command {
	return &cobra.Command{
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
}
