// Package k8s holds the Kubernetes manifests of ledgerd (a kustomize base
// and its overlays) and the test that renders them. There is no cluster
// here: the test renders every kustomization with the kustomize library
// that kubectl embeds, decodes each object strictly into the Kubernetes API
// types (an unknown or misspelt field fails) and checks what a node needs
// to work in a pod, down to the flags the real ledgerd binary accepts.
package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Names the manifests and the docs share.
const (
	stsName      = "ledgerd"
	headlessName = "ledgerd-peers"
	clientName   = "ledgerd"
	pdbName      = "ledgerd"
	// gracePeriodMin covers the leadership hand-off at SIGTERM (up to 5 s
	// a group, in parallel) and the close of Raft, NATS and the stores.
	gracePeriodMin = 30
	// examplePod stands for metadata.name when the flags are parsed.
	examplePod = "ledgerd-0"
)

// cluster is one rendered kustomization, decoded.
type cluster struct {
	sts      *appsv1.StatefulSet
	headless *corev1.Service
	client   *corev1.Service
	pdb      *policyv1.PodDisruptionBudget
	monitor  *serviceMonitor // only in the servicemonitor overlay
}

// serviceMonitor is the part of prometheus-operator's ServiceMonitor
// (monitoring.coreos.com/v1) the overlay uses; strict decoding refuses any
// other field, so a misspelt one fails here rather than in the operator.
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// variant is a kustomization and what sets it apart.
type variant struct {
	dir      string
	replicas int32
	tls      bool // node TLS from a Secret (multi-node)
	required bool // anti-affinity required rather than preferred
	monitor  bool // a prometheus-operator ServiceMonitor
}

var variants = []variant{
	{dir: ".", replicas: 3, tls: true},
	{dir: "overlays/dev", replicas: 1},
	{dir: "overlays/prod", replicas: 3, tls: true, required: true},
	{dir: "overlays/servicemonitor", replicas: 3, tls: true, required: true, monitor: true},
}

func TestManifests(t *testing.T) {
	flags := ledgerdFlags(t)
	for _, v := range variants {
		t.Run(v.dir, func(t *testing.T) {
			c := render(t, v.dir)
			env := containerEnv(t, c.sts)
			checkStatefulSet(t, c, v)
			checkServices(t, c)
			checkPDB(t, c)
			checkAddresses(t, c, env, v)
			checkSecrets(t, c, env, v)
			checkFlags(t, flags, c, env)
			checkMetrics(t, c, env, v)
		})
	}
}

// render builds the kustomization in dir as `kubectl kustomize dir` does
// and decodes every object it makes.
func render(t *testing.T, dir string) cluster {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var c cluster
	for _, r := range m.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		kind, name := r.GetKind(), r.GetName()
		switch {
		case kind == "StatefulSet" && name == stsName && c.sts == nil:
			c.sts = strict[appsv1.StatefulSet](t, b)
		case kind == "Service" && name == headlessName && c.headless == nil:
			c.headless = strict[corev1.Service](t, b)
		case kind == "Service" && name == clientName && c.client == nil:
			c.client = strict[corev1.Service](t, b)
		case kind == "PodDisruptionBudget" && name == pdbName && c.pdb == nil:
			c.pdb = strict[policyv1.PodDisruptionBudget](t, b)
		case kind == "ServiceMonitor" && c.monitor == nil:
			c.monitor = strict[serviceMonitor](t, b)
		default:
			t.Fatalf("unexpected object %s/%s", kind, name)
		}
	}
	if c.sts == nil || c.headless == nil || c.client == nil || c.pdb == nil {
		t.Fatalf("want a StatefulSet, two Services and a PodDisruptionBudget, got %d objects", m.Size())
	}
	return c
}

// strict decodes an object, refusing any field its type does not have.
func strict[T any](t *testing.T, b []byte) *T {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	v := new(T)
	if err := d.Decode(v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, b)
	}
	return v
}

// containerEnv is the ledgerd container's environment with each value
// as the pod would see it: $(VAR) expanded, metadata.name an example pod.
func containerEnv(t *testing.T, sts *appsv1.StatefulSet) map[string]string {
	t.Helper()
	c := ledgerdContainer(t, sts)
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
				t.Fatalf("env %s: only metadata.name is expected from the downward API", e.Name)
			}
			v = examplePod
		}
		if _, dup := env[e.Name]; dup {
			t.Fatalf("env %s given twice", e.Name)
		}
		env[e.Name] = expand(t, v, env)
	}
	return env
}

var varRef = regexp.MustCompile(`\$\(([A-Z0-9_]+)\)`)

