package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: 1 µs to 60 s at 3 significant digits. A request slower
// than the top is clamped to it rather than lost, so it still counts in p99.
const (
	histMinMicros = 1
	histMaxMicros = 60_000_000
	histSigFigs   = 3
)

// pair is one transfer: src pays amount 1 to dst. Accounts are indexes
// 0..accounts-1; each system names them its own way.
type pair struct{ src, dst int32 }

// scenario is one workload, run the same way against every system.
type scenario struct {
	name    string
	short   string // its label on the chart
	batch   int    // transfers per request; a system that cannot batch skips batch > 1
	clients int    // concurrent requesters, each with one request in flight
	cross   bool   // ledgerd: src and dst on different shards (others: random)
	hot     bool   // every transfer debits account 0
	// volume multiplies the transfers per scenario: a batched run needs
	// many requests, not a handful, to say something about latency.
	volume int
}

// batchedVolume: the batched scenario sends this many times -transfers.
const batchedVolume = 10

// scenarios lists the workloads in the order of the table.
func scenarios() []scenario {
	return []scenario{
		{name: "batched 1000, 8 clients", short: "batched", batch: 1000, clients: 8, volume: batchedVolume},
		{name: "1 per request, 1 client", short: "1 client", batch: 1, clients: 1},
		{name: "1 per request, 16 clients", short: "16 clients", batch: 1, clients: 16},
		{name: "1 per request, 64 clients", short: "64 clients", batch: 1, clients: 64},
		{name: "100% cross-shard, 16 clients", short: "cross-shard", batch: 1, clients: 16, cross: true},
		{name: "hot account, 16 clients", short: "hot account", batch: 1, clients: 16, hot: true},
	}
}

// system is one server under test, already started and loaded.
type system interface {
	// Name is the system's column in the table.
	Name() string
	// CanBatch says whether send takes more than one pair per request.
	CanBatch() bool
	// Send makes one request that carries every pair of batch and returns
	// once the system acknowledged them as durable; worker is the caller's
	// index, below the scenario's clients. A transfer the system refuses
	// (not enough balance) is an error: the load is sized so none is.
	Send(ctx context.Context, worker int, batch []pair) error
	// Shard gives account i's shard, so that pairs can stay on one shard or
	// cross; a system without shards answers 0.
	Shard(i int32) int
}

// load is how much to send per scenario.
type load struct {
	accounts  int
	transfers int           // per scenario, at most
	duration  time.Duration // per scenario, at most
	seed      uint64
}

// result is one system × scenario: what was sent and how fast.
type result struct {
	system, scenario string
	skipped          string // why it did not run, if it did not
	transfers        int64
	elapsed          time.Duration
	latency          *hdrhistogram.Histogram // per request, µs
}

// perSecond is the throughput in transfers acknowledged per second.
func (r result) perSecond() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.transfers) / r.elapsed.Seconds()
}

// quantile gives the q-th percentile (0..100) of request latency.
func (r result) quantile(q float64) time.Duration {
	if r.latency == nil || r.latency.TotalCount() == 0 {
		return 0
	}
	return time.Duration(r.latency.ValueAtQuantile(q)) * time.Microsecond
}

// genPairs makes n pairs for sc. Pairs stay on one shard unless sc.cross,
// so that only the cross-shard scenario exercises ledgerd's saga.
func genPairs(rng *rand.Rand, shard func(int32) int, l load, sc scenario, n int) []pair {
	byShard := map[int][]int32{}
	for i := range int32(l.accounts) {
		s := shard(i)
		byShard[s] = append(byShard[s], i)
	}
	out := make([]pair, n)
	for k := range out {
		var src int32
		if sc.hot {
			src = 0
		} else {
			src = int32(rng.IntN(l.accounts))
		}
		out[k] = pair{src: src, dst: pickDst(rng, byShard, shard(src), src, sc.cross)}
	}
	return out
}

// pickDst picks an account other than src: on another shard if cross (and
// there is one), else on src's shard.
func pickDst(rng *rand.Rand, byShard map[int][]int32, srcShard int, src int32, cross bool) int32 {
	pool := byShard[srcShard]
	if cross && len(byShard) > 1 {
		for s, ids := range byShard {
			if s != srcShard {
				pool = ids
				break
			}
		}
	}
	for {
		if dst := pool[rng.IntN(len(pool))]; dst != src {
			return dst
		}
	}
}

// run drives sc against sys: sc.clients workers take the next batch of
// pairs until every pair was sent or the duration is up, and record each
// request's latency in their own histogram (merged at the end).
func run(ctx context.Context, sys system, l load, sc scenario) (result, error) {
	r := result{system: sys.Name(), scenario: sc.name}
	if sc.batch > 1 && !sys.CanBatch() {
		r.skipped = "no batch"
		return r, nil
	}
	pairs := genPairs(rand.New(rand.NewPCG(l.seed, uint64(sc.batch*1000+sc.clients))), sys.Shard, l, sc, l.transfers*max(sc.volume, 1))
	ctx, cancel := context.WithTimeout(ctx, l.duration)
	defer cancel()
	var next, done atomic.Int64
	hists := make([]*hdrhistogram.Histogram, sc.clients)
	errs := make([]error, sc.clients)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range sc.clients {
		hists[w] = hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
		wg.Go(func() {
			errs[w] = work(ctx, sys, w, pairs, sc.batch, &next, &done, hists[w])
		})
	}
	wg.Wait()
	r.elapsed, r.transfers = time.Since(start), done.Load()
	r.latency = hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
	for _, h := range hists {
		r.latency.Merge(h)
	}
	for _, err := range errs {
		if err != nil {
			return r, fmt.Errorf("%s, %s: %w", sys.Name(), sc.name, err)
		}
	}
	return r, nil
}

// work is one client's loop, bounded by the pairs and by ctx.
func work(ctx context.Context, sys system, w int, pairs []pair, batch int, next, done *atomic.Int64, h *hdrhistogram.Histogram) error {
	for ctx.Err() == nil {
		lo := int(next.Add(int64(batch))) - batch
		if lo >= len(pairs) {
			return nil
		}
		b := pairs[lo:min(lo+batch, len(pairs))]
		t0 := time.Now()
		if err := sys.Send(ctx, w, b); err != nil {
			if ctx.Err() != nil {
				return nil // the duration ran out mid-request: not counted
			}
			return err
		}
		recordMicros(h, time.Since(t0))
		done.Add(int64(len(b)))
	}
	return nil
}

// recordMicros records d in h, clamped into h's range.
func recordMicros(h *hdrhistogram.Histogram, d time.Duration) {
	us := max(d.Microseconds(), histMinMicros)
	_ = h.RecordValue(min(us, histMaxMicros)) // in range: cannot fail
}
