package storage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
)

// Hang guards, not performance bounds.
const (
	readyGuard = 60 * time.Second
	exitGuard  = 30 * time.Second
)

// process is one run of the real ledgerd binary.
type process struct {
	cmd     *exec.Cmd
	log     *logWriter
	exited  chan struct{}
	waitErr error
	nats    string
}

// startLedgerd runs bin alone on dataDir and waits for "ledgerd ready", or
// for it to exit (ready reports which).
func startLedgerd(t *testing.T, bin, dataDir string, args ...string) (p *process, ready bool) {
	t.Helper()
	natsAddr := testnet.FreePort(t)
	p = launch(t, bin, natsAddr, append([]string{
		"--data-dir", dataDir, "--nats-listen", natsAddr, "--raft-listen", testnet.FreePort(t),
		"--node-id", "node-1", "--shards", "2", "--log-level", "info",
	}, args...))
	return p, p.waitReady(t)
}

// launch starts bin with args; its clients connect to natsAddr.
func launch(t *testing.T, bin, natsAddr string, args []string) *process {
	t.Helper()
	lw := &logWriter{ready: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ledgerd: %v", err)
	}
	p := &process{cmd: cmd, log: lw, exited: make(chan struct{}), nats: "nats://" + natsAddr}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	return p
}

// waitReady waits for "ledgerd ready" (true) or for the process to exit.
func (p *process) waitReady(t *testing.T) bool {
	t.Helper()
	select {
	case <-p.log.ready:
		return true
	case <-p.exited:
		return false
	case <-time.After(readyGuard):
		t.Fatalf("ledgerd neither ready nor exited after %v:\n%s", readyGuard, p.log.tail(40))
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(exitGuard):
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(exitGuard):
		t.Fatalf("ledgerd did not exit %v after SIGTERM", exitGuard)
	}
}

func (p *process) connect(t *testing.T) (*nats.Conn, *client.Client) {
	t.Helper()
	nc, err := nats.Connect(p.nats, nats.NoReconnect(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", p.nats, err)
	}
	return nc, client.New(nc)
}

// logWriter collects the process's output lines and closes ready at the
// "ledgerd ready" line.
type logWriter struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	ready   chan struct{}
	isReady bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		w.lines = append(w.lines, line)
		if !w.isReady && strings.Contains(line, "ledgerd ready") {
			w.isReady = true
			close(w.ready)
		}
	}
}

func (w *logWriter) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]string(nil), w.lines...)
	if len(w.partial) > 0 {
		out = append(out, string(w.partial))
	}
	return out
}

func (w *logWriter) first(s string) string {
	for _, l := range w.all() {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

func (w *logWriter) count(s string) int {
	n := 0
	for _, l := range w.all() {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func (w *logWriter) tail(n int) string {
	l := w.all()
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// childEnv is the test's environment without LEDGER_* variables, which
// would override flags the test does not pass.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LEDGER_") {
			env = append(env, kv)
		}
	}
	return env
}

// buildLedgerd builds ./cmd/ledgerd from the module root into a temp dir.
func buildLedgerd(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build ledgerd: %v", err)
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "ledgerd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/ledgerd")
	build.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ledgerd: %v\n%s", err, out)
	}
	return bin
}