// expand replaces $(VAR) as the kubelet does, from variables defined
// earlier only: a reference to a later one would stay literal.
func expand(t *testing.T, v string, env map[string]string) string {
	t.Helper()
	return varRef.ReplaceAllStringFunc(v, func(ref string) string {
		name := varRef.FindStringSubmatch(ref)[1]
		val, ok := env[name]
		if !ok {
			t.Fatalf("%s refers to %s, not defined before it", v, name)
		}
		return val
	})
}

func ledgerdContainer(t *testing.T, sts *appsv1.StatefulSet) *corev1.Container {
	t.Helper()
	cs := sts.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "ledgerd" {
		t.Fatalf("want the one container ledgerd, got %d", len(cs))
	}
	return &cs[0]
}

func checkStatefulSet(t *testing.T, c cluster, v variant) {
	t.Helper()
	s := c.sts.Spec
	pod := s.Template.Spec
	if s.Replicas == nil || *s.Replicas != v.replicas {
		t.Errorf("replicas %d, want %d", ptrOr(s.Replicas, 1), v.replicas)
	}
	if s.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q, want Parallel", s.PodManagementPolicy)
	}
	if s.ServiceName != headlessName {
		t.Errorf("serviceName %q, want %q", s.ServiceName, headlessName)
	}
	if !selects(s.Selector.MatchLabels, s.Template.Labels) {
		t.Errorf("selector %v does not select the pod labels %v", s.Selector.MatchLabels, s.Template.Labels)
	}
	if len(s.VolumeClaimTemplates) != 1 || s.VolumeClaimTemplates[0].Name != "data" ||
		s.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().IsZero() {
		t.Errorf("want one PVC template data with a storage request: %+v", s.VolumeClaimTemplates)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < gracePeriodMin {
		t.Errorf("terminationGracePeriodSeconds %v, want at least %d for the leadership hand-off", g, gracePeriodMin)
	}
	checkAntiAffinity(t, pod.Affinity, s.Template.Labels, v.required)
	checkSecurity(t, c.sts)
	checkProbes(t, ledgerdContainer(t, c.sts))
	if r := ledgerdContainer(t, c.sts).Resources; r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
		t.Errorf("want cpu and memory requests and a memory limit: %+v", r)
	}
}

// checkMetrics: Prometheus finds /metrics on the port ledgerd serves it on,
// by the pods' annotations, or by the ServiceMonitor of its overlay through
// the headless Service (which lists pods not ready yet: a joining or
// repairing node is the one to watch).
func checkMetrics(t *testing.T, c cluster, env map[string]string, v variant) {
	t.Helper()
	a := c.sts.Spec.Template.Annotations
	_, port, err := net.SplitHostPort(env["LEDGER_HTTP_LISTEN"])
	if err != nil {
		t.Fatalf("LEDGER_HTTP_LISTEN: %v", err)
	}
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != port || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("annotations %v: want scrape true, port %s (LEDGER_HTTP_LISTEN), path /metrics", a, port)
	}
	if !v.monitor {
		if c.monitor != nil {
			t.Error("a ServiceMonitor outside its overlay: the CRD may not be installed")
		}
		return
	}
	m := c.monitor
	if m == nil {
		t.Fatal("no ServiceMonitor")
	}
	if m.APIVersion != "monitoring.coreos.com/v1" || len(m.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor %+v", m)
	}
	e := m.Spec.Endpoints[0]
	if e.Path != "/metrics" || !selects(m.Spec.Selector.MatchLabels, c.headless.Labels) ||
		!slices.ContainsFunc(c.headless.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
		t.Errorf("ServiceMonitor endpoint %+v selecting %v: want /metrics on a port of %s (labels %v)", e, m.Spec.Selector.MatchLabels, headlessName, c.headless.Labels)
	}
}

// ptrOr is *p, or def for nil (the API's default).
func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// selects says whether a selector's labels are all among labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkAntiAffinity(t *testing.T, a *corev1.Affinity, labels map[string]string, required bool) {
	t.Helper()
	if a == nil || a.PodAntiAffinity == nil {
		t.Fatal("no pod anti-affinity")
	}
	var terms []corev1.PodAffinityTerm
	for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
		terms = append(terms, w.PodAffinityTerm)
	}
	if required {
		if len(terms) != 0 {
			t.Errorf("preferred anti-affinity left beside the required one")
		}
		terms = a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	}
	if len(terms) != 1 || terms[0].TopologyKey != "kubernetes.io/hostname" ||
		terms[0].LabelSelector == nil || !selects(terms[0].LabelSelector.MatchLabels, labels) {
		t.Errorf("want one anti-affinity term (required: %v) on kubernetes.io/hostname for the pods: %+v", required, terms)
	}
}

