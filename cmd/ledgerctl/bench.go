package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

const (
	// benchConnsMax is how many NATS connections bench spreads its clients
	// over: one connection's single reader and writer goroutines cap its
	// throughput, and a few suffice to take that cap away.
	benchConnsMax = 4
	// codeNoAnswer marks a transfer whose request failed as a whole, or was
	// never sent: its outcome is unknown until the audit looks it up.
	codeNoAnswer = math.MaxUint8
	// problemsShownMax bounds the conservation problems printed.
	problemsShownMax = 20
	// legsDefault is a payment and its fee.
	legsDefault = 2
)

// benchOptions are the flags of `bench`.
type benchOptions struct {
	accounts, transfers, batch, clients int
	crossShard                          float64
	twoPhase, void, partial             float64
	twoPhaseCross                       float64
	linked, linkedCross                 float64
	legs                                int
	ledger                              uint32
	amount, seed                        uint64
	idPrefix, providerPrefix            string
	coalesce                            bool
}

func newBenchCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load the cluster with transfers, measure throughput and latency, audit conservation",
		Long: `Create --accounts accounts without limit flags (so no transfer fails for
funds), send --transfers transfers between them in batches of --batch from
--clients concurrent requesters, report throughput and request latency, then
look up every account and check its posted balances against the transfers that
were applied, and that debits equal credits. Exit 1 if that audit fails.

With --two-phase, that fraction of the transfers is sent as a pending transfer
between two accounts of one shard, then resolved in the client's next request:
posted whole, posted in part (--partial), or voided (--void). Each pending, post
and void is one event of transfers/s; pairs/s counts the resolved ones. The
audit then also wants every pending balance of the accounts back at 0.

With --linked, that fraction of the transfers is sent as linked chains of --legs
transfers (a payment and its fee, for 2): one debit account, credit accounts of
its shard, each leg but the last flagged linked, so the chain succeeds or fails
as one. With --linked-cross-shard, that fraction of the chains has every leg's
credit account on another shard than the debit account, so the cluster
coordinates each of them across shards by two-phase commit (this needs 2
shards or more). A request never cuts a chain. Each leg is one event of
transfers/s; chains/s counts the chains whose every leg answered ok (or
exists). A leg refused flags_invalid, or a chain answered or applied in part,
fails the run.

The clients coalesce concurrent calls (the Go client's default): with
--batch 1, the transfers of the calls made while a request is in flight go
together in the next request. --coalesce=false sends each call as its own
request; the report counts both calls (requests) and NATS requests.

As a provider (--user/--password, or another credential, of a providers
file), give --provider-prefix, one of its id prefixes, and --ledger, one of
its ledgers: the run's ids then start with it. The cluster status is refused
to a provider, so the bench does not know the shards: --cross-shard,
--two-phase-cross-shard and --linked-cross-shard are refused, and two-phase
transfers and chains take accounts regardless of their shards.`,
		Args: cobra.NoArgs,
	}
	o := addBenchFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.check(); err != nil {
			return err
		}
		return a.bench(cmd.Context(), *o)
	}
	return cmd
}

func addBenchFlags(f *pflag.FlagSet) *benchOptions {
	o := &benchOptions{}
	f.IntVar(&o.accounts, "accounts", 10000, "accounts to create")
	f.IntVar(&o.transfers, "transfers", 1000000, "transfers to send")
	f.IntVar(&o.batch, "batch", 1000, "events per request")
	f.IntVar(&o.clients, "clients", 0, "concurrent requesters (default 64 if --batch is 1, else 8)")
	f.Float64Var(&o.crossShard, "cross-shard", -1, "fraction 0..1 of the single-phase transfers between accounts on different shards (-1: uniformly random accounts)")
	f.Float64Var(&o.twoPhase, "two-phase", 0, "fraction 0..1 of transfers (of those outside linked chains) sent as pending, between accounts on one shard (but see --two-phase-cross-shard), and resolved in a later request")
	f.Float64Var(&o.twoPhaseCross, "two-phase-cross-shard", 0, "fraction 0..1 of the two-phase transfers whose two accounts are on different shards")
	f.Float64Var(&o.void, "void", 0, "fraction 0..1 of the two-phase transfers voided rather than posted")
	f.Float64Var(&o.partial, "partial", 0, "fraction 0..1 of the posted two-phase transfers that post half their amount (needs --amount 2 or more)")
	f.Float64Var(&o.linked, "linked", 0, "fraction 0..1 of transfers sent as linked chains of --legs transfers from one debit account, all on its shard (but see --linked-cross-shard)")
	f.Float64Var(&o.linkedCross, "linked-cross-shard", 0, "fraction 0..1 of the linked chains whose legs credit accounts on shards other than the debit account's, so each crosses shards (needs 2 shards or more)")
	f.IntVar(&o.legs, "legs", legsDefault, "transfers per linked chain (2 or more, at most --batch)")
	f.Uint32Var(&o.ledger, "ledger", 1, "ledger of the accounts and transfers")
	f.Uint64Var(&o.amount, "amount", 1, "amount of every transfer")
	f.Uint64Var(&o.seed, "seed", 0, "seed of the account pairs (0: random, printed)")
	f.StringVar(&o.idPrefix, "id-prefix", "", "prefix of the ids created (default: --provider-prefix and a random run id); reuse one and the audit fails, as it needs fresh accounts")
	f.StringVar(&o.providerPrefix, "provider-prefix", "", "an id prefix the connection's provider owns (docs/security.md): every id created starts with it")
	f.BoolVar(&o.coalesce, "coalesce", true, "let each client coalesce concurrent calls into shared requests (false: one request per call)")
	return o
}

