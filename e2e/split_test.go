package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// addShards asks the meta leader for at least to shards and polls until the
// splits are done; it returns the progress seen last.
func addShards(ctx context.Context, t *testing.T, nc *nats.Conn, to uint32) nodeops.ShardsProgress {
	t.Helper()
	p, err := tryAddShards(ctx, nc, to)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tryAddShards is addShards for a goroutine of its own.
func tryAddShards(ctx context.Context, nc *nats.Conn, to uint32) (nodeops.ShardsProgress, error) {
	subject := nodeops.ShardsAddSubject(transport.Subjects{Prefix: transport.DefaultPrefix})
	body, _ := transport.Marshal(&nodeops.ShardsAddRequest{To: to})
	for {
		msg, err := nc.RequestWithContext(ctx, subject, body)
		var p nodeops.ShardsProgress
		if err == nil {
			if err := transport.Unmarshal(msg.Data, &p); err != nil {
				return p, err
			}
			if p.Error != "" {
				return p, fmt.Errorf("shards add: %s", p.Error)
			}
			if p.Done {
				return p, nil
			}
		}
		select {
		case <-ctx.Done():
			return p, fmt.Errorf("shards add to %d: not done: %+v (%v)", to, p, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestShardsAddedUnderLoad grows a one-shard cluster to four shards while
// clients write, through plain NATS requests that retry only on timeout or
// unavailable: every transfer answered on its first attempt is answered
// ok (a split's re-routing stays inside the cluster), nothing acknowledged
// is lost or doubled, pending transfers opened before the splits (some of
// whose two accounts the splits separate) post and void after them, an id
// used before the splits answers exists after them, and every shard ends
// with a quarter of the slots.
func TestShardsAddedUnderLoad(t *testing.T) {
	c := startClusterConfig(t, server.Config{DataDir: t.TempDir(), Shards: 1, Replicas: server.DefaultReplicas})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	users := make([]string, 32)
	accounts := []transport.Account{acct("bank", 0)}
	for i := range users {
		users[i] = fmt.Sprintf("user-%02d", i)
		accounts = append(accounts, acct(users[i], transport.AccountHistory))
	}
	c.mustCreateAccounts(accounts...)
	m := newModel(append([]string{"bank"}, users...)...)
	var pendings []transport.Transfer
	for i, u := range users {
		p := xfer(fmt.Sprintf("pend-%02d", i), "bank", u, 7)
		p.Flags = transport.TransferPending
		pendings = append(pendings, p)
	}
	if res := c.transfer(pendings...); slices.ContainsFunc(res, func(r transport.Result) bool { return r.Code != transport.CodeOK }) {
		t.Fatalf("pending transfers: %v", codes(res))
	}
	before := xfer("before-split", "bank", users[0], 1)
	res, _, err := c.sendTransfers([]transport.Transfer{before})
	if err != nil || res[0].Code != transport.CodeOK {
		t.Fatalf("transfer before the split: %v %v", res, err)
	}
	m.applied(t, before, res[0].Timestamp)

	var mu sync.Mutex
	var slowest time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from, to := "bank", users[rng.IntN(len(users))]
				if i%3 == 1 { // between users: across shards once split
					from = users[rng.IntN(len(users))]
					if from == to {
						continue
					}
				}
				tr := xfer(fmt.Sprintf("w%d-%d", w, i), from, to, 1)
				start := time.Now()
				res, attempts, err := c.sendTransfers([]transport.Transfer{tr})
				took := time.Since(start)
				if err == nil && attempts == 1 && res[0].Code != transport.CodeOK && res[0].Code != transport.CodeExceedsCredits {
					err = fmt.Errorf("transfer %s answered %v on its only attempt", tr.ID, res[0].Code)
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if took > 500*time.Millisecond {
					t.Logf("%s %s→%s took %v, from %s", tr.ID, from, to, took, start.Format("15:04:05.000"))
				}
				slowest = max(slowest, took)
				if res[0].Code == transport.CodeOK || res[0].Code == transport.CodeExists {
					m.applied(t, tr, res[0].Timestamp)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	p := addShards(ctx, t, c.nc, 4)
	took := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("1 → 4 shards in %v under load (%d transfers); the slowest transfer took %v", took.Round(time.Millisecond), len(m.transfers), slowest.Round(time.Millisecond))
	if p.Shards != 4 || p.MinSlots != transport.SlotCount/4 || p.MaxSlots != transport.SlotCount/4 {
		t.Fatalf("after the splits: %+v", p)
	}

	// The pending transfers opened before the splits resolve after them:
	// posts for even users, voids for odd ones.
	var resolutions []transport.Transfer
	for i, p := range pendings {
		flags := transport.TransferPostPendingTransfer
		if i%2 == 1 {
			flags = transport.TransferVoidPendingTransfer
		}
		resolutions = append(resolutions, transport.Transfer{ID: "resolve-" + p.ID, PendingID: p.ID, Flags: flags})
	}
	res, _, err = c.sendTransfers(resolutions)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Code != transport.CodeOK {
			t.Fatalf("resolve %s: %v", pendings[i].ID, r.Code)
		}
		if i%2 == 0 {
			posted := pendings[i]
			posted.ID, posted.Flags = "posted-"+posted.ID, 0
			m.debits[posted.DebitAccountID] += posted.Amount
			m.credits[posted.CreditAccountID] += posted.Amount
		}
	}
	// An id used before the splits is still taken.
	if res, _, err := c.sendTransfers([]transport.Transfer{before}); err != nil || res[0].Code != transport.CodeExists || res[0].Timestamp != m.transfers[before.ID].Timestamp {
		t.Fatalf("the transfer from before the splits, sent again: %v %v", res, err)
	}
	st := c.quiesce()
	checkHistories(t, c, m, users)
	if len(st.Shards) != 4 {
		t.Fatalf("status lists %d shards", len(st.Shards))
	}
	for _, s := range st.Shards {
		if len(s.Slots) != transport.SlotCount/4 {
			t.Errorf("shard %d has %d slots", s.ID, len(s.Slots))
		}
	}
	c.check(m)
}

// TestShardsAddedOnThreeNodes grows a three-node cluster from two shards
// to four under load while one node is down: the two left make the splits
// (a quorum of every group), the third, back, replays its parents' logs,
// writes the new shards' groups itself and catches up; every replica of
// every shard ends with the same state, and nothing acknowledged is lost.
func TestShardsAddedOnThreeNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pc, cfgs := startThree(ctx, t, 2, 3)
	nc, err := nats.Connect(pc.nodes["n1"].ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	l, stopLoad := startLoad(ctx, t, c)
	defer stopLoad()

	if err := pc.nodes["n3"].Close(); err != nil {
		t.Fatal(err)
	}
	pc.nodes["n3"] = nil
	p := addShards(ctx, t, nc, 4)
	if p.Shards != 4 || p.MinSlots != transport.SlotCount/4 {
		t.Fatalf("after the splits: %+v", p)
	}
	srv, err := server.Start(ctx, cfgs[2])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	pc.nodes["n3"] = srv
	time.Sleep(500 * time.Millisecond)
	stopLoad()
	// Every node holds every shard, and every replica the same state.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		same, why := replicasAgree(pc)
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas never agreed: %s", why)
		}
	}
	l.check(ctx, t)
}

// replicasAgree reports whether every node holds shards 1 to 4 at the
// same applied index with the same state.
func replicasAgree(pc *placedCluster) (bool, string) {
	for id := uint32(1); id <= 4; id++ {
		var first string
		var hash, applied uint64
		for _, node := range []string{"n1", "n2", "n3"} {
			h, a, ok := pc.nodes[node].Node().ShardHash(id)
			switch {
			case !ok:
				return false, fmt.Sprintf("%s does not hold shard %d", node, id)
			case first == "":
				first, hash, applied = node, h, a
			case a != applied || h != hash:
				return false, fmt.Sprintf("shard %d: %s at %d (%x), %s at %d (%x)", id, node, a, h, first, applied, hash)
			}
		}
	}
	return true, ""
}

// TestSplitWaitsForSagasInFlight: a split whose slots hold a cross-shard
// transfer whose credit shard does not answer (its credits are dropped)
// is not made: the parent thaws the slots after its bound and the meta
// leader tries again later; once the credits get through, the transfer
// is acknowledged once, the split is made, and the slots' other accounts
// were served between the tries.
func TestSplitWaitsForSagasInFlight(t *testing.T) {
	var blocked atomic.Bool
	fault := func(to uint32, cmd *shard.Command) node.Fault {
		return node.Fault{Drop: blocked.Load() && to == 2 && cmd.Kind == shard.KindCredit}
	}
	c := startClusterConfig(t, server.Config{DataDir: t.TempDir(), Shards: 2, Replicas: server.DefaultReplicas, SagaFault: fault})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Shard 1's upper half of slots leaves in the first split.
	st := c.srv.Node().MetaState()
	sp, ok := raftfsm.NextSplit(&raftfsm.MetaState{SlotMap: st.SlotMap, Replicas: st.Replicas, Placement: st.Placement, ShardsWanted: 3})
	if !ok || sp.Parent != 1 {
		t.Fatalf("planned split %+v, %v", sp, ok)
	}
	leaving := shard.SetOf(sp.Slots)
	var mover, neighbour string
	for i := 0; mover == "" || neighbour == ""; i++ {
		id := fmt.Sprintf("acct-%d", i)
		if leaving.Has(transport.Slot(id)) {
			if mover == "" {
				mover = id
			} else {
				neighbour = id
			}
		}
	}
	far := c.accountOn("far", 2)
	c.mustCreateAccounts(acct(mover, 0), acct(neighbour, 0), acct(far, 0))
	m := newModel(mover, neighbour, far)

	blocked.Store(true)
	stuck := xfer("stuck", mover, far, 5)
	answered := make(chan []transport.Result, 1)
	go func() {
		res, _, err := c.sendTransfers([]transport.Transfer{stuck})
		if err != nil {
			t.Error(err)
		}
		answered <- res
	}()
	time.Sleep(200 * time.Millisecond) // the reservation is in the outbox
	adding := make(chan nodeops.ShardsProgress, 1)
	go func() {
		p, err := tryAddShards(ctx, c.nc, 3)
		if err != nil {
			t.Error(err)
		}
		adding <- p
	}()
	// The split waits: the parent thaws after 2 s and serves the slots.
	time.Sleep(3 * time.Second)
	if p := shardsProgressOf(ctx, t, c.nc); p.Shards != 2 || p.Splitting == nil {
		t.Fatalf("split made with a saga in flight: %+v", p)
	}
	// Between the tries the slots are served (a frozen try delays a
	// request, inside the cluster, by at most the thaw bound).
	side := xfer("side", neighbour, mover, 1)
	res, attempts, err := c.sendTransfers([]transport.Transfer{side})
	if err != nil || attempts != 1 || res[0].Code != transport.CodeOK {
		t.Fatalf("a transfer of the slots while the split waits: %v, %d attempts, %v", res, attempts, err)
	}
	m.applied(t, side, res[0].Timestamp)
	blocked.Store(false)
	res = <-answered
	if len(res) != 1 || res[0].Code != transport.CodeOK {
		t.Fatalf("the stuck transfer: %v", res)
	}
	m.applied(t, stuck, res[0].Timestamp)
	if p := <-adding; p.Shards != 3 {
		t.Fatalf("after the split: %+v", p)
	}
	c.quiesce()
	c.check(m)
}

// shardsProgressOf polls the splits once.
func shardsProgressOf(ctx context.Context, t *testing.T, nc *nats.Conn) nodeops.ShardsProgress {
	t.Helper()
	body, _ := transport.Marshal(&nodeops.ShardsAddRequest{})
	msg, err := nc.RequestWithContext(ctx, nodeops.ShardsAddSubject(transport.Subjects{Prefix: transport.DefaultPrefix}), body)
	if err != nil {
		t.Fatal(err)
	}
	var p nodeops.ShardsProgress
	if err := transport.Unmarshal(msg.Data, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkHistories checks that each user's history reads in full after the
// splits, from whichever shard now holds it: every transfer acknowledged
// that touches it is listed, once, and its newest balance row is its
// balances now.
func checkHistories(t *testing.T, c *cluster, m *ledgerModel, users []string) {
	t.Helper()
	ctx := c.ctx()
	for _, u := range users {
		var listed []transport.Transfer
		f := transport.AccountFilter{AccountID: u, Limit: transport.HistoryLimitMax}
		for {
			page, err := c.c.AccountTransfers(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			listed = append(listed, page...)
			if len(page) < int(f.Limit) {
				break
			}
			f.TimestampMin = page[len(page)-1].Timestamp + 1
		}
		seen := map[string]int{}
		for _, tr := range listed {
			seen[tr.ID]++
		}
		for id, tr := range m.transfers {
			if (tr.DebitAccountID == u || tr.CreditAccountID == u) && seen[id] != 1 {
				t.Errorf("%s's history lists %s %d times", u, id, seen[id])
			}
		}
		rows, err := c.c.AccountBalances(ctx, transport.AccountFilter{AccountID: u, Limit: 1, Reverse: true})
		if err != nil || len(rows) != 1 {
			t.Fatalf("%s's balances: %v, %v", u, rows, err)
		}
		a := c.account(u)
		if rows[0].DebitsPosted != a.DebitsPosted || rows[0].CreditsPosted != a.CreditsPosted || rows[0].DebitsPending != a.DebitsPending || rows[0].CreditsPending != a.CreditsPending {
			t.Errorf("%s: newest balance row %+v, account %+v", u, rows[0], a)
		}
	}
}

// TestSplitOnJoinedNodes: a split whose parent's voters are mostly nodes
// that joined the cluster (--join, which makes a node join the groups it
// opens without data) makes its new shard on them as on any node: they
// start it from the split, not as a group to join (they would stay silent
// in its elections, and with two of three voters silent it would elect no
// leader). Found by the pod test, one run in three.
func TestSplitOnJoinedNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pc, _ := startThree(ctx, t, 1, 5)
	for i, id := range []string{"n4", "n5"} {
		cfg := pc.config(id, 3+i)
		cfg.Join, cfg.NATSRoutes, cfg.Shards = true, pc.routes[:3], 1
		srv, err := server.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Close() })
		pc.nodes[id] = srv
	}
	nc, err := nats.Connect(pc.nodes["n3"].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s := transport.Subjects{Prefix: transport.DefaultPrefix}
	operate(ctx, t, nc, nodeops.DrainSubject(s), "n1")
	operate(ctx, t, nc, nodeops.DrainSubject(s), "n2")
	pc.waitSpread(ctx, map[string]int{"n1": 0, "n2": 0, "n3": 1, "n4": 1, "n5": 1})
	actx, acancel := context.WithTimeout(ctx, time.Minute)
	defer acancel()
	if p := addShards(actx, t, nc, 2); p.Shards != 2 {
		t.Fatalf("after the split: %+v", p)
	}
	for _, id := range []string{"n3", "n4", "n5"} {
		if got := holds(pc.nodes[id]); !slices.Equal(got, []uint32{1, 2}) {
			t.Errorf("%s holds %v, want both shards", id, got)
		}
	}
}
