package router

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/ledgerd/ledgerd/auth"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/router/plan"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

func (r *Router) createAccounts(ctx context.Context, caller *auth.Identity, body []byte) any {
	var req transport.CreateAccountsRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	request := newRequestID()
	var p *plan.Plan
	err := r.withSlots(ctx, func(m slotMap) error {
		p = plan.Accounts(req.Accounts, m.shardOf, caller.Owner)
		return r.sendParts(ctx, p, request)
	})
	if err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	return &transport.ResultsReply{Results: p.Results}
}

func (r *Router) createTransfers(ctx context.Context, caller *auth.Identity, body []byte) any {
	var req transport.CreateTransfersRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	request := newRequestID()
	var p *plan.Plan
	err := r.withSlots(ctx, func(m slotMap) error {
		debitOf, err := r.locatePending(ctx, m, req.Transfers)
		if err != nil {
			return err
		}
		p = plan.Transfers(req.Transfers, m.shardOf, debitOf, caller.Owner)
		if err := r.preflightPending(ctx, caller.Owner, p); err != nil {
			return err
		}
		return r.sendParts(ctx, p, request)
	})
	if err != nil {
		return &transport.ResultsReply{Error: requestError(ctx, err)}
	}
	return &transport.ResultsReply{Results: p.Results}
}

// newRequestID is the id of one client request, the same on every re-send
// (and re-plan, after a split), so that a shard answers a re-send as it
// answered the first (shard/requests.go).
func newRequestID() shard.RequestID {
	var id shard.RequestID
	_, _ = rand.Read(id[:]) // crypto/rand never fails
	return id
}

// preflightPending asks, before anything is sent, every shard on which a
// provider's plan opens pending transfers whether it has room for them,
// when apply's own check could not keep the request whole: the plan opens
// them on several shards, or through a chain coordinated elsewhere
// (plan.PendingOpens). Two requests of one provider that race at its limit
// may still both pass here; apply then refuses the part over it.
func (r *Router) preflightPending(ctx context.Context, owner *transport.Owner, p *plan.Plan) error {
	if owner == nil || owner.PendingMax == 0 {
		return nil
	}
	opens, preflight := p.PendingOpens()
	if !preflight {
		return nil
	}
	body, err := transport.Marshal(owner)
	if err != nil {
		return err
	}
	return scatter(opens, func(id uint32, n int) error {
		reply, err := r.callShard(ctx, id, wire.OpPendingHeld, body)
		if err != nil {
			return err
		}
		if held := int(reply.PendingHeld); held+n > int(owner.PendingMax) {
			return fmt.Errorf("%w: the provider holds %d open pending transfers on shard %d and its limit there is %d: post, void or let some expire before opening %d more",
				errOverLimit, held, id, owner.PendingMax, n)
		}
		return nil
	})
}

// locatePending completes plan.Locate with one lookup across the shards.
func (r *Router) locatePending(ctx context.Context, m slotMap, transfers []transport.Transfer) (map[string]string, error) {
	debitOf, ids := plan.Locate(transfers)
	if len(ids) == 0 {
		return debitOf, nil
	}
	found, err := find(r, ctx, m, ids, wire.OpLookupTransfers,
		func(m slotMap, _ string) []uint32 { return m.shards() },
		func(rep *wire.Reply) []transport.Transfer { return rep.Transfers },
		func(t *transport.Transfer) string { return t.ID })
	if err != nil {
		return nil, err
	}
	for id, t := range found {
		debitOf[id] = t.DebitAccountID
	}
	return debitOf, nil
}

// sendParts sends every shard its command and merges the results in the
// client's order. If any shard does not answer by the deadline the whole
// request is answered timeout: the client retries it, and the parts that
// were applied answer exists.
func (r *Router) sendParts(ctx context.Context, p *plan.Plan, request shard.RequestID) error {
	parts := make(map[uint32]*plan.Part, len(p.Parts))
	for _, pt := range p.Parts {
		pt.Cmd.Request = request[:]
		parts[pt.Shard] = pt
	}
	return scatter(parts, func(_ uint32, pt *plan.Part) error {
		return r.sendPart(ctx, pt, p.Results)
	})
}

// commandBytesMax bounds a command sent to a shard. A shard's part of a
// batch that fits the client's 8 MiB can grow past it once re-encoded as a
// command (every field written, credit shards added), so such a part is
// split; the headroom is for the NATS headers.
const commandBytesMax = transport.MessageBytesMax - 64<<10