// check validates the options and fills in the defaults that depend on others.
func (o *benchOptions) check() error {
	switch {
	case o.accounts < 2 || o.accounts > math.MaxInt32:
		return fmt.Errorf("--accounts %d: want 2 to %d", o.accounts, math.MaxInt32)
	case o.transfers < 0:
		return fmt.Errorf("--transfers %d: want 0 or more", o.transfers)
	case o.batch < 1:
		return fmt.Errorf("--batch %d: want 1 or more", o.batch)
	case o.clients < 0:
		return fmt.Errorf("--clients %d: want 1 or more", o.clients)
	case o.crossShard != -1 && (o.crossShard < 0 || o.crossShard > 1):
		return fmt.Errorf("--cross-shard %v: want 0 to 1, or -1", o.crossShard)
	case o.ledger == 0 || o.amount == 0:
		return errors.New("--ledger and --amount must be more than 0")
	}
	if err := o.checkTwoPhase(); err != nil {
		return err
	}
	if err := o.checkLinked(); err != nil {
		return err
	}
	if o.clients == 0 {
		// One event per request needs many requests in flight to load the cluster.
		o.clients = 8
		if o.batch == 1 {
			o.clients = 64
		}
	}
	if o.seed == 0 {
		o.seed = rand.Uint64()
	}
	if o.idPrefix == "" {
		o.idPrefix = fmt.Sprintf("%sbench-%08x", o.providerPrefix, rand.Uint32())
	}
	if !strings.HasPrefix(o.idPrefix, o.providerPrefix) {
		return fmt.Errorf("--id-prefix %q does not start with --provider-prefix %q: the provider would be refused every id", o.idPrefix, o.providerPrefix)
	}
	for _, id := range []string{o.accountID(o.accounts), o.transferID(o.transfers), o.resolutionID(o.transfers)} {
		if !transport.ValidID(id) {
			return fmt.Errorf("--id-prefix %q makes invalid ids such as %q", o.idPrefix, id)
		}
	}
	return nil
}

func (o *benchOptions) checkTwoPhase() error {
	for _, f := range []struct {
		name  string
		value float64
	}{{"two-phase", o.twoPhase}, {"two-phase-cross-shard", o.twoPhaseCross}, {"void", o.void}, {"partial", o.partial}} {
		if f.value < 0 || f.value > 1 {
			return fmt.Errorf("--%s %v: want 0 to 1", f.name, f.value)
		}
	}
	switch {
	case o.twoPhase == 0 && (o.void > 0 || o.partial > 0 || o.twoPhaseCross > 0):
		return errors.New("--void, --partial and --two-phase-cross-shard need --two-phase")
	case o.partial > 0 && o.amount < 2:
		return fmt.Errorf("--partial needs --amount 2 or more to post part of it, not %d", o.amount)
	}
	return nil
}

// checkLinked bounds a chain by --batch, as the bench sends a chain in one
// request, and by what one request holds, as the client refuses longer ones.
func (o *benchOptions) checkLinked() error {
	switch {
	case o.linked < 0 || o.linked > 1:
		return fmt.Errorf("--linked %v: want 0 to 1", o.linked)
	case o.linkedCross < 0 || o.linkedCross > 1:
		return fmt.Errorf("--linked-cross-shard %v: want 0 to 1", o.linkedCross)
	case o.linked == 0 && o.linkedCross > 0:
		return errors.New("--linked-cross-shard needs --linked")
	case o.linked == 0 && o.legs != legsDefault:
		return errors.New("--legs needs --linked")
	case o.linked > 0 && (o.legs < 2 || o.legs > min(o.batch, transport.BatchEventsMax)):
		return fmt.Errorf("--legs %d: want 2 to --batch (%d), at most %d", o.legs, o.batch, transport.BatchEventsMax)
	}
	return nil
}

func (o *benchOptions) mix() mix {
	return mix{transfers: o.transfers, crossShard: o.crossShard, twoPhase: o.twoPhase, void: o.void, partial: o.partial,
		twoPhaseCross: o.twoPhaseCross, linked: o.linked, legs: o.legs, linkedCross: o.linkedCross}
}

// accountID, transferID and resolutionID name account i, transfer i (for a
// two-phase transfer: its pending transfer) and the post or void of transfer i.
func (o *benchOptions) accountID(i int) string    { return o.idPrefix + "-a" + strconv.Itoa(i) }
func (o *benchOptions) transferID(i int) string   { return o.idPrefix + "-t" + strconv.Itoa(i) }
func (o *benchOptions) resolutionID(i int) string { return o.idPrefix + "-r" + strconv.Itoa(i) }

