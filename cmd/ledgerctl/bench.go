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
)

// benchOptions are the flags of `bench`.
type benchOptions struct {
	accounts, transfers, batch, clients int
	crossShard                          float64
	ledger                              uint32
	amount, seed                        uint64
	idPrefix                            string
}

func newBenchCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load the cluster with transfers, measure throughput and latency, audit conservation",
		Long: `Create --accounts accounts without limit flags (so no transfer fails for
funds), send --transfers transfers between them in batches of --batch from
--clients concurrent requesters, report throughput and request latency, then
look up every account and check its posted balances against the transfers that
were applied, and that debits equal credits. Exit 1 if that audit fails.`,
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
	f.Float64Var(&o.crossShard, "cross-shard", -1, "fraction 0..1 of transfers between accounts on different shards (-1: uniformly random accounts)")
	f.Uint32Var(&o.ledger, "ledger", 1, "ledger of the accounts and transfers")
	f.Uint64Var(&o.amount, "amount", 1, "amount of every transfer")
	f.Uint64Var(&o.seed, "seed", 0, "seed of the account pairs (0: random, printed)")
	f.StringVar(&o.idPrefix, "id-prefix", "", "prefix of the ids created (default: a random run id); reuse one and the audit fails, as it needs fresh accounts")
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
		o.idPrefix = fmt.Sprintf("bench-%08x", rand.Uint32())
	}
	for _, id := range []string{o.accountID(o.accounts), o.transferID(o.transfers)} {
		if !transport.ValidID(id) {
			return fmt.Errorf("--id-prefix %q makes invalid ids such as %q", o.idPrefix, id)
		}
	}
	return nil
}

func (o *benchOptions) accountID(i int) string  { return o.idPrefix + "-a" + strconv.Itoa(i) }
func (o *benchOptions) transferID(i int) string { return o.idPrefix + "-t" + strconv.Itoa(i) }

// benchReport is what bench prints.
type benchReport struct {
	RunID                string         `json:"run_id"`
	Seed                 uint64         `json:"seed"`
	Shards               int            `json:"shards"`
	Accounts             int            `json:"accounts"`
	Transfers            int            `json:"transfers"`
	TransfersCrossShard  int            `json:"transfers_cross_shard"`
	Batch                int            `json:"batch"`
	Clients              int            `json:"clients"`
	Connections          int            `json:"connections"`
	Requests             int            `json:"requests"`
	OK                   int            `json:"ok"`
	Exists               int            `json:"exists"`
	Failed               map[string]int `json:"failed"` // by result code, or by why a request got no results
	NoAnswerApplied      int            `json:"no_answer_applied"`
	ElapsedMs            float64        `json:"elapsed_ms"`
	TransfersPerSecond   float64        `json:"transfers_per_second"`
	LatencyMsP50         float64        `json:"latency_ms_p50"`
	LatencyMsP99         float64        `json:"latency_ms_p99"`
	LatencyMsMax         float64        `json:"latency_ms_max"`
	Conservation         string         `json:"conservation"` // PASS or FAIL
	ConservationProblems []string       `json:"conservation_problems,omitempty"`
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
	b := &bench{o: o, timeout: a.timeout, stderr: a.stderr}
	conns := make([]*nats.Conn, min(o.clients, benchConnsMax))
	for i := range conns {
		nc, err := a.dial()
		if err != nil {
			return err
		}
		defer nc.Close()
		conns[i] = nc
		b.clients = append(b.clients, a.client(nc))
	}
	b.accountIDs = make([]string, o.accounts)
	for i := range b.accountIDs {
		b.accountIDs[i] = o.accountID(i)
	}

	sctx, cancel := context.WithTimeout(ctx, a.timeout)
	st, err := b.clients[0].Status(sctx)
	cancel()
	if err != nil {
		return err
	}
	shardOf, err := accountShards(st, b.accountIDs)
	if err != nil {
		return err
	}
	pairs, err := genPairs(rand.New(rand.NewPCG(o.seed, 0)), shardOf, o.transfers, o.crossShard)
	if err != nil {
		return err
	}
	if err := b.createAccounts(ctx); err != nil {
		return err
	}
	run := b.sendTransfers(ctx, pairs)
	if err := ctx.Err(); err != nil {
		return err
	}

	r := run.report(o)
	r.Shards, r.Connections = len(st.Shards), len(conns)
	for _, p := range pairs {
		if shardOf[p.debit] != shardOf[p.credit] {
			r.TransfersCrossShard++
		}
	}
	problems, noAnswerApplied, err := b.audit(ctx, pairs, run.codes)
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
	if len(problems) > 0 {
		return errReported
	}
	return nil
}

