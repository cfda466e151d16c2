package crash

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

// tlsArgs issues node i a certificate of ca and returns its TLS flags.
func tlsArgs(t *testing.T, ca *nodetls.CA, dir string) []string {
	t.Helper()
	f, err := ca.Issue(dir, nodetls.DefaultServerName)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
}

// TestTLSClusterMembership: three nodes with certificates of one CA form a
// cluster over mutual TLS (Raft and NATS routes) and move money; a node
// killed and restarted without its data, with its usual flags, joins again
// and catches up; a fourth node of the CA joins. A node with a certificate of another CA,
// told every route, reaches nothing: it never joins, never appears in the
// cluster, and the cluster does not notice it. The fourth node, killed for
// good, is removed through node-1's operator endpoint: it leaves every
// group, and the money is where it was.
func TestTLSClusterMembership(t *testing.T) {
	ca, err := nodetls.NewCA("ledgerd test cluster")
	if err != nil {
		t.Fatal(err)
	}
	mc := newCluster(t, 3, 2)
	admin := testnet.FreePort(t)
	const token = "operator-token-of-the-test"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, n := range mc.Nodes {
		n.Args = tlsArgs(t, ca, t.TempDir())
		if i == 0 {
			n.Args = append(n.Args, "--http-listen", admin, "--http-token-file", tokenFile, "--remove-grace", "2s")
		}
	}
	mc.StartAll()
	for i, n := range mc.Nodes {
		if n.Cur.Log.Contains("no node TLS") {
			t.Fatalf("node %d runs without TLS", i+1)
		}
	}
	nc, c := mc.Connect()
	defer nc.Close()
	st := mc.WaitLed(c)
	ids := accountsPerShard(t, st, 2)
	createAccounts(t, c, ids)
	ctx, cancel := reqCtx()
	defer cancel()
	// Every account pays the next, across shards and within them.
	var xs []transport.Transfer
	for k, id := range ids {
		xs = append(xs, newTransfer(fmt.Sprintf("tls-%d", k), id, ids[(k+1)%len(ids)], uint64(10+k)))
	}
	if res, err := c.CreateTransfers(ctx, xs); err != nil || !allOK(res) {
		t.Fatalf("transfers: %v %v", err, res)
	}

	// A node killed, its data lost, restarted with its usual flags
	// (--bootstrap-expect 3, no --join): its peers are members, so it
	// joins rather than bootstrap, over TLS, and catches up.
	mc.WaitLeadersSpread(c)
	mc.Kill(2)
	mc.Wipe(2)
	mc.Start(2)
	if !mc.Nodes[2].Cur.Log.Contains("joining it") || mc.Nodes[2].Cur.Log.Contains("forming the cluster") {
		t.Fatalf("node-3 without data did not join\n%s", mc.Nodes[2].Cur.Log.Tail(20))
	}
	mc.WaitCaughtUp(c)

	// A fourth node of the CA joins.
	mc.Add(true).Args = tlsArgs(t, ca, t.TempDir())
	mc.Start(3)
	mc.WaitCaughtUp(c)

	// A node of another CA, told every route, joins nothing.
	other, err := nodetls.NewCA("impostor CA")
	if err != nil {
		t.Fatal(err)
	}
	imp := mc.Add(true)
	imp.Args = tlsArgs(t, other, filepath.Join(t.TempDir()))
	mc.Launch(4)
	deadline := time.Now().Add(quietGuard)
	for imp.Cur.Log.Count("joining: retrying") < 10 {
		select {
		case <-imp.Cur.Exited:
			t.Fatalf("the impostor exited: %v\n%s", imp.Cur.WaitErr, imp.Cur.Log.Tail(20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the impostor never tried to join\n%s", imp.Cur.Log.Tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if imp.Cur.Log.Contains("ledgerd ready") || imp.Cur.Log.Contains("joined") {
		t.Fatalf("a node of another CA joined\n%s", imp.Cur.Log.Tail(20))
	}
	st = mc.WaitLed(c)
	var nodes []string
	for _, n := range st.Nodes {
		nodes = append(nodes, n.ID)
		if n.Health != "up" || slices.Contains(n.Voters, imp.ID) {
			t.Fatalf("node %s: %+v", n.ID, n)
		}
	}
	if want := []string{"node-1", "node-2", "node-3", "node-4"}; !slices.Equal(nodes, want) {
		t.Fatalf("nodes %v, want %v", nodes, want)
	}
	for _, s := range st.Shards {
		for _, r := range s.Replicas {
			if r.Node == imp.ID {
				t.Fatalf("shard %d has a replica on the impostor", s.ID)
			}
		}
	}

	// Removal: only a node that is down, and a member.
	remove := func(id string, want int) string {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://"+admin+"/admin/remove-node?id="+id, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("remove %q: %s %s, want %d", id, resp.Status, body, want)
		}
		return string(body)
	}
	remove("", http.StatusBadRequest)
	remove("node-4", http.StatusConflict) // it runs
	remove("node-1", http.StatusConflict) // the node asked
	remove(imp.ID, http.StatusNotFound)   // never a member
	if resp, err := http.Get("http://" + admin + "/admin/remove-node?id=node-4"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET removed a node: %v %v", err, resp)
	}
	mc.Kill(3)
	if got := remove("node-4", http.StatusOK); !strings.Contains(got, "removed node-4 from 3 groups") {
		t.Fatalf("remove: %q", got)
	}
	remove("node-4", http.StatusNotFound) // once
	st = mc.WaitLed(c)
	nodes = nodes[:0]
	for _, n := range st.Nodes {
		nodes = append(nodes, n.ID)
		if n.Health != "up" || !slices.Equal(n.Voters, []string{"node-1", "node-2", "node-3"}) {
			t.Fatalf("after the removal, node %s: %+v", n.ID, n)
		}
	}
	if want := []string{"node-1", "node-2", "node-3"}; !slices.Equal(nodes, want) {
		t.Fatalf("after the removal, nodes %v, want %v", nodes, want)
	}
	for _, s := range st.Shards {
		for _, r := range s.Replicas {
			if r.Node == "node-4" {
				t.Fatalf("shard %d still has a replica on the removed node: %+v", s.ID, s.Replicas)
			}
		}
	}
	// The three serve on: one more round of payments.
	for k := range xs {
		xs[k].ID += "-again"
	}
	if res, err := c.CreateTransfers(ctx, xs); err != nil || !allOK(res) {
		t.Fatalf("transfers after the removal: %v %v", err, res)
	}

	// The money moved twice, once per round, whatever happened since.
	got, err := c.LookupAccounts(ctx, ids)
	if err != nil || len(got) != len(ids) {
		t.Fatalf("lookup: %v %v", err, got)
	}
	for k, a := range got {
		paid, received := 2*uint64(10+k), 2*uint64(10+(k+len(ids)-1)%len(ids))
		if a.DebitsPosted != paid || a.CreditsPosted != received {
			t.Fatalf("account %s: debits %d credits %d, want %d %d", a.ID, a.DebitsPosted, a.CreditsPosted, paid, received)
		}
	}
}