// transfer is the first event of p, transfer i: the transfer itself, or the
// pending transfer of a two-phase one.
func (o *benchOptions) transfer(p pair, accountIDs []string, i int) transport.Transfer {
	t := transport.Transfer{ID: o.transferID(i), DebitAccountID: accountIDs[p.debit], CreditAccountID: accountIDs[p.credit],
		Amount: o.amount, Ledger: o.ledger, Code: 1}
	switch {
	case p.kind.twoPhase():
		t.Flags = transport.TransferPending
	case p.kind == kindLeg:
		t.Flags = transport.TransferLinked
	}
	return t
}

// resolution is the post or void of two-phase transfer i. It names the
// accounts, so the router sends it to their shard without a lookup.
func (o *benchOptions) resolution(p pair, accountIDs []string, i int) transport.Transfer {
	t := transport.Transfer{ID: o.resolutionID(i), PendingID: o.transferID(i), DebitAccountID: accountIDs[p.debit],
		CreditAccountID: accountIDs[p.credit], Ledger: o.ledger, Code: 1, Flags: transport.TransferPostPendingTransfer}
	switch p.kind {
	case kindPostPartial:
		t.Amount = o.posted(p.kind)
	case kindVoid:
		t.Flags = transport.TransferVoidPendingTransfer
	}
	return t // amount 0: all of the pending amount
}

// posted is the amount a transfer of kind k moves once applied and resolved.
func (o *benchOptions) posted(k kind) uint64 {
	switch k {
	case kindPostPartial:
		return o.amount / 2
	case kindVoid:
		return 0
	default:
		return o.amount
	}
}

// benchReport is what bench prints.
type benchReport struct {
	RunID                string         `json:"run_id"`
	Seed                 uint64         `json:"seed"`
	Shards               int            `json:"shards"`
	Accounts             int            `json:"accounts"`
	Transfers            int            `json:"transfers"`
	TransfersCrossShard  int            `json:"transfers_cross_shard"`
	TwoPhase             int            `json:"two_phase"`             // transfers sent pending, then resolved
	TwoPhaseVoid         int            `json:"two_phase_void"`        // of them, resolved by a void
	TwoPhasePartial      int            `json:"two_phase_partial"`     // of them, resolved by a post of part
	TwoPhaseCrossShard   int            `json:"two_phase_cross_shard"` // of them, accounts on two shards
	Chains               int            `json:"chains"`                // linked chains sent, each of Legs transfers
	Legs                 int            `json:"legs,omitempty"`
	Events               int            `json:"events"` // transfers (chain legs included), pendings, posts and voids to send
	Batch                int            `json:"batch"`
	Clients              int            `json:"clients"`
	Connections          int            `json:"connections"`
	Coalesce             bool           `json:"coalesce"`      // the clients coalesced concurrent calls
	Requests             int            `json:"requests"`      // calls of the client, each timed for the latencies
	NATSRequests         int            `json:"nats_requests"` // requests the calls took, retries included
	OK                   int            `json:"ok"`
	Exists               int            `json:"exists"`
	Failed               map[string]int `json:"failed"` // by result code, or by why a request got no results
	NoAnswerApplied      int            `json:"no_answer_applied"`
	ElapsedMs            float64        `json:"elapsed_ms"`
	TransfersPerSecond   float64        `json:"transfers_per_second"` // events answered ok or exists
	PairsResolved        int            `json:"pairs_resolved"`       // posts and voids answered ok or exists
	PairsPerSecond       float64        `json:"pairs_per_second"`
	ChainsApplied        int            `json:"chains_applied"` // chains whose every leg answered ok or exists
	ChainsPerSecond      float64        `json:"chains_per_second"`
	LegsPerSecond        float64        `json:"legs_per_second"` // legs of the chains applied
	LatencyMsP50         float64        `json:"latency_ms_p50"`
	LatencyMsP99         float64        `json:"latency_ms_p99"`
	LatencyMsMax         float64        `json:"latency_ms_max"`
	Conservation         string         `json:"conservation"` // PASS or FAIL
	ConservationProblems []string       `json:"conservation_problems,omitempty"`
	Errors               []string       `json:"errors,omitempty"` // what makes the run fail besides the audit
}

// bench is one run: its clients and the accounts it created.
type bench struct {
	o          benchOptions
	timeout    time.Duration
	stderr     io.Writer
	clients    []*client.Client
	accountIDs []string
}

