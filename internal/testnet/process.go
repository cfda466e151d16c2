package testnet

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The parts of the process tests (chaos, e2e/crash, e2e/storage) that run
// real ledgerd processes: building the binary, its environment, its log.

// Log collects a process's output lines; Ready is closed at its first
// "ledgerd ready" line.
type Log struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	ready   chan struct{}
	isReady bool
}

// NewLog returns an empty log.
func NewLog() *Log { return &Log{ready: make(chan struct{})} }

// Write adds output; a line is complete at its newline.
func (w *Log) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		w.lines = append(w.lines, line)
		if !w.isReady && strings.Contains(line, "ledgerd ready") {
			w.isReady = true
			close(w.ready)
		}
	}
	return len(p), nil
}

// Ready is closed once the process logged "ledgerd ready".
func (w *Log) Ready() <-chan struct{} { return w.ready }

// Lines returns every line so far, the unfinished last one too.
func (w *Log) Lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]string(nil), w.lines...)
	if len(w.partial) > 0 {
		out = append(out, string(w.partial))
	}
	return out
}

// Contains reports whether a line holds s.
func (w *Log) Contains(s string) bool { return w.First(s) != "" }

// First returns the first line that holds s, or "".
func (w *Log) First(s string) string {
	for _, l := range w.Lines() {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// Count returns how many lines hold s.
func (w *Log) Count(s string) int {
	n := 0
	for _, l := range w.Lines() {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// Tail returns the last n lines, joined.
func (w *Log) Tail(n int) string {
	l := w.Lines()
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// ChildEnv is the test's environment without LEDGER_* variables (they would
// override flags the test does not pass) and LEDGERD_TEST_* ones (hooks a
// test sets for a process of its own choosing).
func ChildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LEDGER_") && !strings.HasPrefix(kv, "LEDGERD_TEST_") {
			env = append(env, kv)
		}
	}
	return env
}

// ledgerdBuildTimeout bounds a build of ledgerd (a cold cache takes minutes
// on 2 cores).
const ledgerdBuildTimeout = 5 * time.Minute

// BuildLedgerd builds ./cmd/ledgerd of this module into a temporary
// directory, with the race detector if race is set, and returns its path.
// Without a go command the test is skipped.
func BuildLedgerd(t testing.TB, race bool) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build ledgerd: %v", err)
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatalf("not in a module (GOMOD=%q)", gomod)
	}
	bin := filepath.Join(t.TempDir(), "ledgerd")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/ledgerd")
	ctx, cancel := context.WithTimeout(context.Background(), ledgerdBuildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, args...)
	build.Dir = filepath.Dir(gomod)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}
