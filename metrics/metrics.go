// Package metrics is a process's Prometheus metrics, served at /metrics:
// one registry per process (not the client library's global one, so that
// several nodes in one test process keep theirs apart) holding the Go
// runtime and process collectors, Raft's own go-metrics (raft.go), every
// group of the node (node.go) and the router's requests (router.Metrics).
// Per-group values are read when scraped, not counted on the hot path.
package metrics

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric ledgerd defines (Raft's keep theirs).
const Namespace = "ledgerd"

// Registry is one process's metrics.
type Registry struct {
	reg *prometheus.Registry
}

// New returns a registry with the Go runtime, process and Raft metrics.
func New() (*Registry, error) {
	raft, err := raftCollector()
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		raft,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return &Registry{reg: reg}, nil
}

// Registerer is where the node's and router's metrics register.
func (r *Registry) Registerer() prometheus.Registerer { return r.reg }

// Gatherer reads every metric, as a scrape does.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves the metrics in Prometheus' text format. Not OpenMetrics:
// it would add _total to Raft's counters (raft_apply), so a series' name
// would depend on what the scraper asked for. A collector that fails is
// counted (promhttp_metric_handler_errors_total) and the rest is served.
func (r *Registry) Handler() http.Handler {
	return promhttp.InstrumentMetricHandler(r.reg, promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      r.reg,
	}))
}
