package storage

import (
	"os/exec"
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
	lw := testnet.NewLog()
	cmd := exec.Command(bin, args...)
	cmd.Env = testnet.ChildEnv()
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
	case <-p.log.Ready():
		return true
	case <-p.exited:
		return false
	case <-time.After(readyGuard):
		t.Fatalf("ledgerd neither ready nor exited after %v:\n%s", readyGuard, p.log.Tail(40))
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

// logWriter is a process's log (testnet.Log).
type logWriter = testnet.Log

// buildLedgerd builds ./cmd/ledgerd.
func buildLedgerd(t *testing.T) string { return testnet.BuildLedgerd(t, false) }
