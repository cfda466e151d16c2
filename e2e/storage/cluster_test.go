package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
)

// TestDamagedReplicaHealsFromItsPeers: three ledgerd processes; one is
// killed with SIGKILL and its copy of every group damaged three ways (a
// byte of a log entry of shard 1, bbolt's first meta page of shard 2, so
// that its last transactions may be lost, and Raft's term in the meta
// group); the others go on acknowledging transfers. Restarted, the damaged
// node moves each group's copy aside and joins it again, silent in
// elections until it has; caught up, it becomes a voter. Then the other two
// are killed one after the other with a write in between, so that the
// healed node is the only one holding that write and must lead every shard:
// every account, transfer and history row it serves is exactly what was
// acknowledged.
func TestDamagedReplicaHealsFromItsPeers(t *testing.T) {
	if testing.Short() || !*clusterFlag {
		t.Skip("runs three real ledgerd processes for 15 to 50 s: skipped in -short mode or with -storage.cluster=false")
	}
	c := startCluster(t)
	nc, cl := c.nodes[0].cur.connect(t)
	ids := &accountsAndTransfers{}
	createWallets(t, cl, ids)
	sendTransfers(t, cl, ids, "before", 12)
	nc.Close()

	const victim = 2
	c.kill(victim)
	rng := rand.New(rand.NewPCG(7, 7))
	dir := c.nodes[victim].dataDir
	t.Logf("damaged: %s", flipValueIn(t, rng, filepath.Join(dir, "meta", "raft.db"), "conf", "CurrentTerm"))
	t.Logf("damaged: %s", flipValueIn(t, rng, filepath.Join(dir, "shard-1", "raft.db"), "logs", ""))
	flipAt(t, filepath.Join(dir, "shard-2", "raft.db"), 16+40) // meta page 0's root bucket
	nc, cl = c.nodes[0].cur.connect(t)
	sendTransfers(t, cl, ids, "while-down", 6)
	nc.Close()

	c.launch(victim)
	c.waitReady(victim)
	log := c.nodes[victim].cur.log
	if n := log.Count("moving this node's copy of the group aside"); n != 3 {
		t.Fatalf("the damaged node moved %d groups aside, want 3:\n%s", n, log.Tail(40))
	}
	c.waitLogged(victim, "promoted to voter", 3)

	// Only the healed node and node 1 hold the write made without node 0:
	// with node 0 back and node 1 gone, the healed node leads every shard.
	c.kill(0)
	nc, cl = c.nodes[1].cur.connect(t)
	sendTransfers(t, cl, ids, "healed-quorum", 6)
	nc.Close()
	c.kill(1)
	c.launch(0)
	c.waitReady(0)
	p := c.nodes[0].cur
	nc, cl = p.connect(t)
	defer nc.Close()
	for _, s := range c.status(t, cl).Shards {
		if s.Leader != c.nodes[victim].id {
			t.Fatalf("shard %d led by %s, want the healed %s", s.ID, s.Leader, c.nodes[victim].id)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), reqGuard)
	defer cancel()
	got, err := read(ctx, t, p, ids)
	if err != nil {
		t.Fatalf("read from the healed node: %v", err)
	}
	var a answers
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatal(err)
	}
	checkAcknowledged(t, &a, ids)
	checkRows(t, &a, ids)
}

// cluster is three nodes on loopback forming one cluster.
type cluster struct {
	t     *testing.T
	bin   string
	nodes []*clusterNode
}

type clusterNode struct {
	id, dataDir                   string
	natsAddr, clusterAddr, raftAd string
	cur                           *process
}

// startCluster builds ledgerd, starts three nodes and waits until each is
// ready.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := newCluster(t, buildLedgerd(t))
	for i := range c.nodes {
		c.launch(i)
	}
	for i := range c.nodes {
		c.waitReady(i)
	}
	return c
}

func newCluster(t *testing.T, bin string) *cluster {
	c := &cluster{t: t, bin: bin}
	dir := t.TempDir()
	for i := range 3 {
		c.nodes = append(c.nodes, &clusterNode{id: fmt.Sprintf("node-%d", i+1), dataDir: filepath.Join(dir, fmt.Sprint(i+1)),
			natsAddr: testnet.FreePort(t), clusterAddr: testnet.FreePort(t), raftAd: testnet.FreePort(t)})
	}
	return c
}

func (c *cluster) launch(i int) {
	n := c.nodes[i]
	var routes []string
	for _, o := range c.nodes {
		if o != n {
			routes = append(routes, o.clusterAddr)
		}
	}
	n.cur = launch(c.t, c.bin, n.natsAddr, append([]string{"--node-id", n.id, "--data-dir", n.dataDir,
		"--nats-listen", n.natsAddr, "--nats-cluster-listen", n.clusterAddr, "--nats-routes", strings.Join(routes, ","),
		"--raft-listen", n.raftAd, "--shards", "2", "--bootstrap-expect", "3", "--insecure", "--log-level", "info"},
		snapshotOften...))
}

