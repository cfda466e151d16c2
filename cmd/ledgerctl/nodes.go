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

	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

// drainPollEvery is how often `nodes drain` asks for progress.
const drainPollEvery = time.Second

// drainWaitDefault bounds `nodes drain`: moving a replica takes seconds,
// a snapshot of a large shard longer.
const drainWaitDefault = 30 * time.Minute

func newNodesDrainCmd(a *app) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Move every replica, leadership and meta seat off a node; return once it holds none",
		Long: `Mark the node draining and wait until it holds nothing: each of its shard
replicas is replaced on another node (the new replica becomes a voter before
the old one goes), it hands on every leadership, and its meta-group seat goes
to another node. Progress is printed while it waits. Idempotent: run it again
after a crash of any node or of ledgerctl, and it resumes. A node gone for
good is drained the same way. Then remove it: ledgerctl nodes remove ID.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			return a.nodesOp(ctx, nodeops.DrainSubject, args[0], func(p *nodeops.Progress) bool { return p.Done })
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", drainWaitDefault, "give up waiting after this long (the drain goes on; run the command again)")
	return cmd
}

func newNodesRemoveCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Take a drained node out of the cluster at once",
		Long: `Take a node that ledgerctl nodes drain has emptied out of the meta group and
forget it: it needs no grace period, since it holds no replica. Refused for a
node that is not drained. Idempotent. Stop the node's process afterwards; it
must not come back with its data (wipe it to add the machine again).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			return a.nodesOp(ctx, nodeops.RemoveSubject, args[0], func(*nodeops.Progress) bool { return true })
		},
	}
}

// nodesOp asks the meta leader on subject about node id until done says
// so, printing each new progress.
func (a *app) nodesOp(ctx context.Context, subject func(transport.Subjects) string, id string, done func(*nodeops.Progress) bool) error {
	nc, err := a.dial()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := a.guard(ctx)
	defer cancel()
	body, err := transport.Marshal(&nodeops.Request{Node: id})
	if err != nil {
		return err
	}
	last := ""
	for {
		p, err := a.askNodes(ctx, nc, subject(transport.Subjects{Prefix: a.prefix}), body)
		switch {
		case err != nil && ctx.Err() != nil:
			return a.explain(ctx, nc, err)
		case err != nil:
			// No meta leader for a moment (an election): ask again.
		case p.Error != "":
			return errors.New(p.Error)
		default:
			if line := progressLine(p); line != last {
				if err := a.print(p, func(w io.Writer) { fmt.Fprintln(w, line) }); err != nil {
					return err
				}
				last = line
			}
			if done(p) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not done yet (%w); the cluster goes on: run the command again to follow it", id, context.Cause(ctx))
		case <-time.After(drainPollEvery):
		}
	}
}

// askNodes sends one request and decodes the reply.
func (a *app) askNodes(ctx context.Context, nc *nats.Conn, subject string, body []byte) (*nodeops.Progress, error) {
	rctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subject, body)
	if err != nil {
		return nil, err
	}
	var p nodeops.Progress
	if err := transport.Unmarshal(msg.Data, &p); err != nil {
		return nil, fmt.Errorf("bad reply: %w", err)
	}
	return &p, nil
}

// progressLine says what the node still holds, and every node's replicas.
func progressLine(p *nodeops.Progress) string {
	var spread []string
	for _, n := range slices.Sorted(maps.Keys(p.PerNode)) {
		spread = append(spread, fmt.Sprintf("%s=%d", n, p.PerNode[n]))
	}
	state := "holds"
	if p.Done {
		state = "done:"
	}
	return fmt.Sprintf("%s %s %d replicas (%d moving), leads %d groups, meta voter %t; replicas per node: %s",
		p.Node, state, p.Replicas, p.Moving, len(p.Leads), p.MetaVoter, strings.Join(spread, " "))
}