func checkSecurity(t *testing.T, sts *appsv1.StatefulSet) {
	t.Helper()
	ps := sts.Spec.Template.Spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
		t.Errorf("pod must run as a non-root user: %+v", ps)
	}
	if ps == nil || ps.FSGroup == nil {
		t.Errorf("pod needs an fsGroup so that its user may write the PVC")
	}
	cs := ledgerdContainer(t, sts).SecurityContext
	if cs == nil || cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
		t.Errorf("container root filesystem must be read-only: %+v", cs)
	}
	if cs == nil || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
		t.Errorf("container must not allow privilege escalation: %+v", cs)
	}
}

func checkProbes(t *testing.T, c *corev1.Container) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", p.name, p.path)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe: GET %s on port %s, want %s on port http", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}
}

// containerPort is the port the container names name, or 0.
func containerPort(c *corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func checkServices(t *testing.T, c cluster) {
	t.Helper()
	labels := c.sts.Spec.Template.Labels
	h := c.headless.Spec
	if h.ClusterIP != corev1.ClusterIPNone || !h.PublishNotReadyAddresses {
		t.Errorf("%s: want clusterIP None and publishNotReadyAddresses (routes of pods not ready yet)", headlessName)
	}
	want := map[string]bool{"raft": false, "nats-cluster": false, "http": false}
	checkPorts(t, c, h.Ports, want)
	cl := c.client.Spec
	if cl.ClusterIP == corev1.ClusterIPNone || cl.PublishNotReadyAddresses {
		t.Errorf("%s: clients go to ready nodes only, through a cluster IP", clientName)
	}
	checkPorts(t, c, cl.Ports, map[string]bool{"nats": false})
	for _, s := range []*corev1.Service{c.headless, c.client} {
		if !selects(s.Spec.Selector, labels) {
			t.Errorf("service %s: selector %v does not select the pods %v", s.Name, s.Spec.Selector, labels)
		}
	}
}

// checkPorts wants exactly the named ports, each aimed at the container
// port of that name.
func checkPorts(t *testing.T, c cluster, ports []corev1.ServicePort, want map[string]bool) {
	t.Helper()
	ctr := ledgerdContainer(t, c.sts)
	for _, p := range ports {
		seen, ok := want[p.Name]
		if !ok || seen {
			t.Errorf("service port %s unexpected", p.Name)
			continue
		}
		want[p.Name] = true
		if p.TargetPort.String() != p.Name || containerPort(ctr, p.Name) != p.Port {
			t.Errorf("service port %s: %d to %s, want the container port of that name (%d)", p.Name, p.Port, p.TargetPort.String(), containerPort(ctr, p.Name))
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("service port %s missing", name)
		}
	}
}

func checkPDB(t *testing.T, c cluster) {
	t.Helper()
	s := c.pdb.Spec
	if s.MaxUnavailable == nil || s.MaxUnavailable.String() != "1" || s.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget: want maxUnavailable 1 alone, got %+v", s)
	}
	if s.Selector == nil || !selects(s.Selector.MatchLabels, c.sts.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget selector does not select the pods")
	}
}

// checkAddresses: every listener on 0.0.0.0 at its named container port,
// the node id from the pod name, Raft advertised and NATS routed by the
// stable names of the headless service, one route per pod.
func checkAddresses(t *testing.T, c cluster, env map[string]string, v variant) {
	t.Helper()
	ctr := ledgerdContainer(t, c.sts)
	if env["LEDGER_NODE_ID"] != examplePod {
		t.Errorf("LEDGER_NODE_ID must come from metadata.name")
	}
	listeners := map[string]string{
		"LEDGER_NATS_LISTEN": "nats", "LEDGER_RAFT_LISTEN": "raft", "LEDGER_HTTP_LISTEN": "http",
	}
	if v.replicas > 1 {
		listeners["LEDGER_NATS_CLUSTER_LISTEN"] = "nats-cluster"
	}
	for name, port := range listeners {
		want := net.JoinHostPort("0.0.0.0", strconv.Itoa(int(containerPort(ctr, port))))
		if env[name] != want {
			t.Errorf("%s=%q, want %q (port %s)", name, env[name], want, port)
		}
	}
	raftPort := strconv.Itoa(int(containerPort(ctr, "raft")))
	if want := net.JoinHostPort(examplePod+"."+headlessName, raftPort); env["LEDGER_RAFT_ADVERTISE"] != want {
		t.Errorf("LEDGER_RAFT_ADVERTISE=%q, want %q", env["LEDGER_RAFT_ADVERTISE"], want)
	}
	if got := env["LEDGER_BOOTSTRAP_EXPECT"]; got != strconv.Itoa(int(v.replicas)) {
		t.Errorf("LEDGER_BOOTSTRAP_EXPECT=%q, want the replicas, %d", got, v.replicas)
	}
	if v.replicas == 1 {
		for _, name := range []string{"LEDGER_NATS_CLUSTER_LISTEN", "LEDGER_NATS_ROUTES"} {
			if _, ok := env[name]; ok {
				t.Errorf("%s on a single node", name)
			}
		}
		return
	}
	clusterPort := strconv.Itoa(int(containerPort(ctr, "nats-cluster")))
	var routes []string
	for i := range v.replicas {
		routes = append(routes, net.JoinHostPort(fmt.Sprintf("%s-%d.%s", stsName, i, headlessName), clusterPort))
	}
	if got := env["LEDGER_NATS_ROUTES"]; got != strings.Join(routes, ",") {
		t.Errorf("LEDGER_NATS_ROUTES=%q, want every pod: %q", got, strings.Join(routes, ","))
	}
	dataMount := mountOf(ctr, env["LEDGER_DATA_DIR"])
	if dataMount == nil || dataMount.Name != "data" || dataMount.MountPath != env["LEDGER_DATA_DIR"] {
		t.Errorf("LEDGER_DATA_DIR=%q must be the PVC data's mount", env["LEDGER_DATA_DIR"])
	}
}

