package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// Found in review: with more than 32 credit messages in one send, the
// dispatcher waited for an in-flight slot that senders held until the
// dispatcher took their answers. 34 shards: one reservation entry, 33 credit
// messages; every transfer must resolve.
func TestOneBatchToMoreThan32CreditShardsResolves(t *testing.T) {
	const shards = 34
	c := startCluster(t, shards)
	bank := c.accountOn("bank", 1)
	accounts := []transport.Account{acct(bank, 0)}
	var transfers []transport.Transfer
	for s := uint32(2); s <= shards; s++ {
		id := c.accountOn(fmt.Sprintf("acc%d", s), s)
		accounts = append(accounts, acct(id, 0))
		transfers = append(transfers, xfer(fmt.Sprintf("t%d", s), bank, id, 1))
	}
	c.mustCreateAccounts(accounts...)
	for i, r := range c.transfer(transfers...) {
		if r.Code != transport.CodeOK {
			t.Fatalf("transfer %d: %v", i, r.Code)
		}
	}
	c.quiesce()
}

// Found in review: a batch within every limit grew past the 8 MiB a message
// may carry once the router re-encoded it for its shard, and was retried
// until the deadline, forever. The router now splits a shard's part.
//
// The deadlines are hang guards here: the largest batch takes under a second
// in a release build and over ten under the race detector on a loaded CI
// machine, past the router's default 5 s. A request past its deadline is
// retried by the client and its retry is answered exists (docs/protocol.md), which
// would hide whether the first attempt was answered ok.
func TestLargestValidTransferBatchIsServed(t *testing.T) {
	c := startClusterConfig(t, server.Config{DataDir: t.TempDir(), Shards: 1, RequestDeadline: 25 * time.Second},
		client.WithRequestTimeout(30*time.Second))
	c.mustCreateAccounts(acct("bank", 0), acct("alice", 0))
	// A batch that fits one client message with little to spare: the
	// router's command for it is larger (credit shards added), over what a
	// shard may be sent in one message, so the router must split it.
	meta := map[string]string{"k": strings.Repeat("x", 911)}
	transfers := make([]transport.Transfer, transport.BatchEventsMax)
	for i := range transfers {
		transfers[i] = xfer(fmt.Sprintf("t%d", i), "bank", "alice", 1)
		transfers[i].Metadata = meta
	}
	body, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: transfers})
	if err != nil || len(body) > transport.MessageBytesMax || len(body) < transport.MessageBytesMax-32<<10 {
		t.Fatalf("the batch must fill one message to within 32 KiB: %d bytes, %v", len(body), err)
	}
	for i, r := range c.transfer(transfers...) {
		if r.Code != transport.CodeOK {
			t.Fatalf("transfer %d: %v", i, r.Code)
		}
	}
	if a := c.account("alice"); a.CreditsPosted != transport.BatchEventsMax {
		t.Fatalf("alice: %+v", a)
	}
}

// Found in review: 8190 records with large metadata do not fit one reply.
// Such a lookup is refused with a specific too_many_events rather than left
// to time out, and half as many ids are answered.
func TestLookupWhoseReplyWouldNotFitIsRefusedClearly(t *testing.T) {
	// 8 MiB of accounts in one batch: under -race on a busy machine it may
	// outlast the router's default deadline, whose client retry would then
	// answer exists (as it should): give the first attempt time instead.
	c := startClusterConfig(t, server.Config{DataDir: t.TempDir(), Shards: 1, RequestDeadline: 25 * time.Second},
		client.WithRequestTimeout(30*time.Second))
	meta := map[string]string{"k": strings.Repeat("x", 1000)}
	accounts := make([]transport.Account, transport.BatchEventsMax)
	ids := make([]string, len(accounts))
	for i := range accounts {
		ids[i] = fmt.Sprintf("a%d", i)
		accounts[i] = acct(ids[i], 0)
		accounts[i].Metadata = meta
	}
	c.mustCreateAccounts(accounts...)
	lookup := func(ids []string) transport.AccountsReply {
		body, err := transport.Marshal(&transport.LookupRequest{IDs: ids})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.nc.Request(transport.Subjects{Prefix: "ledger"}.AccountsLookup(), body, 10*time.Second)
		if err != nil {
			t.Fatalf("no reply: %v", err)
		}
		var reply transport.AccountsReply
		if err := transport.Unmarshal(resp.Data, &reply); err != nil {
			t.Fatal(err)
		}
		return reply
	}
	if r := lookup(ids); r.Error == nil || r.Error.Code != transport.ErrTooManyEventsCode {
		t.Fatalf("lookup of %d large records: %d answered, error %v", len(ids), len(r.Accounts), r.Error)
	}
	if r := lookup(ids[:4096]); r.Error != nil || len(r.Accounts) != 4096 {
		t.Fatalf("lookup of 4096: %d answered, error %v", len(r.Accounts), r.Error)
	}
}
