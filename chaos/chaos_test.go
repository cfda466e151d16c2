package chaos

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/chaos/check"
	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

var (
	flagSeeds  = flag.Int("chaos.seeds", 20, "seeds to run (each a fresh cluster)")
	flagSeed   = flag.Uint64("chaos.seed", 0, "run this one seed")
	flagFaults = flag.Duration("chaos.faults", 3*time.Second, "how long each seed injects faults")
	flagBudget = flag.Duration("chaos.budget", 0, "run seeds until this much time has passed (overrides -chaos.seeds)")
	flagSplits = flag.Bool("chaos.splits", true, "split shards (ledgerctl shards add) during the faults of two seeds in three")
)

// Workload and fault sizes of one seed.
const (
	accountsPerSeed = 9 // one bank, eight limited accounts
	clientsPerSeed  = 4
	funding         = 500
	requestTimeout  = 2 * time.Second
	// pendingTimeoutMax is the longest timeout, in seconds, of a pending
	// transfer the clients send.
	pendingTimeoutMax = 2
)

// TestChaos runs seeds: each forms a fresh three-node cluster, runs
// clients against it while a fault schedule drawn from the seed hits it,
// heals, waits until the cluster is quiet, looks up everything and checks
// the whole history (chaos/check). See docs/chaos.md.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three real ledgerd processes per seed; skipped in -short mode")
	}
	bin := buildLedgerd(t)
	base := uint64(time.Now().UnixNano())
	seeds := *flagSeeds
	if *flagSeed != 0 {
		base, seeds = *flagSeed, 1
	}
	start := time.Now()
	var total totals
	for i := 0; ; i++ {
		if *flagBudget > 0 {
			if time.Since(start) > *flagBudget {
				break
			}
		} else if i >= seeds {
			break
		}
		seed := base + uint64(i)
		var r runResult
		ok := t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			t.Logf("seed %d (replay: go test ./chaos -run TestChaos -chaos.seed %d -v)", seed, seed)
			r = runSeed(t, bin, seed)
		})
		total.add(r)
		if !ok {
			break
		}
	}
	t.Logf("chaos: %s in %s", total, time.Since(start).Round(time.Second))
}

type runResult struct {
	faults map[string]int
	report *check.Report
}

type totals struct {
	seeds  int
	faults map[string]int
	ops    int
}

func (t *totals) add(r runResult) {
	if r.report == nil {
		return
	}
	t.seeds++
	if t.faults == nil {
		t.faults = map[string]int{}
	}
	for k, v := range r.faults {
		t.faults[k] += v
	}
	t.ops += r.report.Ops
}

func (t totals) String() string {
	return fmt.Sprintf("%d seeds, %d operations, faults %v", t.seeds, t.ops, t.faults)
}

