package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

// ledgerd deployment bounds.
const (
	ledgerdShards    = 2 // so that the cross-shard scenario has two shards to cross
	ledgerdConnsMax  = 4 // NATS connections the clients share, as ledgerctl bench
	ledgerdReadyWait = 2 * time.Minute
	ledgerdStopWait  = 30 * time.Second
	ledgerdLedger    = 1
)

// ledgerdPorts are the first ports of a deployment; node i (from 0) uses
// each plus i.
type ledgerdPorts struct{ nats, cluster, raft, http int }

// ledgerdCluster is 1 or 3 ledgerd processes on loopback, and the clients.
type ledgerdCluster struct {
	name    string
	procs   []*exec.Cmd
	logs    []*os.File
	conns   []*nats.Conn
	clients []*client.Client
	shardOf []int // per account index
	ids     []string
	nextID  atomic.Int64
}

// buildLedgerd builds ./cmd/ledgerd into dir and returns the binary's path.
func buildLedgerd(dir string) (string, error) {
	bin := filepath.Join(dir, "ledgerd")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/ledgerd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/ledgerd: %w\n%s", err, out)
	}
	return bin, nil
}

// startLedgerd starts nodes ledgerd processes (data and logs under
// dir/ledgerd-N), waits until each is ready, and loads accounts accounts
// funded with initial each.
func startLedgerd(ctx context.Context, bin, dir string, nodes int, p ledgerdPorts, accounts int, initial uint64) (*ledgerdCluster, error) {
	c := &ledgerdCluster{name: fmt.Sprintf("ledgerd %d node", nodes)}
	if nodes > 1 {
		c.name += "s"
	}
	base := filepath.Join(dir, fmt.Sprintf("ledgerd-%d", nodes))
	var urls []string
	for i := range nodes {
		cmd, log, err := startNode(bin, base, nodes, i, p)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.procs, c.logs = append(c.procs, cmd), append(c.logs, log)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", p.nats+i))
	}
	for i := range nodes {
		if err := waitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", p.http+i)); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: node-%d: %w (log in %s)", c.name, i+1, err, base)
		}
	}
	if err := c.connect(strings.Join(urls, ",")); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.load(ctx, accounts, initial); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// startNode starts node i of n, as the README's "Three nodes" loop does
// (--insecure: no node TLS, all on loopback).
func startNode(bin, base string, n, i int, p ledgerdPorts) (*exec.Cmd, *os.File, error) {
	dir := filepath.Join(base, fmt.Sprintf("node-%d", i+1))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	args := []string{"--node-id", fmt.Sprintf("node-%d", i+1), "--data-dir", filepath.Join(dir, "data"),
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", p.nats+i),
		"--raft-listen", fmt.Sprintf("127.0.0.1:%d", p.raft+i),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", p.http+i),
		"--shards", strconv.Itoa(ledgerdShards), "--log-level", "warn"}
	if n > 1 {
		var routes []string
		for j := range n {
			routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p.cluster+j))
		}
		args = append(args, "--bootstrap-expect", strconv.Itoa(n), "--insecure",
			"--nats-cluster-listen", fmt.Sprintf("127.0.0.1:%d", p.cluster+i),
			"--nats-routes", strings.Join(routes, ","))
	}
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, nil, fmt.Errorf("start ledgerd: %w", err)
	}
	return cmd, log, nil
}

// waitReady polls a node's /readyz until it answers 200.
func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(ledgerdReadyWait)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", ledgerdReadyWait)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *ledgerdCluster) connect(urls string) error {
	for range ledgerdConnsMax {
		nc, err := client.Connect(urls, client.Credentials{})
		if err != nil {
			return fmt.Errorf("%s: connect: %w", c.name, err)
		}
		c.conns = append(c.conns, nc)
		c.clients = append(c.clients, client.New(nc))
	}
	return nil
}

