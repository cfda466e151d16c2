package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Names of the peers the ratio columns divide by.
const (
	peerPostgres = "PostgreSQL"
	peerRedis    = "Redis"
	noValue      = "–"
)

// writeTable prints one markdown table: a row per system × scenario with
// throughput and p50/p99 request latency, and on ledgerd's rows its
// throughput divided by PostgreSQL's and Redis's in that scenario.
func writeTable(w io.Writer, results []result) error {
	peers := map[[2]string]float64{} // {system, scenario} → transfers/s
	for _, r := range results {
		if r.skipped == "" {
			peers[[2]string{r.system, r.scenario}] = r.perSecond()
		}
	}
	var b strings.Builder
	b.WriteString("| scenario | system | transfers/s | p50 | p99 | ÷ PostgreSQL | ÷ Redis |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		if r.skipped != "" {
			fmt.Fprintf(&b, "| %s | %s | %s (%s) | %s | %s | | |\n", r.scenario, r.system, noValue, r.skipped, noValue, noValue)
			continue
		}
		vsPG, vsRedis := "", ""
		if strings.HasPrefix(r.system, "ledgerd") {
			vsPG = ratio(r.perSecond(), peers[[2]string{peerPostgres, r.scenario}])
			vsRedis = ratio(r.perSecond(), peers[[2]string{peerRedis, r.scenario}])
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.scenario, r.system,
			thousands(r.perSecond()), latency(r.quantile(50)), latency(r.quantile(99)), vsPG, vsRedis)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ratio formats a/b as "2.5×", or "–" when either side did not run.
func ratio(a, b float64) string {
	switch {
	case a <= 0 || b <= 0:
		return noValue
	case a/b >= 10:
		return fmt.Sprintf("%.0f×", a/b)
	case a/b >= 1:
		return fmt.Sprintf("%.1f×", a/b)
	case a/b >= 0.1:
		return fmt.Sprintf("%.2f×", a/b)
	default:
		return fmt.Sprintf("%.1g×", a/b)
	}
}

// thousands formats v rounded to an integer, with a space between groups
// of three digits (the README's style): 12345.6 → "12 346".
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// latency formats d in milliseconds, with three significant digits or
// more.
func latency(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f ms", ms)
	}
}