func runSeed(t *testing.T, bin string, seed uint64) runResult {
	rng := rand.New(rand.NewPCG(seed, 0xc4a05))
	t0 := time.Now()
	c := newCluster(t, bin, 3, 3)
	formed := time.Since(t0)
	_, cl := c.Connect()
	h := &check.History{}
	rec := &recorder{start: time.Now()}

	// Accounts, funded before the faults: a bank without limits, and
	// accounts whose debits must not exceed their credits.
	prefix := fmt.Sprintf("s%d", seed%100000)
	var ids []string
	for i := range accountsPerSeed {
		a := transport.Account{ID: fmt.Sprintf("%s-a%d", prefix, i), Ledger: 1, Code: 1}
		if i > 0 {
			a.Flags = transport.AccountDebitsMustNotExceedCredits
		}
		h.Accounts = append(h.Accounts, a)
		ids = append(ids, a.ID)
	}
	mustCreateAccounts(t, cl, h.Accounts)
	var fund []transport.Transfer
	for _, id := range ids[1:] {
		fund = append(fund, transport.Transfer{ID: "fund-" + id, DebitAccountID: ids[0], CreditAccountID: id, Amount: funding, Ledger: 1, Code: 1})
	}
	w := &workload{ids: ids, prefix: prefix}
	rec.transfers(t, cl, 0, fund, true)

	// Clients and faults run together; the faults stop first.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clientsPerSeed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			crng := rand.New(rand.NewPCG(seed, uint64(i+1)))
			_, ccl := c.Connect()
			w.client(i+1, crng, ccl, rec, stop)
		}()
	}
	t1 := time.Now()
	splitsDone := make(chan int, 1)
	if *flagSplits && rng.IntN(3) > 0 {
		// Shards are added at a random moment of the faults, by an
		// operator who asks again until the meta leader answers.
		to := uint32(c.Shards + 1 + rng.IntN(2))
		after := time.Duration(rng.Int64N(int64(*flagFaults)))
		go func() { splitsDone <- addShards(c, to, after) }()
	} else {
		splitsDone <- c.Shards
	}
	faults := runFaults(t, c, cl, rng, *flagFaults)
	faulted := time.Since(t1)
	shards := <-splitsDone
	if shards == 0 {
		t.Fatal("the shards asked for were never all there")
	}
	faults["split"] = shards - c.Shards
	close(stop)
	wg.Wait()

	// Quiet: every saga finished, every replica caught up. The final reads
	// are taken twice around a quiet cluster until they agree, so that no
	// expiry (a pending transfer's timeout may pass now) or its settlement
	// lands between the accounts and the transfers read.
	h.Ops = rec.ops
	ids2 := rec.sentIDs()
	for {
		c.WaitStatus(cl, c.notWhole, c.notQuiet)
		h.FinalAccounts, h.FinalTransfers = lookupAccounts(t, cl, ids), lookupTransfers(t, cl, ids2)
		c.WaitStatus(cl, c.notWhole, c.notQuiet)
		a, tr := lookupAccounts(t, cl, ids), lookupTransfers(t, cl, ids2)
		if reflect.DeepEqual(a, h.FinalAccounts) && reflect.DeepEqual(tr, h.FinalTransfers) {
			break
		}
		t.Log("the final reads changed while the cluster was quiet: reading again")
	}
	t2 := time.Now()
	report := check.Check(h)
	t.Logf("formed in %v, faults for %v, quiet and read back in %v, checked in %v",
		formed.Round(time.Millisecond), faulted.Round(time.Millisecond), t2.Sub(t1.Add(faulted)).Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
	// Evidence that the data-loss fault took the path it is there for.
	faults["history-copies"] = c.Logged("copied the history for a snapshot")
	t.Logf("faults %v; %s", faults, report)
	if err := report.Err(); err != nil {
		if b, jerr := json.MarshalIndent(h, "", " "); jerr == nil {
			path := filepath.Join(os.TempDir(), fmt.Sprintf("ledgerd-chaos-%d.json", seed))
			if os.WriteFile(path, b, 0o644) == nil {
				t.Logf("the history is in %s", path)
			}
		}
		t.Fatal(err)
	}
	return runResult{faults: faults, report: report}
}

// addShards waits after, then asks the meta leader for to shards until
// they are all there and serve (nodeops.ShardsProgress.Done); it returns
// the shards the cluster has, or 0 past the guard.
func addShards(c *cluster, to uint32, after time.Duration) int {
	time.Sleep(after)
	nc, _ := c.Connect()
	subject := nodeops.ShardsAddSubject(transport.Subjects{Prefix: transport.DefaultPrefix})
	body, _ := transport.Marshal(&nodeops.ShardsAddRequest{To: to})
	for deadline := time.Now().Add(c.QuietGuard); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		msg, err := nc.Request(subject, body, requestTimeout)
		if err != nil {
			continue // no meta leader this moment (a fault): ask again
		}
		var p nodeops.ShardsProgress
		if transport.Unmarshal(msg.Data, &p) == nil && p.Done {
			return p.Shards
		}
	}
	return 0
}

