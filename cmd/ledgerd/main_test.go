package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
)

// The test binary is ledgerd itself when LEDGERD_TEST_MAIN is set: the
// process tests run it with ledgerd's arguments.
func TestMain(m *testing.M) {
	if os.Getenv("LEDGERD_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// Every usage mistake says what is wrong, shows the usage and exits 2,
// before anything starts.
func TestUsageMistakesExit2WithTheUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string // NAME=value
		want string
	}{
		{args: []string{"--log-level", "verbose"}, want: `--log-level "verbose": want debug, info, warn or error`},
		{args: []string{"--log-format", "xml"}, want: `--log-format "xml": want text or json`},
		{env: "LEDGER_SHARDS=abc", want: `LEDGER_SHARDS="abc": invalid argument "abc" for "--shards" flag`},
		{args: []string{"extra"}, want: `unknown command "extra" for "ledgerd"`},
		{args: []string{"--node-id", "bad id"}, want: `--node-id: node id "bad id": only letters, digits, '-' and '_' are allowed`},
		{args: []string{"--shards", "0"}, want: "--shards must be at least 1"},
		{args: []string{"--no-such-flag"}, want: "unknown flag: --no-such-flag"},
		{args: []string{"--http-token-file", "t"}, want: "--http-token-file needs --http-listen"},
	} {
		if name, value, ok := strings.Cut(c.env, "="); ok {
			t.Setenv(name, value)
		}
		var stdout, stderr bytes.Buffer
		code := execute(c.args, &stdout, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), "Error: "+c.want) || !strings.Contains(stderr.String(), "Usage:\n  ledgerd [flags]") {
			t.Errorf("%q %s: exit %d, stderr\n%s\nwant exit 2, %q and the usage", c.args, c.env, code, stderr.String(), c.want)
		}
		if name, _, ok := strings.Cut(c.env, "="); ok {
			os.Unsetenv(name)
		}
	}
}

func TestVersionNamesTheBuild(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"--version"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, &stderr)
	}
	if got := stdout.String(); !strings.HasPrefix(got, "ledgerd version "+transport.Version+", commit ") || !strings.Contains(got, ", go1.") {
		t.Fatalf("--version printed %q", got)
	}
}

// proc is a ledgerd process: the test binary run as ledgerd.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func startLedgerd(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(os.Args[0], args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "LEDGERD_TEST_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// processTimeout bounds a process test's waits.
const processTimeout = time.Minute

