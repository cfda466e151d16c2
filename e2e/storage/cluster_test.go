package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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
	nc, cl := c.ConnectTo(0)
	ids := &accountsAndTransfers{}
	createWallets(t, cl, ids)
	sendTransfers(t, cl, ids, "before", 12)
	nc.Close()

	const victim = 2
	c.Kill(victim)
	rng := rand.New(rand.NewPCG(7, 7))
	dir := c.Nodes[victim].DataDir
	t.Logf("damaged: %s", flipValueIn(t, rng, filepath.Join(dir, "meta", "raft.db"), "conf", "CurrentTerm"))
	t.Logf("damaged: %s", flipValueIn(t, rng, filepath.Join(dir, "shard-1", "raft.db"), "logs", ""))
	flipAt(t, filepath.Join(dir, "shard-2", "raft.db"), 16+40) // meta page 0's root bucket
	nc, cl = c.ConnectTo(0)
	sendTransfers(t, cl, ids, "while-down", 6)
	nc.Close()

	c.Start(victim)
	log := c.Nodes[victim].Cur.Log
	if n := log.Count("moving this node's copy of the group aside"); n != 3 {
		t.Fatalf("the damaged node moved %d groups aside, want 3:\n%s", n, log.Tail(40))
	}
	c.WaitLogged(victim, "promoted to voter", 3)

	// Only the healed node and node 1 hold the write made without node 0:
	// with node 0 back and node 1 gone, the healed node leads every shard.
	c.Kill(0)
	nc, cl = c.ConnectTo(1)
	sendTransfers(t, cl, ids, "healed-quorum", 6)
	nc.Close()
	c.Kill(1)
	c.Start(0)
	_, cl = c.ConnectTo(0)
	for _, s := range c.WaitLed(cl).Shards {
		if s.Leader != c.Nodes[victim].ID {
			t.Fatalf("shard %d led by %s, want the healed %s", s.ID, s.Leader, c.Nodes[victim].ID)
		}
	}
	checkServed(t, cl, ids)
}

// newCluster returns n nodes of bin, not yet started, forming a cluster of
// two shards whose groups snapshot often; a client connects to one node and
// does not move to another.
func newCluster(t *testing.T, bin string, n int) *testnet.Cluster {
	c := testnet.NewCluster(t, bin, n, 2)
	c.Args = snapshotOften
	c.NATSOptions = []nats.Option{nats.NoReconnect(), nats.Timeout(5 * time.Second)}
	return c
}

// startCluster builds ledgerd, starts three nodes and waits until each is
// ready.
func startCluster(t *testing.T) *testnet.Cluster {
	t.Helper()
	c := newCluster(t, testnet.BuildLedgerd(t, false), 3)
	c.StartAll()
	return c
}

// startLedgerd runs bin alone on dataDir (node-1 of a cluster of its own)
// and waits for "ledgerd ready", or for it to exit: ready says which.
// damaged: dataDir is a damaged copy, which the process may refuse with a
// panic naming the damage (testnet.Cluster.PanicOK); the test judges that.
func startLedgerd(t *testing.T, bin, dataDir string, damaged bool) (c *testnet.Cluster, p *testnet.Process, ready bool) {
	t.Helper()
	c = newCluster(t, bin, 1)
	c.PanicOK = damaged
	c.Nodes[0].DataDir = dataDir
	c.Launch(0)
	return c, c.Nodes[0].Cur, c.Started(0)
}

func createWallets(t *testing.T, cl *client.Client, ids *accountsAndTransfers) {
	t.Helper()
	ids.accounts = append(ids.accounts, walletAccounts()...)
	retryCreate(t, func(ctx context.Context) ([]transport.Result, error) { return cl.CreateAccounts(ctx, ids.accounts) }, len(ids.accounts))
}

// sendTransfers sends batches of transfers between every pair of accounts
// drawn at random, retrying a batch (same ids) until it is acknowledged.
func sendTransfers(t *testing.T, cl *client.Client, ids *accountsAndTransfers, prefix string, batches int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(ids.transfers)), 3))
	for b := range batches {
		batch := transferBatch(rng, ids.accounts, prefix, b)
		retryCreate(t, func(ctx context.Context) ([]transport.Result, error) { return cl.CreateTransfers(ctx, batch) }, len(batch))
		ids.transfers = append(ids.transfers, batch...)
	}
}

// walletAccounts are the operator's account and the wallets, every other
// one with its balance history.
func walletAccounts() []transport.Account {
	accounts := []transport.Account{{ID: "operator", Ledger: ledgerID, Code: 1}}
	for i := range wallets {
		a := transport.Account{ID: fmt.Sprintf("wallet-%d", i), Ledger: ledgerID, Code: 2}
		if i%2 == 0 {
			a.Flags = transport.AccountHistory
		}
		accounts = append(accounts, a)
	}
	return accounts
}

// transferBatch is batch b of transfers (ids prefix-b-k) between accounts
// drawn by rng, the wallets paid by the operator or by each other.
func transferBatch(rng *rand.Rand, accounts []transport.Account, prefix string, b int) []transport.Transfer {
	var batch []transport.Transfer
	for k := range batchSize {
		from, to := rng.IntN(wallets+1), rng.IntN(wallets)+1
		if from == to {
			from = 0
		}
		batch = append(batch, transport.Transfer{ID: fmt.Sprintf("%s-%d-%d", prefix, b, k), DebitAccountID: accounts[from].ID,
			CreditAccountID: accounts[to].ID, Amount: uint64(1 + rng.IntN(1000)), Ledger: ledgerID, Code: 1})
	}
	return batch
}

// retryCreate sends a batch until it is answered: a retry of an applied
// event answers exists.
func retryCreate(t *testing.T, create func(ctx context.Context) ([]transport.Result, error), n int) {
	t.Helper()
	deadline := time.Now().Add(createGuard)
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
