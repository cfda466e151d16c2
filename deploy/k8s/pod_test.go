package k8s

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

// Settings of the pod test, which runs the prod overlay's StatefulSet as
// processes, one per pod, through the runbook (docs/kubernetes.md) under
// load. The durations bound hangs; none is a performance assertion.
const (
	// podLogsEnv names a directory to write every pod's whole log to.
	podLogsEnv = "LEDGERD_POD_TEST_LOGS"
	// podsScaled is the scale the test goes up to (the overlay's replicas
	// first, then back to them).
	podsScaled = 5
	// shardsAdded is what `ledgerctl shards add` adds to the overlay's
	// LEDGER_SHARDS.
	shardsAdded = 2
	// podReadyWithin bounds a pod's start until its probes answer 200.
	podReadyWithin = 2 * time.Minute
	// stepWithin bounds one operator step or one wait for the cluster.
	stepWithin = 2 * time.Minute
	// pollEvery is how often probes, the meta state and the status are
	// asked again (the kubelet's probe period is longer: stricter here).
	pollEvery = 100 * time.Millisecond
	// batchWithin bounds one batch of the load with its retries, and
	// attemptWithin one attempt.
	batchWithin   = 2 * time.Minute
	attemptWithin = 10 * time.Second
	// loadBatch transfers a batch, loadUsers accounts credited, loadPause
	// between batches: a light load.
	loadBatch = 4
	loadUsers = 16
	loadPause = 10 * time.Millisecond
)

// The Secrets the prod overlay mounts, made by the test as
// docs/kubernetes.md "Install" says (same names and keys).
const (
	tlsSecret       = "ledgerd-node-tls"
	providersSecret = "ledgerd-providers"
	tokenSecret     = "ledgerd-http-token"
	opsUser         = "ops"
	opsPassword     = "ops-password-of-the-pod-test"
	providerUser    = "acme"
	providerPass    = "acme-password-of-the-pod-test"
	providerPrefix  = "acme-"
	loadLedger      = 1
)

// raftAdvertiseEnv keeps the pod's DNS name: it is the node's identity in
// every Raft configuration, and LEDGERD_TEST_RAFT_VIA resolves it.
const raftAdvertiseEnv = "LEDGER_RAFT_ADVERTISE"

// TestPodsScaleUnderLoad runs the prod overlay's StatefulSet as processes:
// each pod is the container's own args and env as rendered, with its pod
// name, its Secrets made here and mounted as files, its PVC a directory
// kept across restarts. What a pod has and this machine cannot: every
// 0.0.0.0 listener moves to a loopback port of its own, a peer's DNS name
// (ledgerd-N.ledgerd-peers) is rewritten to that pod's port in the NATS
// routes, and the Raft advertise address keeps the DNS name, which the
// test hook LEDGERD_TEST_RAFT_VIA resolves. Under a light load of
// transfers, it goes through the runbook: 3 pods, scale to 5, add 2
// shards, drain and scale back to 3, a rolling restart; then nothing
// acknowledged is lost or doubled and every replica is where the
// placement says.
func TestPodsScaleUnderLoad(t *testing.T) {
	ps := newPodSet(t, render(t, "overlays/prod"), podsScaled)
	first := int(ptrOr(ps.sts.Spec.Replicas, 1))
	if first >= podsScaled {
		t.Fatalf("the overlay has %d replicas: the test scales to %d and back", first, podsScaled)
	}
	shards, err := strconv.Atoi(ps.envValue("LEDGER_SHARDS"))
	if err != nil {
		t.Fatalf("LEDGER_SHARDS: %v", err)
	}
	ps.buildLedgerctl()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	tl := &timeline{t: t}

	tl.step(fmt.Sprintf("start %d pods", first), func() { ps.startParallel(ctx, first, shards) })
	l := ps.startLoad(ctx)
	tl.load = l
	defer l.stop()
	tl.step(fmt.Sprintf("scale to %d", podsScaled), func() { ps.scaleUp(ctx, first, shards) })
	tl.step(fmt.Sprintf("add %d shards", shardsAdded), func() {
		ps.operator(ctx, "shards", "add", "--to", strconv.Itoa(shards+shardsAdded))
		ps.waitSpread(ctx, ps.names(podsScaled), shards+shardsAdded)
	})
	tl.step(fmt.Sprintf("scale to %d", first), func() { ps.scaleDown(ctx, first, shards+shardsAdded) })
	tl.step("rolling restart", func() { ps.rollingRestart(first) })
	tl.step("stop the load and check", func() {
		l.stop()
		ps.checkFinal(ctx, l, first, shards+shardsAdded)
	})
	tl.report()
}

