package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// cluster is an in-process single-node ledgerd.
type cluster struct {
	t     *testing.T
	srv   *server.Server
	nc    *nats.Conn
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
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	level := slog.LevelWarn
	if os.Getenv("E2E_DEBUG") != "" {
		level = slog.LevelDebug
	}
	srv, err := server.Start(ctx, server.Config{
		NodeID: "n1", DataDir: dir, NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", Shards: shards,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	c := &cluster{t: t, srv: srv, nc: nc, c: client.New(nc), dir: dir}
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

func (c *cluster) stop() {
	if c.srv == nil {
		return
	}
	c.nc.Close()
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
	type sums struct{ dp, cp, dpend, cpend uint64 }
	by := map[uint32]*sums{}
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			if by[l.Ledger] == nil {
				by[l.Ledger] = &sums{}
			}
			x := by[l.Ledger]
			x.dp += l.DebitsPosted
			x.cp += l.CreditsPosted
			x.dpend += l.DebitsPending
			x.cpend += l.CreditsPending
		}
	}
	for l, x := range by {
		if x.dp != x.cp || x.dpend != 0 || x.cpend != 0 {
			t.Fatalf("ledger %d unbalanced at quiescence: debits_posted %d credits_posted %d pending %d/%d", l, x.dp, x.cp, x.dpend, x.cpend)
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