// sendPart sends one shard its part, in pieces that fit a message, one after
// another: a later event may depend on an earlier one.
func (r *Router) sendPart(ctx context.Context, p *plan.Part, results []transport.Result) error {
	body, err := transport.Marshal(&p.Cmd)
	if err != nil {
		return err
	}
	if n, cut := len(p.Index), p.Cut(); len(body) > commandBytesMax && cut > 0 {
		for i, half := range []*plan.Part{p.Slice(0, cut), p.Slice(cut, n)} {
			// Each piece is a command of its own: its own request id, the
			// same on a re-send (the cut is too).
			sum := sha256.Sum256(append(slices.Clone(p.Cmd.Request), byte(i)))
			half.Cmd.Request = sum[:shard.RequestIDBytes]
			if err := r.sendPart(ctx, half, results); err != nil {
				return err
			}
		}
		return nil
	}
	reply, err := r.callShard(ctx, p.Shard, wire.OpCommand, body)
	if err != nil {
		return err
	}
	return p.Merge(results, reply.Results)
}

// lookupAccounts asks each id's shard. A provider is not even sent the
// accounts it does not own: they are left out as if unknown.
func (r *Router) lookupAccounts(ctx context.Context, caller *auth.Identity, body []byte) any {
	found, err := lookup(r, ctx, body, wire.OpLookupAccounts,
		func(m slotMap, id string) []uint32 {
			if !caller.Owner.Owns(id) {
				return nil
			}
			return []uint32{m.shardOf(id)}
		},
		func(rep *wire.Reply) []transport.Account { return rep.Accounts },
		func(a *transport.Account) string { return a.ID },
		caller.Owner.OwnsAccount)
	return &transport.AccountsReply{Accounts: found, Error: err}
}

// lookupTransfers asks every shard: a transfer lives on its debit account's
// shard, which its id does not tell. A provider sees only the transfers
// that touch one of its accounts.
func (r *Router) lookupTransfers(ctx context.Context, caller *auth.Identity, body []byte) any {
	found, err := lookup(r, ctx, body, wire.OpLookupTransfers,
		func(m slotMap, _ string) []uint32 { return m.shards() },
		func(rep *wire.Reply) []transport.Transfer { return rep.Transfers },
		func(t *transport.Transfer) string { return t.ID },
		caller.Owner.SeesTransfer)
	return &transport.TransfersReply{Transfers: found, Error: err}
}

// lookup asks each shard that may hold an id for it, and answers the records
// found that the caller may see, in the order of the ids asked (an id asked
// twice is answered once).
func lookup[T any](r *Router, ctx context.Context, body []byte, op string,
	shardsOf func(slotMap, string) []uint32, records func(*wire.Reply) []T, idOf func(*T) string, sees func(*T) bool) ([]T, *transport.Error) {
	var req transport.LookupRequest
	if err := transport.Unmarshal(body, &req); err != nil {
		return nil, requestError(ctx, err)
	}
	var found map[string]T
	err := r.withSlots(ctx, func(m slotMap) (err error) {
		found, err = find(r, ctx, m, req.IDs, op, shardsOf, records, idOf)
		return err
	})
	if err != nil {
		return nil, requestError(ctx, err)
	}
	out := []T{}
	for _, id := range req.IDs {
		if rec, ok := found[id]; ok && sees(&rec) {
			out = append(out, rec)
			delete(found, id)
		}
	}
	return out, nil
}

// lookupIDsPerShardMax bounds the ids of one lookup sent to a shard, so
// that its reply fits a message even when every record carries the most
// metadata (about 1.2 KiB each).
const lookupIDsPerShardMax = 2048

// find asks each shard that may hold one of ids for it.
func find[T any](r *Router, ctx context.Context, m slotMap, ids []string, op string,
	shardsOf func(slotMap, string) []uint32, records func(*wire.Reply) []T, idOf func(*T) string) (map[string]T, error) {
	byShard := map[uint32][]string{}
	for _, id := range ids {
		for _, s := range shardsOf(m, id) {
			byShard[s] = append(byShard[s], id)
		}
	}
	var mu sync.Mutex
	found := map[string]T{}
	err := scatter(byShard, func(id uint32, ids []string) error {
		for chunk := range slices.Chunk(ids, lookupIDsPerShardMax) {
			body, err := transport.Marshal(&transport.LookupRequest{IDs: chunk})
			if err != nil {
				return err
			}
			reply, err := r.callShard(ctx, id, op, body)
			if err != nil {
				return err
			}
			if reply.Epoch > m.Epoch { // a split the map does not show yet
				return &movedError{shard: id, epoch: reply.Epoch}
			}
			mu.Lock()
			for _, rec := range records(reply) {
				found[idOf(&rec)] = rec
			}
			mu.Unlock()
		}
		return nil
	})
	return found, err
}

