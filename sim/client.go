package sim

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"

	"github.com/ledgerd/ledgerd/router/plan"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Client is a payment provider with its router: it makes requests one at a
// time (a batch of account or transfer events), and retries a request with
// the same ids after a timeout until it gets results. The router part is
// router/plan (the router's own decisions, called here) and router.callShard: split the batch by shard, send
// each shard its part, retry a part while the shard answers retry (or no
// one answers), answer timeout at the deadline.
type Client struct {
	w     *World
	id    int
	ep    endpoint
	left  int
	cur   *request
	tries int
	seq   int
	todo  [][]transport.Account // this client's share of the accounts, created first
}

type request struct {
	kind      shard.Kind
	accounts  []transport.Account
	transfers []transport.Transfer
}

func newClient(w *World, i int) *Client {
	return &Client{w: w, id: i, ep: endpoint(w.p.Shards + i), left: w.p.RequestsPerClient}
}

func (c *Client) start() {
	// Deal the accounts out: client i creates every Clients-th account,
	// in batches.
	var mine []transport.Account
	for i := c.id; i < len(c.w.ref.canon); i += len(c.w.clients) {
		mine = append(mine, c.w.ref.canon[i])
	}
	for len(mine) > 0 {
		n := min(len(mine), 1+c.w.rngWork.IntN(c.w.p.BatchMax))
		c.todo = append(c.todo, slices.Clone(mine[:n]))
		mine = mine[n:]
	}
	c.w.after(exp(c.w.rngWork, ms), c.next)
}

func (c *Client) finished() bool { return c.cur == nil && (c.left <= 0 || c.w.liveness) }

func (c *Client) next() {
	w := c.w
	if c.cur != nil {
		return
	}
	if c.finished() {
		w.clientDone()
		return
	}
	if len(c.todo) == 0 {
		c.left-- // the client's accounts come on top of its requests
	}
	c.cur = c.makeRequest()
	c.tries = 0
	c.attempt()
}

func (c *Client) name() string { return "client" + itoa(c.id) }

// newRequestID is router.newRequestID, drawn without the random streams
// (a seed's draws stay as they were): the world's count of tries and the
// client, 16 bytes; nil without Options.RequestIDs (a command without one,
// as before the router gave them).
func (w *World) newRequestID(c *Client) []byte {
	if !w.reqIDs {
		return nil
	}
	w.requests++
	id := make([]byte, shard.RequestIDBytes)
	binary.BigEndian.PutUint64(id, w.requests)
	binary.BigEndian.PutUint64(id[8:], uint64(c.id)+1)
	return id
}

// attempt runs the router for one try of the current request: find the
// shard of every post or void that names no debit account, then split the
// batch by shard.
func (c *Client) attempt() {
	w := c.w
	req := c.cur
	c.tries++
	w.stats.Requests++
	call := &routerCall{c: c, req: req, id: w.newRequestID(c)}
	if call.id != nil {
		w.ref.calls[string(call.id)] = call
	}
	if w.tracing() {
		var b []byte
		if req.kind == shard.KindCreateAccounts {
			for _, a := range req.accounts {
				b = fmt.Appendf(b, " %s", a.ID)
			}
		} else {
			for i := range req.transfers {
				b = append(b, ' ')
				b = appendTransfer(b, &req.transfers[i])
			}
		}
		w.tracef("%s: request try %d:%s", c.name(), c.tries, b)
	}
	w.after(w.p.RequestDeadline, func() {
		if call.over {
			return
		}
		call.over = true
		w.stats.Timeouts++
		if w.tracing() {
			w.tracef("%s: timeout (try %d)", c.name(), c.tries)
		}
		w.after(exp(w.rngWork, w.p.ClientRetryMean)+ms, c.attempt)
	})
	debitOf, ids := plan.Locate(req.transfers)
	if len(ids) > 0 {
		c.locate(call, ids, debitOf)
		return
	}
	c.route(call, debitOf)
}

