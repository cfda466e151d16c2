package e2e

import (
	"errors"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func (c *cluster) accountTransfers(f transport.AccountFilter) []string {
	c.t.Helper()
	ts, err := c.c.AccountTransfers(c.ctx(), f)
	if err != nil {
		c.t.Fatalf("accounts.transfers %+v: %v", f, err)
	}
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.ID + ":" + t.State
	}
	return ids
}

func (c *cluster) balances(f transport.AccountFilter) []transport.Balance {
	c.t.Helper()
	bs, err := c.c.AccountBalances(c.ctx(), f)
	if err != nil {
		c.t.Fatalf("accounts.balances %+v: %v", f, err)
	}
	return bs
}

// An account's history on two shards: same-shard, cross-shard (listed on
// the credit account's shard too) and two-phase transfers, with filters.
func TestAccountHistoryThroughTheCluster(t *testing.T) {
	c := startCluster(t, 2)
	bank, wallet, shop := c.accountOn("bank", 1), c.accountOn("wallet", 1), c.accountOn("shop", 2)
	c.mustCreateAccounts(acct(bank, 0), acct(wallet, limitDebits|transport.AccountHistory), acct(shop, transport.AccountHistory))
	c.transfer(xfer("fund", bank, wallet, 100))
	if r := c.transfer(xfer("buy", wallet, shop, 30)); r[0].Code != transport.CodeOK {
		t.Fatalf("cross-shard buy: %v", r[0].Code)
	}
	if r := c.transfer(pendingXfer("hold", wallet, bank, 20, 0)); r[0].Code != transport.CodeOK {
		t.Fatalf("hold: %v", r[0].Code)
	}
	if r := c.transfer(resolveXfer("capture", "hold", transport.TransferPostPendingTransfer, 15)); r[0].Code != transport.CodeOK {
		t.Fatalf("capture: %v", r[0].Code)
	}

	all := transport.AccountFilter{AccountID: wallet, Limit: 100}
	want := []string{"fund:posted", "buy:posted", "hold:posted", "capture:posted"}
	if got := c.accountTransfers(all); !slices.Equal(got, want) {
		t.Fatalf("wallet's transfers: %v, want %v", got, want)
	}
	rev := all
	rev.Reverse, rev.Limit = true, 2
	if got := c.accountTransfers(rev); !slices.Equal(got, []string{"capture:posted", "hold:posted"}) {
		t.Fatalf("wallet's last two, newest first: %v", got)
	}
	// The credit half of the cross-shard transfer is in the shop's history.
	if got := c.accountTransfers(transport.AccountFilter{AccountID: shop, Limit: 10}); !slices.Equal(got, []string{"buy:posted"}) {
		t.Fatalf("shop's transfers: %v", got)
	}

	// Balances after each event of the wallet: funded, reserved for the
	// cross-shard buy, settled, held, captured (15 posted, 5 released).
	bs := c.balances(all)
	type bal struct{ dp, dpo, cp, cpo uint64 }
	wantB := []bal{{0, 0, 0, 100}, {30, 0, 0, 100}, {0, 30, 0, 100}, {20, 30, 0, 100}, {0, 45, 0, 100}}
	if len(bs) != len(wantB) {
		t.Fatalf("wallet's balances: %+v", bs)
	}
	for i, b := range bs {
		if (bal{b.DebitsPending, b.DebitsPosted, b.CreditsPending, b.CreditsPosted}) != wantB[i] {
			t.Fatalf("wallet's balance %d: %+v, want %+v", i, b, wantB[i])
		}
		if i > 0 && b.Timestamp <= bs[i-1].Timestamp {
			t.Fatalf("balances not in timestamp order: %+v", bs)
		}
	}
	// A timestamp window selects exactly the rows inside it (inclusive).
	win := all
	win.TimestampMin, win.TimestampMax = bs[1].Timestamp, bs[3].Timestamp
	if got := c.balances(win); len(got) != 3 || got[0] != bs[1] || got[2] != bs[3] {
		t.Fatalf("balances in [%d, %d]: %+v", win.TimestampMin, win.TimestampMax, got)
	}
	// An account without the history flag has transfers but no balance rows.
	if got := c.balances(transport.AccountFilter{AccountID: bank, Limit: 10}); len(got) != 0 {
		t.Fatalf("bank keeps no balance history, got %+v", got)
	}
	if got := c.accountTransfers(transport.AccountFilter{AccountID: "nobody", Limit: 10}); len(got) != 0 {
		t.Fatalf("unknown account's transfers: %v", got)
	}

	// Bad filters are refused as a whole.
	for _, f := range []transport.AccountFilter{
		{AccountID: wallet, Limit: 0},
		{AccountID: wallet, Limit: transport.HistoryLimitMax + 1},
		{AccountID: "", Limit: 10},
		{AccountID: wallet, Limit: 10, TimestampMin: 5, TimestampMax: 4},
	} {
		_, err := c.c.AccountTransfers(c.ctx(), f)
		var te *transport.Error
		if !errors.As(err, &te) || te.Code != transport.ErrMalformedCode {
			t.Fatalf("filter %+v: %v, want malformed_request", f, err)
		}
	}
}