// startParallel starts the first n pods as podManagementPolicy Parallel
// does, all at once, and waits until each is ready and the shards placed.
func (ps *podSet) startParallel(ctx context.Context, n, shards int) {
	for i := range n {
		ps.start(i)
	}
	for i := range n {
		ps.waitReady(i)
	}
	ps.connect()
	ps.waitSpread(ctx, ps.names(n), shards)
}

// scaleUp starts the pods from ordinal from up to podsScaled with the same
// env (their routes name the first pods only, as rendered): they join by
// themselves and receive replicas until the spread is even.
func (ps *podSet) scaleUp(ctx context.Context, from, shards int) {
	for i := from; i < podsScaled; i++ {
		ps.start(i)
	}
	for i := from; i < podsScaled; i++ {
		ps.waitReady(i)
	}
	ps.waitSpread(ctx, ps.names(podsScaled), shards)
	for i := range podsScaled {
		ps.waitReady(i) // a pod is not ready while it catches up as a nonvoter
	}
}

// scaleDown drains the pods from podsScaled down to keep, the highest
// first. The highest goes as issue 12 words it (drain, stop, remove:
// `kubectl scale` before `ledgerctl nodes remove`), the others as the
// runbook does (drain, remove, stop): both orders must work.
func (ps *podSet) scaleDown(ctx context.Context, keep, shards int) {
	for i := podsScaled - 1; i >= keep; i-- {
		name := ps.pods[i].name
		ps.operator(ctx, "nodes", "drain", name)
		ps.waitSpread(ctx, ps.names(i), shards)
		ps.waitHolds(ctx, name, nil) // it closed and deleted its copies
		if i == podsScaled-1 {
			ps.stop(i)
			ps.operator(ctx, "nodes", "remove", name)
		} else {
			ps.operator(ctx, "nodes", "remove", name)
			ps.stop(i)
		}
	}
}

// rollingRestart restarts the first n pods in the StatefulSet's order, the
// highest ordinal first, each ready again before the next goes (without
// minReadySeconds' 10 s more: stricter), on the same PVC.
func (ps *podSet) rollingRestart(n int) {
	for i := n - 1; i >= 0; i-- {
		ps.stop(i)
		ps.start(i)
		ps.waitReady(i)
	}
}

// podSet is the StatefulSet's pods as processes on this machine.
type podSet struct {
	t       *testing.T
	sts     *appsv1.StatefulSet
	ctr     *corev1.Container
	secrets map[string]map[string][]byte // Secret name -> key -> content
	pods    []*pod                       // by ordinal
	raftVia string                       // LEDGERD_TEST_RAFT_VIA of every pod
	ctlBin  string                       // ledgerctl
	ops     *nats.Conn                   // an operator's connection
	opsCl   *client.Client
}

// pod is one pod: its name, its ports on loopback, its volumes, and the
// processes its containers ran.
type pod struct {
	name  string
	ports map[string]string // container port name -> loopback address
	root  string            // its volumes: root/<volume name>
	env   []string
	cur   *testnet.Process
	runs  []*testnet.Process
}

