package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// The operator of every cluster started with a providers file.
const (
	opsUser     = "ops"
	opsPassword = "ops-pw"
)

// providersFile is two providers on ledger 1 (globex on 2 too) and the
// operator, as a YAML file.
const providersFile = `
operators:
  - user: ops
    password: ops-pw
providers:
  - user: acme
    password: acme-pw
    ledgers: [1]
    accounts: ["acme-"]
  - user: globex
    # bcrypt of "globex-pw": the file need not hold the password itself
    # (cost 4: the test checks that a hash works, not what it costs)
    password: "$2a$04$3yBfbstqGvqjKUQ5Ioqc.O3XDjwVQ4MW9z4C0krTLE7PtxTsrQj/G"
    ledgers: [1, 2]
    accounts: ["globex-", "gx:"]
    limits: {requests_in_flight: 8, connections: 4}
`

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startProviders starts a 2-shard cluster with the providers file text.
func startProviders(t *testing.T, text string) *cluster {
	t.Helper()
	dir := t.TempDir()
	return startClusterConfig(t, server.Config{DataDir: filepath.Join(dir, "data"), Shards: 2, Providers: writeFile(t, dir, "providers.yaml", text)})
}

// connectAs connects with a user's password; the test ends it.
func (c *cluster) connectAs(user, password string, opts ...nats.Option) (*nats.Conn, error) {
	// globex's password is a bcrypt hash, of cost 4 here: one of cost 11
	// took the server seconds to check under -race with other packages'
	// tests beside it, and the server's first PING (2 s after connect)
	// then came before the PONG nats.go waits for ("expected 'PONG', got
	// 'PING'"). The timeout is for a loaded machine all the same.
	nc, err := nats.Connect(c.srv.ClientURL(), append([]nats.Option{nats.UserInfo(user, password), nats.MaxReconnects(0), nats.Timeout(15 * time.Second)}, opts...)...)
	if err == nil {
		c.t.Cleanup(nc.Close)
	}
	return nc, err
}

func (c *cluster) clientAs(user, password string) *client.Client {
	c.t.Helper()
	nc, err := c.connectAs(user, password)
	if err != nil {
		c.t.Fatalf("connect as %s: %v", user, err)
	}
	return client.New(nc)
}

func names(rs []transport.Result) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Code.String())
	}
	return out
}

func TestConnectionsWithoutValidCredentialsAreRefused(t *testing.T) {
	c := startProviders(t, providersFile)
	if nc, err := nats.Connect(c.srv.ClientURL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("an anonymous connection was accepted")
	}
	for _, u := range [][2]string{{"acme", "wrong"}, {"globex", "globex-wrong"}, {"nobody", "x"}, {"ledgerd", ""}} {
		if _, err := c.connectAs(u[0], u[1]); err == nil {
			t.Fatalf("user %s with password %q was accepted", u[0], u[1])
		}
	}
	// The bcrypt password works.
	if _, err := c.connectAs("globex", "globex-pw"); err != nil {
		t.Fatalf("globex with its password: %v", err)
	}
}