// The credit half of a cross-shard transfer is listed when it was credited,
// after the transfer's own (debit shard's) timestamp: its row shows the time
// it is listed at, so rows are in timestamp order and paging with
// timestamp_min = the last row's + 1 neither repeats nor skips a row (it
// used to show the debit shard's timestamp, and the page repeated it).
func TestAccountHistoryPagesThroughCreditHalves(t *testing.T) {
	c := startCluster(t, 2)
	bank, shop := c.accountOn("bank", 1), c.accountOn("shop", 2)
	c.mustCreateAccounts(acct(bank, 0), acct(shop, transport.AccountHistory))
	var sent []string
	for _, id := range []string{"x1", "x2", "x3"} {
		if r := c.transfer(xfer(id, bank, shop, 5)); r[0].Code != transport.CodeOK {
			t.Fatalf("%s: %v", id, r[0].Code)
		}
		sent = append(sent, id)
	}
	var paged []string
	f := transport.AccountFilter{AccountID: shop, Limit: 1}
	for range 10 {
		rows, err := c.c.AccountTransfers(c.ctx(), f)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			break
		}
		if rows[0].Timestamp < f.TimestampMin {
			t.Fatalf("row %s at %d, below timestamp_min %d", rows[0].ID, rows[0].Timestamp, f.TimestampMin)
		}
		debited, err := c.c.LookupTransfers(c.ctx(), []string{rows[0].ID})
		if err != nil || len(debited) != 1 {
			t.Fatalf("lookup %s: %v %v", rows[0].ID, debited, err)
		}
		if rows[0].Timestamp <= debited[0].Timestamp {
			t.Fatalf("credit half of %s listed at %d, not after its debit at %d", rows[0].ID, rows[0].Timestamp, debited[0].Timestamp)
		}
		paged = append(paged, rows[0].ID)
		f.TimestampMin = rows[0].Timestamp + 1
	}
	if !slices.Equal(paged, sent) {
		t.Fatalf("paged one row at a time: %v, want %v", paged, sent)
	}
	// Each row's timestamp is a balance row's: the account's own event.
	bs := c.balances(transport.AccountFilter{AccountID: shop, Limit: 10})
	rows, err := c.c.AccountTransfers(c.ctx(), transport.AccountFilter{AccountID: shop, Limit: 10})
	if err != nil || len(rows) != len(bs) {
		t.Fatalf("%d rows (%v), %d balance rows", len(rows), err, len(bs))
	}
	for i := range rows {
		if rows[i].Timestamp != bs[i].Timestamp {
			t.Fatalf("row %s at %d, its balance row at %d", rows[i].ID, rows[i].Timestamp, bs[i].Timestamp)
		}
	}
}