// locate is router.find for OpLookupTransfers: it asks every shard for the
// ids (a transfer lives on its debit account's shard, which its id does not
// tell), each resent while no one serves the shard or it answers retry,
// until the deadline; a record found on several shards is taken from the
// last reply. Then the batch is routed.
func (c *Client) locate(call *routerCall, ids []string, debitOf map[string]string) {
	w := c.w
	left := len(w.groups)
	found := map[string]string{}
	for _, g := range w.groups {
		backoff := 5 * ms
		var ask func()
		ask = func() {
			if call.over {
				return
			}
			sentAt := w.now
			answered := false
			w.net.lookup(c.ep, g.id, ids, func(rep lookupReply) {
				if call.over || answered {
					return
				}
				answered = true
				if rep.noResponders || rep.retry {
					d := backoff
					backoff = min(2*backoff, 200*ms)
					w.after(d, ask)
					return
				}
				w.ref.lookedUp(g.id, ids, rep, sentAt)
				for _, t := range rep.found {
					found[t.ID] = t.DebitAccountID
				}
				if left--; left == 0 {
					for _, id := range ids {
						if d, ok := found[id]; ok {
							debitOf[id] = d
						}
					}
					c.route(call, debitOf)
				}
			})
		}
		ask()
	}
}

// route is router.createAccounts and router.createTransfers: the router's
// own plan (router/plan) splits the batch by shard and answers the linked
// chains no shard can take; every part is sent.
func (c *Client) route(call *routerCall, debitOf map[string]string) {
	w := c.w
	req := call.req
	var pl *plan.Plan
	switch {
	case req.kind == shard.KindCreateAccounts:
		pl = plan.Accounts(req.accounts, w.shardOf, nil)
	case w.mut == MutChainCutByShard:
		pl = cutChains(req.transfers, w.shardOf, debitOf)
	default:
		pl = plan.Transfers(req.transfers, w.shardOf, debitOf, nil)
	}
	call.results = pl.Results
	for _, pp := range pl.Parts {
		pp.Cmd.Request = call.id // router.sendParts: the request's id, on every re-send
		call.parts = append(call.parts, &part{Part: *pp, call: call, backoff: 5 * ms})
	}
	call.left = len(call.parts)
	if call.left == 0 { // every event answered by the router
		call.over = true
		c.replied(call)
		return
	}
	for _, p := range call.parts {
		p.sendNow()
	}
}

// cutChains is the mutation chain-cut-by-shard, the router's bug: a chain
// of transfers across shards is not regrouped at a coordinator, and each
// shard gets its piece of the chain, without DebitShards.
func cutChains(ts []transport.Transfer, shardOf func(string) uint32, debitOf map[string]string) *plan.Plan {
	r := plan.Route(ts, shardOf, debitOf)
	p := &plan.Plan{Results: make([]transport.Result, len(ts))}
	oneShard := make([]uint32, len(ts)) // so that no chain is refused for its cut
	sent := plan.RefuseChains(p.Results, oneShard, func(i int) bool { return ts[i].Flags&transport.TransferLinked != 0 },
		func(int) bool { return true })
	p.Parts = plan.SplitTransfers(ts, r, nil, sent, nil)
	return p
}

func appendTransfer(b []byte, t *transport.Transfer) []byte {
	switch {
	case t.Flags == transport.TransferPending:
		b = fmt.Appendf(b, "%s:%s->%s:%d:pending", t.ID, t.DebitAccountID, t.CreditAccountID, t.Amount)
		if t.Timeout > 0 {
			b = fmt.Appendf(b, "/%ds", t.Timeout)
		}
		return b
	case t.Flags&resolves != 0:
		what := "post"
		if t.Flags&transport.TransferVoidPendingTransfer != 0 {
			what = "void"
		}
		return fmt.Appendf(b, "%s:%s(%s):%s->%s:%d", t.ID, what, t.PendingID, t.DebitAccountID, t.CreditAccountID, t.Amount)
	}
	return fmt.Appendf(b, "%s:%s->%s:%d", t.ID, t.DebitAccountID, t.CreditAccountID, t.Amount)
}

// replied: every part answered before the deadline.
func (c *Client) replied(call *routerCall) {
	w := c.w
	if w.tracing() {
		var b []byte
		for _, r := range call.results {
			b = fmt.Appendf(b, " %s", r.Code)
		}
		w.tracef("%s: results:%s", c.name(), b)
	}
	w.ref.check(call)
	c.cur = nil
	w.after(exp(w.rngWork, w.p.ClientRetryMean), c.next)
}

