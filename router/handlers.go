package router

import (
	"context"
	"fmt"
	"slices"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// part is one shard's share of a batch: its command and, for each of its
// events, the event's index in the client's batch.
type part struct {
	cmd   shard.Command
	index []int
}

func (r *Router) createAccounts(ctx context.Context, body []byte) any {
	var req transport.CreateAccountsRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	m, err := r.slotMap(ctx)
	if err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	parts := map[uint32]*part{}
	for i := range req.Accounts {
		p := partOf(parts, m.shardOf(req.Accounts[i].ID), shard.KindCreateAccounts)
		p.cmd.Accounts = append(p.cmd.Accounts, req.Accounts[i])
		p.index = append(p.index, i)
	}
	return r.sendParts(ctx, parts, len(req.Accounts))
}

func (r *Router) createTransfers(ctx context.Context, body []byte) any {
	var req transport.CreateTransfersRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	m, err := r.slotMap(ctx)
	if err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	// A transfer goes to its debit account's shard, which owns the saga
	// if the credit account lives elsewhere (DESIGN.md).
	parts := map[uint32]*part{}
	for i := range req.Transfers {
		t := &req.Transfers[i]
		p := partOf(parts, m.shardOf(t.DebitAccountID), shard.KindCreateTransfers)
		p.cmd.Transfers = append(p.cmd.Transfers, *t)
		p.cmd.CreditShards = append(p.cmd.CreditShards, m.shardOf(t.CreditAccountID))
		p.index = append(p.index, i)
	}
	return r.sendParts(ctx, parts, len(req.Transfers))
}

func partOf(parts map[uint32]*part, id uint32, kind shard.Kind) *part {
	p := parts[id]
	if p == nil {
		p = &part{cmd: shard.Command{Kind: kind}}
		parts[id] = p
	}
	return p
}

// sendParts sends every shard its command and merges the results in the
// client's order. If any shard does not answer by the deadline the whole
// request is answered timeout: the client retries it, and the parts that
// were applied answer exists.
func (r *Router) sendParts(ctx context.Context, parts map[uint32]*part, events int) any {
	results := make([]transport.Result, events)
	err := scatter(parts, func(id uint32, p *part) error {
		body, err := transport.Marshal(&p.cmd)
		if err != nil {
			return err
		}
		reply, err := r.callShard(ctx, id, shard.OpCommand, body)
		if err != nil {
			return err
		}
		if len(reply.Results) != len(p.index) {
			return fmt.Errorf("shard %d answered %d results for %d events", id, len(reply.Results), len(p.index))
		}
		for j, res := range reply.Results {
			res.Index = uint32(p.index[j])
			results[p.index[j]] = res
		}
		return nil
	})
	if err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	return &transport.ResultsReply{Results: results}
}

func (r *Router) lookupAccounts(ctx context.Context, body []byte) any {
	var req transport.LookupRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return &transport.AccountsReply{Error: requestError(ctx, err)}
	}
	m, err := r.slotMap(ctx)
	if err != nil {
		return &transport.AccountsReply{Error: requestError(ctx, err)}
	}
	byShard := map[uint32][]string{}
	for _, id := range req.IDs {
		s := m.shardOf(id)
		byShard[s] = append(byShard[s], id)
	}
	found, err := r.lookup(ctx, byShard, shard.OpLookupAccounts, func(rep *shard.Reply, into map[string]any) {
		for _, a := range rep.Accounts {
			into[a.ID] = a
		}
	})
	if err != nil {
		return &transport.AccountsReply{Error: requestError(ctx, err)}
	}
	out := transport.AccountsReply{Accounts: []transport.Account{}}
	for _, id := range req.IDs {
		if a, ok := found[id]; ok {
			out.Accounts = append(out.Accounts, a.(transport.Account))
			delete(found, id) // an id asked twice is answered once
		}
	}
	return &out
}

// lookupTransfers asks every shard: a transfer lives on its debit account's
// shard, which its id does not tell.
func (r *Router) lookupTransfers(ctx context.Context, body []byte) any {
	var req transport.LookupRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return &transport.TransfersReply{Error: requestError(ctx, err)}
	}
	m, err := r.slotMap(ctx)
	if err != nil {
		return &transport.TransfersReply{Error: requestError(ctx, err)}
	}
	byShard := map[uint32][]string{}
	if len(req.IDs) > 0 {
		for _, s := range m.shards() {
			byShard[s] = req.IDs
		}
	}
	found, err := r.lookup(ctx, byShard, shard.OpLookupTransfers, func(rep *shard.Reply, into map[string]any) {
		for _, t := range rep.Transfers {
			into[t.ID] = t
		}
	})
	if err != nil {
		return &transport.TransfersReply{Error: requestError(ctx, err)}
	}
	out := transport.TransfersReply{Transfers: []transport.Transfer{}}
	for _, id := range req.IDs {
		if t, ok := found[id]; ok {
			out.Transfers = append(out.Transfers, t.(transport.Transfer))
			delete(found, id)
		}
	}
	return &out
}

func (r *Router) lookup(ctx context.Context, byShard map[uint32][]string, op string, collect func(*shard.Reply, map[string]any)) (map[string]any, error) {
	found := map[string]any{}
	replies := make(chan *shard.Reply, len(byShard))
	err := scatter(byShard, func(id uint32, ids []string) error {
		body, err := transport.Marshal(&transport.LookupRequest{IDs: ids})
		if err != nil {
			return err
		}
		reply, err := r.callShard(ctx, id, op, body)
		if err != nil {
			return err
		}
		replies <- reply
		return nil
	})
	close(replies)
	if err != nil {
		return nil, err
	}
	for rep := range replies {
		collect(rep, found)
	}
	return found, nil
}

// status asks every shard's leader; a shard that does not answer in time is
// listed with an error rather than failing the whole status.
func (r *Router) status(ctx context.Context, _ []byte) any {
	m, err := r.slotMap(ctx)
	if err != nil {
		return &transport.StatusReply{Error: requestError(ctx, err)}
	}
	ids := m.shards()
	slices.Sort(ids)
	out := transport.StatusReply{Shards: make([]transport.ShardStatus, len(ids)), Nodes: []transport.NodeStatus{}}
	byShard := map[uint32]int{}
	for i, id := range ids {
		byShard[id] = i
	}
	_ = scatter(byShard, func(id uint32, i int) error {
		sctx, cancel := context.WithTimeout(ctx, r.deadline/2)
		defer cancel()
		reply, err := r.callShard(sctx, id, shard.OpStatus, nil)
		if err != nil || reply.Status == nil {
			out.Shards[i] = transport.ShardStatus{ID: id, Error: "no leader answered"}
			return nil
		}
		out.Shards[i] = *reply.Status
		return nil
	})
	seen := map[string]bool{}
	for _, s := range out.Shards {
		if s.Leader != "" && !seen[s.Leader] {
			seen[s.Leader] = true
			out.Nodes = append(out.Nodes, transport.NodeStatus{ID: s.Leader, Version: Version})
		}
	}
	return &out
}