func (a *app) bench(ctx context.Context, o benchOptions) error {
	ctx, cancel := a.guard(ctx)
	defer cancel()
	b := &bench{o: o, timeout: a.timeout, stderr: a.stderr}
	conns := make([]*nats.Conn, min(o.clients, benchConnsMax))
	for i := range conns {
		nc, err := a.dial()
		if err != nil {
			return err
		}
		defer nc.Close()
		conns[i] = nc
		c := client.New(nc, client.WithPrefix(a.prefix), client.WithCoalescing(o.coalesce))
		defer c.Close() // before nc.Close: defers run last first
		b.clients = append(b.clients, c)
	}
	if err := a.probe(ctx, conns[0]); err != nil {
		return a.explain(ctx, conns[0], err)
	}
	b.accountIDs = make([]string, o.accounts)
	for i := range b.accountIDs {
		b.accountIDs[i] = o.accountID(i)
	}

	shards, shardOf, err := b.shards(ctx)
	if err != nil {
		return a.explain(ctx, conns[0], err)
	}
	pairs, err := genPairs(rand.New(rand.NewPCG(o.seed, 0)), shardOf, o.mix())
	if err != nil {
		return err
	}
	if err := b.createAccounts(ctx); err != nil {
		return a.explain(ctx, conns[0], err)
	}
	sentBefore := b.requestsSent()
	run := b.sendTransfers(ctx, pairs)
	run.natsRequests = b.requestsSent() - sentBefore

	r := run.report(o)
	r.Shards, r.Connections = shards, len(conns)
	r.count(pairs, shardOf)
	r.Errors = append(refusedOnOneShard(pairs, run.codes), r.countChains(pairs, run)...)
	if ctx.Err() != nil {
		// Stopped (Ctrl-C): say what ran. The audit would need the
		// cluster's answers to every request in flight.
		r.Conservation = "not checked (interrupted)"
		if err := a.print(r, func(w io.Writer) { benchTable(w, r) }); err != nil {
			return err
		}
		return fmt.Errorf("interrupted after %.1fs: %w", run.elapsed.Seconds(), context.Cause(ctx))
	}
	problems, noAnswerApplied, err := b.audit(ctx, pairs, run)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	r.NoAnswerApplied, r.Conservation = noAnswerApplied, "PASS"
	if len(problems) > 0 {
		r.Conservation = "FAIL"
		if len(problems) > problemsShownMax {
			problems = append(problems[:problemsShownMax], fmt.Sprintf("and %d more", len(problems)-problemsShownMax))
		}
		r.ConservationProblems = problems
	}
	if err := a.print(r, func(w io.Writer) { benchTable(w, r) }); err != nil {
		return err
	}
	if len(problems) > 0 || len(r.Errors) > 0 {
		return errReported
	}
	return nil
}

// shards returns the cluster's shard count and each bench account's shard,
// from the cluster status. A provider is refused the status: then the
// shards are unknown (0, every account on "shard 0"), and the options that
// place accounts on shards are refused.
func (b *bench) shards(ctx context.Context) (int, []int32, error) {
	sctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	st, err := b.clients[0].Status(sctx)
	var e *transport.Error
	switch {
	case errors.As(err, &e) && e.Code == transport.ErrUnauthorizedCode:
		if b.o.crossShard >= 0 || b.o.twoPhaseCross > 0 || b.o.linkedCross > 0 {
			return 0, nil, fmt.Errorf("--cross-shard, --two-phase-cross-shard and --linked-cross-shard need the cluster's shards, and its status is refused to this connection (%w): a provider's bench places accounts regardless of shards", err)
		}
		fmt.Fprintln(b.stderr, "cluster status refused (a provider): shards unknown, accounts placed regardless of them")
		return 0, make([]int32, len(b.accountIDs)), nil
	case err != nil:
		return 0, nil, err
	}
	shardOf, err := accountShards(st, b.accountIDs)
	return len(st.Shards), shardOf, err
}

// requestsSent is the NATS requests the bench's clients have sent.
func (b *bench) requestsSent() int {
	n := uint64(0)
	for _, c := range b.clients {
		n += c.Stats().Requests
	}
	return int(n)
}

// count fills in how many transfers of each kind the run sent.
func (r *benchReport) count(pairs []pair, shardOf []int32) {
	for _, p := range pairs {
		if shardOf[p.debit] != shardOf[p.credit] {
			r.TransfersCrossShard++
		}
		switch p.kind {
		case kindVoid:
			r.TwoPhaseVoid++
		case kindPostPartial:
			r.TwoPhasePartial++
		}
		if p.kind.twoPhase() {
			r.TwoPhase++
			if shardOf[p.debit] != shardOf[p.credit] {
				r.TwoPhaseCrossShard++
			}
		}
		if p.kind == kindLegLast {
			r.Chains++
		}
	}
	r.Events = r.Transfers + r.TwoPhase
}

// refusedOnOneShard fails the run if the cluster refused a pending transfer
// or a chain's leg with flags_invalid: the bench put all the accounts of
// each on one shard (but for --two-phase-cross-shard and
// --linked-cross-shard, which the cluster serves across shards), so the
// shards it read from the cluster status are wrong, or the cluster does not
// serve two-phase transfers or chains.
func refusedOnOneShard(pairs []pair, codes []uint8) []string {
	var errs []string
	for _, c := range []struct {
		what, why string
		is        func(kind) bool
	}{
		{"pending transfers", "the bench put all the accounts of each on one shard", kind.twoPhase},
		{"legs of linked chains", "the bench put all the accounts of each chain on one shard, or made its legs plain transfers across shards (--linked-cross-shard)", kind.inChain},
	} {
		n, first := 0, -1
		for i, p := range pairs {
			if c.is(p.kind) && codes[i] == uint8(transport.CodeFlagsInvalid) {
				if n++; first < 0 {
					first = i
				}
			}
		}
		if n > 0 {
			errs = append(errs, fmt.Sprintf("%d %s refused flags_invalid (the first is transfer %d), though %s", n, c.what, first, c.why))
		}
	}
	return errs
}