// status asks every shard's leader; a shard that does not answer in time is
// listed with an error rather than failing the whole status.
func (r *Router) status(ctx context.Context, caller *auth.Identity, body []byte) any {
	if err := transport.Unmarshal(body, &transport.StatusRequest{}); err != nil {
		return &transport.StatusReply{Error: requestError(ctx, err)}
	}
	if !caller.Operator() {
		return &transport.StatusReply{Error: &transport.Error{Code: transport.ErrUnauthorizedCode, Message: "cluster status is for operators"}}
	}
	// The map as the meta leader holds it now: status lists a shard a
	// split has just made (the cached one is refreshed every 5 s).
	m, err := r.fetchSlots(ctx)
	if err != nil {
		m, err = r.slotMap(ctx)
	}
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
		reply, err := r.callShard(sctx, id, wire.OpStatus, nil)
		if err != nil || reply.Status == nil {
			out.Shards[i] = transport.ShardStatus{ID: id, Error: "no leader answered"}
			return nil
		}
		out.Shards[i] = *reply.Status
		return nil
	})
	out.Nodes = r.nodeStatuses(ctx)
	for i := range out.Shards {
		sh := &out.Shards[i]
		for _, n := range out.Nodes {
			for _, g := range n.Groups {
				if g.ID != sh.ID {
					continue
				}
				rep := transport.ReplicaStatus{Node: n.ID, State: g.State, AppliedIndex: g.AppliedIndex}
				if sh.AppliedIndex > g.AppliedIndex {
					rep.Lag = sh.AppliedIndex - g.AppliedIndex
				}
				sh.Replicas = append(sh.Replicas, rep)
			}
		}
	}
	return &out
}

// nodeStatuses asks every node for its status. A node of the cluster's
// configuration that did not answer is listed unreachable.
func (r *Router) nodeStatuses(ctx context.Context) []transport.NodeStatus {
	out := wire.NodeStatuses(ctx, r.nc, r.subjects)
	voters := map[string]bool{}
	for _, n := range out {
		for _, v := range n.Voters {
			voters[v] = true
		}
	}
	for _, n := range out {
		delete(voters, n.ID)
	}
	for v := range voters {
		out = append(out, transport.NodeStatus{ID: v, Health: "unreachable"})
	}
	if out == nil {
		out = []transport.NodeStatus{}
	}
	slices.SortFunc(out, func(a, b transport.NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// accountTransfers asks the account's shard for its history. The credit
// halves of cross-shard transfers are listed there too, when credited.
func (r *Router) accountTransfers(ctx context.Context, caller *auth.Identity, body []byte) any {
	reply, err := r.history(ctx, caller, body, wire.OpAccountTransfers)
	if err != nil {
		return &transport.TransfersReply{Error: err}
	}
	return &transport.TransfersReply{Transfers: reply.Transfers}
}

// accountBalances asks the account's shard for its balance history.
func (r *Router) accountBalances(ctx context.Context, caller *auth.Identity, body []byte) any {
	reply, err := r.history(ctx, caller, body, wire.OpAccountBalances)
	if err != nil {
		return &transport.BalancesReply{Error: err}
	}
	return &transport.BalancesReply{Balances: reply.Balances}
}

// history asks the account's shard for its history. A provider reading an
// account it does not own gets an empty history, as for an unknown account.
func (r *Router) history(ctx context.Context, caller *auth.Identity, body []byte, op string) (*wire.Reply, *transport.Error) {
	var f transport.AccountFilter
	if err := transport.Unmarshal(body, &f); err != nil {
		return nil, requestError(ctx, err)
	}
	if err := f.Check(); err != nil {
		return nil, &transport.Error{Code: transport.ErrMalformedCode, Message: err.Error()}
	}
	b, err := transport.Marshal(&f)
	if err != nil {
		return nil, requestError(ctx, err)
	}
	var reply *wire.Reply
	err = r.withSlots(ctx, func(m slotMap) error {
		if !caller.Operator() {
			if ok, err := r.owns(ctx, caller, m, f.AccountID); err != nil || !ok {
				reply = &wire.Reply{}
				return err
			}
		}
		var err error
		reply, err = r.callShard(ctx, m.shardOf(f.AccountID), op, b)
		return err
	})
	if err != nil {
		return nil, requestError(ctx, err)
	}
	return reply, nil
}

// owns reports whether the caller owns the account: its id and, looked up,
// its ledger.
func (r *Router) owns(ctx context.Context, caller *auth.Identity, m slotMap, id string) (bool, error) {
	if !caller.Owner.Owns(id) {
		return false, nil
	}
	found, err := find(r, ctx, m, []string{id}, wire.OpLookupAccounts,
		func(m slotMap, id string) []uint32 { return []uint32{m.shardOf(id)} },
		func(rep *wire.Reply) []transport.Account { return rep.Accounts },
		func(a *transport.Account) string { return a.ID })
	if err != nil {
		return false, err
	}
	a, ok := found[id]
	return ok && caller.Owner.OwnsAccount(&a), nil
}
