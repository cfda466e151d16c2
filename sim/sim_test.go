package sim

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Flags. The defaults keep `go test ./...` quick; CI passes a budget:
//
//	go test ./sim -sim.budget 90s            # regression seeds + 90 s of fresh seeds
//	go test ./sim -run TestSeeds -seeds 5000  # a fixed number of fresh seeds
//	go test ./sim -run TestSeeds -seed 123 -v # replay one seed with its trace
//	go test ./sim -run TestSeeds -sim.mutation void-on-timer -seeds 200
var (
	flagSeeds    = flag.Int("seeds", 0, "fresh seeds to run (default 100, or unlimited with -sim.budget)")
	flagSeed     = flag.String("seed", "", "replay this one seed and print its trace")
	flagBudget   = flag.Duration("sim.budget", 0, "time for fresh seeds (CI: 90s); also widens TestMutationsAreCaught to fresh seeds")
	flagMutation = flag.String("sim.mutation", "", "inject a known bug into the leader-side model (see Mutations)")
	flagBase     = flag.String("sim.base", "", "base of the fresh seeds (default: from `git rev-parse HEAD`)")
	flagWorkers  = flag.Int("sim.workers", 0, "parallel worlds (default GOMAXPROCS)")
	flagReqIDs   = flag.Bool("sim.request-ids", true, "the router gives every try a request id, as the router does; one answer per request is checked")
)

// budget is the flag, or the SIM_BUDGET environment variable (so that a
// budget can reach this package through `go test ./...`).
func budget(t *testing.T) time.Duration {
	if *flagBudget > 0 {
		return *flagBudget
	}
	if s := os.Getenv("SIM_BUDGET"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SIM_BUDGET=%q: %v", s, err)
		}
		return d
	}
	return 0
}

func replayHint(seed uint64, m Mutation) string {
	mut := ""
	if m != "" {
		mut = " -mutation " + string(m)
	}
	if *flagReqIDs {
		mut += " -request-ids"
	}
	return fmt.Sprintf("go run ./sim/cmd/simrun -seed %d -trace%s   (or: go test ./sim -run TestSeeds -seed %d -v)", seed, mut, seed)
}

// report prints a failed seed: the seed, its world, the failure, how to
// replay it, and the end of its trace (replayed: runs are deterministic).
func report(t *testing.T, r Result, m Mutation) {
	t.Helper()
	var tail bytes.Buffer
	Run(Options{Seed: r.Seed, Mutation: m, Trace: &tail, RequestIDs: *flagReqIDs})
	lines := strings.Split(strings.TrimRight(tail.String(), "\n"), "\n")
	lines = lines[max(0, len(lines)-40):]
	t.Errorf("FAIL seed %d\n  %s\n  %v\n  replay: %s\n  trace tail:\n    %s",
		r.Seed, r.Params, r.Err, replayHint(r.Seed, m), strings.Join(lines, "\n    "))
}