// countChains counts the chains whose every leg took effect, and fails the
// run for each chain answered in part: some legs applied, some not.
func (r *benchReport) countChains(pairs []pair, run *sendRun) (errs []string) {
	inPart, first, legs := 0, -1, r.Legs
	for last, p := range pairs {
		if p.kind != kindLegLast {
			continue
		}
		n := 0
		for _, c := range run.codes[last+1-legs : last+1] {
			if applied(c) {
				n++
			}
		}
		switch {
		case n == legs:
			r.ChainsApplied++
		case n > 0:
			if inPart++; first < 0 {
				first = last + 1 - legs
			}
		}
	}
	if run.elapsed > 0 {
		r.ChainsPerSecond = float64(r.ChainsApplied) / run.elapsed.Seconds()
		r.LegsPerSecond = float64(r.ChainsApplied*r.Legs) / run.elapsed.Seconds()
	}
	if inPart > 0 {
		errs = append(errs, fmt.Sprintf("%d linked chains answered in part, some legs ok and others not (the first starts at transfer %d)", inPart, first))
	}
	return errs
}

// parallel calls fn for batches 0..n-1 from o.clients goroutines, each batch
// under its own --timeout, and returns ctx's error if it stopped early.
func (b *bench) parallel(ctx context.Context, n int, fn func(ctx context.Context, c *client.Client, worker, batch int)) error {
	var next atomic.Int64
	b.workers(n, func(c *client.Client, w int) {
		for ctx.Err() == nil {
			i := int(next.Add(1) - 1)
			if i >= n {
				return
			}
			bctx, cancel := context.WithTimeout(ctx, b.timeout)
			fn(bctx, c, w, i)
			cancel()
		}
	})
	return ctx.Err()
}

// workers runs fn on min(o.clients, n) goroutines and waits for them.
// Worker w uses client w mod len(clients), spreading the load over them.
func (b *bench) workers(n int, fn func(c *client.Client, worker int)) {
	var wg sync.WaitGroup
	for w := range min(b.o.clients, n) {
		wg.Go(func() { fn(b.clients[w%len(b.clients)], w) })
	}
	wg.Wait()
}

func batches(n, size int) int { return (n + size - 1) / size }

// createAccounts creates the bench's accounts, with no limit flags, and
// fails unless every one is ok (or exists: created by a retried attempt).
func (b *bench) createAccounts(ctx context.Context) error {
	start := time.Now()
	n := batches(len(b.accountIDs), transport.BatchEventsMax)
	errs := make([]error, n)
	err := b.parallel(ctx, n, func(ctx context.Context, c *client.Client, _, i int) {
		ids := b.accountIDs[i*transport.BatchEventsMax : min((i+1)*transport.BatchEventsMax, len(b.accountIDs))]
		accounts := make([]transport.Account, len(ids))
		for j, id := range ids {
			accounts[j] = transport.Account{ID: id, Ledger: b.o.ledger, Code: 1}
		}
		results, err := c.CreateAccounts(ctx, accounts)
		if err != nil {
			errs[i] = err
			return
		}
		for _, r := range results {
			if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
				errs[i] = fmt.Errorf("account %s: %s", ids[r.Index], r.Code)
				return
			}
		}
	})
	if err := errors.Join(append(errs, err)...); err != nil {
		return fmt.Errorf("create accounts: %w", err)
	}
	fmt.Fprintf(b.stderr, "created %d accounts in %v\n", len(b.accountIDs), time.Since(start).Round(time.Millisecond))
	return nil
}

// sendRun is what sending the transfers measured.
type sendRun struct {
	codes []uint8 // per transfer: the transport.Code of it or its pending transfer, or codeNoAnswer
	// resolutionCodes holds, per two-phase transfer, the code of its post or
	// void, or codeNoAnswer (also when it was not sent: its pending failed).
	resolutionCodes []uint8
	noAnswer        map[string]int // events without a result, by why their request failed
	latencies       []time.Duration
	elapsed         time.Duration
	natsRequests    int // NATS requests sent, retries included
}

