package crash

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/transport"
)

// TestRequestSentOnceIsAnsweredOnceAcrossFailover: three nodes, clients
// sending 50-event batches once each, and under that load the leader of a
// shard is SIGKILLed, then another SIGTERMed (it hands its leaderships
// off), each restarted, after which the balancer hands a leadership back to
// it. A leader that loses its leadership with batches in flight answers
// them "retry, maybe applied"; the router re-sends them to the new leader,
// which finds them applied by their own earlier attempt: each event must be
// answered ok, never exists (PROTOCOL.md: the cluster's own retries are
// invisible). Batches answered timeout or unavailable are finished by the
// client's retry, which may answer exists; the balances then equal the
// transfers applied, once each.
func TestRequestSentOnceIsAnsweredOnceAcrossFailover(t *testing.T) {
	rng := crashRNG(t, 0x0a5e)
	mc := newCluster(t, 3, 2)
	mc.StartAll()
	anc, admin := mc.Connect()
	defer anc.Close()
	st := mc.WaitLed(admin)
	ids := accountsPerShard(t, st, 4) // 4 on the first shard, then 4 on the second
	createAccounts(t, admin, ids)
	debits, credits := ids, ids

	var (
		mu                sync.Mutex
		sent              = map[string]transport.Transfer{} // every transfer sent
		unknown           [][]transport.Transfer            // batches answered with an error
		firstSends        int
		okOnFirst, exists int
		spanning          int // answered with results after a kill that came while in flight
		lastKill          atomic.Int64
	)
	next := atomic.Int64{}
	batch := func() []transport.Transfer {
		mu.Lock()
		defer mu.Unlock()
		var xs []transport.Transfer
		for range 50 {
			n := next.Add(1)
			d, c := debits[rng.IntN(len(debits))], credits[rng.IntN(len(credits))]
			for c == d {
				c = credits[rng.IntN(len(credits))]
			}
			x := newTransfer(fmt.Sprintf("once-%d", n), d, c, 1+uint64(rng.IntN(9)))
			sent[x.ID] = x
			xs = append(xs, x)
		}
		return xs
	}
	// sendOnce sends a batch once, over plain NATS (no client retry), with a
	// guard longer than the router's 5 s deadline.
	sendOnce := func(nc *nats.Conn, xs []transport.Transfer) {
		body, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: xs})
		if err != nil {
			t.Error(err)
			return
		}
		start := time.Now().UnixNano()
		msg, err := nc.Request(transport.Subjects{Prefix: "ledger"}.TransfersCreate(), body, 15*time.Second)
		var reply transport.ResultsReply
		if err == nil {
			err = transport.Unmarshal(msg.Data, &reply)
		}
		mu.Lock()
		defer mu.Unlock()
		firstSends++
		if err != nil || reply.Error != nil || len(reply.Results) != len(xs) {
			unknown = append(unknown, xs)
			return
		}
		if k := lastKill.Load(); k > start {
			spanning++
		}
		for i, r := range reply.Results {
			switch r.Code {
			case transport.CodeOK:
				okOnFirst++
			case transport.CodeExists:
				exists++
				t.Errorf("transfer %s, sent once, answered exists (timestamp %d)", xs[i].ID, r.Timestamp)
			default:
				t.Errorf("transfer %s: %v", xs[i].ID, r.Code)
			}
		}
	}

	lnc, _ := mc.Connect() // the load's connection: to any node, reconnecting
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				sendOnce(lnc, batch())
			}
		}()
	}
	for k, sig := range []string{"SIGKILL", "SIGTERM"} {
		time.Sleep(time.Second)
		st := mc.WaitLed(admin)
		victim := mc.Index(st.Shards[k%len(st.Shards)].Leader)
		lastKill.Store(time.Now().UnixNano())
		if sig == "SIGKILL" {
			mc.Kill(victim)
		} else {
			mc.Stop(victim)
		}
		time.Sleep(3 * time.Second)
		mc.Launch(victim)
		mc.WaitReady(victim)
		mc.WaitLeadersSpread(admin) // the balancer hands it a leadership back, under load
		lastKill.Store(time.Now().UnixNano())
		mu.Lock()
		t.Logf("%s of %s (leader of shard %d), restarted, leaders spread again: first sends so far %d", sig, mc.Nodes[victim].ID, st.Shards[k%len(st.Shards)].ID, firstSends)
		mu.Unlock()
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	lnc.Close()
	// The client finishes the batches it got no answer for: its retry.
	for _, xs := range unknown {
		deadline := time.Now().Add(2 * quietGuard)
		for {
			ctx, cancel := reqCtx()
			res, err := admin.CreateTransfers(ctx, xs)
			cancel()
			if err == nil {
				for i, r := range res {
					if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
						t.Fatalf("retried transfer %s: %v", xs[i].ID, r.Code)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("retried batch never answered: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("%d batches sent once: %d events ok, %d exists; %d batches answered after a kill that came while they were in flight; %d batches answered with an error, then retried",
		firstSends, okOnFirst, exists, spanning, len(unknown))
	if spanning == 0 {
		t.Fatal("no batch was in flight across a kill and answered: the test proved nothing")
	}
	mc.WaitQuiet(admin)
	var all []string
	want := map[string][2]uint64{}
	for id, x := range sent {
		all = append(all, id)
		d, c := want[x.DebitAccountID], want[x.CreditAccountID]
		d[0] += x.Amount
		c[1] += x.Amount
		want[x.DebitAccountID], want[x.CreditAccountID] = d, c
	}
	found := lookupTransfers(t, admin, all)
	if len(found) != len(sent) {
		t.Errorf("%d of %d transfers sent are stored", len(found), len(sent))
	}
	for id, a := range lookupAccounts(t, admin, ids) {
		if w := want[id]; a.DebitsPosted != w[0] || a.CreditsPosted != w[1] || a.DebitsPending != 0 || a.CreditsPending != 0 {
			t.Errorf("%s: %+v, the transfers sent give debits %d, credits %d", id, a, w[0], w[1])
		}
	}
}