type routerCall struct {
	c   *Client
	req *request
	// id is the router's request id (router.newRequestID): one per try of
	// the client (a client's retry is a new request), the same on every
	// re-send of a part.
	id      []byte
	results []transport.Result
	parts   []*part
	left    int
	over    bool
}

type part struct {
	plan.Part
	call    *routerCall
	backoff uint64
	sends   int
	sentAt  uint64
	firstAt uint64 // the first send of this try
	logAt   uint64 // the shard's log time (a lower bound) at the last send
	done    bool
}

// sendNow is one round of router.callShard: a request whose reply, if
// any, is matched to this send only (a late reply to an earlier send is
// dropped, as NATS drops a reply to a finished request).
func (p *part) sendNow() {
	call := p.call
	w := call.c.w
	p.sends++
	n := p.sends
	p.sentAt, p.logAt = w.now, w.chk.logLow[p.Shard-1]
	if n == 1 {
		p.firstAt = w.now
	}
	w.ref.sending(p)
	// One attempt may take the whole deadline (router.callShard): a shard
	// answers late while a cross-shard transfer resolves.
	retry := func() {
		d := p.backoff
		p.backoff = min(2*p.backoff, 200*ms)
		w.after(d, func() {
			if !call.over && !p.done && n == p.sends {
				p.sendNow()
			}
		})
	}
	answered := false
	w.net.request(call.c.ep, p.Shard, &p.Cmd, "request", func(rep reply) {
		if call.over || p.done || n != p.sends || answered {
			return
		}
		answered = true
		if rep.noResponders || rep.r.Retry != "" {
			retry()
			return
		}
		if rep.r.Invalid != "" {
			w.fail("router", "shard %d refused a command as invalid: %s", p.Shard, rep.r.Invalid)
			return
		}
		if err := p.Merge(call.results, rep.r.Results); err != nil {
			w.fail("router", "%v", err)
			return
		}
		p.done = true
		if call.left--; call.left == 0 {
			call.over = true
			call.c.replied(call)
		}
	})
}

// makeRequest draws the client's next request: its accounts first, then
// transfers (with, now and then, an account request repeating an account).
func (c *Client) makeRequest() *request {
	w := c.w
	r := w.rngWork
	if len(c.todo) > 0 {
		req := &request{kind: shard.KindCreateAccounts, accounts: c.todo[0]}
		c.todo = c.todo[1:]
		if on(r, w.p.DoomP) {
			req.accounts = append(req.accounts, c.badAccount())
		}
		return req
	}
	if on(r, w.p.DoomP/4) {
		if a, ok := w.ref.createdAccount(r); ok {
			if on(r, 0.5) {
				a.Code++ // other fields: exists_with_different_fields
			}
			return &request{kind: shard.KindCreateAccounts, accounts: []transport.Account{a}}
		}
	}
	req := &request{kind: shard.KindCreateTransfers}
	n := 1 + r.IntN(w.p.BatchMax)
	for range n {
		if on(r, w.p.ChainP) {
			if legs := c.makeChain(); legs != nil {
				req.transfers = append(req.transfers, legs...)
				continue
			}
		}
		t := c.makeTransfer()
		req.transfers = append(req.transfers, t)
		if on(r, w.p.DoomP/8) { // the same event twice in one batch
			req.transfers = append(req.transfers, t)
		}
		if isPending(&t) && on(r, 0.15) {
			// Its post or void in the same batch: the router sends it
			// where the batch's pending transfer goes, which applies it
			// first.
			req.transfers = append(req.transfers, c.resolutionOf(&t))
		}
	}
	if on(r, w.p.ChainP/6) {
		// A chain still open at the end of the batch: the router answers
		// linked_event_chain_open on each of its events.
		if legs := c.makeChain(); legs != nil {
			legs[len(legs)-1].Flags |= transport.TransferLinked
			req.transfers = append(req.transfers, legs...)
		}
	}
	return req
}