// sendTransfers sends pairs from o.clients workers, each request under its
// own --timeout. A worker's request holds up to --batch events: first the
// post or void of each pending transfer of its previous request, then the
// next transfers not yet taken by any worker, in whole blocks of --legs
// with --linked so that no request cuts a chain. A pending transfer whose
// request got no answer may have been applied: it is resolved all the same
// (a post of one never applied answers pending_transfer_not_found).
func (b *bench) sendTransfers(ctx context.Context, pairs []pair) *sendRun {
	run := &sendRun{codes: make([]uint8, len(pairs)), resolutionCodes: make([]uint8, len(pairs)), noAnswer: map[string]int{}}
	for i := range run.codes {
		run.codes[i], run.resolutionCodes[i] = codeNoAnswer, codeNoAnswer
	}
	var mu sync.Mutex // guards run.noAnswer
	var next atomic.Int64
	var counts sendCounts
	latencies := make([][]time.Duration, b.o.clients) // one per worker: no lock per request
	block := b.o.mix().chainLegs()                    // chains start at multiples of it

	start := time.Now()
	stop := progress(b.stderr, start, &counts, slices.ContainsFunc(pairs, func(p pair) bool { return p.kind.twoPhase() }),
		slices.ContainsFunc(pairs, func(p pair) bool { return p.kind.inChain() }))
	b.workers(len(pairs), func(c *client.Client, w int) {
		var open []int // this worker's pending transfers, to resolve in its next request
		var ts []transport.Transfer
		for ctx.Err() == nil {
			ts = ts[:0]
			for _, i := range open {
				ts = append(ts, b.o.resolution(pairs[i], b.accountIDs, i))
			}
			take := (b.o.batch - len(open)) / block * block
			lo := min(int(next.Add(int64(take)))-take, len(pairs))
			hi := min(lo+take, len(pairs))
			for i := lo; i < hi; i++ {
				ts = append(ts, b.o.transfer(pairs[i], b.accountIDs, i))
			}
			if len(ts) == 0 {
				return
			}
			bctx, cancel := context.WithTimeout(ctx, b.timeout)
			sent := time.Now()
			results, err := c.CreateTransfers(bctx, ts)
			latencies[w] = append(latencies[w], time.Since(sent))
			cancel()
			for _, r := range results {
				if e := int(r.Index); e < len(open) {
					run.resolutionCodes[open[e]] = uint8(r.Code)
					if applied(uint8(r.Code)) {
						counts.resolved.Add(1)
					}
				} else {
					run.codes[lo+e-len(open)] = uint8(r.Code)
				}
			}
			if err != nil {
				mu.Lock()
				run.noAnswer[whyNoAnswer(err)] += len(ts) - len(results)
				mu.Unlock()
			}
			open = open[:0]
			for i := lo; i < hi; i++ {
				switch {
				case pairs[i].kind.twoPhase() && (applied(run.codes[i]) || run.codes[i] == codeNoAnswer):
					open = append(open, i)
				case pairs[i].kind == kindLegLast && !slices.ContainsFunc(run.codes[i+1-b.o.legs:i+1], notApplied):
					counts.chains.Add(1)
				}
			}
			counts.done.Add(int64(len(ts)))
			counts.requests.Add(1)
		}
	})
	run.elapsed = time.Since(start)
	stop()
	run.latencies = slices.Concat(latencies...)
	slices.Sort(run.latencies)
	return run
}

// applied reports whether code says its event took effect.
func applied(code uint8) bool {
	return code == uint8(transport.CodeOK) || code == uint8(transport.CodeExists)
}

func notApplied(code uint8) bool { return !applied(code) }

// whyNoAnswer names the failure of a whole request for the report.
func whyNoAnswer(err error) string {
	var e *transport.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer within --timeout"
	case errors.Is(err, context.Canceled):
		return "no answer: interrupted"
	case errors.As(err, &e):
		return "request " + e.Code
	default:
		return err.Error()
	}
}

// sendCounts are what sending has done so far, for the progress lines:
// events answered, two-phase transfers resolved, chains applied, requests.
type sendCounts struct{ done, resolved, chains, requests atomic.Int64 }

// progress prints a line a second on w until stop is called; with twoPhase
// it also shows how many two-phase transfers were resolved, with linked how
// many chains were applied.
func progress(w io.Writer, start time.Time, c *sendCounts, twoPhase, linked bool) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case now := <-tick.C:
				s := now.Sub(start).Seconds()
				done, resolved, chains := c.done.Load(), c.resolved.Load(), c.chains.Load()
				line := fmt.Sprintf("%6.0fs  %10d transfers  %8.0f/s  %8d requests", s, done, float64(done)/s, c.requests.Load())
				if twoPhase {
					line += fmt.Sprintf("  %10d pairs  %8.0f/s", resolved, float64(resolved)/s)
				}
				if linked {
					line += fmt.Sprintf("  %10d chains  %8.0f/s", chains, float64(chains)/s)
				}
				fmt.Fprintln(w, line)
			}
		}
	})
	return func() { close(quit); wg.Wait() }
}

