package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// cluster is an in-process single-node ledgerd.
type cluster struct {
	t     *testing.T
	srv   *server.Server
	nc    *nats.Conn
	in    *nats.Conn // with the node's rights, opened on demand
	c     *client.Client
	slots []uint32 // slot -> shard
	dir   string
}

func startCluster(t *testing.T, shards uint32) *cluster {
	t.Helper()
	return startClusterIn(t, t.TempDir(), shards)
}

func startClusterIn(t *testing.T, dir string, shards uint32) *cluster {
	t.Helper()
	return startClusterWith(t, dir, shards, nil)
}

// startClusterWith starts a cluster whose nodes pass every saga message they
// send (credit, abort, forget) through fault; nil injects nothing.
func startClusterWith(t *testing.T, dir string, shards uint32, fault func(to uint32, cmd *shard.Command) node.Fault) *cluster {
	t.Helper()
	return startClusterConfig(t, server.Config{DataDir: dir, Shards: shards, SagaFault: fault})
}

// startClusterConfig starts a cluster from cfg, whose node id, addresses and
// logger it fills in; opts configure the test's client.
func startClusterConfig(t *testing.T, cfg server.Config, opts ...client.Option) *cluster {
	t.Helper()
	return startClusterNATS(t, cfg, nil, opts...)
}

// startClusterNATS is startClusterConfig with options of the test's NATS
// connection (TLS).
func startClusterNATS(t *testing.T, cfg server.Config, natsOpts []nats.Option, opts ...client.Option) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	level := slog.LevelWarn
	if os.Getenv("E2E_DEBUG") != "" {
		level = slog.LevelDebug
	}
	cfg.NodeID, cfg.NATSListen, cfg.RaftListen = "n1", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	srv, err := server.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	connOpts := natsOpts
	if cfg.Providers != "" {
		connOpts = append(connOpts, nats.UserInfo(opsUser, opsPassword))
	}
	nc, err := nats.Connect(srv.ClientURL(), connOpts...)
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	c := &cluster{t: t, srv: srv, nc: nc, c: client.New(nc, opts...), dir: cfg.DataDir}
	t.Cleanup(c.stop)
	st := c.status()
	c.slots = make([]uint32, transport.SlotCount)
	for _, s := range st.Shards {
		for _, slot := range s.Slots {
			c.slots[slot] = s.ID
		}
	}
	return c
}

// internal returns a connection with the node's rights, for tests that play
// a shard on the internal subjects (clients may not).
func (c *cluster) internal() *nats.Conn {
	c.t.Helper()
	if c.in == nil {
		nc, err := c.srv.ConnectInternal()
		if err != nil {
			c.t.Fatalf("internal connection: %v", err)
		}
		c.in = nc
	}
	return c.in
}

func (c *cluster) stop() {
	if c.srv == nil {
		return
	}
	c.nc.Close()
	if c.in != nil {
		c.in.Close()
		c.in = nil
	}
	if err := c.srv.Close(); err != nil {
		c.t.Logf("close: %v", err)
	}
	c.srv = nil
}

func (c *cluster) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c.t.Cleanup(cancel)
	return ctx
}

func (c *cluster) status() *transport.StatusReply {
	c.t.Helper()
	st, err := c.c.Status(c.ctx())
	if err != nil {
		c.t.Fatalf("status: %v", err)
	}
	for _, s := range st.Shards {
		if s.Error != "" {
			c.t.Fatalf("shard %d: %s", s.ID, s.Error)
		}
	}
	return st
}

func (c *cluster) shardOf(id string) uint32 { return c.slots[transport.Slot(id)] }

// accountOn returns an unused account id on the given shard.
func (c *cluster) accountOn(prefix string, shard uint32) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if c.shardOf(id) == shard {
			return id
		}
	}
}

func (c *cluster) createAccounts(accounts ...transport.Account) []transport.Result {
	c.t.Helper()
	res, err := c.c.CreateAccounts(c.ctx(), accounts)
	if err != nil {
		c.t.Fatalf("create accounts: %v", err)
	}
	return res
}

func (c *cluster) mustCreateAccounts(accounts ...transport.Account) {
	c.t.Helper()
	for i, r := range c.createAccounts(accounts...) {
		if r.Code != transport.CodeOK {
			c.t.Fatalf("account %s: %v", accounts[i].ID, r.Code)
		}
	}
}