// waitFor waits until the log holds s.
func (p *proc) waitFor(s string) {
	p.t.Helper()
	deadline := time.After(processTimeout)
	for !strings.Contains(p.output(), s) {
		select {
		case <-p.done:
			p.t.Fatalf("ledgerd exited before %q:\n%s", s, p.output())
		case <-deadline:
			p.t.Fatalf("no %q:\n%s", s, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// exit waits for the process to end and returns its exit status.
func (p *proc) exit() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(processTimeout):
		p.t.Fatalf("ledgerd did not exit:\n%s", p.output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM and wants a clean exit that logged no error.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	if code := p.exit(); code != 0 {
		p.t.Fatalf("SIGTERM: exit %d, want 0:\n%s", code, p.output())
	}
	if out := p.output(); strings.Contains(out, "level=ERROR") || strings.Contains(out, `"level":"ERROR"`) {
		p.t.Fatalf("a clean stop logged an error:\n%s", out)
	}
}

func get(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestProcessFlagMistakeExits2(t *testing.T) {
	p := startLedgerd(t, "--log-level", "verbose")
	if code := p.exit(); code != exitUsage || !strings.Contains(p.output(), "Usage:") {
		t.Fatalf("exit %d, want 2 and the usage:\n%s", code, p.output())
	}
}

func nodeArgs(t *testing.T, extra ...string) []string {
	return append([]string{"--data-dir", t.TempDir(), "--nats-listen", testnet.FreePort(t), "--raft-listen", testnet.FreePort(t)}, extra...)
}

// A single node serves the operator endpoints from its start, guards
// /admin and /debug with the token, and stops cleanly on SIGTERM: exit 0
// and no ERROR in its log.
func TestProcessServesTheTokenGuardedEndpointsAndStopsCleanly(t *testing.T) {
	addr := testnet.FreePort(t)
	token := "0123456789abcdef-secret"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startLedgerd(t, nodeArgs(t, "--http-listen", addr, "--http-token-file", tokenFile)...)
	p.waitFor("ledgerd ready")
	base := "http://" + addr
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", http.StatusOK},
		{"/readyz", "", http.StatusOK},
		{"/metrics", "", http.StatusOK}, // open, like the probes
		{"/debug/pprof/", "", http.StatusUnauthorized},
		{"/debug/pprof/", "wrong-token-of-the-same-size", http.StatusUnauthorized},
		{"/debug/pprof/", token, http.StatusOK},
	} {
		if got := get(t, base+c.path, c.token); got != c.want {
			t.Errorf("GET %s (token %q): %d, want %d", c.path, c.token, got, c.want)
		}
	}
	post := func(url, token string) int {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("id=node-1"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded") // what a browser form sends
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post(base+"/admin/remove-node?id=node-1", ""); got != http.StatusUnauthorized {
		t.Errorf("a form post without the token: %d, want 401", got)
	}
	if got := post(base+"/admin/remove-node?id=node-1", token); got != http.StatusConflict {
		t.Errorf("removing the node that answers, with the token: %d, want 409", got)
	}
	p.stop()
}

// A node forming a cluster answers /healthz and /metrics but is not ready,
// says once that it waits, serves no /admin or /debug without a token
// file, and a SIGTERM while it waits is a clean stop.
func TestProcessStopWhileFormingIsClean(t *testing.T) {
	addr := testnet.FreePort(t)
	p := startLedgerd(t, nodeArgs(t, "--bootstrap-expect", "2", "--insecure", "--log-format", "json", "--http-listen", addr)...)
	p.waitFor("waiting for nodes to form the cluster")
	base := "http://" + addr
	for path, want := range map[string]int{"/healthz": http.StatusOK, "/readyz": http.StatusServiceUnavailable, "/metrics": http.StatusOK,
		"/debug/pprof/": http.StatusNotFound, "/admin/remove-node": http.StatusNotFound} {
		if got := get(t, base+path, ""); got != want {
			t.Errorf("GET %s while forming: %d, want %d", path, got, want)
		}
	}
	time.Sleep(2 * time.Second) // ten rounds of discovery
	p.stop()
	waiting := 0
	for _, line := range strings.Split(strings.TrimSpace(p.output()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("--log-format json wrote %q: %v", line, err)
		}
		if rec["msg"] == "waiting for nodes to form the cluster" {
			waiting++
		}
	}
	if waiting != 1 {
		t.Fatalf("logged the wait %d times in 2 s, want once:\n%s", waiting, p.output())
	}
}

// A taken --http-listen port stops ledgerd with the reason.
func TestProcessTakenHTTPPortFails(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := startLedgerd(t, nodeArgs(t, "--http-listen", l.Addr().String())...)
	if code := p.exit(); code != exitFailed || !strings.Contains(p.output(), "--http-listen") || !strings.Contains(p.output(), "address already in use") {
		t.Fatalf("exit %d, want 1 and the taken port:\n%s", code, p.output())
	}
}

// SIGHUP puts a changed providers file in force without a restart: a new
// provider may connect; a bad file is reported and changes nothing.
func TestProcessReloadsProvidersOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "providers.yaml")
	write := func(text string) {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const base = "operators: [{user: ops, password: ops-pw}]\n"
	write(base)
	args := nodeArgs(t, "--providers", path)
	url := "nats://" + args[3]
	p := startLedgerd(t, args...)
	p.waitFor("ledgerd ready")
	if nc, err := nats.Connect(url, nats.UserInfo("acme", "acme-pw"), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("acme connected before it was added")
	}
	write(base + "providers: [{user: acme, password: acme-pw, ledgers: [1]}]\n") // no prefixes: bad
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitFor("providers not reloaded")
	write(base + "providers: [{user: acme, password: acme-pw, ledgers: [1], accounts: [acme-]}]\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitFor("providers reloaded")
	nc, err := nats.Connect(url, nats.UserInfo("acme", "acme-pw"), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("acme after SIGHUP: %v", err)
	}
	nc.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.exit(); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.output())
	}
}
