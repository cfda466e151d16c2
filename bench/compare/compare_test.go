package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// These tests need neither PostgreSQL nor Redis nor ledgerd: they check the
// plumbing from recorded latencies to the table and the chart, and the
// transfers each scenario generates. The comparison itself is not run in
// CI (docs/compare.md).

func TestRatio(t *testing.T) {
	for _, c := range []struct {
		a, b float64
		want string
	}{
		{30_000, 3_000, "10×"},
		{250_000, 3_000, "83×"},
		{5_000, 2_000, "2.5×"},
		{1_000, 4_000, "0.25×"},
		{10, 4_000, "0.003×"},
		{1_000, 0, "–"}, // the peer skipped the scenario
		{0, 1_000, "–"},
	} {
		if got := ratio(c.a, c.b); got != c.want {
			t.Errorf("ratio(%v, %v) = %q, want %q", c.a, c.b, got, c.want)
		}
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999.4: "999", 999.6: "1 000", 12_345.6: "12 346", 1_234_567: "1 234 567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestLatency(t *testing.T) {
	for d, want := range map[time.Duration]string{
		310 * time.Microsecond: "0.31 ms", 12_340 * time.Microsecond: "12.3 ms", 433 * time.Millisecond: "433 ms",
	} {
		if got := latency(d); got != want {
			t.Errorf("latency(%v) = %q, want %q", d, got, want)
		}
	}
}

// latencies 1..100 ms, one each: p50 is 50 ms and p99 99 ms, within the
// histogram's 3 significant digits.
func hundredMillis() *hdrhistogram.Histogram {
	h := hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
	for ms := 1; ms <= 100; ms++ {
		recordMicros(h, time.Duration(ms)*time.Millisecond)
	}
	return h
}

func TestQuantilesFromHistogram(t *testing.T) {
	r := result{latency: hundredMillis(), transfers: 100, elapsed: 2 * time.Second}
	near := func(got, want time.Duration) bool { return got >= want && got <= want+want/500 }
	if got := r.quantile(50); !near(got, 50*time.Millisecond) {
		t.Errorf("p50 = %v, want 50ms", got)
	}
	if got := r.quantile(99); !near(got, 99*time.Millisecond) {
		t.Errorf("p99 = %v, want 99ms", got)
	}
	if got := r.perSecond(); got != 50 {
		t.Errorf("perSecond = %v, want 50", got)
	}
	if got := (result{}).quantile(99); got != 0 {
		t.Errorf("quantile of no histogram = %v, want 0", got)
	}
}

func TestRecordClampsOutOfRange(t *testing.T) {
	h := hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
	recordMicros(h, 0)
	recordMicros(h, 2*time.Hour)
	if h.TotalCount() != 2 {
		t.Fatalf("recorded %d values, want 2: one out of range was lost", h.TotalCount())
	}
	if h.Max() < histMaxMicros*999/1000 {
		t.Errorf("max = %d µs, want the top of the range", h.Max())
	}
}

func results() []result {
	h := hundredMillis()
	return []result{
		{system: "PostgreSQL", scenario: "batched", skipped: "no batch"},
		{system: "PostgreSQL", scenario: "16 clients", transfers: 4_000, elapsed: time.Second, latency: h},
		{system: "Redis", scenario: "batched", transfers: 50_000, elapsed: time.Second, latency: h},
		{system: "Redis", scenario: "16 clients", transfers: 8_000, elapsed: time.Second, latency: h},
		{system: "ledgerd 1 node", scenario: "batched", transfers: 200_000, elapsed: time.Second, latency: h},
		{system: "ledgerd 1 node", scenario: "16 clients", transfers: 6_000, elapsed: time.Second, latency: h},
	}
}

func TestTable(t *testing.T) {
	var b strings.Builder
	if err := writeTable(&b, results()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2+len(results()) {
		t.Fatalf("%d lines, want a header, a rule and a row per result:\n%s", len(lines), b.String())
	}
	for _, want := range []string{
		"| batched | PostgreSQL | – (no batch) | – | – | | |",
		"| 16 clients | Redis | 8 000 | 50.0 ms | 99.0 ms |  |  |",
		"| batched | ledgerd 1 node | 200 000 | 50.0 ms | 99.0 ms | – | 4.0× |",
		"| 16 clients | ledgerd 1 node | 6 000 | 50.0 ms | 99.0 ms | 1.5× | 0.75× |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("table lacks the row\n%s\ngot:\n%s", want, b.String())
		}
	}
}

func TestChartIsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.png")
	scs := []scenario{{name: "batched", short: "batched"}, {name: "16 clients", short: "16"}}
	if err := writeChart(path, results(), scs, []string{"PostgreSQL", "Redis", "ledgerd 1 node"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("%s is not a PNG: starts %q", path, b[:min(8, len(b))])
	}
}

func TestPairs(t *testing.T) {
	shard := func(i int32) int { return int(i % 2) }
	l := load{accounts: 1_000}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sc := range scenarios() {
		for _, p := range genPairs(rng, shard, l, sc, 2_000) {
			switch {
			case p.src == p.dst:
				t.Fatalf("%s: %v pays itself", sc.name, p)
			case p.src < 0 || int(p.src) >= l.accounts || p.dst < 0 || int(p.dst) >= l.accounts:
				t.Fatalf("%s: %v outside the accounts", sc.name, p)
			case sc.hot && p.src != 0:
				t.Fatalf("%s: %v does not debit the hot account", sc.name, p)
			case sc.cross && shard(p.src) == shard(p.dst):
				t.Fatalf("%s: %v on one shard", sc.name, p)
			case !sc.cross && shard(p.src) != shard(p.dst):
				t.Fatalf("%s: %v crosses shards", sc.name, p)
			}
		}
	}
}