// makeChain draws a linked chain of 2 or 3 transfers. On one shard (and
// always with one shard): plain transfers, a payment, its fee, and now and
// then the fee passed on (spent from the credit the chain just gave); some
// have their fee go to an account of another shard (a chain across shards
// then). Across shards (half of the chains with several shards,
// makeSpanningChain): plain and pending legs between any accounts of a
// ledger, served by two-phase commit on the first debit account's shard.
// Some are built to fail (a leg over the limits, or on another ledger: the
// whole chain is undone); now and then a chain drawn before is sent again
// whole. nil if the payer's shard holds no other account of its ledger.
// Chains stay out of the history that doomed transfers repeat: a leg sent
// alone would chain whatever follows it.
func (c *Client) makeChain() []transport.Transfer {
	w := c.w
	r := w.rngWork
	ref := w.ref
	if len(ref.chains) > 0 && on(r, w.p.DoomP/4) {
		w.reached["chain sent again"]++
		return slices.Clone(ref.chains[r.IntN(len(ref.chains))]) // exists, or applied now if it failed before
	}
	if w.p.Shards > 1 && on(r, 0.5) {
		return c.makeSpanningChain()
	}
	dr := ref.pick(r, nil)
	s := w.shardOf(dr.ID)
	cr, fee := ref.pickOnShard(r, dr, s), ref.pickOnShard(r, dr, s)
	if cr == nil || fee == nil {
		return nil
	}
	if w.p.Shards > 1 && on(r, 0.15) {
		fee = ref.pick(r, dr) // often on another shard
	}
	leg := func(from, to *transport.Account, amount uint64) transport.Transfer {
		return transport.Transfer{ID: c.freshID("c"), DebitAccountID: from.ID, CreditAccountID: to.ID,
			Ledger: from.Ledger, Code: 1, Amount: amount, Flags: transport.TransferLinked}
	}
	legs := []transport.Transfer{leg(dr, cr, 1+r.Uint64N(100)), leg(dr, fee, 1+r.Uint64N(5))}
	if on(r, 0.3) && fee.ID != cr.ID {
		legs = append(legs, leg(fee, cr, 1+r.Uint64N(3)))
	}
	if on(r, max(w.p.DoomP, 0.15)) {
		k := r.IntN(len(legs))
		if w.p.Ledgers > 1 && on(r, 0.3) {
			legs[k].Ledger = legs[k].Ledger%uint32(w.p.Ledgers) + 1 // ledger_mismatch
		} else {
			legs[k].Amount = 5_000 + r.Uint64N(100_000) // over a limit, if the account has one
		}
	}
	legs[len(legs)-1].Flags = 0
	ref.chains = append(ref.chains, slices.Clone(legs))
	return legs
}

