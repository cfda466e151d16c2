package k8s

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Limits of the dev node's run.
const (
	// readyWithin bounds a one-node cluster's start, with room for a
	// loaded CI machine.
	readyWithin = time.Minute
	// stopWithin bounds its stop after SIGTERM: the pod's grace period.
	stopWithin = 30 * time.Second
	// probeEvery is how often the probes are polled.
	probeEvery = 100 * time.Millisecond
)

// ledgerdBin is the ledgerd that TestMain builds.
var ledgerdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "k8s-ledgerd")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ledgerdBin = filepath.Join(dir, "ledgerd")
	out, err := exec.Command("go", "build", "-o", ledgerdBin, "github.com/ledgerd/ledgerd/cmd/ledgerd").CombinedOutput()
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "build ledgerd: %v\n%s", err, out)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestDevNodeStarts runs the dev overlay's node as its pod would, with its
// environment as rendered (so ledgerd's own checks of the values run, not
// only the flag parser), except what a pod has and this machine must not:
// the listeners move from 0.0.0.0 to free loopback ports and the PVC and
// the token Secret to temporary files. Its probes must answer on the port
// they name, and SIGTERM must stop it cleanly within the grace period.
func TestDevNodeStarts(t *testing.T) {
	c := render(t, "overlays/dev")
	ctr := ledgerdContainer(t, c.sts)
	env := containerEnv(t, c.sts)
	ports := map[string]string{} // container port name -> loopback address
	for name, port := range map[string]string{
		"LEDGER_NATS_LISTEN": "nats", "LEDGER_RAFT_LISTEN": "raft", "LEDGER_HTTP_LISTEN": "http",
	} {
		ports[port] = freeAddr(t)
		env[name] = ports[port]
	}
	dir := t.TempDir()
	env["LEDGER_DATA_DIR"] = filepath.Join(dir, "data")
	env["LEDGER_HTTP_TOKEN_FILE"] = filepath.Join(dir, "token")
	if err := os.WriteFile(env["LEDGER_HTTP_TOKEN_FILE"], []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ledgerdBin, ctr.Args...)
	cmd.Env = podEnv(env)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false // set once done has been received from
	defer func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("ledgerd output:\n%s", logs.String())
		}
	}()
	for _, p := range []*corev1.Probe{ctr.LivenessProbe, ctr.ReadinessProbe} {
		url := "http://" + ports[p.HTTPGet.Port.String()] + p.HTTPGet.Path
		if err := waitOK(url, done, &exited); err != nil {
			t.Fatalf("probe %s: %v", url, err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Fatalf("ledgerd after SIGTERM: %v", err)
		}
	case <-time.After(stopWithin):
		t.Fatalf("ledgerd still running %v after SIGTERM", stopWithin)
	}
}

// podEnv is this process's environment without LEDGER_* (the test's own
// shell must not leak in), plus env.
func podEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LEDGER_") {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitOK polls url until it answers 200, the process exits (then it sets
// *exited) or readyWithin passes.
func waitOK(url string, done <-chan error, exited *bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyWithin)
	defer cancel()
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	last := errors.New("no answer")
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case err := <-done:
			*exited = true
			return fmt.Errorf("ledgerd exited: %v (last answer: %w)", err, last)
		case <-ctx.Done():
			return fmt.Errorf("not 200 within %v: %w", readyWithin, last)
		case <-tick.C:
		}
	}
}