// parallel calls fn for batches 0..n-1 from o.clients goroutines, each batch
// under its own --timeout, and returns ctx's error if it stopped early.
// Worker w uses client w mod len(clients), spreading the load over them.
func (b *bench) parallel(ctx context.Context, n int, fn func(ctx context.Context, c *client.Client, worker, batch int)) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range min(b.o.clients, n) {
		wg.Go(func() {
			c := b.clients[w%len(b.clients)]
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
	}
	wg.Wait()
	return ctx.Err()
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
	codes     []uint8        // per transfer: its transport.Code, or codeNoAnswer
	noAnswer  map[string]int // transfers without a result, by why their request failed
	latencies []time.Duration
	elapsed   time.Duration
}

func (b *bench) sendTransfers(ctx context.Context, pairs []pair) *sendRun {
	run := &sendRun{codes: make([]uint8, len(pairs)), noAnswer: map[string]int{}}
	for i := range run.codes {
		run.codes[i] = codeNoAnswer
	}
	var mu sync.Mutex // guards run.noAnswer
	var done, requests atomic.Int64
	latencies := make([][]time.Duration, b.o.clients) // one per worker: no lock per request
	buffers := make([][]transport.Transfer, b.o.clients)

	start := time.Now()
	stop := progress(b.stderr, start, &done, &requests)
	_ = b.parallel(ctx, batches(len(pairs), b.o.batch), func(ctx context.Context, c *client.Client, w, i int) {
		lo, hi := i*b.o.batch, min((i+1)*b.o.batch, len(pairs))
		ts := buffers[w][:0]
		for j := lo; j < hi; j++ {
			ts = append(ts, transport.Transfer{ID: b.o.transferID(j), DebitAccountID: b.accountIDs[pairs[j].debit],
				CreditAccountID: b.accountIDs[pairs[j].credit], Amount: b.o.amount, Ledger: b.o.ledger, Code: 1})
		}
		buffers[w] = ts
		sent := time.Now()
		results, err := c.CreateTransfers(ctx, ts)
		latencies[w] = append(latencies[w], time.Since(sent))
		for _, r := range results {
			run.codes[lo+int(r.Index)] = uint8(r.Code)
		}
		if err != nil {
			mu.Lock()
			run.noAnswer[whyNoAnswer(err)] += len(ts) - len(results)
			mu.Unlock()
		}
		done.Add(int64(len(ts)))
		requests.Add(1)
	})
	run.elapsed = time.Since(start)
	stop()
	run.latencies = slices.Concat(latencies...)
	slices.Sort(run.latencies)
	return run
}

// whyNoAnswer names the failure of a whole request for the report.
func whyNoAnswer(err error) string {
	var e *transport.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer within --timeout"
	case errors.As(err, &e):
		return "request " + e.Code
	default:
		return err.Error()
	}
}

// progress prints a line a second on w until stop is called.
func progress(w io.Writer, start time.Time, done, requests *atomic.Int64) (stop func()) {
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
				fmt.Fprintf(w, "%6.0fs  %10d transfers  %8.0f/s  %8d requests\n", s, done.Load(), float64(done.Load())/s, requests.Load())
			}
		}
	})
	return func() { close(quit); wg.Wait() }
}