// makeSpanningChain draws a chain across shards: 2 or 3 legs between any
// accounts of one ledger (a payment from an operator or anyone, onward
// payments), each plain or pending (with a timeout now and then). Some are
// built to fail on a debit side (far over the payer's limit) or on a credit
// side (a credit account of another ledger: ledger_mismatch there; or far
// over the payee's credit limit: exceeds_debits there), now and then with a
// balancing leg (refused at once by the coordinator: flags_invalid).
func (c *Client) makeSpanningChain() []transport.Transfer {
	w := c.w
	r := w.rngWork
	ref := w.ref
	var dr *transport.Account
	if on(r, 0.4) {
		dr = &ref.canon[r.IntN(w.p.Ledgers)] // an operator
	} else {
		dr = ref.pick(r, nil)
	}
	n := 2 + r.IntN(2)
	var legs []transport.Transfer
	from := dr
	for range n {
		to := ref.pick(r, from)
		if to.Ledger != from.Ledger {
			return nil
		}
		t := transport.Transfer{ID: c.freshID("x"), DebitAccountID: from.ID, CreditAccountID: to.ID,
			Ledger: from.Ledger, Code: 1 + uint16(r.IntN(2)), Amount: 1 + r.Uint64N(60), Flags: transport.TransferLinked}
		if on(r, 0.3) {
			t.Flags |= transport.TransferPending
			if w.p.PendingTimeoutMax > 0 && on(r, 0.5) {
				t.Timeout = 1 + uint32(r.IntN(int(w.p.PendingTimeoutMax)))
			}
		}
		legs = append(legs, t)
		if on(r, 0.5) {
			from = to // the payee pays on (from its balance before the chain)
		}
	}
	doomed := on(r, max(w.p.DoomP, 0.2))
	if doomed {
		k := r.IntN(len(legs))
		t := &legs[k]
		spans := false
		for _, l := range legs {
			spans = spans || w.shardOf(l.DebitAccountID) != w.shardOf(legs[0].DebitAccountID) || w.shardOf(l.CreditAccountID) != w.shardOf(l.DebitAccountID)
		}
		switch x := r.IntN(7); {
		case x == 6 && spans:
			// A balancing leg: refused flags_invalid at once by the
			// coordinator (plain and pending legs only).
			t.Flags = t.Flags&transport.TransferLinked | transport.TransferBalancingDebit
			t.Timeout = 0
		case x <= 1 && w.p.Ledgers > 1:
			// A credit account of another ledger: refused on its credit
			// side.
			for range 8 {
				if o := &ref.canon[r.IntN(len(ref.canon))]; o.Ledger != t.Ledger && o.ID != t.DebitAccountID {
					t.CreditAccountID = o.ID
					break
				}
			}
		case x == 1 || x == 2:
			// Far over a credit limit, paid by the ledger's operator:
			// refused on its credit side if the payee has one.
			var cands []*transport.Account
			for i := range ref.canon {
				if a := &ref.canon[i]; a.Ledger == t.Ledger && a.Flags&transport.AccountCreditsMustNotExceedDebits != 0 {
					cands = append(cands, a)
				}
			}
			if len(cands) > 0 {
				t.DebitAccountID = ref.canon[t.Ledger-1].ID
				t.CreditAccountID = cands[r.IntN(len(cands))].ID
			}
			t.Amount = 5_000 + r.Uint64N(100_000)
		default:
			t.Amount = 5_000 + r.Uint64N(100_000) // over a limit, if an account has one
		}
	}
	legs[len(legs)-1].Flags &^= transport.TransferLinked
	for _, t := range legs {
		if !doomed && t.Flags&transport.TransferPending != 0 {
			// Posts and voids may name it, as any pending transfer.
			t.Flags = transport.TransferPending
			if _, ok := ref.pendingByID[t.ID]; !ok {
				ref.pendingByID[t.ID] = t
			}
			ref.pendings = append(ref.pendings, t)
		}
	}
	w.reached["chain across shards drawn"]++
	ref.chains = append(ref.chains, slices.Clone(legs))
	return legs
}

// makeBalancing turns an ordinary transfer into a balancing one, of an
// amount the shards often clamp: mostly between two accounts of one shard,
// and in seeds of several shards now and then across shards (plain or
// pending), where a balancing_debit is clamped on the debit shard before it
// is reserved and a balancing_credit on the credit shard, which answers the
// amount it credited. Balancing transfers stay out of the history (the
// doomed repeats): a tenth of these draws send one again instead, half of
// them with a larger amount, which answers exists, not
// exists_with_different_fields. (No post or void names a pending balancing
// transfer: a timeout ends it, or it stays pending.)
func (c *Client) makeBalancing(t *transport.Transfer) bool {
	w := c.w
	r := w.rngWork
	if old := w.ref.balancings; len(old) > 0 && on(r, 0.1) {
		// One drawn before, again, now and then with a larger amount:
		// exists once stored (with at most the amount first sent), or it
		// joins the attempt in flight across shards.
		*t = old[r.IntN(len(old))]
		t.Metadata = maps.Clone(t.Metadata)
		if on(r, 0.5) {
			t.Amount += 1 + r.Uint64N(500)
		}
		w.reached["balancing sent again"]++
		return true
	}
	dr := &w.ref.accounts[t.DebitAccountID].canon
	across := w.p.Shards > 1 && on(r, 0.25)
	var cr *transport.Account
	if across {
		cr = w.ref.pickOffShard(r, dr, w.shardOf(dr.ID), 0)
	}
	if cr == nil {
		across = false
		cr = w.ref.pickOnShard(r, dr, w.shardOf(dr.ID))
	}
	if cr == nil {
		return false
	}
	t.CreditAccountID = cr.ID
	// Across shards, balancing_credit (clamped on the credit shard) more
	// often than balancing_debit.
	debitOnly, creditOnly := 6, 9
	if across {
		debitOnly, creditOnly = 3, 8
	}
	switch x := r.IntN(10); {
	case x < debitOnly:
		t.Flags = transport.TransferBalancingDebit
	case x < creditOnly:
		t.Flags = transport.TransferBalancingCredit
	default:
		t.Flags = transport.TransferBalancingDebit | transport.TransferBalancingCredit
	}
	t.Amount = 1 + r.Uint64N(2000)
	defer func() { w.ref.balancings = append(w.ref.balancings, *t) }()
	if across {
		w.reached["balancing across shards drawn"]++
		if t.Flags&transport.TransferBalancingCredit != 0 && on(r, 0.8) {
			// A payee whose credits its debits bound: the credit shard
			// often clamps (or refuses) the credit.
			if o := w.ref.pickOffShard(r, dr, w.shardOf(dr.ID), transport.AccountCreditsMustNotExceedDebits); o != nil {
				t.CreditAccountID = o.ID
			}
		}
		if on(r, 0.3) {
			t.Flags |= transport.TransferPending
			if w.p.PendingTimeoutMax > 0 && on(r, 0.6) {
				t.Timeout = 1 + uint32(r.IntN(int(w.p.PendingTimeoutMax)))
			}
		}
	}
	return true
}

