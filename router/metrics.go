package router

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ledgerd/ledgerd/transport"
)

// Metrics counts a router's requests: by endpoint and request-level result,
// their events by result code, and their duration. Every series is resolved
// once, when an endpoint starts, so counting a request allocates nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	events   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// shardCalls counts the attempts sent to shards by path; its two
	// series are resolved in NewMetrics.
	shardCalls     *prometheus.CounterVec
	shardCallsPath [pathCount]prometheus.Counter
}

// The paths of an attempt to a shard (Router.send).
const (
	pathNATS  = iota // a request on the shard's subject
	pathLocal        // handed to this process's leader (Config.Local)
	pathCount
)

var pathNames = [pathCount]string{pathNATS: "nats", pathLocal: "local"}

// requestResults are the request-level results: ok, or the error code of
// a request that failed as a whole (docs/protocol.md).
var requestResults = []string{"ok", transport.ErrMalformedCode, transport.ErrTooManyEventsCode,
	transport.ErrUnauthorizedCode, transport.ErrUnavailableCode, transport.ErrTimeoutCode}

// eventEndpoints are the endpoints whose replies carry a result per event.
var eventEndpoints = map[string]bool{"accounts_create": true, "transfers_create": true}

// requestSecondsBuckets: from a lone lookup (about 1 ms) to past the
// default request deadline (5 s).
var requestSecondsBuckets = prometheus.ExponentialBuckets(0.001, 2, 14)

// NewMetrics returns a router's metrics, registered with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ledgerd", Subsystem: "router", Name: "requests_total",
			Help: "Client requests answered, by endpoint and result: ok, or the request-level error code.",
		}, []string{"endpoint", "result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ledgerd", Subsystem: "router", Name: "events_total",
			Help: "Events (accounts, transfers) of requests answered ok, by endpoint and result code.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ledgerd", Subsystem: "router", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival at the router to its answer, by endpoint.",
			Buckets: requestSecondsBuckets,
		}, []string{"endpoint"}),
		shardCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ledgerd", Subsystem: "router", Name: "shard_requests_total",
			Help: "Requests sent to shard leaders, retries included, by path: nats, or local (handed to the leader in this process).",
		}, []string{"path"}),
	}
	for p, name := range pathNames {
		m.shardCallsPath[p] = m.shardCalls.WithLabelValues(name)
	}
	for _, c := range m.Collectors() {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Collectors are the metrics' collectors, to unregister them.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.events, m.duration, m.shardCalls}
}

// shardCall counts one attempt sent to a shard by path.
func (m *Metrics) shardCall(path int) {
	if m != nil {
		m.shardCallsPath[path].Inc()
	}
}

// endpointMetrics are one endpoint's series; nil counts nothing.
type endpointMetrics struct {
	results  map[string]prometheus.Counter
	events   []prometheus.Counter // by transport.Code; nil if the endpoint has none
	duration prometheus.Observer
	name     string
	requests *prometheus.CounterVec
}

// endpoint resolves endpoint name's series (nil without metrics).
func (m *Metrics) endpoint(name string) *endpointMetrics {
	if m == nil {
		return nil
	}
	e := &endpointMetrics{results: map[string]prometheus.Counter{}, duration: m.duration.WithLabelValues(name),
		name: name, requests: m.requests}
	for _, r := range requestResults {
		e.results[r] = m.requests.WithLabelValues(name, r)
	}
	if eventEndpoints[name] {
		for c := transport.Code(0); ; c++ {
			if _, known := transport.ParseCode(c.String()); !known {
				break
			}
			e.events = append(e.events, m.events.WithLabelValues(name, c.String()))
		}
	}
	return e
}

// observe counts one answered request; reply is what was sent.
func (e *endpointMetrics) observe(reply any, start time.Time) {
	if e == nil {
		return
	}
	e.duration.Observe(time.Since(start).Seconds())
	result := "ok"
	if err := replyError(reply); err != nil {
		result = err.Code
	}
	c, ok := e.results[result]
	if !ok {
		c = e.requests.WithLabelValues(e.name, result) // a code added since: resolved now
	}
	c.Inc()
	if rr, ok := reply.(*transport.ResultsReply); ok && e.events != nil {
		e.countEvents(rr.Results)
	}
}

// countEvents adds each code's events in one step: a batch is mostly one
// code, so this is an atomic add or two per request, not one per event.
func (e *endpointMetrics) countEvents(results []transport.Result) {
	var byCode [1 << 8]uint32 // transport.Code is a byte
	for i := range results {
		byCode[results[i].Code]++
	}
	for code, n := range byCode[:len(e.events)] {
		if n > 0 {
			e.events[code].Add(float64(n))
		}
	}
}
