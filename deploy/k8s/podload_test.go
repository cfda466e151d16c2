package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

// podLoad sends transfers of 1 from the provider's bank to its users, one
// batch at a time, each batch again with the same ids until it is
// answered (a retry of an applied transfer answers exists), and keeps what
// the cluster acknowledged. A batch under way when the load is stopped is
// finished first, so that nothing applied goes uncounted.
type podLoad struct {
	t     *testing.T
	c     *client.Client
	nc    *nats.Conn
	bank  string
	users []string
	stopc chan struct{}
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	acked   []transport.Transfer
	credit  map[string]uint64
	batches []span // of every batch answered, from its first send to its answer
	err     error
}

// span is a stretch of time.
type span struct{ from, to time.Time }

// slowBatch is how long a batch takes for the test to log it.
const slowBatch = time.Second

// during says what the load saw during s: the batches answered, and the
// longest a batch that was waiting during s took in all, retries included
// (the pause a client sees).
func (l *podLoad) during(s span) (answered int, longest time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.batches {
		if !b.to.Before(s.from) && b.to.Before(s.to) {
			answered++
		}
		if b.from.Before(s.to) && b.to.After(s.from) {
			longest = max(longest, b.to.Sub(b.from))
		}
	}
	return answered, longest
}

// startLoad connects as the provider, creates its accounts and starts the
// load.
func (ps *podSet) startLoad(ctx context.Context) *podLoad {
	t := ps.t
	t.Helper()
	// The connection's moves show in the log: a pause of the load
	// that follows one is the client's, not the cluster's.
	nc, err := client.Connect(ps.natsURLs(), client.Credentials{User: providerUser, Password: providerPass},
		nats.MaxReconnects(-1), nats.ReconnectWait(pollEvery), nats.NoCallbacksAfterClientClose(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { t.Logf("load: disconnected: %v", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { t.Logf("load: reconnected to %s", c.ConnectedUrl()) }))
	if err != nil {
		t.Fatal(err)
	}
	l := &podLoad{t: t, c: client.New(nc), nc: nc, bank: providerPrefix + "bank", stopc: make(chan struct{}),
		done: make(chan struct{}), credit: map[string]uint64{}}
	accounts := []transport.Account{{ID: l.bank, Ledger: loadLedger, Code: 1}}
	for i := range loadUsers {
		l.users = append(l.users, fmt.Sprintf("%su%d", providerPrefix, i))
		accounts = append(accounts, transport.Account{ID: l.users[i], Ledger: loadLedger, Code: 1})
	}
	actx, cancel := context.WithTimeout(ctx, batchWithin)
	defer cancel()
	results, err := l.c.CreateAccounts(actx, accounts)
	if err != nil {
		t.Fatalf("create accounts: %v", err)
	}
	for _, r := range results {
		if r.Code != transport.CodeOK {
			t.Fatalf("create account %s: %s", accounts[r.Index].ID, r.Code)
		}
	}
	go l.run()
	return l
}

// stop stops the load after the batch under way and closes its
// connection; it may be called again.
func (l *podLoad) stop() {
	l.once.Do(func() {
		close(l.stopc)
		<-l.done
		l.nc.Close()
	})
}

func (l *podLoad) run() {
	defer close(l.done)
	for b := 0; ; b++ {
		select {
		case <-l.stopc:
			return
		case <-time.After(loadPause):
		}
		var batch []transport.Transfer
		for i := range loadBatch {
			to := l.users[(b*loadBatch+i)%len(l.users)]
			batch = append(batch, transport.Transfer{ID: fmt.Sprintf("%sp%d-%d", providerPrefix, b, i),
				DebitAccountID: l.bank, CreditAccountID: to, Amount: 1, Ledger: loadLedger, Code: 1})
		}
		start := time.Now()
		results, err := l.send(batch)
		if err == nil {
			err = l.record(batch, results, span{start, time.Now()})
		}
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			return
		}
	}
}

// send sends one batch until the cluster answers it, for up to batchWithin.
func (l *podLoad) send(batch []transport.Transfer) ([]transport.Result, error) {
	deadline := time.Now().Add(batchWithin)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), attemptWithin)
		results, err := l.c.CreateTransfers(ctx, batch)
		cancel()
		if err == nil {
			return results, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("batch %s not answered within %v: %w", batch[0].ID, batchWithin, err)
		}
		time.Sleep(pollEvery)
	}
}

// record counts a batch answered, sent and answered at when: every
// transfer must be ok, or exists for a retry of one applied before.
func (l *podLoad) record(batch []transport.Transfer, results []transport.Result, when span) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(results) != len(batch) {
		return fmt.Errorf("batch %s: %d results for %d transfers", batch[0].ID, len(results), len(batch))
	}
	for i, r := range results {
		if r.Code != transport.CodeOK && r.Code != transport.CodeExists {
			return fmt.Errorf("transfer %s: %s", batch[i].ID, r.Code)
		}
		l.acked = append(l.acked, batch[i])
		l.credit[batch[i].CreditAccountID]++
	}
	l.batches = append(l.batches, when)
	if took := when.to.Sub(when.from); took >= slowBatch {
		l.t.Logf("load: batch %s answered %v after it was first sent", batch[0].ID, took.Round(time.Millisecond))
	}
	return nil
}