// runFaults injects one fault at a time, drawn from rng, for d; every fault
// is healed before the next and before it returns, so a majority of every
// group is always up apart from the fault itself.
func runFaults(t *testing.T, c *cluster, cl *client.Client, rng *rand.Rand, d time.Duration) map[string]int {
	count := map[string]int{}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		hold := time.Duration(300+rng.IntN(1700)) * time.Millisecond
		victim := rng.IntN(len(c.Nodes))
		kind := []string{"kill-leader", "kill-follower", "pause", "partition", "wipe"}[rng.IntN(5)]
		if kind == "kill-leader" || kind == "kill-follower" {
			leader := c.LeaderOf(c.Status(cl), uint32(1+rng.IntN(c.Shards)))
			if leader >= 0 {
				if kind == "kill-leader" {
					victim = leader
				} else if victim == leader {
					victim = (victim + 1) % len(c.Nodes)
				}
			}
		}
		count[kind]++
		t.Logf("fault %s on %s for %v", kind, c.Nodes[victim].ID, hold)
		switch kind {
		case "kill-leader", "kill-follower":
			c.Kill(victim)
			time.Sleep(hold)
			c.restart(victim, false)
		case "pause":
			c.Pause(victim)
			time.Sleep(hold)
			c.Resume(victim)
		case "partition":
			c.partition(victim, true)
			time.Sleep(hold)
			c.partition(victim, false)
		case "wipe":
			// The node loses its disk: it comes back empty and rejoins:
			// removed, added as a nonvoter, sent a snapshot and the log,
			// made a voter again, silent in elections until re-added.
			// Half the time it is told --join; otherwise it has its
			// usual flags, as a pod given a new volume would, and joins
			// because its peers answer that they are members. Until it
			// is a voter the groups have two, so the next fault waits
			// for the cluster to be whole.
			join := rng.IntN(2) == 0
			c.Kill(victim)
			c.Wipe(victim)
			time.Sleep(hold)
			c.restart(victim, join)
			c.WaitStatus(cl, c.notWhole)
		}
	}
	return count
}

// workload is what the clients of one seed send: new transfers on one
// shard and across shards, pending transfers (some with a timeout), posts
// (full and partial) and voids of them, exact resends of earlier requests,
// and reads.
type workload struct {
	ids    []string
	prefix string

	mu      sync.Mutex
	pending []string // ids of pending transfers some client got ok for
}

func (w *workload) client(n int, rng *rand.Rand, cl *client.Client, rec *recorder, stop <-chan struct{}) {
	var sent [][]transport.Transfer
	seq := 0
	newID := func() string {
		seq++
		return fmt.Sprintf("%s-c%d-%d", w.prefix, n, seq)
	}
	account := func() string { return w.ids[rng.IntN(len(w.ids))] }
	pair := func() (string, string) {
		d := account()
		for {
			if cr := account(); cr != d {
				return d, cr
			}
		}
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		var batch []transport.Transfer
		switch p := rng.IntN(100); {
		case p < 15:
			var ids []string
			for range 1 + rng.IntN(3) {
				ids = append(ids, account())
			}
			rec.read(cl, n, ids)
			continue
		case p < 25 && len(sent) > 0:
			batch = sent[rng.IntN(len(sent))] // the same ids and fields again
		case p < 45:
			w.mu.Lock()
			if len(w.pending) > 0 {
				k := rng.IntN(len(w.pending))
				pid := w.pending[k]
				w.pending = append(w.pending[:k], w.pending[k+1:]...)
				w.mu.Unlock()
				t := transport.Transfer{ID: newID(), PendingID: pid, Ledger: 1, Code: 1}
				switch rng.IntN(3) {
				case 0:
					t.Flags = transport.TransferVoidPendingTransfer
				case 1:
					t.Flags = transport.TransferPostPendingTransfer // the full amount
				default:
					t.Flags, t.Amount = transport.TransferPostPendingTransfer, uint64(1+rng.IntN(5))
				}
				batch = append(batch, t)
				break
			}
			w.mu.Unlock()
			fallthrough
		default:
			for range 1 + rng.IntN(4) {
				d, cr := pair()
				t := transport.Transfer{ID: newID(), DebitAccountID: d, CreditAccountID: cr, Amount: uint64(1 + rng.IntN(60)), Ledger: 1, Code: 1}
				if rng.IntN(4) == 0 {
					t.Flags = transport.TransferPending
					if rng.IntN(3) == 0 {
						t.Timeout = uint32(1 + rng.IntN(pendingTimeoutMax))
					}
				}
				batch = append(batch, t)
			}
		}
		sent = append(sent, batch)
		results := rec.transfers(nil, cl, n, batch, false)
		for i, r := range results {
			if batch[i].Flags&transport.TransferPending != 0 && r.Code == transport.CodeOK {
				w.mu.Lock()
				w.pending = append(w.pending, batch[i].ID)
				w.mu.Unlock()
			}
		}
	}
}