// Every rule of docs/protocol.md's "Who may do what" for creation, each through
// real NATS authentication, and nothing refused changes anything.
func TestProviderMayCreateOnlyWhatItOwns(t *testing.T) {
	c := startProviders(t, providersFile)
	// The operator opens the providers' books, on both shards.
	acmeBank, acmeAlice := c.accountOn("acme-bank", 1), c.accountOn("acme-alice", 2)
	globexBob, globexCarl := c.accountOn("globex-bob", 2), c.accountOn("globex-carl", 1)
	c.mustCreateAccounts(acct(acmeBank, 0), acct(acmeAlice, 0), acct(globexBob, 0), acct(globexCarl, 0))
	acme := c.clientAs("acme", "acme-pw")
	globex := c.clientAs("globex", "globex-pw")
	ctx := c.ctx()

	res, err := acme.CreateAccounts(ctx, []transport.Account{
		acct(c.accountOn("acme-carol", 1), 0), // ok
		acct("globex-mallory", 0),             // a foreign prefix
		{ID: "acme-l2", Ledger: 2, Code: 1},   // a ledger not allowed
		{ID: "acme-nol", Ledger: 0, Code: 1},  // no ledger: invalid, not unauthorized
		{ID: "", Ledger: 1, Code: 1},          // no prefix at all
		{ID: "acme-chain-1", Ledger: 1, Code: 1, Flags: transport.AccountLinked},
		{ID: "gx:chain-2", Ledger: 1, Code: 1}, // fails the chain
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ok", "unauthorized", "unauthorized", "ledger_invalid", "unauthorized", "linked_event_failed", "unauthorized"}
	if got := names(res); !slices.Equal(got, want) {
		t.Fatalf("acme's accounts: got %v, want %v", got, want)
	}

	// globex leaves a pending transfer to acme's customer, and one that
	// touches only its own accounts.
	res, err = globex.CreateTransfers(ctx, []transport.Transfer{
		{ID: "globex-p1", DebitAccountID: globexBob, CreditAccountID: acmeAlice, Amount: 7, Ledger: 1, Code: 1, Flags: transport.TransferPending},
		xfer("globex-t9", globexCarl, globexBob, 3),
	})
	if err != nil || !slices.Equal(names(res), []string{"ok", "ok"}) {
		t.Fatalf("globex's transfers: %v %v", names(res), err)
	}
	before := map[string]transport.Account{}
	for _, id := range []string{acmeBank, acmeAlice, globexBob, globexCarl} {
		before[id] = c.account(id)
	}

	closing := xfer("acme-t5", acmeBank, globexBob, 1)
	closing.Flags = transport.TransferPending | transport.TransferClosingCredit
	balancing := xfer("acme-t6", acmeBank, globexBob, 1)
	balancing.Flags = transport.TransferBalancingCredit
	onL2 := xfer("acme-t7", acmeBank, globexBob, 1)
	onL2.Ledger = 2
	res, err = acme.CreateTransfers(ctx, []transport.Transfer{
		xfer("acme-t1", acmeBank, globexBob, 100), // pays another provider's customer: ok
		xfer("acme-t2", globexBob, acmeAlice, 5),  // debits a foreign account
		xfer("globex-t3", acmeBank, acmeAlice, 5), // a foreign id
		onL2,      // a ledger not allowed
		closing,   // closes a foreign account
		balancing, // probes a foreign account's limit
		{ID: "acme-post1", PendingID: "globex-p1", Flags: transport.TransferPostPendingTransfer},   // resolves a foreign pending transfer
		{ID: "acme-void1", PendingID: "globex-p1", Flags: transport.TransferVoidPendingTransfer},   // likewise
		{ID: "acme-post2", PendingID: "acme-nosuch", Flags: transport.TransferPostPendingTransfer}, // not found comes first
		{ID: "acme-t8", DebitAccountID: acmeBank, CreditAccountID: acmeAlice, Amount: 1, Ledger: 1, Code: 1, Flags: transport.TransferLinked},
		xfer("acme-t9", globexCarl, acmeAlice, 1), // fails the chain
	})
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"ok", "unauthorized", "unauthorized", "unauthorized", "unauthorized", "unauthorized",
		"unauthorized", "unauthorized", "pending_transfer_not_found", "linked_event_failed", "unauthorized"}
	if got := names(res); !slices.Equal(got, want) {
		t.Fatalf("acme's transfers: got %v, want %v", got, want)
	}
	// Only acme-t1 moved money.
	after := map[string]transport.Account{}
	for _, id := range []string{acmeBank, acmeAlice, globexBob, globexCarl} {
		after[id] = c.account(id)
	}
	if after[acmeBank].DebitsPosted != before[acmeBank].DebitsPosted+100 || after[globexBob].CreditsPosted != before[globexBob].CreditsPosted+100 {
		t.Fatalf("acme-t1 not applied: %+v -> %+v", before, after)
	}
	after[acmeBank], after[globexBob] = before[acmeBank], before[globexBob]
	for id := range before {
		a, b := after[id], before[id]
		if id != acmeBank && id != globexBob && (a.DebitsPosted != b.DebitsPosted || a.CreditsPosted != b.CreditsPosted ||
			a.DebitsPending != b.DebitsPending || a.CreditsPending != b.CreditsPending || a.Flags != b.Flags) {
			t.Fatalf("%s changed: %+v -> %+v", id, b, a)
		}
	}
	// A refused id stays free: acme's own, for acme.
	if ts, err := c.c.LookupTransfers(ctx, []string{"acme-t2", "globex-t3", "acme-post1"}); err != nil || len(ts) != 0 {
		t.Fatalf("refused transfers were stored: %v %v", ts, err)
	}
	// The owner of the pending transfer may still post it.
	res, err = globex.CreateTransfers(ctx, []transport.Transfer{{ID: "globex-post1", PendingID: "globex-p1", Flags: transport.TransferPostPendingTransfer}})
	if err != nil || !slices.Equal(names(res), []string{"ok"}) {
		t.Fatalf("globex's post: %v %v", names(res), err)
	}
	// The operator may do anything.
	res = c.transfer(xfer("anything-1", globexBob, acmeAlice, 1))
	if !slices.Equal(names(res), []string{"ok"}) {
		t.Fatalf("operator's transfer: %v", names(res))
	}
}

// Foreign accounts and transfers are left out of every read as if unknown;
// cluster.status is the operators'.
func TestProviderReadsOnlyWhatItOwns(t *testing.T) {
	c := startProviders(t, providersFile)
	acmeBank, acmeAlice := c.accountOn("acme-bank", 1), c.accountOn("acme-alice", 2)
	globexBob, globexCarl := c.accountOn("globex-bob", 2), c.accountOn("globex-carl", 1)
	hist := acct(globexBob, transport.AccountHistory)
	c.mustCreateAccounts(acct(acmeBank, transport.AccountHistory), acct(acmeAlice, 0), hist, acct(globexCarl, 0),
		transport.Account{ID: "acme-on-l2", Ledger: 2, Code: 1, Flags: transport.AccountHistory}) // the operator's, on a ledger acme may not use
	if rs := c.transfer(xfer("acme-t1", acmeBank, globexBob, 10), xfer("globex-t1", globexCarl, globexBob, 20),
		xfer("globex-t2", globexBob, acmeAlice, 5)); !slices.Equal(names(rs), []string{"ok", "ok", "ok"}) {
		t.Fatalf("setup: %v", names(rs))
	}
	acme := c.clientAs("acme", "acme-pw")
	ctx := c.ctx()

	as, err := acme.LookupAccounts(ctx, []string{acmeBank, globexBob, acmeAlice, "acme-on-l2", globexCarl})
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 2 || as[0].ID != acmeBank || as[1].ID != acmeAlice {
		t.Fatalf("acme's account lookup: %+v", as)
	}
	ts, err := acme.LookupTransfers(ctx, []string{"acme-t1", "globex-t1", "globex-t2"})
	if err != nil {
		t.Fatal(err)
	}
	// globex-t2 credits acme's customer: it touches one of acme's accounts.
	if len(ts) != 2 || ts[0].ID != "acme-t1" || ts[1].ID != "globex-t2" {
		t.Fatalf("acme's transfer lookup: %+v", ts)
	}
	for _, id := range []string{globexBob, "acme-on-l2"} {
		f := transport.AccountFilter{AccountID: id, Limit: 10}
		if ts, err := acme.AccountTransfers(ctx, f); err != nil || len(ts) != 0 {
			t.Fatalf("acme read %s's transfers: %v %v", id, ts, err)
		}
		if bs, err := acme.AccountBalances(ctx, f); err != nil || len(bs) != 0 {
			t.Fatalf("acme read %s's balances: %v %v", id, bs, err)
		}
	}
	f := transport.AccountFilter{AccountID: acmeBank, Limit: 10}
	if ts, err := acme.AccountTransfers(ctx, f); err != nil || len(ts) != 1 || ts[0].ID != "acme-t1" {
		t.Fatalf("acme's own history: %+v %v", ts, err)
	}
	// The operator sees all of it.
	if ts, err := c.c.AccountTransfers(ctx, transport.AccountFilter{AccountID: globexBob, Limit: 10}); err != nil || len(ts) != 3 {
		t.Fatalf("operator's read of %s: %d rows, %v", globexBob, len(ts), err)
	}
	_, err = acme.Status(ctx)
	var e *transport.Error
	if !errors.As(err, &e) || e.Code != transport.ErrUnauthorizedCode {
		t.Fatalf("a provider's cluster.status: want unauthorized, got %v", err)
	}
}

// No subscription of a provider, not even ">", shows it another provider's
// requests and replies or the cluster's internal traffic, while the default
// _INBOX reply prefix works for everyone.
func TestProviderSeesNoOneElsesTraffic(t *testing.T) {
	c := startProviders(t, providersFile)
	acmeBank, globexBob := c.accountOn("acme-bank", 1), c.accountOn("globex-bob", 2)
	globexCarl := c.accountOn("globex-carl", 1)
	c.mustCreateAccounts(acct(acmeBank, 0), acct(globexBob, 0), acct(globexCarl, 0))

	spy, err := c.connectAs("acme", "acme-pw")
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int64
	var first atomic.Value
	for _, subj := range []string{">", "_INBOX.>", "ledger.>", "_R_.>", "$SRV.>"} {
		if _, err := spy.Subscribe(subj, func(m *nats.Msg) {
			seen.Add(1)
			first.CompareAndSwap(nil, m.Subject)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	// globex and the operator work: lookups, cross-shard transfers (sagas
	// on the internal subjects), history.
	globex := c.clientAs("globex", "globex-pw")
	ctx := c.ctx()
	for i := range 20 {
		id := "globex-x" + string(rune('a'+i))
		if rs, err := globex.CreateTransfers(ctx, []transport.Transfer{xfer(id, globexBob, globexCarl, 1), xfer(id+"-back", globexCarl, globexBob, 1)}); err != nil || !slices.Equal(names(rs), []string{"ok", "ok"}) {
			t.Fatalf("globex: %v %v", names(rs), err)
		}
		if _, err := globex.LookupAccounts(ctx, []string{globexBob}); err != nil {
			t.Fatal(err)
		}
	}
	c.status()
	c.transfer(xfer("ops-1", acmeBank, globexBob, 1))
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let stray deliveries arrive before counting
	if n := seen.Load(); n != 0 {
		t.Fatalf("acme's subscriptions received %d messages of others, the first on %v", n, first.Load())
	}
	// The spy's own requests still work with the default inbox.
	if _, err := client.New(spy).LookupAccounts(ctx, []string{acmeBank}); err != nil {
		t.Fatal(err)
	}
}

// A changed providers file is put in force on reload (SIGHUP): a new
// provider may connect, a removed one is disconnected and refused.
func TestReloadAddsAndRemovesProviders(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "providers.yaml", providersFile)
	c := startClusterConfig(t, server.Config{DataDir: filepath.Join(dir, "data"), Shards: 1, Providers: path})
	closed := make(chan struct{})
	gnc, err := c.connectAs("globex", "globex-pw", nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.connectAs("initech", "initech-pw"); err == nil {
		t.Fatal("initech connected before it was added")
	}
	// A bad file changes nothing.
	writeFile(t, dir, "providers.yaml", providersFile+"  - user: acme\n    password: x\n    ledgers: [1]\n    accounts: [\"a2-\"]\n")
	if err := c.srv.ReloadProviders(); err == nil || !strings.Contains(err.Error(), "acme") {
		t.Fatalf("a file naming acme twice: %v", err)
	}
	if !gnc.IsConnected() {
		t.Fatal("a failed reload disconnected globex")
	}
	without := strings.Replace(providersFile, "  - user: globex", "  - user: initech\n    password: initech-pw\n    ledgers: [1]\n    accounts: [\"initech-\"]\n  - user: globex-gone", 1)
	without = strings.Replace(without, `accounts: ["globex-", "gx:"]`, `accounts: ["gone-"]`, 1)
	writeFile(t, dir, "providers.yaml", without)
	if err := c.srv.ReloadProviders(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second): // hang guard
		t.Fatal("globex's connection was not closed by the reload")
	}
	if _, err := c.connectAs("globex", "globex-pw"); err == nil {
		t.Fatal("globex connected after it was removed")
	}
	initech := c.clientAs("initech", "initech-pw")
	res, err := initech.CreateAccounts(c.ctx(), []transport.Account{acct("initech-1", 0), acct("acme-2", 0)})
	if err != nil || !slices.Equal(names(res), []string{"ok", "unauthorized"}) {
		t.Fatalf("initech after reload: %v %v", names(res), err)
	}
}

// A provider over its limits gets NATS's refusal or unavailable, and the
// other providers go on being served.
func TestProviderLimits(t *testing.T) {
	c := startProviders(t, providersFile)
	acmeBank, acmeDst := c.accountOn("acme-bank", 1), c.accountOn("acme-dst", 2)
	c.mustCreateAccounts(acct(acmeBank, 0), acct(acmeDst, 0))
	// globex may hold 4 connections.
	var globex []*nats.Conn
	for i := range 4 {
		nc, err := c.connectAs("globex", "globex-pw")
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		globex = append(globex, nc)
	}
	if _, err := c.connectAs("globex", "globex-pw"); err == nil {
		t.Fatal("a fifth globex connection was accepted")
	}
	// Limits are per provider: acme connects.
	acme := c.clientAs("acme", "acme-pw")
	// globex floods lookups, all sent at once; past 8 in flight at the
	// router it is answered unavailable at once.
	wait := floodLookups(t, globex[0], 2000)
	ctx := c.ctx()
	var lat []time.Duration
	for i := range 200 {
		start := time.Now()
		rs, err := acme.CreateTransfers(ctx, []transport.Transfer{xfer(fmt.Sprintf("acme-f%d", i), acmeBank, acmeDst, 1)})
		if err != nil || rs[0].Code != transport.CodeOK {
			t.Fatalf("acme during the flood: %v %v", names(rs), err)
		}
		lat = append(lat, time.Since(start))
	}
	answered, unavailable := wait()
	if unavailable == 0 || answered-unavailable == 0 {
		t.Fatalf("globex's flood: %d answered, %d unavailable: want some of each", answered, unavailable)
	}
	slices.Sort(lat)
	t.Logf("acme during globex's flood: p50 %v, p99 %v; globex's %d lookups: %d unavailable", lat[len(lat)/2], lat[len(lat)*99/100], answered, unavailable)
}

// floodLookups publishes n lookups on nc at once and returns a function
// that waits for their replies and counts the unavailable ones.
func floodLookups(t *testing.T, nc *nats.Conn, n int) (wait func() (answered, unavailable int)) {
	t.Helper()
	body, err := transport.Marshal(&transport.LookupRequest{IDs: []string{"globex-1", "globex-2"}})
	if err != nil {
		t.Fatal(err)
	}
	inbox := nats.NewInbox()
	replies := make(chan []byte, n)
	sub, err := nc.Subscribe(inbox, func(m *nats.Msg) { replies <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := nc.PublishRequest(transport.Subjects{Prefix: "ledger"}.AccountsLookup(), inbox, body); err != nil {
			t.Fatal(err)
		}
	}
	return func() (answered, unavailable int) {
		defer sub.Unsubscribe()
		for answered < n {
			select {
			case b := <-replies:
				answered++
				var r transport.AccountsReply
				if err := transport.Unmarshal(b, &r); err != nil {
					t.Fatalf("flood reply: %v", err)
				}
				if r.Error != nil && r.Error.Code == transport.ErrUnavailableCode {
					unavailable++
				}
			case <-time.After(30 * time.Second): // hang guard
				t.Fatalf("flood: %d of %d answered", answered, n)
			}
		}
		return answered, unavailable
	}
}

// A provider's open pending transfers are bounded per shard: past the
// limit its request is answered unavailable and changes nothing, and
// posting one makes room again; another provider is not limited by it.
func TestProviderPendingTransfersLimit(t *testing.T) {
	c := startProviders(t, strings.Replace(providersFile, `accounts: ["acme-"]`, `accounts: ["acme-"]
    limits: {pending_transfers: 2}`, 1))
	bank, dst := c.accountOn("acme-bank", 1), c.accountOn("acme-dst", 1)
	gx, gxDst := c.accountOn("globex-bank", 1), c.accountOn("globex-dst", 1)
	c.mustCreateAccounts(acct(bank, 0), acct(dst, 0), acct(gx, 0), acct(gxDst, 0))
	nc, err := c.connectAs("acme", "acme-pw")
	if err != nil {
		t.Fatal(err)
	}
	send := func(ts ...transport.Transfer) *transport.ResultsReply { t.Helper(); return sendOnce(t, nc, ts) }
	if r := send(pendingXfer("acme-p1", bank, dst, 1, 0), pendingXfer("acme-p2", bank, dst, 1, 0)); r.Error != nil || names(r.Results)[0] != "ok" || names(r.Results)[1] != "ok" {
		t.Fatalf("two pending transfers under the limit: %+v", r)
	}
	r := send(xfer("acme-x", bank, dst, 1), pendingXfer("acme-p3", bank, dst, 1, 0))
	if r.Error == nil || r.Error.Code != transport.ErrUnavailableCode || !strings.Contains(r.Error.Message, "limit there is 2") {
		t.Fatalf("a third pending transfer: %+v", r)
	}
	if got, err := c.c.LookupTransfers(c.ctx(), []string{"acme-x", "acme-p3"}); err != nil || len(got) != 0 {
		t.Fatalf("the refused request applied: %+v %v", got, err)
	}
	// globex is not limited by acme's pending transfers.
	globex := c.clientAs("globex", "globex-pw")
	if rs, err := globex.CreateTransfers(c.ctx(), []transport.Transfer{pendingXfer("globex-p1", gx, gxDst, 1, 0)}); err != nil || rs[0].Code != transport.CodeOK {
		t.Fatalf("globex: %v %v", names(rs), err)
	}
	// Posting one of acme's makes room for one more.
	post := transport.Transfer{ID: "acme-post", PendingID: "acme-p1", Flags: transport.TransferPostPendingTransfer}
	if r := send(post); r.Error != nil || names(r.Results)[0] != "ok" {
		t.Fatalf("post: %+v", r)
	}
	if r := send(xfer("acme-x", bank, dst, 1), pendingXfer("acme-p3", bank, dst, 1, 0)); r.Error != nil || names(r.Results)[0] != "ok" || names(r.Results)[1] != "ok" {
		t.Fatalf("after the post made room: %+v", r)
	}
}

// A request that would open pending transfers on several shards, or a
// chain leg on a shard other than its coordinator, is checked against
// every such shard before anything is sent: over the limit on one shard,
// nothing is applied on the others either.
func TestProviderPendingLimitAcrossShards(t *testing.T) {
	c := startProviders(t, strings.Replace(providersFile, `accounts: ["acme-"]`, `accounts: ["acme-"]
    limits: {pending_transfers: 1}`, 1))
	a1, a2 := c.accountOn("acme-one", 1), c.accountOn("acme-two", 2)
	c.mustCreateAccounts(acct(a1, 0), acct(a2, 0))
	acme := c.clientAs("acme", "acme-pw")
	nc, err := c.connectAs("acme", "acme-pw")
	if err != nil {
		t.Fatal(err)
	}
	if rs, err := acme.CreateTransfers(c.ctx(), []transport.Transfer{pendingXfer("acme-held", a1, a2, 1, 0)}); err != nil || rs[0].Code != transport.CodeOK {
		t.Fatalf("the first pending transfer: %v %v", names(rs), err)
	}
	send := func(ts ...transport.Transfer) *transport.ResultsReply { t.Helper(); return sendOnce(t, nc, ts) }
	linked := xfer("acme-c1", a2, a1, 1)
	linked.Flags = transport.TransferLinked
	for name, batch := range map[string][]transport.Transfer{
		"pending transfers on two shards": {pendingXfer("acme-s2", a2, a1, 1, 0), pendingXfer("acme-s1", a1, a2, 1, 0)},
		"a chain leg held on shard 1":     {linked, pendingXfer("acme-c2", a1, a2, 1, 0)},
	} {
		r := send(batch...)
		if r.Error == nil || r.Error.Code != transport.ErrUnavailableCode || !strings.Contains(r.Error.Message, "shard 1 and its limit there is 1") {
			t.Fatalf("%s: %+v", name, r)
		}
		ids := make([]string, len(batch))
		for i := range batch {
			ids[i] = batch[i].ID
		}
		if got, err := c.c.LookupTransfers(c.ctx(), ids); err != nil || len(got) != 0 {
			t.Fatalf("%s: the refused request applied: %+v %v", name, got, err)
		}
	}
	// With room on both shards, the same kind of request goes through.
	if r := send(pendingXfer("acme-s2", a2, a1, 1, 0)); r.Error != nil || names(r.Results)[0] != "ok" {
		t.Fatalf("a pending transfer on shard 2 with room: %+v", r)
	}
}

// sendOnce sends transfers as one plain NATS request on nc, with no retry:
// a request-level answer reaches the test as it is.
func sendOnce(t *testing.T, nc *nats.Conn, ts []transport.Transfer) *transport.ResultsReply {
	t.Helper()
	body, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: ts})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(transport.Subjects{Prefix: transport.DefaultPrefix}.TransfersCreate(), body, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r transport.ResultsReply
	if err := transport.Unmarshal(msg.Data, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}