func (c *Client) freshID(prefix string) string {
	c.seq++
	return fmt.Sprintf("%s%d.%d", prefix, c.id, c.seq)
}

// badAccount is an account event the shard must refuse for its fields.
func (c *Client) badAccount() transport.Account {
	a := transport.Account{ID: c.freshID("bad"), Ledger: 1, Code: 1}
	switch c.w.rngWork.IntN(4) {
	case 0:
		a.Flags = transport.AccountDebitsMustNotExceedCredits | transport.AccountCreditsMustNotExceedDebits
	case 1:
		a.Ledger = 0
	case 2:
		a.Flags = 1 << 5 // undefined
	default:
		a.DebitsPosted = 5
	}
	return a
}

// makeTransfer draws one transfer: mostly ordinary ones (funding from an
// operator, or between accounts of a ledger, hot accounts preferred), and
// with the seed's doom rate one built to be refused or to repeat an id.
func (c *Client) makeTransfer() transport.Transfer {
	w := c.w
	r := w.rngWork
	ref := w.ref
	t := transport.Transfer{ID: c.freshID("t"), Code: 1 + uint16(r.IntN(2))}
	amount := func() uint64 {
		if on(r, 0.1) {
			return 1 + r.Uint64N(3000)
		}
		return 1 + r.Uint64N(100)
	}
	ordinary := func() {
		var dr *transport.Account
		if on(r, 0.3) {
			dr = &ref.canon[r.IntN(w.p.Ledgers)] // an operator
		} else {
			dr = ref.pick(r, nil)
		}
		cr := ref.pick(r, dr)
		t.DebitAccountID, t.CreditAccountID, t.Ledger, t.Amount = dr.ID, cr.ID, dr.Ledger, amount()
		if on(r, 0.05) {
			t.Metadata = map[string]string{"ref": fmt.Sprint(r.IntN(3))}
		}
	}
	ordinary()
	if on(r, w.p.BalancingP) && c.makeBalancing(&t) {
		return t
	}
	if on(r, w.p.TwoPhaseP) {
		if len(ref.pendings) > 0 && on(r, 0.55) {
			return c.makeResolution()
		}
		c.makePending(&t)
	}
	if !on(r, w.p.DoomP) {
		ref.drawn(t)
		if isPending(&t) {
			ref.pendings = append(ref.pendings, t)
		}
		return t
	}
	switch r.IntN(9) {
	case 0:
		t.CreditAccountID = ref.ghosts[r.IntN(len(ref.ghosts))]
	case 1:
		t.DebitAccountID = ref.ghosts[r.IntN(len(ref.ghosts))]
	case 2:
		t.Amount = 5_000 + r.Uint64N(100_000)
	case 3:
		if w.p.Ledgers > 1 {
			other := ref.canon[r.IntN(len(ref.canon))]
			t.CreditAccountID = other.ID // often another ledger
		}
	case 4, 5, 6:
		if len(ref.history) == 0 {
			break
		}
		old := ref.history[r.IntN(len(ref.history))]
		switch {
		case r.IntN(3) == 0: // the same transfer again
			return old
		case on(r, w.p.IDReuseOtherShardP) && old.Flags == 0:
			t.ID = old.ID // the id with a debit account anywhere
		default:
			t = old // the id with other fields, same debit account
			t.Amount++
			if on(r, 0.5) {
				t.Metadata = map[string]string{"changed": "1"}
			}
		}
	case 7:
		switch r.IntN(5) {
		case 0:
			t.Amount = 0
		case 1:
			// Undefined, closing without pending, or two of pending,
			// post, void. (Chains and balancing transfers are drawn on
			// their own: makeChain, makeBalancing.)
			t.Flags = []uint32{1 << 8, transport.TransferClosingDebit, transport.TransferPending | transport.TransferPostPendingTransfer}[c.w.rngWork.IntN(3)]
		case 2:
			t.CreditAccountID = t.DebitAccountID
		case 3:
			t.Ledger = 0
		default:
			t.Timeout = 5 // only a pending transfer may have one
		}
		return t
	case 8:
		t.Amount = 1 + r.Uint64N(1000) // large for a wallet, often near its balance
	}
	ref.drawn(t)
	return t
}