func (c *cluster) transfer(transfers ...transport.Transfer) []transport.Result {
	c.t.Helper()
	res, err := c.c.CreateTransfers(c.ctx(), transfers)
	if err != nil {
		c.t.Fatalf("create transfers: %v", err)
	}
	if len(res) != len(transfers) {
		c.t.Fatalf("%d results for %d transfers", len(res), len(transfers))
	}
	return res
}

func (c *cluster) account(id string) transport.Account {
	c.t.Helper()
	as, err := c.c.LookupAccounts(c.ctx(), []string{id})
	if err != nil || len(as) != 1 {
		c.t.Fatalf("lookup %s: %v (%d found)", id, err, len(as))
	}
	return as[0]
}

// quiesce waits until every outbox and inbox is empty (sagas finished and
// forgotten), then checks that debits equal credits per ledger.
func (c *cluster) quiesce() *transport.StatusReply {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a hang guard, not a performance bound
	for {
		st := c.status()
		busy := false
		for _, s := range st.Shards {
			busy = busy || s.OutboxDepth > 0 || s.InboxDepth > 0
		}
		if !busy {
			checkBalanced(c.t, st)
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("sagas did not drain: %+v", st.Shards)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkBalanced(t *testing.T, st *transport.StatusReply) {
	t.Helper()
	by := map[uint32]*transport.ExactTotals{} // a ledger's sums pass 2^64 with amounts near it
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			if by[l.Ledger] == nil {
				by[l.Ledger] = &transport.ExactTotals{}
			}
			if err := by[l.Ledger].Add(l.Sums()); err != nil {
				t.Fatalf("ledger %d: %v", l.Ledger, err)
			}
		}
	}
	for l, x := range by {
		if x.DebitsPosted != x.CreditsPosted || x.DebitsPending != (transport.Uint128{}) || x.CreditsPending != (transport.Uint128{}) {
			t.Fatalf("ledger %d unbalanced at quiescence: debits_posted %s credits_posted %s pending %s/%s", l, x.DebitsPosted, x.CreditsPosted, x.DebitsPending, x.CreditsPending)
		}
	}
}

func acct(id string, flags uint32) transport.Account {
	return transport.Account{ID: id, Ledger: 1, Code: 10, Flags: flags}
}

func xfer(id, debit, credit string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: amount, Ledger: 1, Code: 1}
}

func codes(rs []transport.Result) []transport.Code {
	out := make([]transport.Code, len(rs))
	for i, r := range rs {
		out[i] = r.Code
	}
	return out
}

// waitStatus polls the cluster status until cond holds. The deadline is a
// hang guard, not a performance bound.
func (c *cluster) waitStatus(what string, cond func(*transport.StatusReply) bool) *transport.StatusReply {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := c.status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("waiting for %s: %+v", what, st.Shards)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shardTotals sums the per-shard counters of a status.
type shardTotals struct{ accounts, transfers, outbox, inbox uint64 }

func totals(st *transport.StatusReply) shardTotals {
	var x shardTotals
	for _, s := range st.Shards {
		x.accounts += s.Accounts
		x.transfers += s.Transfers
		x.outbox += s.OutboxDepth
		x.inbox += s.InboxDepth
	}
	return x
}

// hashes returns every shard's state hash.
func (c *cluster) hashes() map[uint32]string {
	c.t.Helper()
	out := map[uint32]string{}
	for _, s := range c.status().Shards {
		if s.StateHash == "" {
			c.t.Fatalf("shard %d reports no state hash", s.ID)
		}
		out[s.ID] = s.StateHash
	}
	return out
}

// request sends body on subject over plain NATS and returns the reply's
// bytes. The timeout is a hang guard.
func (c *cluster) request(subject string, body []byte) []byte {
	c.t.Helper()
	msg, err := c.nc.Request(subject, body, 30*time.Second)
	if err != nil {
		c.t.Fatalf("request %s: %v", subject, err)
	}
	return msg.Data
}

// sendTransfers sends one batch over plain NATS and sends it again, with the
// same ids, only while the cluster answers timeout or unavailable. attempts
// says how many requests that took; a batch answered on its first attempt
// must carry the first answer of every event (ok for a fresh event). It
// returns an error rather than failing so that it may run in goroutines.
func (c *cluster) sendTransfers(transfers []transport.Transfer) (results []transport.Result, attempts int, err error) {
	body, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: transfers})
	if err != nil {
		return nil, 0, err
	}
	subject := transport.Subjects{Prefix: transport.DefaultPrefix}.TransfersCreate()
	deadline := time.Now().Add(90 * time.Second) // hang guard
	for attempts = 1; ; attempts++ {
		msg, err := c.nc.Request(subject, body, 30*time.Second)
		if err != nil {
			return nil, attempts, fmt.Errorf("attempt %d: %w", attempts, err)
		}
		var reply transport.ResultsReply
		if err := transport.Unmarshal(msg.Data, &reply); err != nil {
			return nil, attempts, fmt.Errorf("attempt %d: bad reply: %w", attempts, err)
		}
		switch {
		case reply.Error == nil:
			if len(reply.Results) != len(transfers) {
				return nil, attempts, fmt.Errorf("%d results for %d transfers", len(reply.Results), len(transfers))
			}
			return reply.Results, attempts, nil
		case reply.Error.Code != transport.ErrTimeoutCode && reply.Error.Code != transport.ErrUnavailableCode:
			return nil, attempts, fmt.Errorf("attempt %d: %v", attempts, reply.Error)
		case time.Now().After(deadline):
			return nil, attempts, fmt.Errorf("still %v after %d attempts", reply.Error, attempts)
		}
	}
}

