package router_test

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

// In one process the router hands every command to the node, which leads
// every shard: creating accounts and transfers, same-shard and cross-shard,
// sends nothing to a shard on NATS, and is answered as through NATS
// (node.TestLocalCommandAnswersAsTheShardSubject compares the two paths
// reply by reply; the e2e tests run on this path).
func TestCommandsOfShardsLedHereSkipNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{NodeID: "n1", DataDir: t.TempDir(), NATSListen: "127.0.0.1:0",
		RaftListen: "127.0.0.1:0", Shards: 2,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	st, err := c.Status(ctx) // reads go on NATS
	if err != nil {
		t.Fatal(err)
	}
	shardOf := make([]uint32, transport.SlotCount)
	for _, s := range st.Shards {
		for _, slot := range s.Slots {
			shardOf[slot] = s.ID
		}
	}
	on := func(prefix string, id uint32) string {
		for i := 0; ; i++ {
			if a := fmt.Sprintf("%s-%d", prefix, i); shardOf[transport.Slot(a)] == id {
				return a
			}
		}
	}
	bank, near, far := on("bank", 1), on("near", 1), on("far", 2)
	before := shardRequests(t, srv)
	if res, err := c.CreateAccounts(ctx, []transport.Account{acct(bank), acct(near), acct(far)}); err != nil || !allOK(res) {
		t.Fatalf("accounts: %v, %v", res, err)
	}
	res, err := c.CreateTransfers(ctx, []transport.Transfer{xfer("t1", bank, near, 3), xfer("t2", bank, far, 5), xfer("t3", far, bank, 2)})
	if err != nil || !allOK(res) {
		t.Fatalf("transfers: %v, %v", res, err)
	}
	after := shardRequests(t, srv)
	// Accounts: one part per shard; transfers: one per debit shard.
	if local := after["local"] - before["local"]; local < 4 {
		t.Fatalf("%v commands handed over in-process, want at least 4", local)
	}
	if nats := after["nats"] - before["nats"]; nats != 0 {
		t.Fatalf("%v requests to shards on NATS, want none", nats)
	}
	as, err := c.LookupAccounts(ctx, []string{bank, near, far})
	if err != nil || len(as) != 3 {
		t.Fatalf("lookup: %v, %v", as, err)
	}
	if as[0].DebitsPosted != 8 || as[0].CreditsPosted != 2 || as[1].CreditsPosted != 3 || as[2].CreditsPosted != 5 || as[2].DebitsPosted != 2 {
		t.Fatalf("balances: %+v", as)
	}
}

// shardRequests reads ledgerd_router_shard_requests_total by path.
func shardRequests(t *testing.T, srv *server.Server) map[string]float64 {
	t.Helper()
	families, err := srv.Metrics().Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "ledgerd_router_shard_requests_total" {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "path" {
					out[l.GetValue()] = m.Counter.GetValue()
				}
			}
		}
	}
	return out
}

func acct(id string) transport.Account { return transport.Account{ID: id, Ledger: 1, Code: 1} }

func xfer(id, debit, credit string, amount uint64) transport.Transfer {
	return transport.Transfer{ID: id, DebitAccountID: debit, CreditAccountID: credit, Amount: amount, Ledger: 1, Code: 1}
}

func allOK(res []transport.Result) bool {
	for _, r := range res {
		if r.Code != transport.CodeOK {
			return false
		}
	}
	return len(res) > 0
}