// makePending turns an ordinary transfer into a pending one, with both
// accounts on one shard (half of them) or any two of its ledger (across
// shards in most seeds of several shards), with a timeout of a few seconds
// or none.
func (c *Client) makePending(t *transport.Transfer) {
	w := c.w
	r := w.rngWork
	t.Flags = transport.TransferPending
	if w.p.PendingTimeoutMax > 0 && on(r, 0.6) {
		t.Timeout = 1 + uint32(r.IntN(int(w.p.PendingTimeoutMax)))
	}
	if on(r, 0.5) {
		dr := &w.ref.accounts[t.DebitAccountID].canon
		if cr := w.ref.pickOnShard(r, dr, w.shardOf(dr.ID)); cr != nil {
			t.CreditAccountID = cr.ID
		}
	}
}

// makeResolution draws a post or void: of a pending transfer drawn before
// (open, resolved or expired by now, or not applied yet), of a plain
// transfer, of an id never used; or a post or void sent before, again, with
// the same fields, equivalent ones, or other ones.
func (c *Client) makeResolution() transport.Transfer {
	w := c.w
	r := w.rngWork
	ref := w.ref
	if len(ref.resolutions) > 0 && on(r, 0.15) {
		return c.retryResolution()
	}
	t := transport.Transfer{ID: c.freshID("r"), Flags: transport.TransferPostPendingTransfer}
	if on(r, 0.4) {
		t.Flags = transport.TransferVoidPendingTransfer
	}
	var p *transport.Transfer
	switch x := r.IntN(100); {
	case x < 7:
		t.PendingID = "nope" + itoa(r.IntN(5)) // never used: not found
	case x < 13:
		if len(ref.history) > 0 {
			if h := ref.history[r.IntN(len(ref.history))]; h.Flags == 0 {
				p = &h // a plain transfer: not pending
			}
		}
	case x < 45:
		p = &ref.pendings[max(0, len(ref.pendings)-1-r.IntN(4))] // a recent one
	case x < 80 && len(ref.accepted) > 0:
		p = &ref.accepted[r.IntN(len(ref.accepted))] // one a client saw applied
	default:
		p = &ref.pendings[r.IntN(len(ref.pendings))]
	}
	if p == nil {
		if t.PendingID == "" {
			t.PendingID = "nope" + itoa(r.IntN(5))
		}
		t.Amount = uint64(r.IntN(3)) * 10
		return c.finishResolution(t)
	}
	t.PendingID = p.ID
	t.Amount = resolutionAmount(r, isPost(&t), p.Amount)
	c.optionalFields(&t, p)
	return c.finishResolution(t)
}