// ledgerModel is what the transfers answered ok (or exists) must have done.
type ledgerModel struct {
	accounts  []string
	debits    map[string]uint64
	credits   map[string]uint64
	transfers map[string]transport.Transfer // as sent, Timestamp = the answered one
}

func newModel(accounts ...string) *ledgerModel {
	return &ledgerModel{accounts: accounts, debits: map[string]uint64{}, credits: map[string]uint64{}, transfers: map[string]transport.Transfer{}}
}

// applied records a transfer whose result was ok or exists with timestamp ts.
func (m *ledgerModel) applied(t *testing.T, tr transport.Transfer, ts uint64) {
	t.Helper()
	if ts == 0 {
		t.Fatalf("transfer %s applied without a timestamp", tr.ID)
	}
	if old, ok := m.transfers[tr.ID]; ok {
		if old.Timestamp != ts {
			t.Fatalf("transfer %s answered with timestamps %d and %d", tr.ID, old.Timestamp, ts)
		}
		return
	}
	tr.Timestamp = ts
	m.transfers[tr.ID] = tr
	m.debits[tr.DebitAccountID] += tr.Amount
	m.credits[tr.CreditAccountID] += tr.Amount
}

// check compares every account's balances with the model (nothing pending),
// and every transfer's lookup with what was answered: each visible once,
// posted, with the same fields and timestamp.
func (c *cluster) check(m *ledgerModel) {
	c.t.Helper()
	as, err := c.c.LookupAccounts(c.ctx(), m.accounts)
	if err != nil || len(as) != len(m.accounts) {
		c.t.Fatalf("lookup accounts: %v (%d of %d found)", err, len(as), len(m.accounts))
	}
	for _, a := range as {
		if a.DebitsPosted != m.debits[a.ID] || a.CreditsPosted != m.credits[a.ID] || a.DebitsPending != 0 || a.CreditsPending != 0 {
			c.t.Errorf("account %s: debits %d/%d pending, credits %d/%d pending; want debits %d, credits %d, nothing pending",
				a.ID, a.DebitsPosted, a.DebitsPending, a.CreditsPosted, a.CreditsPending, m.debits[a.ID], m.credits[a.ID])
		}
	}
	ids := make([]string, 0, len(m.transfers))
	for id := range m.transfers {
		ids = append(ids, id)
	}
	ts, err := c.c.LookupTransfers(c.ctx(), ids)
	if err != nil {
		c.t.Fatalf("lookup transfers: %v", err)
	}
	if len(ts) != len(ids) {
		c.t.Errorf("lookup of %d transfers found %d", len(ids), len(ts))
	}
	seen := map[string]bool{}
	for _, got := range ts {
		want, ok := m.transfers[got.ID]
		switch {
		case !ok:
			c.t.Errorf("lookup returned unasked transfer %+v", got)
		case seen[got.ID]:
			c.t.Errorf("transfer %s returned twice", got.ID)
		case got.State != transport.StatePosted:
			c.t.Errorf("transfer %s is %q, want posted", got.ID, got.State)
		default:
			got.State = ""
			if !reflect.DeepEqual(got, want) {
				c.t.Errorf("transfer %s: lookup %+v, answered %+v", got.ID, got, want)
			}
		}
		seen[got.ID] = true
	}
}