func (c *cluster) waitReady(i int) {
	c.t.Helper()
	if !c.nodes[i].cur.waitReady(c.t) {
		c.t.Fatalf("%s exited: %v\n%s", c.nodes[i].id, c.nodes[i].cur.waitErr, c.nodes[i].cur.log.Tail(40))
	}
}

func (c *cluster) kill(i int) {
	c.nodes[i].cur.kill()
	c.nodes[i].cur = nil
}

// waitLogged waits until node i has logged s n times.
func (c *cluster) waitLogged(i int, s string, n int) {
	c.t.Helper()
	deadline := time.Now().Add(readyGuard)
	for c.nodes[i].cur.log.Count(s) < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s logged %q %d times in %v, want %d:\n%s", c.nodes[i].id, s, c.nodes[i].cur.log.Count(s), readyGuard, n, c.nodes[i].cur.log.Tail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// status waits until every shard has a leader and answers.
func (c *cluster) status(t *testing.T, cl *client.Client) *transport.StatusReply {
	t.Helper()
	deadline := time.Now().Add(readyGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cl.Status(ctx)
		cancel()
		ok := err == nil && len(st.Shards) == 2
		for _, s := range st.Shards {
			ok = ok && s.Error == "" && s.Leader != ""
		}
		if ok {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("no status with every shard led after %v: %+v %v", readyGuard, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func createWallets(t *testing.T, cl *client.Client, ids *accountsAndTransfers) {
	t.Helper()
	ids.accounts = append(ids.accounts, transport.Account{ID: "operator", Ledger: ledgerID, Code: 1})
	for i := range wallets {
		a := transport.Account{ID: fmt.Sprintf("wallet-%d", i), Ledger: ledgerID, Code: 2}
		if i%2 == 0 {
			a.Flags = transport.AccountHistory
		}
		ids.accounts = append(ids.accounts, a)
	}
	retryCreate(t, func(ctx context.Context) ([]transport.Result, error) { return cl.CreateAccounts(ctx, ids.accounts) }, len(ids.accounts))
}

// sendTransfers sends batches of transfers between every pair of accounts
// drawn at random, retrying a batch (same ids) until it is acknowledged.
func sendTransfers(t *testing.T, cl *client.Client, ids *accountsAndTransfers, prefix string, batches int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(ids.transfers)), 3))
	for b := range batches {
		var batch []transport.Transfer
		for k := range batchSize {
			from, to := rng.IntN(wallets+1), rng.IntN(wallets)+1
			if from == to {
				from = 0
			}
			batch = append(batch, transport.Transfer{ID: fmt.Sprintf("%s-%d-%d", prefix, b, k), DebitAccountID: ids.accounts[from].ID,
				CreditAccountID: ids.accounts[to].ID, Amount: uint64(1 + rng.IntN(1000)), Ledger: ledgerID, Code: 1})
		}
		retryCreate(t, func(ctx context.Context) ([]transport.Result, error) { return cl.CreateTransfers(ctx, batch) }, len(batch))
		ids.transfers = append(ids.transfers, batch...)
	}
}

// retryCreate sends a batch until it is answered: a retry of an applied
// event answers exists.
func retryCreate(t *testing.T, create func(ctx context.Context) ([]transport.Result, error), n int) {
	t.Helper()
	deadline := time.Now().Add(2 * readyGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := create(ctx)
		cancel()
		if err == nil && len(res) == n {
			for _, r := range res {
				if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
					t.Fatalf("create event %d: %v", r.Index, r.Code)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch never answered: %d results, %v", len(res), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkRows compares each account's history rows with the acknowledged
// transfers that touch it, in the order they were applied.
func checkRows(t *testing.T, a *answers, ids *accountsAndTransfers) {
	t.Helper()
	byID := map[string]transport.Transfer{}
	for _, x := range a.Transfers {
		byID[x.ID] = x
	}
	for _, acc := range ids.accounts {
		var want []string
		for _, x := range ids.transfers {
			if x.DebitAccountID == acc.ID || x.CreditAccountID == acc.ID {
				want = append(want, x.ID)
			}
		}
		rows := a.Rows[acc.ID]
		got := make([]string, len(rows))
		for i, r := range rows {
			got[i] = r.ID
			if x := byID[r.ID]; r.Amount != x.Amount || r.DebitAccountID != x.DebitAccountID || r.CreditAccountID != x.CreditAccountID {
				t.Fatalf("%s's row %d: %+v, the transfer is %+v", acc.ID, i, r, x)
			}
		}
		if strings.Join(sortedCopy(got), ",") != strings.Join(sortedCopy(want), ",") {
			t.Fatalf("%s's rows %v, want %v", acc.ID, got, want)
		}
	}
}
