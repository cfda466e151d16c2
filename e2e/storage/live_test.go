package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
)

// TestDamageFoundWhileRunningIsRepairedLive: three ledgerd processes; the
// leader of shard 1 has its history store's sstables damaged in place while
// it runs, and a read of that history finds it. The node stops shard 1 (the
// read is answered retry and served by the replica elected next), moves its
// copy aside and joins the shard again, without a restart: the same process
// keeps running, and it is promoted to voter once caught up. Everything the
// cluster serves is then what was acknowledged; and once the repaired node
// alone holds a write (the two others killed in turn around it, as in
// TestDamagedReplicaHealsFromItsPeers), it leads every shard and serves
// exactly what was acknowledged from its repaired copy.
func TestDamageFoundWhileRunningIsRepairedLive(t *testing.T) {
	if testing.Short() || !*clusterFlag {
		t.Skip("runs three real ledgerd processes: skipped in -short mode or with -storage.cluster=false")
	}
	c := startCluster(t)
	nc, cl := c.ConnectTo(0)
	ids := &accountsAndTransfers{}
	createWallets(t, cl, ids)
	for _, n := range c.Nodes { // while the balancer spreads the leaderships
		untilDamageable(t, cl, ids, filepath.Join(n.DataDir, "shard-1", "history"))
	}
	// Once no node leads more than one of the three groups, no leadership
	// moves while the test reads from shard 1's leader.
	victim := c.LeaderOf(c.WaitLeadersSpread(cl), 1)
	name := c.Nodes[victim].ID
	history := filepath.Join(c.Nodes[victim].DataDir, "shard-1", "history")
	p := c.Nodes[victim].Cur
	for _, what := range flipHistoryBlocks(t, history, 0) {
		t.Logf("damaged %s (pid %d): %s", name, p.Cmd.Process.Pid, what)
	}

	// The read that meets the damage is answered retry, then served by
	// the leader elected next. Should the victim have lost the leadership
	// before the read (a slow heartbeat), the compactions that writes
	// bring find the damage instead.
	checkServed(t, cl, ids)
	if p.Log.First("storage damaged") == "" {
		t.Logf("%s no longer led shard 1 when it was read: writes until a compaction finds the damage", name)
	}
	for p.Log.First("storage damaged") == "" {
		if len(ids.transfers) > transfersMax {
			t.Fatalf("%s never found the damage:\n%s", name, p.Log.Tail(40))
		}
		sendTransfers(t, cl, ids, fmt.Sprintf("compacted%d", len(ids.transfers)), 4)
	}
	t.Logf("found: %s", shorten(p.Log.First("storage damaged")))
	c.WaitLogged(victim, "repaired: the damaged group joined again", 1)
	c.WaitLogged(victim, "promoted to voter", 1)
	stillRuns(t, c, victim, p)
	moved, _ := filepath.Glob(filepath.Join(c.Nodes[victim].DataDir, "*.damaged-*"))
	if len(moved) != 1 || !strings.Contains(moved[0], "shard-1.damaged-") {
		t.Fatalf("copies moved aside: %v, want shard 1's alone:\n%s", moved, p.Log.Tail(40))
	}
	sendTransfers(t, cl, ids, "repaired", 4)
	checkServed(t, cl, ids)
	nc.Close()

	// Kill the two others in turn around a write: only the repaired node
	// and the one killed last hold it, so with the first back the
	// repaired node leads every shard and serves from its own copy.
	a, b := (victim+1)%3, (victim+2)%3
	c.Kill(a)
	nc, cl = c.ConnectTo(b)
	sendTransfers(t, cl, ids, "victim-quorum", 2)
	nc.Close()
	c.Kill(b)
	c.Start(a)
	_, cl = c.ConnectTo(a)
	for _, s := range c.WaitLed(cl).Shards {
		if s.Leader != name {
			t.Fatalf("shard %d led by %s, want the repaired %s", s.ID, s.Leader, name)
		}
	}
	checkServed(t, cl, ids)
	stillRuns(t, c, victim, p)
}

// stillRuns fails unless node i is process p, which never exited: the same
// process (pid) that was damaged, never restarted.
func stillRuns(t *testing.T, c *testnet.Cluster, i int, p *testnet.Process) {
	t.Helper()
	select {
	case <-p.Exited:
		t.Fatalf("%s (pid %d) exited (%v): the repair must not need a restart:\n%s", c.Nodes[i].ID, p.Cmd.Process.Pid, p.WaitErr, p.Log.Tail(40))
	default:
	}
	if c.Nodes[i].Cur != p || p.Log.Count("ledgerd ready") != 1 {
		t.Fatalf("%s was restarted", c.Nodes[i].ID)
	}
}

