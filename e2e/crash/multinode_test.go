package crash

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

// TestThreeNodesSurviveKillingALeader: three ledgerd processes on loopback
// form one cluster (--bootstrap-expect 3, embedded NATS joined by routes),
// every group replicated on the three. Transfers, same-shard and across
// shards, are acknowledged; the node leading shard 1 is killed with
// SIGKILL while clients go on through the other nodes; the shard fails over
// and serves again; the node restarts from its data and rejoins. Once the
// cluster is quiet every acknowledged transfer is there, once, and the
// balances are their sums; the leaders spread over the nodes; a fourth node
// joins (--join) and becomes a caught-up replica of every shard. SIGTERM
// then stops each node cleanly.
func TestThreeNodesSurviveKillingALeader(t *testing.T) {
	rng := crashRNG(t, 0x3a0de)
	mc := newCluster(t, 3, 2)
	mc.StartAll()
	nc, c := mc.Connect()
	defer nc.Close()
	fast := client.New(nc, client.WithRequestTimeout(250*time.Millisecond))

	st := mc.WaitLed(c)
	ids := accountsPerShard(t, st, 3)
	createAccounts(t, c, ids)
	acked := map[string]transport.Transfer{}
	next := 0
	batch := func() []transport.Transfer {
		var xs []transport.Transfer
		for range 20 {
			next++
			d, cr := ids[rng.IntN(len(ids))], ids[rng.IntN(len(ids))]
			for cr == d {
				cr = ids[rng.IntN(len(ids))]
			}
			xs = append(xs, newTransfer(fmt.Sprintf("m-%d", next), d, cr, 1+uint64(rng.IntN(100))))
		}
		return xs
	}
	// send retries a batch (same ids) until it is answered, and records it.
	send := func(xs []transport.Transfer) {
		deadline := time.Now().Add(2 * quietGuard)
		for {
			ctx, cancel := reqCtx()
			res, err := c.CreateTransfers(ctx, xs)
			cancel()
			if err == nil {
				for i, r := range res {
					if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
						t.Fatalf("transfer %s: %v", xs[i].ID, r.Code)
					}
					acked[xs[i].ID] = xs[i]
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("batch never answered: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for range 10 {
		send(batch())
	}

	// Kill the leader of shard 1, measure until a transfer on shard 1
	// commits again, restart the node; again (LEDGERD_FAILOVERS times, 3 by
	// default).
	kills := 3
	if v := os.Getenv("LEDGERD_FAILOVERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("LEDGERD_FAILOVERS=%q", v)
		}
		kills = n
	}
	var failovers []time.Duration
	for k := range kills {
		victim := mc.LeaderOf(mc.WaitLed(c), st.Shards[0].ID)
		if victim < 0 {
			t.Fatal("shard 1 has no leader")
		}
		mc.Kill(victim)
		killed := time.Now()
		// The probe resends every 250 ms, so that a request lost with the
		// killed node's router costs 250 ms, not the client's timeout.
		probe := newTransfer(fmt.Sprintf("after-kill-%d", k), ids[0], ids[1], 1) // both on shard 1
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
			res, err := fast.CreateTransfers(ctx, []transport.Transfer{probe})
			cancel()
			if err == nil && (res[0].Code == transport.CodeOK || res[0].Code == transport.CodeExists) {
				break
			}
			if time.Since(killed) > quietGuard {
				t.Fatalf("shard %d not served %v after its leader was killed: %v %v", st.Shards[0].ID, quietGuard, res, err)
			}
		}
		failovers = append(failovers, time.Since(killed))
		acked[probe.ID] = probe
		if k == 0 { // the status lists the dead node unreachable
			var health string
			for _, n := range mc.WaitLed(c).Nodes {
				if n.ID == mc.Nodes[victim].ID {
					health = n.Health
				}
			}
			if health != "unreachable" {
				t.Errorf("killed %s: status says %q, want unreachable", mc.Nodes[victim].ID, health)
			}
		}
		for range 5 {
			send(batch())
		}
		mc.Start(victim)
		send(batch())
	}
	slices.Sort(failovers)
	t.Logf("failover of shard %d over %d kills of its leader (SIGKILL to the first transfer committed on it): p50 %v, p99 %v, max %v",
		st.Shards[0].ID, kills, failovers[len(failovers)/2].Round(time.Millisecond),
		failovers[min(len(failovers)-1, len(failovers)*99/100)].Round(time.Millisecond), failovers[len(failovers)-1].Round(time.Millisecond))
	mc.WaitQuiet(c)

	// Every acknowledged transfer is there once; balances are their sums.
	var idsAcked []string
	want := map[string][2]uint64{}
	for id, x := range acked {
		idsAcked = append(idsAcked, id)
		d, cr := want[x.DebitAccountID], want[x.CreditAccountID]
		d[0] += x.Amount
		cr[1] += x.Amount
		want[x.DebitAccountID], want[x.CreditAccountID] = d, cr
	}
	found := lookupTransfers(t, c, idsAcked)
	for id, x := range acked {
		if got, ok := found[id]; !ok || !sameTransfer(got, x) {
			t.Errorf("acknowledged %s: found %+v", id, got)
		}
	}
	for id, a := range lookupAccounts(t, c, ids) {
		if w := want[id]; a.DebitsPosted != w[0] || a.CreditsPosted != w[1] || a.DebitsPending != 0 || a.CreditsPending != 0 {
			t.Errorf("%s: %+v, the acknowledged transfers give debits %d, credits %d", id, a, w[0], w[1])
		}
	}
	// Leaders spread: three groups (meta and two shards) over three nodes,
	// one each, so the two shards are led by different nodes. Every node
	// is up and holds a replica of each shard, none lagging at rest.
	mc.WaitStatus(c, mc.NotLed, func(st *transport.StatusReply) string {
		spread := st.Shards[0].Leader != st.Shards[1].Leader
		up := 0
		for _, n := range st.Nodes {
			if n.Health == "up" && len(n.Groups) == 1+mc.Shards {
				up++
			}
		}
		caughtUp := true
		for _, s := range st.Shards {
			caughtUp = caughtUp && len(s.Replicas) == len(mc.Nodes)
			for _, r := range s.Replicas {
				caughtUp = caughtUp && r.Lag == 0
			}
		}
		if spread && up == len(mc.Nodes) && caughtUp {
			return ""
		}
		return fmt.Sprintf("shards led by %s and %s, %d nodes up, replicas %+v %+v",
			st.Shards[0].Leader, st.Shards[1].Leader, up, st.Shards[0].Replicas, st.Shards[1].Replicas)
	})
	// A fourth node joins the running cluster: every group adds it, it
	// catches up, and it becomes a voter.
	mc.Add(true)
	mc.Start(3)
	send(batch())
	mc.WaitStatus(c, mc.NotLed, func(st *transport.StatusReply) string {
		for _, s := range st.Shards {
			n := 0
			for _, r := range s.Replicas {
				if r.Lag == 0 {
					n++
				}
			}
			if n != 4 {
				return fmt.Sprintf("node-4 not a caught-up replica of every shard: %+v", st.Shards)
			}
		}
		// It joined as a nonvoter and asks to vote once caught up.
		for _, n := range st.Nodes {
			if len(n.Voters) != 4 {
				return fmt.Sprintf("node-4 not a voter: %+v", st.Nodes)
			}
		}
		return ""
	})
	for i := range mc.Nodes {
		mc.Stop(i)
	}
}

// createAccounts creates a plain account (no flags) for each id, every one
// of which must be new.
func createAccounts(t *testing.T, c *client.Client, ids []string) {
	t.Helper()
	var accounts []transport.Account
	for _, id := range ids {
		accounts = append(accounts, newAccount(id, 0))
	}
	ctx, cancel := reqCtx()
	defer cancel()
	if res, err := c.CreateAccounts(ctx, accounts); err != nil || !allOK(res) {
		t.Fatalf("accounts: %v %v", err, res)
	}
}

// accountsPerShard returns n account ids on each shard, shard by shard in
// the status's order.
func accountsPerShard(t *testing.T, st *transport.StatusReply, n int) []string {
	index := map[uint16]int{}
	for i, s := range st.Shards {
		for _, slot := range s.Slots {
			index[slot] = i
		}
	}
	per := make([][]string, len(st.Shards))
	for i := 0; ; i++ {
		id := fmt.Sprintf("mn-%d", i)
		if s := index[transport.Slot(id)]; len(per[s]) < n {
			per[s] = append(per[s], id)
		}
		done := true
		for _, p := range per {
			done = done && len(p) == n
		}
		if done {
			break
		}
	}
	var ids []string
	for _, p := range per {
		ids = append(ids, p...)
	}
	return ids
}