func mutationFlag(t *testing.T) Mutation {
	m, err := ParseMutation(*flagMutation)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSeeds runs fresh seeds (derived from the commit, so each commit
// explores new ones), or replays one with -seed.
func TestSeeds(t *testing.T) {
	m := mutationFlag(t)
	if *flagSeed != "" {
		seed, err := strconv.ParseUint(*flagSeed, 0, 64)
		if err != nil {
			t.Fatal(err)
		}
		r := Run(Options{Seed: seed, Mutation: m, Trace: os.Stdout, RequestIDs: *flagReqIDs})
		fmt.Printf("stats %+v\n", r.Stats)
		if r.Err != nil {
			t.Fatalf("FAIL seed %d\n  %s\n  %v", seed, r.Params, r.Err)
		}
		return
	}
	base, from := CommitBase()
	if *flagBase != "" {
		b, err := strconv.ParseUint(*flagBase, 0, 64)
		if err != nil {
			t.Fatal(err)
		}
		base, from = b, "-sim.base"
	}
	o := SweepOptions{Base: base, Count: *flagSeeds, Budget: budget(t), Workers: *flagWorkers, Mutation: m, RequestIDs: *flagReqIDs}
	if o.Count == 0 && o.Budget == 0 {
		o.Count = 100
		if testing.Short() {
			o.Count = 10
		}
	}
	res := Sweep(o)
	t.Logf("%d fresh seeds from base %d (%s) in %s: %.1f seeds/s, %.0f events/s, %d failed",
		res.Ran, base, from, res.Elapsed.Round(time.Millisecond), float64(res.Ran)/res.Elapsed.Seconds(),
		float64(res.Events)/res.Elapsed.Seconds(), len(res.Failures))
	for i, f := range res.Failures {
		if i == 10 {
			t.Errorf("... and %d more failed seeds", len(res.Failures)-10)
			break
		}
		report(t, f, m)
	}
	if m == "" && res.Ran >= 100 {
		var missing []string
		for _, k := range twoPhaseOutcomes {
			if res.Reached[k] == 0 {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			t.Errorf("the two-phase mix of %d seeds never reached: %q", res.Ran, missing)
		}
	}
}

// twoPhaseOutcomes are what the two-phase workload is there to reach: 100
// seeds reach each of them many times over (simrun -reached counts them).
var twoPhaseOutcomes = []string{
	"pending ok", "pending exceeds_credits", "pending exists",
	"post ok", "void ok", "posted in part", "expired", "post exists", "void exists",
	"post exists_with_different_fields", "void exists_with_different_fields",
	"post pending_transfer_already_posted", "post pending_transfer_already_voided", "void pending_transfer_already_posted",
	"post pending_transfer_expired", "void pending_transfer_expired", "post pending_transfer_mismatch",
	"void pending_transfer_mismatch", "post pending_transfer_not_found", "post pending_transfer_not_pending",
	"post exceeds_pending_transfer_amount", "void exceeds_pending_transfer_amount",
	"refused expired before its expiry entry", "resolved in the last second before its deadline",
	"cross-shard pending ok", "cross-shard pending exists", "cross-shard pending exceeds_debits",
	"cross-shard pending opened past its deadline", "cross-shard post ok", "cross-shard void ok",
	"cross-shard post exists", "cross-shard void exists", "cross-shard post joined its settlement in flight",
	"cross-shard post pending_transfer_already_posted", "cross-shard void pending_transfer_expired", "cross-shard expired",
	"chain ok", "chain exists", "chain linked_event_failed", "chain failed on exceeds_credits", "chain failed on ledger_mismatch",
	"chain open at the end of the batch",
	"chain across shards ok", "chain across shards exists", "chain across shards linked_event_failed",
	"chain across shards failed on exceeds_debits", "chain across shards failed on exceeds_credits",
	"chain across shards pending leg opened", "chain across shards hold aborted", "chain across shards joined in progress",
	"chain sent again", "forget announced to itself",
	"balancing ok", "balancing clamped",
	"balancing across shards posted", "balancing across shards pending opened",
	"balancing across shards clamped on the debit shard", "balancing across shards clamped on the credit shard",
	"balancing across shards refused exceeds_credits on the debit shard", "balancing across shards refused exceeds_debits on the credit shard",
}

// TestRegressionSeeds replays every seed that once found a bug since fixed
// (in the simulator or in the code): each must pass.
func TestRegressionSeeds(t *testing.T) {
	if *flagSeed != "" {
		t.Skip("-seed replays one seed in TestSeeds")
	}
	for _, s := range regressionSeeds {
		if r := Run(Options{Seed: s.seed}); r.Err != nil {
			t.Errorf("regression seed (%s):", s.why)
			report(t, r, "")
		}
	}
}

// TestOpenBugs replays the seeds of bugs found and not fixed yet. They fail
// until the bug is fixed; then the seed moves to regressionSeeds.
func TestOpenBugs(t *testing.T) {
	if *flagSeed != "" {
		t.Skip("-seed replays one seed in TestSeeds")
	}
	for _, b := range openBugs {
		t.Run(b.name, func(t *testing.T) {
			if r := Run(Options{Seed: b.seed}); r.Err != nil {
				t.Errorf("open bug %s: %s", b.name, b.why)
				report(t, r, "")
			}
		})
	}
}

// TestMutationsAreCaught injects each known bug into the leader-side model
// and requires the checks to catch it: first on the seed recorded for it
// (fast), and with -sim.budget also within a bounded number of fresh seeds
// from the commit base, which is what the CI budget gives it.
func TestMutationsAreCaught(t *testing.T) {
	if *flagSeed != "" {
		t.Skip("-seed replays one seed in TestSeeds")
	}
	b := budget(t)
	base, _ := CommitBase()
	for _, m := range Mutations {
		t.Run(string(m), func(t *testing.T) {
			if s, ok := mutationSeeds[m]; ok {
				if r := Run(Options{Seed: s, Mutation: m}); r.Err != nil && Run(Options{Seed: s}).Err == nil {
					t.Logf("caught on its recorded seed %d: %v", s, r.Err)
					if b == 0 {
						return
					}
				} else if b == 0 {
					t.Logf("its recorded seed %d no longer catches it; searching fresh seeds", s)
				}
			}
			limit := 300
			if b > 0 {
				limit = mutationSearchMax
			}
			res := Sweep(SweepOptions{Base: base ^ xorMutation(m), Count: limit, Workers: *flagWorkers, Mutation: m, StopAtFailure: true, MutationOnly: true})
			if len(res.Failures) == 0 {
				t.Fatalf("mutation %s survived %d fresh seeds", m, res.Ran)
			}
			f := res.Failures[0]
			t.Logf("caught within %d fresh seeds, by seed %d: %v", res.Ran, f.Seed, f.Err)
		})
	}
}

// mutationSearchMax bounds the fresh seeds a mutation may survive in CI.
const mutationSearchMax = 1000

func xorMutation(m Mutation) uint64 {
	var h uint64 = 1469598103934665603
	for i := 0; i < len(m); i++ {
		h = (h ^ uint64(m[i])) * 1099511628211
	}
	return h
}

// TestDeterminism runs seeds twice: the same seed must give the same run
// (event times, final state hashes, failure). Map iteration order differs
// between the two runs, so this also catches a map order that leaks.
func TestDeterminism(t *testing.T) {
	if *flagSeed != "" {
		t.Skip("-seed replays one seed in TestSeeds")
	}
	n := 8
	if testing.Short() {
		n = 2
	}
	for i := range n {
		seed := SeedAt(12345, i)
		a, b := Run(Options{Seed: seed}), Run(Options{Seed: seed})
		if a.Digest != b.Digest || fmt.Sprint(a.Err) != fmt.Sprint(b.Err) || a.Stats != b.Stats {
			t.Errorf("seed %d is not deterministic: digest %016x vs %016x, %v vs %v", seed, a.Digest, b.Digest, a.Err, b.Err)
		}
	}
}
