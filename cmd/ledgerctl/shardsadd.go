package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

// shardsAddWaitDefault bounds `shards add`: a split takes about a second
// (most of it the new shard's first election), so the wait is for the
// meta leader's elections and retries.
const shardsAddWaitDefault = 10 * time.Minute

func newShardsAddCmd(a *app) *cobra.Command {
	var to uint32
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "add [N]",
		Short: "Add N shards, online: split shards until the cluster has them",
		Long: `Raise the number of shards the cluster wants by N (or to --to in all) and
wait until it has them. The meta group's leader splits one shard at a time:
the shard with the most hash slots gives the upper half of them, with every
account, pending transfer and history row of theirs, to a new shard placed
on its voters (replica moves then spread it). Clients keep writing: a
request for the slots moving waits about a second, inside the cluster. The
splits go on after a crash of any node or of ledgerctl; run the command
again to follow them (with --to, as it asks for the same thing again; N adds
N more). Shards only ever split: from 3 to 4, the largest splits in two.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req nodeops.ShardsAddRequest
			switch {
			case len(args) == 1 && to != 0:
				return errors.New("give N or --to, not both")
			case len(args) == 1:
				var n uint32
				if _, err := fmt.Sscan(args[0], &n); err != nil || n == 0 {
					return fmt.Errorf("the number of shards to add must be positive, not %q", args[0])
				}
				req.Add = n
			case to != 0:
				req.To = to
			default:
				return errors.New("give N, the number of shards to add, or --to")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			return a.shardsAdd(ctx, req)
		},
	}
	cmd.Flags().Uint32Var(&to, "to", 0, "ask for this many shards in all (repeatable: asks for the same thing again)")
	cmd.Flags().DurationVar(&wait, "wait", shardsAddWaitDefault, "give up waiting after this long (the splits go on; run the command again)")
	return cmd
}

// shardsAdd asks once for req, then polls until the splits are done,
// printing each new progress.
func (a *app) shardsAdd(ctx context.Context, req nodeops.ShardsAddRequest) error {
	nc, err := a.dial()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := a.guard(ctx)
	defer cancel()
	subject := nodeops.ShardsAddSubject(transport.Subjects{Prefix: a.prefix})
	last := ""
	for asked := false; ; {
		body, err := transport.Marshal(&req)
		if err != nil {
			return err
		}
		var p nodeops.ShardsProgress
		rctx, rcancel := context.WithTimeout(ctx, a.timeout)
		msg, err := nc.RequestWithContext(rctx, subject, body)
		rcancel()
		if err == nil {
			err = transport.Unmarshal(msg.Data, &p)
		}
		switch {
		case err != nil && ctx.Err() != nil:
			return a.explain(ctx, nc, err)
		case err != nil:
			// No meta leader for a moment (an election): ask again.
		case p.Error != "":
			return errors.New(p.Error)
		default:
			if !asked {
				asked, req = true, nodeops.ShardsAddRequest{To: uint32(p.Wanted)} // from now on, poll
			}
			if line := shardsLine(&p); line != last {
				if err := a.print(p, func(w io.Writer) { fmt.Fprintln(w, line) }); err != nil {
					return err
				}
				last = line
			}
			if p.Done {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("shards add: not done yet (%w); the splits go on: run ledgerctl shards add --to %d to follow them", context.Cause(ctx), req.To)
		case <-time.After(drainPollEvery / 4):
		}
	}
}

// shardsLine says how far the splits are.
func shardsLine(p *nodeops.ShardsProgress) string {
	state := "splitting:"
	if p.Done {
		state = "done:"
	}
	line := fmt.Sprintf("%s %d of %d shards, %d to %d slots a shard", state, p.Shards, p.Wanted, p.MinSlots, p.MaxSlots)
	if s := p.Splitting; s != nil {
		line += fmt.Sprintf("; shard %d gives %d slots to shard %d", s.Parent, s.Slots, s.Child)
	}
	return line
}