// mountOf is the volume mount that holds path, or nil.
func mountOf(c *corev1.Container, path string) *corev1.VolumeMount {
	for i, m := range c.VolumeMounts {
		if path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/") {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// checkSecrets: the files the flags name come from Secret volumes, node
// TLS whenever the node has peers, and never --insecure.
func checkSecrets(t *testing.T, c cluster, env map[string]string, v variant) {
	t.Helper()
	ctr := ledgerdContainer(t, c.sts)
	files := []string{"LEDGER_HTTP_TOKEN_FILE"}
	tlsFiles := []string{"LEDGER_TLS_CERT", "LEDGER_TLS_KEY", "LEDGER_TLS_CA"}
	for _, name := range tlsFiles {
		_, ok := env[name]
		if ok != v.tls {
			t.Errorf("%s given: %v, want %v", name, ok, v.tls)
		}
	}
	if v.tls {
		files = append(files, tlsFiles...)
		files = append(files, "LEDGER_PROVIDERS")
	}
	if _, ok := env["LEDGER_INSECURE"]; ok || slices.ContainsFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, "--insecure") }) {
		t.Errorf("--insecure must not be set")
	}
	for _, name := range files {
		m := mountOf(ctr, env[name])
		if m == nil || !m.ReadOnly || secretVolume(c.sts, m.Name) == nil {
			t.Errorf("%s=%q is not on a read-only Secret volume", name, env[name])
		}
	}
}

func secretVolume(sts *appsv1.StatefulSet, name string) *corev1.SecretVolumeSource {
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v.Secret
		}
	}
	return nil
}

// checkFlags turns the environment into the flags ledgerd reads from it
// (LEDGER_<NAME>) and has the real binary's parser take them with the
// container's args: an unknown flag or a bad value fails.
func checkFlags(t *testing.T, known map[string]bool, c cluster, env map[string]string) {
	t.Helper()
	ctr := ledgerdContainer(t, c.sts)
	if len(ctr.Command) != 0 {
		t.Errorf("command %q: the image's entrypoint is ledgerd", ctr.Command)
	}
	args := slices.Clone(ctr.Args)
	for name, val := range env {
		flag, ok := strings.CutPrefix(name, "LEDGER_")
		if !ok {
			t.Errorf("env %s is no ledgerd flag", name)
			continue
		}
		flag = strings.ReplaceAll(strings.ToLower(flag), "_", "-")
		if !known[flag] {
			t.Errorf("env %s: ledgerd has no flag --%s", name, flag)
		}
		args = append(args, "--"+flag+"="+val)
	}
	slices.Sort(args)
	out, err := exec.Command(ledgerdBin, append(args, "--help")...).CombinedOutput()
	if err != nil {
		t.Errorf("ledgerd refuses the flags %q: %v\n%s", args, err, firstLine(out))
	}
}

func firstLine(b []byte) []byte {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return line
}

var flagName = regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z][a-z0-9-]*)`)

// ledgerdFlags reads the names of ledgerd's flags from its --help.
func ledgerdFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(ledgerdBin, "--help").Output()
	if err != nil {
		t.Fatalf("ledgerd --help: %v", err)
	}
	flags := map[string]bool{}
	for _, m := range flagName.FindAllSubmatch(out, -1) {
		flags[string(m[1])] = true
	}
	for _, f := range []string{"node-id", "data-dir", "raft-advertise", "nats-routes", "tls-cert"} {
		if !flags[f] {
			t.Fatalf("--%s not found in ledgerd --help:\n%s", f, out)
		}
	}
	return flags
}
