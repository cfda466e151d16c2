package metrics

import (
	"fmt"
	"sync"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gmprometheus "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// Raft's own metrics. hashicorp/raft reports through go-metrics' global
// functions (commit time, FSM apply, append entries, snapshots...), so its
// sink is process-global: set up once per process, by the first New, and
// registered in every Registry. In a process that runs several nodes (a
// test), each node's /metrics shows them all, summed. Raft's metrics carry
// no group label either: raft_commitTime is every group's of this process.
//
// Raft imports go-metrics' compat package, which forwards to
// armon/go-metrics unless built with the hashicorpmetrics tag; the sink is
// taken from the same package, so it is the one Raft reports to either way.
//
// Names are Raft's keys joined by "_" (raft_commitTime, raft_fsm_apply,
// raft_rpc_appendEntries...), timings are summaries in milliseconds
// (quantiles over the last 10 s), and a series not updated for
// raftMetricsExpiry is dropped (a peer removed, a group no longer led).
var raftSink struct {
	once sync.Once
	sink *gmprometheus.PrometheusSink
	err  error
}

// raftMetricsExpiry drops a Raft series not updated for this long: the
// go-metrics Prometheus sink's default.
var raftMetricsExpiry = gmprometheus.DefaultPrometheusOpts.Expiration

// raftCollector returns the process's go-metrics sink, set up as the
// global one on the first call.
func raftCollector() (prometheus.Collector, error) {
	raftSink.once.Do(func() {
		// The sink registers itself where it is told: a registry of its
		// own here, never the client library's global one. Each Registry
		// then registers it too (a collector may be in several).
		sink, err := gmprometheus.NewPrometheusSinkFrom(gmprometheus.PrometheusOpts{
			Registerer: prometheus.NewRegistry(),
			Expiration: raftMetricsExpiry,
			Name:       "ledgerd_raft_go_metrics_sink",
		})
		if err != nil {
			raftSink.err = fmt.Errorf("raft metrics sink: %w", err)
			return
		}
		conf := gometrics.DefaultConfig("") // no service prefix: Raft's names as documented
		conf.EnableHostname = false         // a hostname in gauge names would change per pod
		conf.EnableRuntimeMetrics = false   // the Go collector has them
		if _, err := gometrics.NewGlobal(conf, sink); err != nil {
			raftSink.err = fmt.Errorf("raft metrics: %w", err)
			return
		}
		raftSink.sink = sink
	})
	return raftSink.sink, raftSink.err
}