// recorder keeps every operation with its call and return times.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []check.Op
	ids   map[string]bool
}

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) add(op check.Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	for _, t := range op.Transfers {
		r.ids[t.ID] = true
	}
}

func (r *recorder) sentIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for id := range r.ids {
		ids = append(ids, id)
	}
	return ids
}

// transfers sends one batch and records it. With t and mustOK, the batch
// is resent until it is answered, and every event must be ok.
func (r *recorder) transfers(t *testing.T, cl *client.Client, n int, batch []transport.Transfer, mustOK bool) []transport.Result {
	for {
		op := check.Op{Client: n, Transfers: batch, Call: r.now()}
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		res, err := cl.CreateTransfers(ctx, batch)
		cancel()
		op.Return = r.now()
		if err == nil && len(res) == len(batch) {
			op.Outcome, op.Results = check.OutcomeOK, res
		} else {
			op.Outcome, res = check.OutcomeUnknown, nil
		}
		r.add(op)
		if !mustOK {
			return res
		}
		if res != nil {
			for i, x := range res {
				if x.Code != transport.CodeOK && x.Code != transport.CodeExists {
					t.Fatalf("setup transfer %s: %v", batch[i].ID, x.Code)
				}
			}
			return res
		}
	}
}

func (r *recorder) read(cl *client.Client, n int, ids []string) {
	op := check.Op{Client: n, Read: ids, Call: r.now()}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	accts, err := cl.LookupAccounts(ctx, ids)
	cancel()
	op.Return = r.now()
	if err == nil {
		op.Outcome, op.Accounts = check.OutcomeOK, accts
	} else {
		op.Outcome = check.OutcomeUnknown
	}
	r.add(op)
}

func mustCreateAccounts(t *testing.T, cl *client.Client, accounts []transport.Account) {
	t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		res, err := cl.CreateAccounts(ctx, accounts)
		cancel()
		if err == nil {
			for i, x := range res {
				if x.Code != transport.CodeOK && x.Code != transport.CodeExists {
					t.Fatalf("create account %s: %v", accounts[i].ID, x.Code)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("create accounts: %v", err)
		}
	}
}

func lookupAccounts(t *testing.T, cl *client.Client, ids []string) []transport.Account {
	t.Helper()
	deadline := time.Now().Add(quietGuard)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := cl.LookupAccounts(ctx, ids)
		cancel()
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("final lookup of accounts: %v", err)
		}
	}
}

func lookupTransfers(t *testing.T, cl *client.Client, ids []string) []transport.Transfer {
	t.Helper()
	var all []transport.Transfer
	for len(ids) > 0 {
		part := ids[:min(len(ids), 1000)]
		ids = ids[len(part):]
		deadline := time.Now().Add(quietGuard)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, err := cl.LookupTransfers(ctx, part)
			cancel()
			if err == nil {
				all = append(all, out...)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("final lookup of transfers: %v", err)
			}
		}
	}
	return all
}