func (run *sendRun) report(o benchOptions) benchReport {
	r := benchReport{RunID: o.idPrefix, Seed: o.seed, Accounts: o.accounts, Transfers: o.transfers, Batch: o.batch,
		Clients: o.clients, Requests: len(run.latencies), Failed: map[string]int{}, ElapsedMs: ms(run.elapsed),
		LatencyMsP50: ms(percentile(run.latencies, 0.50)), LatencyMsP99: ms(percentile(run.latencies, 0.99)),
		LatencyMsMax: ms(percentile(run.latencies, 1))}
	for _, c := range run.codes {
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
	for why, n := range run.noAnswer {
		r.Failed[why] += n
	}
	if run.elapsed > 0 {
		r.TransfersPerSecond = float64(r.OK+r.Exists) / run.elapsed.Seconds()
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
// posted balances equal what the applied transfers add up to, nothing is
// left pending, and Σdebits_posted == Σcredits_posted. A transfer whose
// request got no answer may still have been applied: it is looked up.
func (b *bench) audit(ctx context.Context, pairs []pair, codes []uint8) (problems []string, noAnswerApplied int, err error) {
	applied := make([]bool, len(pairs))
	var unknown []string
	for i, c := range codes {
		switch c {
		case uint8(transport.CodeOK), uint8(transport.CodeExists):
			applied[i] = true
		case codeNoAnswer:
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
			if t.State == transport.StatePosted {
				applied[i] = true
				noAnswerApplied++
			}
		}
	}
	accounts, err := lookupAll(ctx, b, b.accountIDs, (*client.Client).LookupAccounts)
	if err != nil {
		return nil, 0, err
	}
	return checkBalances(b.accountIDs, accounts, pairs, applied, b.o.amount), noAnswerApplied, nil
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
// applied transfers of pairs should have given them.
func checkBalances(ids []string, accounts []transport.Account, pairs []pair, applied []bool, amount uint64) []string {
	type balance struct{ debits, credits uint64 }
	want := make([]balance, len(ids))
	for i, p := range pairs {
		if applied[i] {
			want[p.debit].debits += amount
			want[p.credit].credits += amount
		}
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
			problems = append(problems, fmt.Sprintf("account %s: debits_pending %d credits_pending %d left after every transfer was answered",
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
	fmt.Fprintf(w, "cluster\t%d shards\n", r.Shards)
	fmt.Fprintf(w, "load\t%d accounts, %d transfers (%d cross-shard), %d per request, %d clients on %d connections\n",
		r.Accounts, r.Transfers, r.TransfersCrossShard, r.Batch, r.Clients, r.Connections)
	fmt.Fprintf(w, "requests\t%d\n", r.Requests)
	fmt.Fprintf(w, "ok\t%d\n", r.OK)
	fmt.Fprintf(w, "exists\t%d\n", r.Exists)
	for _, why := range slices.Sorted(maps.Keys(r.Failed)) {
		fmt.Fprintf(w, "failed\t%d %s\n", r.Failed[why], why)
	}
	if r.NoAnswerApplied > 0 {
		fmt.Fprintf(w, "no answer, applied\t%d (found by lookup)\n", r.NoAnswerApplied)
	}
	fmt.Fprintf(w, "elapsed\t%.3fs\n", r.ElapsedMs/1000)
	fmt.Fprintf(w, "transfers/s\t%.0f\n", r.TransfersPerSecond)
	fmt.Fprintf(w, "latency p50\t%.3fms\n", r.LatencyMsP50)
	fmt.Fprintf(w, "latency p99\t%.3fms\n", r.LatencyMsP99)
	fmt.Fprintf(w, "latency max\t%.3fms\n", r.LatencyMsMax)
	fmt.Fprintf(w, "conservation\t%s\n", r.Conservation)
	for _, p := range r.ConservationProblems {
		fmt.Fprintf(w, "\t%s\n", p)
	}
}
