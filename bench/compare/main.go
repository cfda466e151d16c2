// Command compare measures ledgerd (1 node and 3 nodes) against
// PostgreSQL and Redis on one machine, over the same scenarios, and prints
// one markdown table (throughput, p50/p99 request latency, ledgerd's ratio
// to each peer) and draws it as a PNG. Each server is a private one it
// starts on loopback ports and stops at the end; bench/setup installs
// PostgreSQL and Redis from the system's packages. See docs/compare.md.
//
//	bench/setup && go run ./bench/compare            # about 4.5 minutes on 2 cores
//	go run ./bench/compare -quick                     # about 1 minute
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Defaults, and what -quick turns them into.
const (
	accountsDefault  = 100_000
	transfersDefault = 50_000
	durationDefault  = 15 * time.Second
	quickAccounts    = 10_000
	quickTransfers   = 10_000
	quickDuration    = 4 * time.Second
	// initialBalance funds every account so that no transfer of amount 1
	// is refused, even the hot account's in the longest run.
	initialBalance = 1_000_000_000
	portBase       = 24000
)

// Known systems, in the table's order.
const (
	sysPostgres = "postgres"
	sysRedis    = "redis"
	sysLedgerd1 = "ledgerd1"
	sysLedgerd3 = "ledgerd3"
)

type options struct {
	accounts, transfers int
	duration            time.Duration
	quick, keep         bool
	systems, png, out   string
	seed                uint64
	portBase            int
}

func main() {
	var o options
	flag.IntVar(&o.accounts, "accounts", accountsDefault, "accounts each system holds")
	flag.IntVar(&o.transfers, "transfers", transfersDefault, "transfers per scenario, at most (the batched scenario: 10 times that)")
	flag.DurationVar(&o.duration, "duration", durationDefault, "time per scenario, at most")
	flag.BoolVar(&o.quick, "quick", false, fmt.Sprintf("a short run: %d accounts, at most %d transfers (batched: %d times that) or %v per scenario", quickAccounts, quickTransfers, batchedVolume, quickDuration))
	flag.StringVar(&o.systems, "systems", strings.Join([]string{sysPostgres, sysRedis, sysLedgerd1, sysLedgerd3}, ","), "systems to run, comma separated")
	flag.StringVar(&o.png, "png", "docs/compare.png", "where to draw the chart (empty: no chart)")
	flag.StringVar(&o.out, "o", "", "also write the markdown table to this file")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the transfers' accounts (the same for every system)")
	flag.IntVar(&o.portBase, "port-base", portBase, "first of the loopback ports the servers listen on")
	flag.BoolVar(&o.keep, "keep", false, "keep the servers' data and logs (the directory is printed)")
	flag.Parse()
	if o.quick {
		o.accounts, o.transfers, o.duration = quickAccounts, quickTransfers, quickDuration
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := compare(ctx, o); err != nil {
		slog.Error("compare failed", "err", err)
		os.Exit(1)
	}
}

func compare(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "ledgerd-compare-")
	if err != nil {
		return err
	}
	if o.keep {
		slog.Info("data and logs kept", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	scs := scenarios()
	var results []result
	var names []string
	for _, s := range strings.Split(o.systems, ",") {
		rs, name, err := runSystem(ctx, o, dir, strings.TrimSpace(s), scs)
		results = append(results, rs...)
		if err != nil {
			return err
		}
		names = append(names, name)
	}
	return report(o, results, scs, names)
}

// runSystem starts one system, runs every scenario against it, stops it.
func runSystem(ctx context.Context, o options, dir, which string, scs []scenario) ([]result, string, error) {
	slog.Info("starting", "system", which)
	sys, closeFn, err := start(ctx, o, dir, which)
	if err != nil {
		return nil, "", err
	}
	defer closeFn()
	l := load{accounts: o.accounts, transfers: o.transfers, duration: o.duration, seed: o.seed}
	var out []result
	for _, sc := range scs {
		r, err := run(ctx, sys, l, sc)
		out = append(out, r)
		if err != nil {
			return out, sys.Name(), err
		}
		slog.Info("ran", "system", r.system, "scenario", sc.name, "transfers", r.transfers,
			"per_second", int(r.perSecond()), "p50", r.quantile(50), "p99", r.quantile(99), "skipped", r.skipped)
	}
	return out, sys.Name(), nil
}

// start starts and loads one system.
func start(ctx context.Context, o options, dir, which string) (system, func(), error) {
	switch which {
	case sysPostgres:
		p, err := startPostgres(ctx, dir, o.portBase+1, o.accounts, maxClients(), initialBalance)
		if err != nil {
			return nil, nil, err
		}
		return p, p.Close, nil
	case sysRedis:
		r, err := startRedis(ctx, dir, o.portBase+2, o.accounts, maxClients(), initialBalance)
		if err != nil {
			return nil, nil, err
		}
		return r, r.Close, nil
	case sysLedgerd1, sysLedgerd3:
		bin, err := buildLedgerd(dir)
		if err != nil {
			return nil, nil, err
		}
		nodes := map[string]int{sysLedgerd1: 1, sysLedgerd3: 3}[which]
		ports := ledgerdPorts{nats: o.portBase + 10, cluster: o.portBase + 20, raft: o.portBase + 30, http: o.portBase + 40}
		c, err := startLedgerd(ctx, bin, dir, nodes, ports, o.accounts, initialBalance)
		if err != nil {
			return nil, nil, err
		}
		return c, c.Close, nil
	}
	return nil, nil, fmt.Errorf("unknown system %q: want %s, %s, %s or %s", which, sysPostgres, sysRedis, sysLedgerd1, sysLedgerd3)
}

// maxClients is the most concurrent clients of any scenario: the size of
// the peers' connection pools.
func maxClients() int {
	n := 1
	for _, sc := range scenarios() {
		n = max(n, sc.clients)
	}
	return n
}

// report prints the conditions and the table, and draws the chart.
func report(o options, results []result, scs []scenario, names []string) error {
	var w io.Writer = os.Stdout
	if o.out != "" {
		f, err := os.Create(o.out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = io.MultiWriter(os.Stdout, f)
	}
	fmt.Fprintf(w, "%s, %d CPUs (runtime.NumCPU), load average %s, %s; %d accounts; per scenario at most %d transfers or %v\n\n",
		time.Now().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), loadAvg(), runtime.Version(), o.accounts, o.transfers, o.duration)
	fmt.Fprintf(w, "%s\n\n", versions())
	if err := writeTable(w, results); err != nil {
		return err
	}
	if o.png == "" {
		return nil
	}
	if err := writeChart(o.png, results, scs, names); err != nil {
		return err
	}
	slog.Info("chart written", "path", o.png)
	return nil
}

// loadAvg is /proc/loadavg's three averages: other work on the machine
// moves every figure, so the report says how busy it was.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// versions names the peers' server versions as installed.
func versions() string {
	var out []string
	if bin, err := pgBinDir(); err == nil {
		out = append(out, firstLine(exec.Command(bin+"/postgres", "--version")))
	}
	out = append(out, firstLine(exec.Command("redis-server", "--version")))
	return strings.Join(out, "; ")
}

func firstLine(cmd *exec.Cmd) string {
	b, err := cmd.Output()
	if err != nil {
		return fmt.Sprintf("%s: %v", cmd.Path, err)
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
}