// resolutionOf is a post or void of pending transfer p, drawn with it.
func (c *Client) resolutionOf(p *transport.Transfer) transport.Transfer {
	r := c.w.rngWork
	t := transport.Transfer{ID: c.freshID("r"), Flags: transport.TransferPostPendingTransfer, PendingID: p.ID}
	if on(r, 0.4) {
		t.Flags = transport.TransferVoidPendingTransfer
	}
	t.Amount = resolutionAmount(r, isPost(&t), p.Amount)
	c.optionalFields(&t, p)
	return c.finishResolution(t)
}

// resolutionAmount: a post of all (0 or the amount), of a part, or of more;
// a void of all, of a part (a mismatch), or of more.
func resolutionAmount(r *rand.Rand, post bool, a uint64) uint64 {
	x := r.IntN(100)
	switch {
	case x < 35 || !post && x < 50:
		return 0
	case x < 60 && a > 1:
		return 1 + r.Uint64N(a-1)
	case x < 85:
		return a
	case x < 95:
		return a + 1 + r.Uint64N(10) // exceeds_pending_transfer_amount
	}
	return 1 + r.Uint64N(100)
}

// optionalFields: a post or void may name its pending transfer's accounts,
// ledger and code; without the debit account the router looks it up.
func (c *Client) optionalFields(t *transport.Transfer, p *transport.Transfer) {
	r := c.w.rngWork
	switch x := r.IntN(100); {
	case x < 40: // none
	case x < 65:
		t.DebitAccountID = p.DebitAccountID
	case x < 83:
		t.DebitAccountID, t.CreditAccountID, t.Ledger, t.Code = p.DebitAccountID, p.CreditAccountID, p.Ledger, p.Code
	case x < 88:
		t.CreditAccountID = p.CreditAccountID
	case x < 95: // a mismatch
		t.DebitAccountID = p.DebitAccountID
		if on(r, 0.5) {
			t.Code = p.Code + 1
		} else {
			t.Ledger = p.Ledger%uint32(c.w.p.Ledgers) + 1
		}
	default: // a wrong debit account: sent to its shard
		t.DebitAccountID = c.w.ref.canon[r.IntN(len(c.w.ref.canon))].ID
	}
}

// finishResolution adds, now and then, metadata or a field defect, and
// records the event for retries.
func (c *Client) finishResolution(t transport.Transfer) transport.Transfer {
	r := c.w.rngWork
	switch x := r.IntN(100); {
	case x < 5:
		t.Metadata = map[string]string{"ref": itoa(r.IntN(3))}
	case x < 7:
		t.Timeout = 1 // only a pending transfer may have one: timeout_invalid
	case x < 8:
		t.PendingID = t.ID // pending_id_invalid
	}
	c.w.ref.drawn(t)
	return t
}

// retryResolution sends a post or void drawn before again: the same
// fields, equivalent ones (amount 0 for the whole amount or the other way
// round, the debit account named or left out: exists once it applied), or
// other fields (exists_with_different_fields once it applied).
func (c *Client) retryResolution() transport.Transfer {
	w := c.w
	r := w.rngWork
	ref := w.ref
	t := ref.resolutions[r.IntN(len(ref.resolutions))]
	t.Metadata = maps.Clone(t.Metadata)
	p, ok := ref.pendingByID[t.PendingID]
	switch x := r.IntN(100); {
	case x < 40 || !ok:
		return t
	case x < 55:
		if t.Amount == 0 {
			t.Amount = p.Amount
		} else if t.Amount == p.Amount {
			t.Amount = 0
		}
	case x < 70:
		if t.DebitAccountID == "" {
			t.DebitAccountID = p.DebitAccountID
		} else if t.DebitAccountID == p.DebitAccountID {
			t.DebitAccountID = ""
		}
	case x < 80:
		t.Metadata = map[string]string{"changed": "1"}
	case x < 90:
		// Another account of the pending transfer's shard named as the
		// debit account: sent to the same shard, never the same post.
		dr := &ref.accounts[p.DebitAccountID].canon
		if a := ref.pickOnShard(r, dr, w.shardOf(dr.ID)); a != nil && a.ID != p.CreditAccountID {
			t.DebitAccountID = a.ID
		} else {
			t.Amount++
		}
	default:
		t.Amount++
	}
	ref.drawn(t)
	return t
}
