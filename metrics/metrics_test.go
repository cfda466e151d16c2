package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
)

// What Raft reports through go-metrics' global functions (the compat
// package, as hashicorp/raft calls it) reaches every Registry of the
// process, and the client library's global registry is left alone: two
// nodes in one process each have their own registry.
func TestRaftMetricsReachEveryRegistry(t *testing.T) {
	a, err := New()
	if err != nil {
		t.Fatal(err)
	}
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
	gometrics.IncrCounter([]string{"raft", "test", "counted"}, 3)
	for name, reg := range map[string]*Registry{"first": a, "second": b} {
		body := get(t, reg)
		if !strings.Contains(body, "raft_test_counted 3") {
			t.Errorf("the %s registry lacks Raft's counter:\n%s", name, body)
		}
		if !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
			t.Errorf("the %s registry lacks the Go or process collector", name)
		}
	}
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "raft_") {
			t.Errorf("Raft's %s leaked into the global registry", f.GetName())
		}
	}
}

func get(t *testing.T, reg *Registry) string {
	t.Helper()
	web := httptest.NewServer(reg.Handler())
	defer web.Close()
	resp, err := http.Get(web.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s, %v", resp.Status, err)
	}
	return string(b)
}