// checkFinal checks the cluster once the load has stopped: quiet, every
// replica caught up and where the placement says (in the status and on
// disk), the shards wanted made, and every acknowledged transfer in the
// balances exactly once.
func (ps *podSet) checkFinal(ctx context.Context, l *podLoad, keep, shards int) {
	t := ps.t
	t.Helper()
	if l.err != nil {
		t.Fatalf("load: %v", l.err)
	}
	nodes := ps.names(keep)
	var m *nodeops.Meta
	var st *transport.StatusReply
	ps.waitFor(ctx, "a quiet cluster, every replica caught up", func() string {
		var err error
		if m, err = ps.meta(ctx); err != nil {
			return err.Error()
		}
		if st, err = ps.status(ctx); err != nil {
			return err.Error()
		}
		return quietWhy(m, st, nodes, shards)
	})
	ps.checkShardsWanted(ctx, shards)
	ps.checkDisks(m, keep)
	ps.checkBalances(ctx, l)
	ps.checkLedgerctlShards(ctx, nodes, shards)
}

// quietWhy says why the cluster is not spread, quiet and caught up on
// nodes, or "": the meta state knows these nodes only; every shard is
// led, has no saga in flight, and its replicas are its placed voters,
// each at its leader's applied index.
func quietWhy(m *nodeops.Meta, st *transport.StatusReply, nodes []string, shards int) string {
	if why := spreadWhy(m, nodes, shards); why != "" {
		return why
	}
	if why := holdsWhy(st, m, nodes); why != "" {
		return why
	}
	var known []string
	for _, n := range m.Nodes {
		known = append(known, n.ID)
		if n.Draining {
			return n.ID + " still draining"
		}
	}
	if slices.Sort(known); !slices.Equal(known, nodes) {
		return fmt.Sprintf("the meta state knows %v, want %v", known, nodes)
	}
	placed := map[uint32][]string{}
	for _, s := range m.Shards {
		placed[s.ID] = slices.Sorted(slices.Values(s.Placement))
	}
	if len(st.Shards) != shards {
		return fmt.Sprintf("%d shards in the status", len(st.Shards))
	}
	for _, s := range st.Shards {
		if s.Error != "" || s.Leader == "" || s.OutboxDepth != 0 || s.InboxDepth != 0 {
			return fmt.Sprintf("shard %d: leader %q, error %q, outbox %d, inbox %d", s.ID, s.Leader, s.Error, s.OutboxDepth, s.InboxDepth)
		}
		var reps []string
		for _, r := range s.Replicas {
			reps = append(reps, r.Node)
			if r.Lag != 0 || r.AppliedIndex != s.AppliedIndex {
				return fmt.Sprintf("shard %d: replica %s at %d (lag %d), leader at %d", s.ID, r.Node, r.AppliedIndex, r.Lag, s.AppliedIndex)
			}
		}
		if slices.Sort(reps); !slices.Equal(reps, placed[s.ID]) {
			return fmt.Sprintf("shard %d: replicas %v, placed %v", s.ID, reps, placed[s.ID])
		}
	}
	return ""
}

// checkShardsWanted: the splits asked for are made and none is under way;
// the slot map gives every slot to a shard.
func (ps *podSet) checkShardsWanted(ctx context.Context, shards int) {
	t := ps.t
	t.Helper()
	body, err := transport.Marshal(&nodeops.ShardsAddRequest{}) // neither Add nor To: a poll
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, attemptWithin)
	defer cancel()
	msg, err := ps.ops.RequestWithContext(rctx, nodeops.ShardsAddSubject(transport.Subjects{Prefix: transport.DefaultPrefix}), body)
	if err != nil {
		t.Fatalf("shards progress: %v", err)
	}
	var p nodeops.ShardsProgress
	if err := transport.Unmarshal(msg.Data, &p); err != nil {
		t.Fatal(err)
	}
	if !p.Done || p.Shards != shards || p.Wanted != shards || p.Splitting != nil || p.Error != "" {
		t.Errorf("shards progress %+v: want %d shards, done", p, shards)
	}
	m, err := ps.meta(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slots := 0
	for _, s := range m.Shards {
		slots += s.Slots
	}
	if slots != transport.SlotCount {
		t.Errorf("the shards own %d slots, want %d", slots, transport.SlotCount)
	}
}