// newPodSet gives n pods of the rendered StatefulSet their names, ports and
// directories; none is started.
func newPodSet(t *testing.T, c cluster, n int) *podSet {
	t.Helper()
	ps := &podSet{t: t, sts: c.sts, ctr: ledgerdContainer(t, c.sts), secrets: makeSecrets(t)}
	if len(ps.ctr.Command) != 0 {
		t.Fatalf("command %q: the pod test runs the image's entrypoint, ledgerd", ps.ctr.Command)
	}
	dir := t.TempDir()
	var via []string
	for i := range n {
		p := &pod{name: fmt.Sprintf("%s-%d", c.sts.Name, i), ports: map[string]string{}}
		p.root = filepath.Join(dir, p.name)
		for _, port := range ps.ctr.Ports {
			p.ports[port.Name] = testnet.FreePort(t)
		}
		via = append(via, ps.peerName(p, containerPort(ps.ctr, "raft"))+"="+p.ports["raft"])
		ps.pods = append(ps.pods, p)
	}
	ps.raftVia = strings.Join(via, ",")
	for _, p := range ps.pods {
		p.env = ps.envOf(p)
	}
	t.Cleanup(ps.cleanup)
	return ps
}

// peerName is the pod's port under its headless Service's DNS name.
func (ps *podSet) peerName(p *pod, port int32) string {
	return net.JoinHostPort(p.name+"."+ps.sts.Spec.ServiceName, strconv.Itoa(int(port)))
}

