package sim

import (
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
)

// SeedAt is the i-th seed of a sweep from base (splitmix64, so that
// neighbouring sweeps share no seeds).
func SeedAt(base uint64, i int) uint64 {
	z := base + uint64(i)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// CommitBase derives a sweep's base from the commit under test, so each
// commit explores fresh seeds and a rerun of one commit replays them; without
// git it falls back to the clock.
func CommitBase() (base uint64, from string) {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if rev := strings.TrimSpace(string(out)); err == nil && rev != "" {
		return xxhash.Sum64String(rev), "commit " + rev
	}
	now := uint64(time.Now().UnixNano())
	return now, "clock"
}

// SweepOptions choose a run of many seeds.
type SweepOptions struct {
	Base     uint64
	Count    int           // at most this many seeds (0: no limit)
	Budget   time.Duration // stop starting seeds after this long (0: no limit)
	Workers  int           // parallel worlds (0: GOMAXPROCS)
	Mutation Mutation
	// RequestIDs: Options.RequestIDs for every seed.
	RequestIDs bool
	// StopAtFailure stops at the first failing seed.
	StopAtFailure bool
	// MutationOnly, with a Mutation, counts a failing seed only if it
	// passes without the mutation (the mutation, not another bug, failed
	// it); the others are in FailsAnyway.
	MutationOnly bool
	// OnResult, if set, sees every result as it comes (from any worker,
	// one at a time).
	OnResult func(Result)
}

// SweepResult sums a sweep.
type SweepResult struct {
	Ran         int
	Failures    []Result // in the order found
	FailsAnyway []Result
	Elapsed     time.Duration
	Events      uint64
	Reached     map[string]int // summed over every seed
}

// Sweep runs seeds SeedAt(Base, 0), SeedAt(Base, 1), ... on Workers
// goroutines, one world each, until Count or Budget.
func Sweep(o SweepOptions) SweepResult {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	// Worlds are small and allocate fast (each state hash encodes the whole
	// shard through a fresh 64 KiB buffer): with the default GOGC the
	// collector runs so often that it costs 4x the simulation.
	defer debug.SetGCPercent(debug.SetGCPercent(800))
	start := time.Now()
	var next, ran atomic.Int64
	var events atomic.Uint64
	var stop atomic.Bool
	var mu sync.Mutex
	res := SweepResult{Reached: map[string]int{}}
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				i := int(next.Add(1) - 1)
				if o.Count > 0 && i >= o.Count || o.Budget > 0 && time.Since(start) > o.Budget {
					return
				}
				r := Run(Options{Seed: SeedAt(o.Base, i), Mutation: o.Mutation, RequestIDs: o.RequestIDs})
				ran.Add(1)
				events.Add(r.Stats.Events)
				mu.Lock()
				for k, v := range r.Reached {
					res.Reached[k] += v
				}
				if o.OnResult != nil {
					o.OnResult(r)
				}
				mu.Unlock()
				if r.Err != nil && o.MutationOnly && o.Mutation != "" {
					if clean := Run(Options{Seed: r.Seed, RequestIDs: o.RequestIDs}); clean.Err != nil {
						mu.Lock()
						res.FailsAnyway = append(res.FailsAnyway, r)
						mu.Unlock()
						continue
					}
				}
				if r.Err != nil {
					mu.Lock()
					res.Failures = append(res.Failures, r)
					mu.Unlock()
					if o.StopAtFailure {
						stop.Store(true)
					}
				}
			}
		}()
	}
	wg.Wait()
	res.Ran, res.Events, res.Elapsed = int(ran.Load()), events.Load(), time.Since(start)
	return res
}