// load creates the accounts (balance checked: debits must not exceed
// credits) and funds each from a bank account of its own shard, so that
// funding needs no saga.
func (c *ledgerdCluster) load(ctx context.Context, accounts int, initial uint64) error {
	st, err := c.clients[0].Status(ctx)
	if err != nil {
		return fmt.Errorf("%s: status: %w", c.name, err)
	}
	slotShard := slotShards(st)
	shard := func(id string) int { return slotShard[transport.Slot(id)] }
	c.ids, c.shardOf = make([]string, accounts), make([]int, accounts)
	acc := make([]transport.Account, accounts)
	for i := range acc {
		c.ids[i] = "acct-" + strconv.Itoa(i)
		c.shardOf[i] = shard(c.ids[i])
		acc[i] = transport.Account{ID: c.ids[i], Ledger: ledgerdLedger, Code: 1, Flags: transport.AccountDebitsMustNotExceedCredits}
	}
	banks := bankIDs(len(st.Shards), shard)
	for _, b := range banks {
		acc = append(acc, transport.Account{ID: b, Ledger: ledgerdLedger, Code: 1})
	}
	if err := c.checked(c.clients[0].CreateAccounts(ctx, acc)); err != nil {
		return fmt.Errorf("%s: create accounts: %w", c.name, err)
	}
	funding := make([]transport.Transfer, accounts)
	for i := range funding {
		funding[i] = transport.Transfer{ID: "fund-" + c.ids[i], DebitAccountID: banks[c.shardOf[i]],
			CreditAccountID: c.ids[i], Amount: initial, Ledger: ledgerdLedger, Code: 1}
	}
	if err := c.checked(c.clients[0].CreateTransfers(ctx, funding)); err != nil {
		return fmt.Errorf("%s: fund accounts: %w", c.name, err)
	}
	return nil
}

// slotShards maps each slot to the index of its shard in st.
func slotShards(st *transport.StatusReply) []int {
	out := make([]int, transport.SlotCount)
	for i, s := range st.Shards {
		for _, slot := range s.Slots {
			if int(slot) < len(out) {
				out[slot] = i
			}
		}
	}
	return out
}

// bankIDs finds one account id per shard: "bank-K" for the smallest K
// that lands on it.
func bankIDs(shards int, shard func(string) int) []string {
	banks := make([]string, shards)
	found := 0
	for k := 0; found < shards; k++ {
		id := "bank-" + strconv.Itoa(k)
		if s := shard(id); banks[s] == "" {
			banks[s], found = id, found+1
		}
	}
	return banks
}

// checked turns a create's results into an error unless every one is ok
// (or exists: a retry of an applied request).
func (c *ledgerdCluster) checked(results []transport.Result, err error) error {
	if err != nil {
		return err
	}
	for _, r := range results {
		if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
			return fmt.Errorf("event %d: %s", r.Index, r.Code)
		}
	}
	return nil
}

// Name implements system.
func (c *ledgerdCluster) Name() string { return c.name }

// CanBatch implements system.
func (c *ledgerdCluster) CanBatch() bool { return true }

// Shard implements system.
func (c *ledgerdCluster) Shard(i int32) int { return c.shardOf[i] }

// Send implements system: one CreateTransfers request of the whole batch.
func (c *ledgerdCluster) Send(ctx context.Context, worker int, batch []pair) error {
	ts := make([]transport.Transfer, len(batch))
	for i, p := range batch {
		ts[i] = transport.Transfer{ID: "t-" + strconv.FormatInt(c.nextID.Add(1), 10),
			DebitAccountID: c.ids[p.src], CreditAccountID: c.ids[p.dst], Amount: 1, Ledger: ledgerdLedger, Code: 1}
	}
	return c.checked(c.clients[worker%len(c.clients)].CreateTransfers(ctx, ts))
}

// Close closes the connections and stops every node with SIGTERM.
func (c *ledgerdCluster) Close() {
	for _, nc := range c.conns {
		nc.Close()
	}
	var wg sync.WaitGroup
	for _, p := range c.procs {
		wg.Go(func() { stopProcess(p, ledgerdStopWait) })
	}
	wg.Wait()
	for _, l := range c.logs {
		_ = l.Close()
	}
}