// makeSecrets makes the three Secrets of docs/kubernetes.md "Install": one
// node certificate for every pod (DNS name ledgerd) from a CA made here,
// a providers file with an operator and a provider, the HTTP token.
func makeSecrets(t *testing.T) map[string]map[string][]byte {
	t.Helper()
	ca, err := nodetls.NewCA("ledgerd-ca")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ca.Issue(t.TempDir(), nodetls.DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	read := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	providers, err := json.Marshal(map[string]any{ // JSON is YAML
		"operators": []map[string]any{{"user": opsUser, "password": opsPassword}},
		"providers": []map[string]any{{"user": providerUser, "password": providerPass,
			"ledgers": []int{loadLedger}, "accounts": []string{providerPrefix}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]map[string][]byte{
		tlsSecret:       {"tls.crt": read(f.Cert), "tls.key": read(f.Key), "ca.crt": read(f.CA)},
		providersSecret: {"providers.yaml": providers},
		tokenSecret:     {"token": []byte("pod-test-token-0123456789abcdef\n")},
	}
}

// envValue is the rendered value of an env var (ledgerd-0's).
func (ps *podSet) envValue(name string) string {
	for _, kv := range ps.pods[0].env {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			return v
		}
	}
	ps.t.Fatalf("%s not in the container's env", name)
	return ""
}

// names are the first n pods' names.
func (ps *podSet) names(n int) []string {
	var out []string
	for _, p := range ps.pods[:n] {
		out = append(out, p.name)
	}
	return out
}

// envOf is the container's env as the kubelet gives it to pod p
// (metadata.name, $(VAR) expanded), with what only a pod has mapped to
// this machine (localize), plus the Raft dial hook and TMPDIR for the
// /tmp emptyDir.
func (ps *podSet) envOf(p *pod) []string {
	t := ps.t
	t.Helper()
	vals := map[string]string{}
	var out []string
	for _, e := range ps.ctr.Env {
		v := e.Value
		if e.ValueFrom != nil { // only metadata.name: TestManifests checks
			v = p.name
		}
		vals[e.Name] = expand(t, v, vals)
		out = append(out, e.Name+"="+ps.localize(p, e.Name, vals[e.Name]))
	}
	out = append(out, "LEDGERD_TEST_RAFT_VIA="+ps.raftVia)
	if m := mountOf(ps.ctr, "/tmp"); m != nil && m.MountPath == "/tmp" {
		out = append(out, "TMPDIR="+filepath.Join(p.root, m.Name))
	}
	return out
}

// localize maps one env value of pod p to this machine, element by element
// of a comma-separated list: 0.0.0.0:PORT to the pod's loopback port of
// that container port, a peer's DNS name to that peer's port (except the
// Raft advertise address), a path under a volume mount to the pod's
// directory of that volume. Anything of a pod's network left over fails.
func (ps *podSet) localize(p *pod, name, v string) string {
	t := ps.t
	t.Helper()
	parts := strings.Split(v, ",")
	for i, part := range parts {
		if m := mountOf(ps.ctr, part); m != nil && strings.HasPrefix(part, "/") {
			parts[i] = filepath.Join(p.root, m.Name, strings.TrimPrefix(part, m.MountPath))
			continue
		}
		host, port, err := net.SplitHostPort(part)
		if err != nil {
			continue
		}
		switch {
		case host == "0.0.0.0":
			parts[i] = p.ports[ps.portName(port)]
		case name != raftAdvertiseEnv && strings.HasSuffix(host, "."+ps.sts.Spec.ServiceName):
			parts[i] = ps.peer(strings.TrimSuffix(host, "."+ps.sts.Spec.ServiceName)).ports[ps.portName(port)]
		}
	}
	out := strings.Join(parts, ",")
	if strings.Contains(out, "0.0.0.0") || (name != raftAdvertiseEnv && strings.Contains(out, "."+ps.sts.Spec.ServiceName)) {
		t.Fatalf("%s=%q: a pod's address the pod test does not map", name, v)
	}
	return out
}

// portName is the container port's name of a port number.
func (ps *podSet) portName(port string) string {
	for _, p := range ps.ctr.Ports {
		if strconv.Itoa(int(p.ContainerPort)) == port {
			return p.Name
		}
	}
	ps.t.Fatalf("port %s is no container port", port)
	return ""
}

// peer is the pod of a name.
func (ps *podSet) peer(name string) *pod {
	for _, p := range ps.pods {
		if p.name == name {
			return p
		}
	}
	ps.t.Fatalf("no pod %s", name)
	return nil
}

// mountVolumes does what the kubelet does before a pod's container
// starts: the PVC is kept (a directory made once), an emptyDir is new, a
// Secret's keys are files of its defaultMode.
func (ps *podSet) mountVolumes(p *pod) {
	t := ps.t
	t.Helper()
	for _, m := range ps.ctr.VolumeMounts {
		dir := filepath.Join(p.root, m.Name)
		vol := podVolume(ps.sts, m.Name)
		switch {
		case vol == nil && slices.ContainsFunc(ps.sts.Spec.VolumeClaimTemplates, func(c corev1.PersistentVolumeClaim) bool { return c.Name == m.Name }):
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		case vol != nil && vol.EmptyDir != nil:
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		case vol != nil && vol.Secret != nil:
			ps.mountSecret(dir, vol.Secret)
		default:
			t.Fatalf("volume mount %s: no volume the pod test knows", m.Name)
		}
	}
}

func (ps *podSet) mountSecret(dir string, s *corev1.SecretVolumeSource) {
	t := ps.t
	t.Helper()
	keys, ok := ps.secrets[s.SecretName]
	if !ok {
		t.Fatalf("Secret %s is mounted but docs/kubernetes.md makes no such Secret", s.SecretName)
	}
	if err := os.RemoveAll(dir); err != nil { // its files are read-only
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mode := os.FileMode(ptrOr(s.DefaultMode, 0o644))
	for k, b := range keys {
		if err := os.WriteFile(filepath.Join(dir, k), b, mode); err != nil {
			t.Fatal(err)
		}
	}
}

func podVolume(sts *appsv1.StatefulSet, name string) *corev1.Volume {
	for i, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &sts.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

// start starts pod i's container: the image's entrypoint (ledgerd) with
// the container's args and the pod's env.
func (ps *podSet) start(i int) {
	t := ps.t
	t.Helper()
	p := ps.pods[i]
	ps.mountVolumes(p)
	cmd := exec.Command(ledgerdBin, ps.ctr.Args...)
	cmd.Env = append(testnet.ChildEnv(), p.env...)
	lw := testnet.NewLog()
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	proc := &testnet.Process{Cmd: cmd, Log: lw, Exited: make(chan struct{})}
	go func() {
		proc.WaitErr = cmd.Wait()
		close(proc.Exited)
	}()
	p.cur = proc
	p.runs = append(p.runs, proc)
}

// waitReady waits until pod i's liveness probe answers 200 (from the
// process's start) and then its readiness probe, on the port and path the
// manifest names.
func (ps *podSet) waitReady(i int) {
	t := ps.t
	t.Helper()
	p := ps.pods[i]
	start := time.Now()
	for _, probe := range []*corev1.Probe{ps.ctr.LivenessProbe, ps.ctr.ReadinessProbe} {
		url := "http://" + p.ports[probe.HTTPGet.Port.String()] + probe.HTTPGet.Path
		if err := ps.probe(p, url); err != nil {
			t.Fatalf("%s: %s: %v\n%s", p.name, url, err, p.cur.Log.Tail(30))
		}
	}
	t.Logf("%s ready %v after the wait began", p.name, time.Since(start).Round(time.Millisecond))
}

// probe polls url until it answers 200, the process exits, or
// podReadyWithin passes.
func (ps *podSet) probe(p *pod, url string) error {
	deadline := time.Now().Add(podReadyWithin)
	last := errors.New("no answer")
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			cancel()
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		cancel()
		last = err
		select {
		case <-p.cur.Exited:
			return fmt.Errorf("exited: %v (last answer: %w)", p.cur.WaitErr, last)
		case <-time.After(pollEvery):
		}
	}
	return fmt.Errorf("not 200 within %v: %w", podReadyWithin, last)
}

// stop stops pod i as the kubelet does: SIGTERM (there is no preStop hook:
// ledgerd hands its leaderships off on SIGTERM), then SIGKILL once the
// grace period is over, which fails the test. It must exit 0.
func (ps *podSet) stop(i int) {
	t := ps.t
	t.Helper()
	p := ps.pods[i]
	if ps.ctr.Lifecycle != nil {
		t.Fatal("the container has a lifecycle hook the pod test does not run")
	}
	grace := time.Duration(ptrOr(ps.sts.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	start := time.Now()
	if err := p.cur.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-p.cur.Exited:
	case <-time.After(grace):
		_ = p.cur.Cmd.Process.Kill()
		<-p.cur.Exited
		t.Errorf("%s still running %v after SIGTERM: killed", p.name, grace)
	}
	if p.cur.WaitErr != nil {
		t.Errorf("%s after SIGTERM: %v\n%s", p.name, p.cur.WaitErr, p.cur.Log.Tail(20))
	}
	t.Logf("%s stopped %v after SIGTERM", p.name, time.Since(start).Round(time.Millisecond))
	p.cur = nil
}

// cleanup kills what runs, and shows the logs of a failed test.
func (ps *podSet) cleanup() {
	if ps.ops != nil {
		ps.ops.Close()
	}
	for _, p := range ps.pods {
		if p.cur != nil {
			_ = p.cur.Cmd.Process.Kill()
			<-p.cur.Exited
		}
	}
	for _, p := range ps.pods {
		for r, proc := range p.runs {
			for _, bad := range []string{"panic:", "fatal error:"} {
				if proc.Log.Contains(bad) {
					ps.t.Errorf("%s run %d logged %q", p.name, r+1, bad)
				}
			}
			if ps.t.Failed() {
				ps.t.Logf("---- %s run %d (last lines) ----\n%s", p.name, r+1, proc.Log.Tail(40))
			}
			if dir := os.Getenv(podLogsEnv); dir != "" {
				path := filepath.Join(dir, fmt.Sprintf("%s-run%d.log", p.name, r+1))
				if err := os.WriteFile(path, []byte(strings.Join(proc.Log.Lines(), "\n")+"\n"), 0o644); err != nil {
					ps.t.Error(err)
				}
			}
		}
	}
}

// buildLedgerctl builds ledgerctl beside the ledgerd of TestMain.
func (ps *podSet) buildLedgerctl() {
	ps.t.Helper()
	ps.ctlBin = filepath.Join(ps.t.TempDir(), "ledgerctl")
	out, err := exec.Command("go", "build", "-o", ps.ctlBin, "github.com/ledgerd/ledgerd/cmd/ledgerctl").CombinedOutput()
	if err != nil {
		ps.t.Fatalf("build ledgerctl: %v\n%s", err, out)
	}
}

// operator runs ledgerctl as the runbook does (`kubectl exec ledgerd-0 --
// ledgerctl --user ops ...`: on ledgerd-0's NATS) and fails on an error.
func (ps *podSet) operator(ctx context.Context, args ...string) string {
	t := ps.t
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepWithin)
	defer cancel()
	full := append([]string{"--server", "nats://" + ps.pods[0].ports["nats"], "--user", opsUser}, args...)
	cmd := exec.CommandContext(ctx, ps.ctlBin, full...)
	cmd.Env = append(testnet.ChildEnv(), "LEDGERCTL_PASSWORD="+opsPassword)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ledgerctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	shown := strings.TrimSpace(string(out))
	if slices.Contains(args, "json") {
		shown = fmt.Sprintf("(%d bytes of JSON)", len(out))
	}
	t.Logf("ledgerctl %s (%v):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), shown)
	return string(out)
}

// connect opens the operator's connection to the first pods' NATS, which
// moves to another pod when its own stops.
func (ps *podSet) connect() {
	nc, err := client.Connect(ps.natsURLs(), client.Credentials{User: opsUser, Password: opsPassword},
		nats.MaxReconnects(-1), nats.ReconnectWait(pollEvery))
	if err != nil {
		ps.t.Fatal(err)
	}
	ps.ops, ps.opsCl = nc, client.New(nc)
}

// natsURLs are the NATS client ports of the rendered replicas: what the
// client Service leads to.
func (ps *podSet) natsURLs() string {
	var urls []string
	for _, p := range ps.pods[:ptrOr(ps.sts.Spec.Replicas, 1)] {
		urls = append(urls, "nats://"+p.ports["nats"])
	}
	return strings.Join(urls, ",")
}

// meta asks the meta leader for its state with each shard's members.
func (ps *podSet) meta(ctx context.Context) (*nodeops.Meta, error) {
	body, err := transport.Marshal(&nodeops.MetaRequest{Members: true})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, attemptWithin)
	defer cancel()
	msg, err := ps.ops.RequestWithContext(rctx, nodeops.MetaSubject(transport.Subjects{Prefix: transport.DefaultPrefix}), body)
	if err != nil {
		return nil, err
	}
	var m nodeops.Meta
	if err := transport.Unmarshal(msg.Data, &m); err != nil {
		return nil, err
	}
	if m.Error != "" {
		return nil, errors.New(m.Error)
	}
	return &m, nil
}

// status asks for the cluster's status.
func (ps *podSet) status(ctx context.Context) (*transport.StatusReply, error) {
	rctx, cancel := context.WithTimeout(ctx, attemptWithin)
	defer cancel()
	return ps.opsCl.Status(rctx)
}

// waitFor polls why until it finds nothing amiss, for up to stepWithin.
func (ps *podSet) waitFor(ctx context.Context, what string, why func() string) {
	t := ps.t
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepWithin)
	defer cancel()
	for {
		w := why()
		if w == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not after %v: %s", what, stepWithin, w)
		case <-time.After(pollEvery):
		}
	}
}

// waitSpread waits until the cluster has shards shards, each with its
// voters placed (no move under way, no nonvoter) on nodes only, the
// nodes holding equal numbers of replicas ±1, and every node holding
// the groups placed on it.
func (ps *podSet) waitSpread(ctx context.Context, nodes []string, shards int) {
	ps.t.Helper()
	ps.waitFor(ctx, fmt.Sprintf("%d shards spread over %v", shards, nodes), func() string {
		m, err := ps.meta(ctx)
		if err != nil {
			return err.Error()
		}
		if why := spreadWhy(m, nodes, shards); why != "" {
			return why
		}
		st, err := ps.status(ctx)
		if err != nil {
			return err.Error()
		}
		return holdsWhy(st, m, nodes)
	})
}

// spreadWhy says why m is not shards shards spread evenly over nodes, or
// "".
func spreadWhy(m *nodeops.Meta, nodes []string, shards int) string {
	if len(m.Shards) != shards || len(m.Moves) != 0 {
		return fmt.Sprintf("%d shards, want %d; moves %+v", len(m.Shards), shards, m.Moves)
	}
	per := map[string]int{}
	for _, n := range nodes {
		per[n] = 0
	}
	for _, s := range m.Shards {
		voters := slices.Sorted(slices.Values(s.Voters))
		placed := slices.Sorted(slices.Values(s.Placement))
		if len(placed) != int(min(m.Replicas, uint32(len(nodes)))) || !slices.Equal(voters, placed) || len(s.Nonvoters) != 0 {
			return fmt.Sprintf("shard %d: placed %v, voters %v, nonvoters %v (%s)", s.ID, placed, voters, s.Nonvoters, s.MembersError)
		}
		for _, n := range placed {
			if _, ok := per[n]; !ok {
				return fmt.Sprintf("shard %d placed on %s, not one of %v", s.ID, n, nodes)
			}
			per[n]++
		}
	}
	counts := slices.Collect(maps.Values(per))
	if slices.Max(counts)-slices.Min(counts) > 1 {
		return fmt.Sprintf("replicas per node %v: not even", per)
	}
	return ""
}

// holdsWhy says why a node of nodes does not hold exactly the shard groups
// placed on it (as it reports them in the status), or "".
func holdsWhy(st *transport.StatusReply, m *nodeops.Meta, nodes []string) string {
	for _, n := range nodes {
		if why := nodeHoldsWhy(st, n, placedOn(m, n)); why != "" {
			return why
		}
	}
	return ""
}

// nodeHoldsWhy says why node does not report exactly the shard groups
// want, or "".
func nodeHoldsWhy(st *transport.StatusReply, node string, want []uint32) string {
	i := slices.IndexFunc(st.Nodes, func(n transport.NodeStatus) bool { return n.ID == node })
	if i < 0 || st.Nodes[i].Health != "up" {
		return fmt.Sprintf("%s did not answer the status", node)
	}
	var held []uint32
	for _, g := range st.Nodes[i].Groups {
		if g.ID != 0 {
			held = append(held, g.ID)
		}
	}
	slices.Sort(held)
	if !slices.Equal(held, want) {
		return fmt.Sprintf("%s holds shards %v, placed %v", node, held, want)
	}
	return ""
}

// placedOn is the shards whose voters are placed on node, sorted.
func placedOn(m *nodeops.Meta, node string) []uint32 {
	var ids []uint32
	for _, s := range m.Shards {
		if slices.Contains(s.Placement, node) {
			ids = append(ids, s.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// waitHolds waits until node reports exactly the shard groups want.
func (ps *podSet) waitHolds(ctx context.Context, node string, want []uint32) {
	ps.t.Helper()
	ps.waitFor(ctx, node+" holds "+fmt.Sprint(want), func() string {
		st, err := ps.status(ctx)
		if err != nil {
			return err.Error()
		}
		return nodeHoldsWhy(st, node, want)
	})
}

// timeline measures and logs the test's steps, with what the load saw in
// each.
type timeline struct {
	t     *testing.T
	load  *podLoad
	steps []stepTime
}

type stepTime struct {
	name string
	when span
}

func (tl *timeline) step(name string, f func()) {
	tl.t.Helper()
	start := time.Now()
	f()
	tl.steps = append(tl.steps, stepTime{name, span{start, time.Now()}})
	tl.t.Logf("step %q took %v", name, time.Since(start).Round(time.Millisecond))
}

// report logs each step's duration and what the load saw meanwhile.
func (tl *timeline) report() {
	var total time.Duration
	for _, s := range tl.steps {
		took := s.when.to.Sub(s.when.from)
		line := fmt.Sprintf("%-24s %8v", s.name, took.Round(time.Millisecond))
		if tl.load != nil {
			n, longest := tl.load.during(s.when)
			line += fmt.Sprintf("   %4d batches answered, the longest waiting meanwhile %v", n, longest.Round(time.Millisecond))
		}
		tl.t.Log(line)
		total += took
	}
	tl.t.Logf("%-24s %8v", "all steps", total.Round(time.Millisecond))
}
