package e2e

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// A client may use the client API only: a credit forged on a shard's
// internal subject would create money, and sniffing it would show every
// saga. The embedded NATS refuses both, and the ledger does not change.
func TestClientsCannotReachInternalSubjects(t *testing.T) {
	c := startCluster(t, 2)
	alice := c.accountOn("alice", 1)
	c.mustCreateAccounts(acct(alice, 0))
	before := ledgerTotals(c.status())

	errs := make(chan error, 4)
	nc, err := nats.Connect(c.srv.ClientURL(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	forged := transport.Transfer{ID: "forged", DebitAccountID: "nobody", CreditAccountID: alice, Amount: 1_000_000, Ledger: 1, Code: 1, Timestamp: 1}
	body, err := transport.Marshal(&shard.Command{Kind: shard.KindCredit, Credits: []shard.Credit{{Transfer: forged, DebitShard: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: transport.Subjects{Prefix: "ledger"}.Shard(1), Data: body, Header: nats.Header{wire.OpHeader: []string{wire.OpCommand}}}
	if _, err := nc.RequestMsg(msg, time.Second); err == nil {
		t.Fatal("a client's request on an internal subject was answered")
	}
	if _, err := nc.SubscribeSync("ledger.internal.>"); err != nil {
		t.Fatal(err) // refused asynchronously, below
	}
	for _, want := range []string{"Publish", "Subscription"} {
		select {
		case err := <-errs:
			if err == nil || !strings.Contains(err.Error(), "Permissions Violation") || !strings.Contains(err.Error(), want) {
				t.Fatalf("want a %s permissions violation, got %v", want, err)
			}
		case <-time.After(10 * time.Second): // hang guard
			t.Fatalf("no %s permissions violation reported", want)
		}
	}
	if a := c.account(alice); a.CreditsPosted != 0 {
		t.Fatalf("forged credit applied: %+v", a)
	}
	// Balances, not state hashes: forget watermarks move in the background.
	if after := ledgerTotals(c.status()); !maps.Equal(before, after) {
		t.Fatalf("balances changed: %v -> %v", before, after)
	}
	// The client API still works for the same connection.
	if _, err := nc.Request(transport.Subjects{Prefix: "ledger"}.ClusterStatus(), []byte{0x80}, 5*time.Second); err != nil {
		t.Fatalf("client API: %v", err)
	}
}

// ledgerTotals sums each ledger's balances over the shards.
func ledgerTotals(st *transport.StatusReply) map[uint32]transport.LedgerTotals {
	out := map[uint32]transport.LedgerTotals{}
	for _, s := range st.Shards {
		for _, l := range s.Ledgers {
			x := out[l.Ledger]
			x.Ledger = l.Ledger
			x.DebitsPosted += l.DebitsPosted
			x.CreditsPosted += l.CreditsPosted
			x.DebitsPending += l.DebitsPending
			x.CreditsPending += l.CreditsPending
			out[l.Ledger] = x
		}
	}
	return out
}
