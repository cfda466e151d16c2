// Command simrun runs the deterministic simulator: one seed with a readable
// trace, or a sweep of many seeds.
//
//	go run ./sim/cmd/simrun -seed 42 -trace          # replay one seed
//	go run ./sim/cmd/simrun -seeds 100000 -budget 10m # a long run
//	go run ./sim/cmd/simrun -seeds 500 -mutation void-on-timer
package main

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/ledgerd/ledgerd/sim"
)

func main() {
	seed := flag.String("seed", "", "run this one seed (decimal or 0x hex)")
	trace := flag.Bool("trace", false, "with -seed: print the run's trace")
	seeds := flag.Int("seeds", 0, "run this many seeds (a sweep)")
	base := flag.String("base", "", "sweep from this base (default: from the git commit)")
	budget := flag.Duration("budget", 0, "stop a sweep after this long")
	workers := flag.Int("workers", 0, "parallel worlds (default GOMAXPROCS)")
	mutation := flag.String("mutation", "", "inject a known bug into the leader-side model")
	mutationOnly := flag.Bool("mutation-only", false, "with -mutation: count only seeds that pass without it")
	requestIDs := flag.Bool("request-ids", true, "the router gives every try a request id, as the router does; one answer per request is checked")
	showReached := flag.Bool("reached", false, "with a sweep: print how often each two-phase outcome was reached")
	flag.Parse()
	mut, err := sim.ParseMutation(*mutation)
	if err != nil {
		fatal(err)
	}
	if *seed != "" {
		s, err := strconv.ParseUint(*seed, 0, 64)
		if err != nil {
			fatal(err)
		}
		o := sim.Options{Seed: s, Mutation: mut, RequestIDs: *requestIDs}
		if *trace {
			o.Trace = os.Stdout
		}
		r := sim.Run(o)
		fmt.Printf("seed %d: %d events, %s simulated, %d entries, %d requests, %d transfers (%d cross-shard)\n",
			r.Seed, r.Stats.Events, time.Duration(r.Stats.SimTime), r.Stats.Entries, r.Stats.Requests, r.Stats.Transfers, r.Stats.CrossShard)
		fmt.Printf("  %+v\n", r.Stats)
		if r.Err != nil {
			fmt.Printf("FAIL seed %d\n  %s\n  %v\n", r.Seed, r.Params, r.Err)
			os.Exit(1)
		}
		fmt.Printf("ok seed %d digest %016x\n", r.Seed, r.Digest)
		return
	}
	if *seeds == 0 && *budget == 0 {
		fatal(fmt.Errorf("give -seed S, or -seeds N and/or -budget D"))
	}
	var b uint64
	from := "-base"
	if *base != "" {
		if b, err = strconv.ParseUint(*base, 0, 64); err != nil {
			fatal(err)
		}
	} else {
		b, from = sim.CommitBase()
	}
	fmt.Printf("sweep from base %d (%s), mutation %q\n", b, from, mut)
	start, done := time.Now(), 0
	byCheck := map[string]int{}
	reached := map[string]int{}
	onResult := func(r sim.Result) {
		done++
		for k, v := range r.Reached {
			reached[k] += v
		}
		if r.Err != nil {
			fmt.Printf("FAIL seed %d: %v\n  replay: go run ./sim/cmd/simrun -seed %d -trace%s\n", r.Seed, r.Err, r.Seed, map[bool]string{true: " -request-ids"}[*requestIDs])
			if f, ok := r.Err.(*sim.Failure); ok {
				byCheck[f.Check]++
			}
		}
		if done%10000 == 0 {
			fmt.Printf("... %d seeds in %s\n", done, time.Since(start).Round(time.Second))
		}
	}
	res := sim.Sweep(sim.SweepOptions{Base: b, Count: *seeds, Budget: *budget, Workers: *workers, Mutation: mut, RequestIDs: *requestIDs,
		MutationOnly: *mutationOnly, OnResult: onResult})
	if *showReached {
		for _, k := range slices.Sorted(maps.Keys(reached)) {
			fmt.Printf("reached %-55s %d\n", k, reached[k])
		}
	}
	for _, c := range slices.Sorted(maps.Keys(byCheck)) {
		fmt.Printf("failures by check: %s %d\n", c, byCheck[c])
	}
	if len(res.FailsAnyway) > 0 {
		fmt.Printf("%d seeds failed with and without the mutation (not counted)\n", len(res.FailsAnyway))
	}
	fmt.Printf("%d seeds in %s (%.1f seeds/s, %.0f events/s), %d failures\n", res.Ran, res.Elapsed.Round(time.Millisecond),
		float64(res.Ran)/res.Elapsed.Seconds(), float64(res.Events)/res.Elapsed.Seconds(), len(res.Failures))
	if len(res.Failures) > 0 {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "simrun:", err)
	os.Exit(2)
}