func (run *sendRun) report(o benchOptions) benchReport {
	r := benchReport{RunID: o.idPrefix, Seed: o.seed, Accounts: o.accounts, Transfers: o.transfers, Batch: o.batch,
		Clients: o.clients, Coalesce: o.coalesce, Requests: len(run.latencies), NATSRequests: run.natsRequests,
		Failed: map[string]int{}, ElapsedMs: ms(run.elapsed),
		LatencyMsP50: ms(percentile(run.latencies, 0.50)), LatencyMsP99: ms(percentile(run.latencies, 0.99)),
		LatencyMsMax: ms(percentile(run.latencies, 1))}
	if o.linked > 0 {
		r.Legs = o.legs
	}
	for _, c := range slices.Concat(run.codes, run.resolutionCodes) {
		switch c {
		case uint8(transport.CodeOK):
			r.OK++
		case uint8(transport.CodeExists):
			r.Exists++ // a retry of an event its first attempt applied
		case codeNoAnswer:
		default:
			r.Failed[transport.Code(c).String()]++
		}
	}
	for _, c := range run.resolutionCodes {
		if applied(c) {
			r.PairsResolved++
		}
	}
	for why, n := range run.noAnswer {
		r.Failed[why] += n
	}
	if run.elapsed > 0 {
		r.TransfersPerSecond = float64(r.OK+r.Exists) / run.elapsed.Seconds()
		r.PairsPerSecond = float64(r.PairsResolved) / run.elapsed.Seconds()
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile returns the nearest-rank p-quantile (0 < p <= 1) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// audit checks conservation over the bench's accounts: each account's
// posted balances equal the replay of the transfers that took effect,
// nothing is left pending, and Σdebits_posted == Σcredits_posted. An
// event whose request got no answer may still have taken effect, and a
// two-phase transfer whose post or void was not ok may still be open: each
// such transfer (the pending one, for two-phase) is looked up.
func (b *bench) audit(ctx context.Context, pairs []pair, run *sendRun) (problems []string, noAnswerApplied int, err error) {
	posted := make([]uint64, len(pairs)) // what each transfer moved, by the replay
	var unknown []string
	for i, p := range pairs {
		code := run.codes[i]
		switch {
		case !p.kind.twoPhase() && applied(code):
			posted[i] = b.o.amount
		case applied(run.resolutionCodes[i]): // its pending transfer was applied, or the post or void would fail
			posted[i] = b.o.posted(p.kind)
		case applied(code) || code == codeNoAnswer:
			unknown = append(unknown, b.o.transferID(i))
		}
	}
	if len(unknown) > 0 {
		found, err := lookupAll(ctx, b, unknown, (*client.Client).LookupTransfers)
		if err != nil {
			return nil, 0, err
		}
		for _, t := range found {
			n, ok := strings.CutPrefix(t.ID, b.o.idPrefix+"-t")
			i, err := strconv.Atoi(n)
			if !ok || err != nil || i < 0 || i >= len(pairs) {
				return nil, 0, fmt.Errorf("lookup of bench transfers returned %q", t.ID)
			}
			var problem string
			posted[i], problem = b.replayLookedUp(pairs[i].kind, t)
			if problem != "" {
				problems = append(problems, problem)
			}
			resolved := t.State == transport.StatePosted || t.State == transport.StateVoided
			if resolved && (!pairs[i].kind.twoPhase() || run.resolutionCodes[i] == codeNoAnswer) {
				noAnswerApplied++
			}
		}
	}
	problems = append(problems, b.chainsAppliedInPart(pairs, posted)...)
	accounts, err := lookupAll(ctx, b, b.accountIDs, (*client.Client).LookupAccounts)
	if err != nil {
		return nil, 0, err
	}
	return append(problems, checkBalances(b.accountIDs, accounts, pairs, posted)...), noAnswerApplied, nil
}

// chainsAppliedInPart names each chain of which the replay (answers, then
// lookups) finds some legs applied and others not.
func (b *bench) chainsAppliedInPart(pairs []pair, posted []uint64) []string {
	var problems []string
	for last, p := range pairs {
		if p.kind != kindLegLast {
			continue
		}
		first, n := last+1-b.o.legs, 0
		for _, amount := range posted[first : last+1] {
			if amount > 0 {
				n++
			}
		}
		if n > 0 && n < b.o.legs {
			problems = append(problems, fmt.Sprintf("chain %s..%s: %d of its %d legs applied, though a chain succeeds or fails as one",
				b.o.transferID(first), b.o.transferID(last), n, b.o.legs))
		}
	}
	return problems
}

// replayLookedUp returns what transfer t, of kind k, moved by its state, or
// why the replay cannot tell. Only the bench resolves its pending transfers,
// so a posted one moved what the bench's post asked for.
func (b *bench) replayLookedUp(k kind, t transport.Transfer) (posted uint64, problem string) {
	switch {
	case t.State == transport.StatePending:
		return 0, fmt.Sprintf("transfer %s: still pending at the audit, though the bench sent its post or void", t.ID)
	case t.State != transport.StatePosted:
		return 0, "" // voided or expired
	case !k.twoPhase():
		return b.o.amount, ""
	case k == kindVoid:
		return 0, fmt.Sprintf("transfer %s: posted, though the bench voided it", t.ID)
	default:
		return b.o.posted(k), ""
	}
}

// lookupAll looks ids up in batches spread over the bench's clients.
func lookupAll[T any](ctx context.Context, b *bench, ids []string, lookup func(*client.Client, context.Context, []string) ([]T, error)) ([]T, error) {
	n := batches(len(ids), transport.BatchEventsMax)
	parts, errs := make([][]T, n), make([]error, n)
	err := b.parallel(ctx, n, func(ctx context.Context, c *client.Client, _, i int) {
		parts[i], errs[i] = lookup(c, ctx, ids[i*transport.BatchEventsMax:min((i+1)*transport.BatchEventsMax, len(ids))])
	})
	if err := errors.Join(append(errs, err)...); err != nil {
		return nil, err
	}
	return slices.Concat(parts...), nil
}

// checkBalances compares accounts (looked up by ids) with the balances the
// transfers of pairs should have given them: transfer i moved posted[i].
func checkBalances(ids []string, accounts []transport.Account, pairs []pair, posted []uint64) []string {
	type balance struct{ debits, credits uint64 }
	want := make([]balance, len(ids))
	for i, p := range pairs {
		want[p.debit].debits += posted[i]
		want[p.credit].credits += posted[i]
	}
	byID := make(map[string]*transport.Account, len(accounts))
	for i := range accounts {
		byID[accounts[i].ID] = &accounts[i]
	}
	var problems []string
	var debits, credits uint64
	for i, id := range ids {
		a := byID[id]
		if a == nil {
			problems = append(problems, fmt.Sprintf("account %s: not found", id))
			continue
		}
		debits += a.DebitsPosted
		credits += a.CreditsPosted
		if a.DebitsPosted != want[i].debits || a.CreditsPosted != want[i].credits {
			problems = append(problems, fmt.Sprintf("account %s: debits_posted %d credits_posted %d, want %d %d",
				id, a.DebitsPosted, a.CreditsPosted, want[i].debits, want[i].credits))
		}
		if a.DebitsPending != 0 || a.CreditsPending != 0 {
			problems = append(problems, fmt.Sprintf("account %s: debits_pending %d credits_pending %d left after every transfer was answered and resolved",
				id, a.DebitsPending, a.CreditsPending))
		}
	}
	if debits != credits {
		problems = append(problems, fmt.Sprintf("Σdebits_posted %d != Σcredits_posted %d", debits, credits))
	}
	return problems
}

func benchTable(w io.Writer, r benchReport) {
	fmt.Fprintf(w, "run\t%s (seed %d)\n", r.RunID, r.Seed)
	if r.Shards > 0 {
		fmt.Fprintf(w, "cluster\t%d shards\n", r.Shards)
	} else {
		fmt.Fprintf(w, "cluster\tshards unknown (status refused to a provider): cross-shard counts not known\n")
	}
	cross := fmt.Sprintf(" (%d cross-shard)", r.TransfersCrossShard)
	if r.Shards == 0 {
		cross = "" // the shards are unknown
	}
	fmt.Fprintf(w, "load\t%d accounts, %d transfers%s, %d per request, %d clients on %d connections\n",
		r.Accounts, r.Transfers, cross, r.Batch, r.Clients, r.Connections)
	if r.TwoPhase > 0 {
		fmt.Fprintf(w, "two-phase\t%d pending (%d cross-shard), then %d posted whole, %d posted in part, %d voided: %d events\n",
			r.TwoPhase, r.TwoPhaseCrossShard, r.TwoPhase-r.TwoPhasePartial-r.TwoPhaseVoid, r.TwoPhasePartial, r.TwoPhaseVoid, r.Events)
	}
	if r.Chains > 0 {
		fmt.Fprintf(w, "linked\t%d chains of %d legs: %d of the transfers\n", r.Chains, r.Legs, r.Chains*r.Legs)
	}
	coalesced := "coalescing concurrent calls"
	if !r.Coalesce {
		coalesced = "coalescing off"
	}
	fmt.Fprintf(w, "requests\t%d calls in %d NATS requests (%s)\n", r.Requests, r.NATSRequests, coalesced)
	fmt.Fprintf(w, "ok\t%d\n", r.OK)
	fmt.Fprintf(w, "exists\t%d\n", r.Exists)
	for _, why := range slices.Sorted(maps.Keys(r.Failed)) {
		fmt.Fprintf(w, "failed\t%d %s\n", r.Failed[why], why)
	}
	if r.NoAnswerApplied > 0 {
		fmt.Fprintf(w, "no answer, applied\t%d (found by lookup)\n", r.NoAnswerApplied)
	}
	fmt.Fprintf(w, "elapsed\t%.3fs\n", r.ElapsedMs/1000)
	var each []string
	if r.TwoPhase > 0 {
		each = append(each, "each pending, post and void one")
	}
	if r.Chains > 0 {
		each = append(each, "each leg one")
	}
	if len(each) > 0 {
		fmt.Fprintf(w, "transfers/s\t%.0f (%s)\n", r.TransfersPerSecond, strings.Join(each, ", "))
	} else {
		fmt.Fprintf(w, "transfers/s\t%.0f\n", r.TransfersPerSecond)
	}
	if r.TwoPhase > 0 {
		fmt.Fprintf(w, "pairs/s\t%.0f (%d two-phase transfers resolved)\n", r.PairsPerSecond, r.PairsResolved)
	}
	if r.Chains > 0 {
		fmt.Fprintf(w, "chains/s\t%.0f (%d of %d chains applied, every leg ok or exists; %.0f legs/s)\n",
			r.ChainsPerSecond, r.ChainsApplied, r.Chains, r.LegsPerSecond)
	}
	fmt.Fprintf(w, "latency p50\t%.3fms\n", r.LatencyMsP50)
	fmt.Fprintf(w, "latency p99\t%.3fms\n", r.LatencyMsP99)
	fmt.Fprintf(w, "latency max\t%.3fms\n", r.LatencyMsMax)
	fmt.Fprintf(w, "conservation\t%s\n", r.Conservation)
	for _, p := range r.ConservationProblems {
		fmt.Fprintf(w, "\t%s\n", p)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "error\t%s\n", e)
	}
}