// checkDisks: the first keep pods' PVCs hold a directory for exactly the
// shards placed on them, and the drained pods' none (they deleted every
// copy moved off them before they stopped).
func (ps *podSet) checkDisks(m *nodeops.Meta, keep int) {
	t := ps.t
	t.Helper()
	data := mountOf(ps.ctr, ps.rawEnv("LEDGER_DATA_DIR"))
	for i, p := range ps.pods {
		var want []uint32
		if i < keep {
			want = placedOn(m, p.name)
		}
		entries, err := os.ReadDir(filepath.Join(p.root, data.Name))
		if err != nil {
			t.Fatal(err)
		}
		var held []uint32
		var other []string
		for _, e := range entries {
			id, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), "shard-"), 10, 32)
			switch {
			case err == nil && e.IsDir() && e.Name() == fmt.Sprintf("shard-%d", id):
				held = append(held, uint32(id))
			case e.Name() != "meta":
				other = append(other, e.Name())
			}
		}
		slices.Sort(held)
		if !slices.Equal(held, want) {
			t.Errorf("%s: shard directories on its PVC %v, placed %v", p.name, held, want)
		}
		if len(other) > 0 {
			t.Logf("%s: also on its PVC: %v", p.name, other)
		}
	}
}

// rawEnv is an env var's value as rendered (not mapped to this machine).
func (ps *podSet) rawEnv(name string) string {
	for _, e := range ps.ctr.Env {
		if e.Name == name {
			return e.Value
		}
	}
	ps.t.Fatalf("%s not in the container's env", name)
	return ""
}

// checkBalances: every acknowledged transfer is stored, and in the
// balances exactly once: each user credited what was acknowledged to it,
// the bank debited their sum, nothing pending.
func (ps *podSet) checkBalances(ctx context.Context, l *podLoad) {
	t := ps.t
	t.Helper()
	c, err := client.Connect(ps.natsURLs(), client.Credentials{User: providerUser, Password: providerPass})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl := client.New(c)
	rctx, cancel := context.WithTimeout(ctx, batchWithin)
	defer cancel()
	found := 0
	for chunk := range slices.Chunk(l.acked, transport.BatchEventsMax/2) {
		var ids []string
		for _, tr := range chunk {
			ids = append(ids, tr.ID)
		}
		got, err := cl.LookupTransfers(rctx, ids)
		if err != nil {
			t.Fatalf("lookup transfers: %v", err)
		}
		for _, tr := range got {
			if tr.Amount != 1 || tr.DebitAccountID != l.bank {
				t.Errorf("transfer %s stored as %+v", tr.ID, tr)
			}
		}
		found += len(got)
	}
	if found != len(l.acked) {
		t.Errorf("%d transfers found of %d acknowledged", found, len(l.acked))
	}
	accounts, err := cl.LookupAccounts(rctx, append([]string{l.bank}, l.users...))
	if err != nil || len(accounts) != 1+len(l.users) {
		t.Fatalf("lookup accounts: %d found, %v", len(accounts), err)
	}
	var total uint64
	for _, a := range accounts[1:] {
		if a.CreditsPosted != l.credit[a.ID] || a.CreditsPending != 0 {
			t.Errorf("%s: credits posted %d (pending %d), acknowledged %d", a.ID, a.CreditsPosted, a.CreditsPending, l.credit[a.ID])
		}
		total += a.CreditsPosted
	}
	if b := accounts[0]; b.DebitsPosted != total || b.DebitsPending != 0 {
		t.Errorf("bank debited %d (pending %d), users credited %d", b.DebitsPosted, b.DebitsPending, total)
	}
	t.Logf("%d transfers acknowledged, all found, %d credited", len(l.acked), total)
}

// checkLedgerctlShards reads `ledgerctl shards -o json` as an operator
// would: every shard led, its replicas the voters on nodes, none silent
// or moving. (Not their lag: quietWhy waited for none, and a leader may
// commit an entry of its own between two reads.)
func (ps *podSet) checkLedgerctlShards(ctx context.Context, nodes []string, shards int) {
	t := ps.t
	t.Helper()
	var v struct {
		Shards []struct {
			ID       uint32 `json:"id"`
			Slots    int    `json:"slots"`
			Leader   string `json:"leader"`
			Replicas []struct {
				Node   string `json:"node"`
				State  string `json:"state"`
				Silent bool   `json:"silent"`
			} `json:"replicas"`
			Move  *nodeops.Move `json:"move"`
			Error string        `json:"error"`
		} `json:"shards"`
	}
	out := ps.operator(ctx, "shards", "-o", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("ledgerctl shards -o json: %v\n%s", err, out)
	}
	if len(v.Shards) != shards {
		t.Errorf("ledgerctl shards lists %d shards, want %d", len(v.Shards), shards)
	}
	for _, s := range v.Shards {
		leaders := 0
		for _, r := range s.Replicas {
			if !slices.Contains(nodes, r.Node) || r.Silent || (r.State != "leader" && r.State != "voter") {
				t.Errorf("ledgerctl shards: shard %d replica %+v", s.ID, r)
			}
			if r.State == "leader" {
				leaders++
			}
		}
		if s.Error != "" || s.Move != nil || leaders != 1 || s.Slots == 0 {
			t.Errorf("ledgerctl shards: shard %d: %d leaders, move %v, %d slots, error %q", s.ID, leaders, s.Move, s.Slots, s.Error)
		}
	}
	if t.Failed() {
		t.Log(strings.TrimSpace(out))
	}
}
