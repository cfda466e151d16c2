package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ledgerd/ledgerd/transport"
)

// startNode starts a real single node (embedded NATS, Raft on disk) with
// shards shards, and a plain client connection to it.
func startNode(t *testing.T, shards uint32) (*Server, *nats.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := Start(ctx, Config{
		NodeID: "n1", DataDir: t.TempDir(), NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", Shards: shards,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return srv, nc
}

// scrape GETs url/metrics and parses Prometheus' text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// series returns the value of the gauge or counter name whose labels
// include labels, and whether there is one.
func series(families map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			if labelValue(m, k) != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Summary != nil:
			return float64(m.Summary.GetSampleCount()), true
		}
	}
	return 0, false
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func request[T any](t *testing.T, nc *nats.Conn, subject string, req any) *T {
	t.Helper()
	b, err := transport.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subject, b, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	reply := new(T)
	if err := transport.Unmarshal(msg.Data, reply); err != nil {
		t.Fatal(err)
	}
	return reply
}

// A node's /metrics, scraped over HTTP, shows its groups (applied index
// advancing, this lone node leading each), the router's requests and
// every event's result by code exactly as sent, the apply batches, and
// Raft's own go-metrics.
func TestMetricsOfARealNode(t *testing.T) {
	const shards = 2
	srv, nc := startNode(t, shards)
	web := httptest.NewServer(srv.Metrics().Handler())
	defer web.Close()
	before := scrape(t, web.URL)
	applied := map[string]float64{}
	for _, shard := range []string{"1", "2", "meta"} {
		v, ok := series(before, "ledgerd_raft_applied_index", map[string]string{"shard": shard, "node": "n1"})
		if !ok {
			t.Fatalf("no ledgerd_raft_applied_index of shard %s", shard)
		}
		applied[shard] = v
	}

	subjects := transport.Subjects{Prefix: transport.DefaultPrefix}
	var accounts []transport.Account
	for i := range 8 {
		flags := uint32(0)
		if i > 0 {
			flags = transport.AccountDebitsMustNotExceedCredits
		}
		accounts = append(accounts, transport.Account{ID: fmt.Sprintf("acct-%d", i), Ledger: 1, Code: 1, Flags: flags})
	}
	ar := request[transport.ResultsReply](t, nc, subjects.AccountsCreate(), &transport.CreateAccountsRequest{Accounts: accounts})
	if ar.Error != nil {
		t.Fatalf("create accounts: %v", ar.Error)
	}
	// Three requests: ok transfers from the bank (acct-0, no limit),
	// transfers over an account's credits, and a repeat of the first.
	var funded, over []transport.Transfer
	for i := 1; i < len(accounts); i++ {
		funded = append(funded, transport.Transfer{ID: fmt.Sprintf("fund-%d", i), DebitAccountID: "acct-0",
			CreditAccountID: accounts[i].ID, Amount: 100, Ledger: 1, Code: 1})
	}
	for i := 1; i < 4; i++ {
		over = append(over, transport.Transfer{ID: fmt.Sprintf("over-%d", i), DebitAccountID: accounts[i].ID,
			CreditAccountID: "acct-0", Amount: 1000, Ledger: 1, Code: 1})
	}
	want := map[transport.Code]float64{}
	for _, batch := range [][]transport.Transfer{funded, over, funded} {
		r := request[transport.ResultsReply](t, nc, subjects.TransfersCreate(), &transport.CreateTransfersRequest{Transfers: batch})
		if r.Error != nil || len(r.Results) != len(batch) {
			t.Fatalf("create transfers: %v, %d results for %d", r.Error, len(r.Results), len(batch))
		}
		for _, res := range r.Results {
			want[res.Code]++
		}
	}
	if want[transport.CodeOK] != float64(len(funded)) || want[transport.CodeExists] != float64(len(funded)) ||
		want[transport.CodeExceedsCredits] != float64(len(over)) {
		t.Fatalf("results by code %v: want %d ok, %d exists, %d exceeds_credits", want, len(funded), len(funded), len(over))
	}

	after := scrape(t, web.URL)
	for shard, v := range applied {
		got, _ := series(after, "ledgerd_raft_applied_index", map[string]string{"shard": shard, "node": "n1"})
		if shard != "meta" && got <= v {
			t.Errorf("shard %s: applied index %v, %v before the transfers: want it advanced", shard, got, v)
		}
		if leader, _ := series(after, "ledgerd_raft_leader", map[string]string{"shard": shard}); leader != 1 {
			t.Errorf("shard %s: ledgerd_raft_leader %v on the only node, want 1", shard, leader)
		}
	}
	for name, want := range map[string]float64{"ledgerd_meta_slot_map_epoch": 1, "ledgerd_meta_shards": shards,
		"ledgerd_meta_splits_in_progress": 0, "ledgerd_meta_replica_moves_in_progress": 0} {
		if got, ok := series(after, name, map[string]string{"shard": "meta", "node": "n1"}); !ok || got != want {
			t.Errorf("%s: %v (present %v), want %v", name, got, ok, want)
		}
	}
	for c := transport.Code(0); ; c++ {
		if _, known := transport.ParseCode(c.String()); !known {
			break
		}
		got, ok := series(after, "ledgerd_router_events_total", map[string]string{"endpoint": "transfers_create", "code": c.String()})
		if !ok || got != want[c] {
			t.Errorf("transfers_create events %s: %v (present %v), want %v", c, got, ok, want[c])
		}
	}
	for endpoint, n := range map[string]float64{"transfers_create": 3, "accounts_create": 1} {
		if got, _ := series(after, "ledgerd_router_requests_total", map[string]string{"endpoint": endpoint, "result": "ok"}); got != n {
			t.Errorf("%s requests ok: %v, want %v", endpoint, got, n)
		}
		if got, _ := series(after, "ledgerd_router_request_duration_seconds", map[string]string{"endpoint": endpoint}); got != n {
			t.Errorf("%s request durations observed: %v, want %v", endpoint, got, n)
		}
	}
	var entries float64
	for _, shard := range []string{"1", "2"} {
		n, _ := series(after, "ledgerd_shard_apply_batch_commands", map[string]string{"shard": shard})
		entries += n
	}
	if entries == 0 {
		t.Error("ledgerd_shard_apply_batch_commands counted no entry")
	}
	if _, ok := series(after, "raft_commitTime", nil); !ok {
		t.Error("no raft_commitTime: Raft's go-metrics are not routed to /metrics")
	}
	if _, ok := series(after, "go_goroutines", nil); !ok {
		t.Error("no go_goroutines: the Go collector is missing")
	}
}
