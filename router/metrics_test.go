package router

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ledgerd/ledgerd/transport"
)

// Each answer counts once under its request-level result, and an answered
// batch's events under their codes; a failed request counts no event.
func TestMetricsCountAnswersAndEvents(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	e := m.endpoint("transfers_create")
	start := time.Now()
	e.observe(&transport.ResultsReply{Results: []transport.Result{
		{Code: transport.CodeOK}, {Code: transport.CodeOK}, {Code: transport.CodeExceedsCredits}, {Code: transport.CodeLinkedEventChainOpen},
	}}, start)
	e.observe(&transport.ResultsReply{Error: &transport.Error{Code: transport.ErrTimeoutCode}}, start)
	m.endpoint("accounts_lookup").observe(&transport.AccountsReply{}, start)
	for _, c := range []struct {
		got  prometheus.Counter
		want float64
	}{
		{m.requests.WithLabelValues("transfers_create", "ok"), 1},
		{m.requests.WithLabelValues("transfers_create", transport.ErrTimeoutCode), 1},
		{m.requests.WithLabelValues("accounts_lookup", "ok"), 1},
		{m.events.WithLabelValues("transfers_create", "ok"), 2},
		{m.events.WithLabelValues("transfers_create", "exceeds_credits"), 1},
		{m.events.WithLabelValues("transfers_create", "linked_event_chain_open"), 1},
		{m.events.WithLabelValues("transfers_create", "exists"), 0},
	} {
		var got dto.Metric
		if err := c.got.Write(&got); err != nil {
			t.Fatal(err)
		}
		if got.Counter.GetValue() != c.want {
			t.Errorf("%v: %v, want %v", c.got.Desc(), got.Counter.GetValue(), c.want)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	observed := 0
	for _, f := range families {
		for _, s := range f.Metric {
			if f.GetName() == "ledgerd_router_request_duration_seconds" {
				observed += int(s.Histogram.GetSampleCount())
			}
		}
	}
	if observed != 3 {
		t.Errorf("%d request durations observed, want 3", observed)
	}
	// Counting an answer allocates nothing, however many events it has.
	batch := &transport.ResultsReply{Results: make([]transport.Result, 1000)}
	if n := testing.AllocsPerRun(100, func() { e.observe(batch, start) }); n != 0 {
		t.Errorf("counting an answer of 1000 events allocated %v times", n)
	}
	// A router without metrics counts nothing, and does not fail.
	var none *Metrics
	none.endpoint("transfers_create").observe(&transport.ResultsReply{}, start)
}