// TestDamageFoundWhileRunningStopsASingleNode: a single ledgerd whose
// history store is damaged in place while it runs finds it on a read. With
// no peer to repair from, it does not go on serving the other shard alone:
// it exits 1, naming the group, the file and how to salvage, and its next
// start refuses, naming the damage.
func TestDamageFoundWhileRunningStopsASingleNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped in -short mode")
	}
	bin := testnet.BuildLedgerd(t, false)
	dir := filepath.Join(t.TempDir(), "data")
	c, p, ready := startLedgerd(t, bin, dir, false)
	if !ready {
		t.Fatalf("ledgerd exited: %v\n%s", p.WaitErr, p.Log.Tail(30))
	}
	_, cl := c.ConnectTo(0)
	ids := &accountsAndTransfers{}
	createWallets(t, cl, ids)
	history := filepath.Join(dir, "shard-1", "history")
	untilDamageable(t, cl, ids, history)
	// Every block: the first read to meet the damage is a transfer
	// lookup, which has no error to return (it panics, answered retry).
	for _, what := range flipHistoryBlocks(t, history, 512) {
		t.Logf("damaged: %s", what)
	}
	ctx, cancel := context.WithTimeout(context.Background(), reqGuard)
	defer cancel()
	go func() {
		_, _ = readWith(ctx, cl, ids) // finds the damage; the node then exits
	}()
	select {
	case <-p.Exited:
	case <-time.After(reqGuard):
		t.Fatalf("ledgerd still runs %v after the damage was read:\n%s", reqGuard, p.Log.Tail(30))
	}
	var exit *exec.ExitError
	if !errors.As(p.WaitErr, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("ledgerd exited with %v, want status 1:\n%s", p.WaitErr, p.Log.Tail(30))
	}
	if p.Log.First("a lookup met damaged storage") == "" {
		t.Fatalf("no transfer lookup met the damage:\n%s", p.Log.Tail(30))
	}
	failed := p.Log.First("ledgerd failed")
	for _, want := range []string{"group 1", filepath.Join(dir, "shard-1"), "history", "no peer to repair it from", "--salvage"} {
		if !strings.Contains(failed, want) {
			t.Fatalf("the failure does not say %q: %q\n%s", want, failed, p.Log.Tail(30))
		}
	}
	if _, again, ready := startLedgerd(t, bin, dir, true); ready || damageLine(again) == "" {
		t.Fatalf("after damage found while running, ledgerd started again (ready %v):\n%s", ready, again.Log.Tail(30))
	}
}

// transfersMax bounds the transfers a test sends waiting for a snapshot or
// a compaction (a hang guard).
const transfersMax = 60 * batchSize

// untilDamageable sends transfers until the history store in dir holds an
// sstable flipHistoryBlocks damages (a snapshot flushes the store).
func untilDamageable(t *testing.T, cl *client.Client, ids *accountsAndTransfers, dir string) {
	t.Helper()
	for len(damageableTables(t, dir)) == 0 {
		if len(ids.transfers) > transfersMax {
			t.Fatalf("no sstable of %d bytes in %s after %d transfers", damageableSize, dir, len(ids.transfers))
		}
		sendTransfers(t, cl, ids, fmt.Sprintf("before%d", len(ids.transfers)), 4)
		time.Sleep(200 * time.Millisecond) // the snapshot interval, twice
	}
}

// checkServed reads every account, transfer and history row through cl and
// checks them against what was acknowledged.
func checkServed(t *testing.T, cl *client.Client, ids *accountsAndTransfers) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reqGuard)
	defer cancel()
	got, err := readWith(ctx, cl, ids)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var a answers
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatal(err)
	}
	checkAcknowledged(t, &a, ids)
	checkRows(t, &a, ids)
}

// damageableSize is the smallest sstable whose first block flipHistoryBlocks
// damages: a larger one holds more than a block of account rows, the lowest
// keys, so its first block holds no transfer by id, which apply looks up (a
// lookup there that met the damage would stop the process).
const damageableSize = 16 << 10

// damageableTables lists the sstables of a history store that
// flipHistoryBlocks damages.
func damageableTables(t *testing.T, dir string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, path := range paths {
		if fi, err := os.Stat(path); err == nil && fi.Size() >= damageableSize {
			out = append(out, path)
		}
	}
	return out
}

// flipHistoryBlocks flips a byte of the first data block of each of the
// store's damageable sstables, in place (the running store reads the same
// file), and with every > 0 a byte every that many bytes after it too; it
// says what it did. Nothing read the first block since it was written, so
// it is not in the block cache: the next read of the lowest account rows,
// or a compaction, reads it from the file.
func flipHistoryBlocks(t *testing.T, dir string, every int) []string {
	t.Helper()
	const first = 32 // inside the first data block, which starts the file
	var done []string
	for _, path := range damageableTables(t, dir) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		flipped := 0
		for at := first; at < len(b); at += every {
			if _, err := f.WriteAt([]byte{b[at] ^ 0x5a}, int64(at)); err != nil {
				t.Fatal(err)
			}
			flipped++
			if every <= 0 {
				break
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		done = append(done, fmt.Sprintf("flipped %d bytes of %s from byte %d", flipped, filepath.Base(path), first))
	}
	return done
}
