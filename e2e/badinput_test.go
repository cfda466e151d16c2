package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// body encodes v with plain msgpack, for hand-made requests.
func body(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// raw is msgpack bytes put as they are into a hand-made body.
func raw(b ...byte) msgpack.RawMessage { return msgpack.RawMessage(b) }

// wireTransfer is a valid transfer as a plain map, to be spoiled field by field.
func wireTransfer(id, debit, credit string) map[string]any {
	return map[string]any{"id": id, "debit_account_id": debit, "credit_account_id": credit,
		"amount": uint64(5), "ledger": uint32(1), "code": uint16(1), "flags": uint32(0)}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

func transfersBody(t *testing.T, transfers ...any) []byte {
	return body(t, map[string]any{"transfers": transfers})
}

// TestBadInput sends hand-made requests over plain NATS. A request refused
// as a whole answers {error: {code}}, an event refused answers its code, and
// neither changes any shard: every state hash is the same after.
func TestBadInput(t *testing.T) {
	// Forgets are held back until the end: a forget moves a watermark, which
	// changes a shard's state hash while nothing else happens.
	var forgets atomic.Bool
	c := startClusterWith(t, t.TempDir(), 2, func(_ uint32, cmd *shard.Command) node.Fault {
		return node.Fault{Drop: cmd.Kind == shard.KindForget && !forgets.Load()}
	})
	subj := transport.Subjects{Prefix: transport.DefaultPrefix}
	a1, a2, b1 := c.accountOn("in-a", 1), c.accountOn("in-a2", 1), c.accountOn("in-b", 2)
	c.mustCreateAccounts(acct(a1, 0), acct(a2, 0), acct(b1, 0))

	// unchanged runs f and checks that no shard's state changed.
	unchanged := func(t *testing.T, f func()) {
		t.Helper()
		before := c.hashes()
		f()
		if after := c.hashes(); !mapsEqual(before, after) {
			t.Fatalf("state changed: %v -> %v", before, after)
		}
	}
	// answersError checks that body on subject is answered {error} alone,
	// with code.
	answersError := func(t *testing.T, subject string, b []byte, code string) {
		t.Helper()
		reply := c.request(subject, b)
		var fields map[string]msgpack.RawMessage
		if err := msgpack.Unmarshal(reply, &fields); err != nil {
			t.Fatalf("reply is not a msgpack map: %v (% x)", err, reply)
		}
		var e transport.Error
		if err := msgpack.Unmarshal(fields["error"], &e); err != nil || len(fields) != 1 {
			t.Fatalf("want only {error}, got %v keys (%v)", len(fields), err)
		}
		if e.Code != code {
			t.Fatalf("error %+v, want code %s", e, code)
		}
	}
	// refused checks that body on subject is refused as a whole with code.
	refused := func(t *testing.T, subject string, b []byte, code string) {
		t.Helper()
		unchanged(t, func() { answersError(t, subject, b, code) })
	}
	// events sends transfers (or accounts) and checks each event's code.
	events := func(t *testing.T, subject string, b []byte, want ...transport.Code) []transport.Result {
		t.Helper()
		var reply transport.ResultsReply
		if err := transport.Unmarshal(c.request(subject, b), &reply); err != nil {
			t.Fatal(err)
		}
		if reply.Error != nil {
			t.Fatalf("request refused: %v", reply.Error)
		}
		if got := codes(reply.Results); !slices.Equal(got, want) {
			t.Fatalf("codes %v, want %v", got, want)
		}
		for i, r := range reply.Results {
			if int(r.Index) != i || (r.Code == transport.CodeOK) != (r.Timestamp != 0) {
				t.Fatalf("result %d: %+v", i, r)
			}
		}
		return reply.Results
	}
	refusedEvents := func(t *testing.T, subject string, b []byte, want ...transport.Code) {
		t.Helper()
		unchanged(t, func() { events(t, subject, b, want...) })
	}
	valid := wireTransfer("ok-1", a1, b1)

	t.Run("malformed msgpack", func(t *testing.T) {
		good := transfersBody(t, valid)
		for name, b := range map[string][]byte{
			"empty body":      {},
			"never used code": {0xc1},
			"not msgpack":     []byte("transfers please"),
			"truncated":       good[:len(good)-3],
			"map header only": {0x81},
			"str8 cut short":  {0x81, 0xd9, 0x20, 't'},
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, subj.TransfersCreate(), b, transport.ErrMalformedCode)
				refused(t, subj.AccountsCreate(), b, transport.ErrMalformedCode)
				refused(t, subj.TransfersLookup(), b, transport.ErrMalformedCode)
				refused(t, subj.AccountsLookup(), b, transport.ErrMalformedCode)
			})
		}
	})

	t.Run("wrong types", func(t *testing.T) {
		for name, b := range map[string][]byte{
			"amount as a string":     transfersBody(t, with(valid, "amount", "5")),
			"ledger as a float":      transfersBody(t, with(valid, "ledger", float64(1))),
			"code as a bool":         transfersBody(t, with(valid, "code", true)),
			"id as an integer":       transfersBody(t, with(valid, "id", 7)),
			"amount nil":             transfersBody(t, with(valid, "amount", nil)),
			"metadata as a list":     transfersBody(t, with(valid, "metadata", []string{"k", "v"})),
			"metadata value integer": transfersBody(t, with(valid, "metadata", map[string]any{"k": 1})),
			"transfers a string":     body(t, map[string]any{"transfers": "all of them"}),
			"transfers a map":        body(t, map[string]any{"transfers": valid}),
			"transfer not a map":     transfersBody(t, []any{"id", "x"}),
			"transfer nil":           transfersBody(t, nil),
			"body an array":          body(t, []any{valid}),
			"body a string":          body(t, "transfers"),
			"integer map key":        body(t, map[int]any{1: []any{valid}}),
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, subj.TransfersCreate(), b, transport.ErrMalformedCode)
			})
		}
		account := map[string]any{"id": "typed", "ledger": uint32(1), "code": uint16(1)}
		for name, b := range map[string][]byte{
			"account ledger as a float":  body(t, map[string]any{"accounts": []any{with(account, "ledger", 1.5)}}),
			"account flags as a string":  body(t, map[string]any{"accounts": []any{with(account, "flags", "8")}}),
			"accounts a string":          body(t, map[string]any{"accounts": "x"}),
			"account balance as a float": body(t, map[string]any{"accounts": []any{with(account, "credits_posted", 0.0)}}),
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, subj.AccountsCreate(), b, transport.ErrMalformedCode)
			})
		}
		for name, b := range map[string][]byte{
			"ids a string":       body(t, map[string]any{"ids": a1}),
			"id an integer":      body(t, map[string]any{"ids": []any{a1, 3}}),
			"id binary, not str": body(t, map[string]any{"ids": []any{[]byte(a1)}}),
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, subj.TransfersLookup(), b, transport.ErrMalformedCode)
				refused(t, subj.AccountsLookup(), b, transport.ErrMalformedCode)
			})
		}
	})

	t.Run("negative and out of range integers", func(t *testing.T) {
		for name, b := range map[string][]byte{
			"amount -1 negative fixint": transfersBody(t, with(valid, "amount", raw(0xff))),
			"amount -1 as int8":         transfersBody(t, with(valid, "amount", int8(-1))),
			"amount -1 as int64":        transfersBody(t, with(valid, "amount", int64(-1))),
			"ledger -1":                 transfersBody(t, with(valid, "ledger", int64(-1))),
			"code 70000":                transfersBody(t, with(valid, "code", uint32(70000))),
			"code 65536":                transfersBody(t, with(valid, "code", int64(65536))),
			"ledger 2^32":               transfersBody(t, with(valid, "ledger", uint64(1)<<32)),
			"flags 2^32":                transfersBody(t, with(valid, "flags", uint64(1)<<32)),
			"timeout 2^32":              transfersBody(t, with(valid, "timeout", int64(1)<<32)),
			"timestamp -1":              transfersBody(t, with(valid, "timestamp", int64(-1))),
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, subj.TransfersCreate(), b, transport.ErrMalformedCode)
			})
		}
		account := map[string]any{"id": "ranged", "ledger": uint32(1), "code": uint16(1)}
		for name, b := range map[string][]byte{
			"account code 70000":   body(t, map[string]any{"accounts": []any{with(account, "code", uint32(70000))}}),
			"account ledger -1":    body(t, map[string]any{"accounts": []any{with(account, "ledger", int8(-1))}}),
			"account debits -1":    body(t, map[string]any{"accounts": []any{with(account, "debits_posted", raw(0xff))}}),
			"account flags 2^32+1": body(t, map[string]any{"accounts": []any{with(account, "flags", uint64(1)<<32+1)}}),
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, subj.AccountsCreate(), b, transport.ErrMalformedCode)
			})
		}
	})

	t.Run("integers in any width", func(t *testing.T) {
		tr := with(wireTransfer("widths", a1, a2),
			"amount", raw(0xd3, 0, 0, 0, 0, 0, 0, 0, 9), // int64 9
			"ledger", raw(0xcf, 0, 0, 0, 0, 0, 0, 0, 1), // uint64 1
			"code", raw(0xd0, 0x7f), //                      int8 127
			"flags", raw(0xd1, 0, 0)) //                     int16 0
		rs := events(t, subj.TransfersCreate(), transfersBody(t, tr), transport.CodeOK)
		found, err := c.c.LookupTransfers(c.ctx(), []string{"widths"})
		if err != nil || len(found) != 1 || found[0].Amount != 9 || found[0].Ledger != 1 || found[0].Code != 127 || found[0].Timestamp != rs[0].Timestamp {
			t.Fatalf("lookup: %v %+v", err, found)
		}
		acc := map[string]any{"id": "widths-acct", "ledger": raw(0xce, 0xff, 0xff, 0xff, 0xff), "code": raw(0xcd, 0xff, 0xff)}
		events(t, subj.AccountsCreate(), body(t, map[string]any{"accounts": []any{acc}}), transport.CodeOK)
		if a := c.account("widths-acct"); a.Ledger != 1<<32-1 || a.Code != 1<<16-1 {
			t.Fatalf("account with the largest ledger and code: %+v", a)
		}
	})

	t.Run("batch limits", func(t *testing.T) {
		many := func(n int) []byte {
			ts := make([]transport.Transfer, n) // every one id_invalid: cheap
			b, err := transport.Marshal(&transport.CreateTransfersRequest{Transfers: ts})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		refused(t, subj.TransfersCreate(), many(transport.BatchEventsMax+1), transport.ErrTooManyEventsCode)
		want := make([]transport.Code, transport.BatchEventsMax)
		for i := range want {
			want[i] = transport.CodeIDInvalid
		}
		refusedEvents(t, subj.TransfersCreate(), many(transport.BatchEventsMax), want...)

		as, err := transport.Marshal(&transport.CreateAccountsRequest{Accounts: make([]transport.Account, transport.BatchEventsMax+1)})
		if err != nil {
			t.Fatal(err)
		}
		refused(t, subj.AccountsCreate(), as, transport.ErrTooManyEventsCode)
		ids := make([]string, transport.BatchEventsMax+1)
		for i := range ids {
			ids[i] = a1
		}
		lb, err := transport.Marshal(&transport.LookupRequest{IDs: ids})
		if err != nil {
			t.Fatal(err)
		}
		refused(t, subj.TransfersLookup(), lb, transport.ErrTooManyEventsCode)
		refused(t, subj.AccountsLookup(), lb, transport.ErrTooManyEventsCode)
	})

	t.Run("ids", func(t *testing.T) {
		id64, id65 := strings.Repeat("x", 64), strings.Repeat("y", 65)
		bad := []string{id65, "", "has space", "slash/", "tab\t", "caf\u00e9", "nul\x00", "star*", "plus+", "hash#"}
		var ts []any
		var want []transport.Code
		for _, id := range bad {
			ts = append(ts, wireTransfer(id, a1, a2))
			want = append(want, transport.CodeIDInvalid)
		}
		refusedEvents(t, subj.TransfersCreate(), transfersBody(t, ts...), want...)
		var accs []any
		for _, id := range bad {
			accs = append(accs, map[string]any{"id": id, "ledger": 1, "code": 1})
		}
		refusedEvents(t, subj.AccountsCreate(), body(t, map[string]any{"accounts": accs}), want...)

		// 64 bytes of every allowed character class is fine.
		okID := id64[:40] + "AZaz09_.:@-" + id64[:13]
		if len(okID) != 64 {
			t.Fatalf("test id is %d bytes", len(okID))
		}
		events(t, subj.AccountsCreate(), body(t, map[string]any{"accounts": []any{map[string]any{"id": okID, "ledger": 1, "code": 1}}}), transport.CodeOK)
		events(t, subj.TransfersCreate(), transfersBody(t, wireTransfer(okID, a1, okID)), transport.CodeOK)
		if a := c.account(okID); a.CreditsPosted != 5 {
			t.Fatalf("account with a 64-byte id: %+v", a)
		}
	})

	t.Run("event codes", func(t *testing.T) {
		refusedEvents(t, subj.TransfersCreate(), transfersBody(t,
			with(valid, "id", "zero", "amount", 0),
			with(valid, "id", "self", "credit_account_id", a1),
			with(valid, "id", "self-cross", "debit_account_id", b1, "credit_account_id", b1),
			with(valid, "id", "no-ledger", "ledger", 0),
			with(valid, "id", "no-code", "code", 0),
			with(valid, "id", "stamped", "timestamp", 1),
			with(valid, "id", "unknown-flag", "flags", 1<<20),
			with(valid, "id", "other-ledger", "ledger", 2),
		), transport.CodeAmountInvalid, transport.CodeAccountsMustBeDifferent, transport.CodeAccountsMustBeDifferent,
			transport.CodeLedgerInvalid, transport.CodeCodeInvalid, transport.CodeTimestampMustBeZero,
			transport.CodeFlagsInvalid, transport.CodeLedgerMismatch)
		// The refused ids stay free.
		if found, err := c.c.LookupTransfers(c.ctx(), []string{"zero", "self", "self-cross", "no-ledger", "other-ledger"}); err != nil || len(found) != 0 {
			t.Fatalf("refused transfers visible: %v %+v", err, found)
		}
	})

	t.Run("empty batch", func(t *testing.T) {
		for _, tc := range []struct{ subject, field, result string }{
			{subj.TransfersCreate(), "transfers", "results"},
			{subj.AccountsCreate(), "accounts", "results"},
			{subj.TransfersLookup(), "ids", "transfers"},
			{subj.AccountsLookup(), "ids", "accounts"},
		} {
			unchanged(t, func() {
				reply := c.request(tc.subject, body(t, map[string]any{tc.field: []any{}}))
				var fields map[string]msgpack.RawMessage
				if err := msgpack.Unmarshal(reply, &fields); err != nil {
					t.Fatalf("%s: %v (% x)", tc.subject, err, reply)
				}
				// 0x90 is the empty msgpack array (not nil, not absent).
				if list, ok := fields[tc.result]; !ok || string(list) != "\x90" || len(fields) != 1 {
					t.Fatalf("%s with an empty batch: % x, want {%s: []}", tc.subject, reply, tc.result)
				}
			})
		}
	})

	t.Run("unknown fields ignored", func(t *testing.T) {
		long := strings.Repeat("k", 100) // longer than any field name
		tr := with(wireTransfer("extra-fields", a1, b1),
			"colour", "blue", "nested", map[string]any{"a": []any{1, nil, "x"}}, long, 1.5, "amount_", "no")
		b := body(t, map[string]any{"transfers": []any{tr}, "extra": map[string]any{"x": []int{1, 2}}, long: true})
		rs := events(t, subj.TransfersCreate(), b, transport.CodeOK)
		found, err := c.c.LookupTransfers(c.ctx(), []string{"extra-fields"})
		if err != nil || len(found) != 1 || found[0].Amount != 5 || found[0].Timestamp != rs[0].Timestamp || found[0].Metadata != nil {
			t.Fatalf("lookup: %v %+v", err, found)
		}
		acc := map[string]any{"id": "extra-acct", "ledger": 1, "code": 1, "owner": map[string]any{"name": "x"}}
		events(t, subj.AccountsCreate(), body(t, map[string]any{"accounts": []any{acc}, "version": 2}), transport.CodeOK)
		var reply transport.AccountsReply
		if err := transport.Unmarshal(c.request(subj.AccountsLookup(), body(t, map[string]any{"ids": []string{"extra-acct"}, "consistency": "strong"})), &reply); err != nil || reply.Error != nil || len(reply.Accounts) != 1 {
			t.Fatalf("lookup with an unknown field: %v %+v", err, reply)
		}
	})

	t.Run("trailing bytes", func(t *testing.T) {
		// Each a valid body of its subject, that the subject serves.
		fresh := c.accountOn("tail-acct", 1)
		filter := body(t, map[string]any{"account_id": a1, "limit": 10})
		bodies := []struct {
			subject string
			body    []byte
		}{
			{subj.AccountsCreate(), body(t, map[string]any{"accounts": []any{map[string]any{"id": fresh, "ledger": 1, "code": 1}}})},
			{subj.TransfersCreate(), transfersBody(t, wireTransfer("tail-1", a1, b1))},
			{subj.AccountsLookup(), body(t, map[string]any{"ids": []string{a1}})},
			{subj.TransfersLookup(), body(t, map[string]any{"ids": []string{"tail-1"}})},
			{subj.AccountsTransfers(), filter},
			{subj.AccountsBalances(), filter},
			{subj.ClusterStatus(), body(t, map[string]any{})},
		}
		unchanged(t, func() {
			for _, b := range bodies {
				for _, tail := range [][]byte{{0xc0}, {0x00}, {0xc1}, {0x80}, b.body, []byte("\n")} {
					answersError(t, b.subject, append(slices.Clone(b.body), tail...), transport.ErrMalformedCode)
				}
				for _, notAMap := range [][]byte{{}, {0xc0}, {0x90}, {0xa0}, {0x00}} {
					answersError(t, b.subject, notAMap, transport.ErrMalformedCode)
				}
			}
		})
		// Without the tail each is served: the creates apply only now.
		events(t, bodies[0].subject, bodies[0].body, transport.CodeOK)
		events(t, bodies[1].subject, bodies[1].body, transport.CodeOK)
		for _, b := range bodies[2:] {
			var fields map[string]msgpack.RawMessage
			if err := msgpack.Unmarshal(c.request(b.subject, b.body), &fields); err != nil || fields["error"] != nil {
				t.Fatalf("%s without a tail: %v, %s", b.subject, err, fields["error"])
			}
		}
	})

	t.Run("discovery", func(t *testing.T) {
		var ping micro.Ping
		if err := json.Unmarshal(c.request("$SRV.PING.ledger", nil), &ping); err != nil {
			t.Fatalf("ping: %v", err)
		}
		if ping.Name != "ledger" || ping.Type != micro.PingResponseType || ping.ID == "" || ping.Version == "" {
			t.Fatalf("ping: %+v", ping)
		}
		var info micro.Info
		if err := json.Unmarshal(c.request("$SRV.INFO.ledger", nil), &info); err != nil {
			t.Fatalf("info: %v", err)
		}
		if info.Name != "ledger" || info.Type != micro.InfoResponseType || info.ID != ping.ID {
			t.Fatalf("info: %+v", info)
		}
		var got []string
		for _, e := range info.Endpoints {
			got = append(got, e.Subject)
		}
		want := []string{subj.AccountsCreate(), subj.TransfersCreate(), subj.AccountsLookup(), subj.TransfersLookup(),
			subj.AccountsTransfers(), subj.AccountsBalances(), subj.ClusterStatus()}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("endpoints %v, want %v", got, want)
		}
		if err := json.Unmarshal(c.request("$SRV.PING", nil), &ping); err != nil || ping.Name != "ledger" {
			t.Fatalf("ping any service: %v %+v", err, ping)
		}
	})

	// Each balance is a uint64; their sum over accounts is not. Three
	// accounts of one shard credited 2^64−1 each: status sums the ledger
	// exactly (it wrapped to 2^64−3), past 2^64.
	t.Run("totals past 2^64", func(t *testing.T) {
		const ledger = 7
		var accounts []transport.Account
		var transfers []transport.Transfer
		for i := range 3 {
			from, to := c.accountOn(fmt.Sprintf("big-from-%d", i), 1), c.accountOn(fmt.Sprintf("big-to-%d", i), 1)
			accounts = append(accounts, transport.Account{ID: from, Ledger: ledger, Code: 1}, transport.Account{ID: to, Ledger: ledger, Code: 1})
			transfers = append(transfers, transport.Transfer{ID: fmt.Sprintf("big-%d", i), DebitAccountID: from, CreditAccountID: to,
				Amount: math.MaxUint64, Ledger: ledger, Code: 1})
		}
		c.mustCreateAccounts(accounts...)
		if got := codes(c.transfer(transfers...)); !slices.Equal(got, []transport.Code{transport.CodeOK, transport.CodeOK, transport.CodeOK}) {
			t.Fatalf("transfers of 2^64-1: %v", got)
		}
		top := transport.U128(math.MaxUint64)
		want, _ := top.Add(top)
		want, _ = want.Add(top)
		found := 0
		for _, s := range c.status().Shards {
			for _, l := range s.Ledgers {
				if l.Ledger != ledger {
					continue
				}
				found++
				sums := l.Sums()
				if s.ID != 1 || l.Exact == nil || sums.DebitsPosted != want || sums.CreditsPosted != want ||
					l.DebitsPosted != math.MaxUint64 || l.CreditsPosted != math.MaxUint64 || sums.DebitsPending != (transport.Uint128{}) {
					t.Fatalf("shard %d, ledger %d: %+v, exact %+v; want posted sums of %s on shard 1", s.ID, ledger, l, l.Exact, want)
				}
			}
		}
		if found != 1 {
			t.Fatalf("ledger %d reported by %d shards", ledger, found)
		}
	})

	forgets.Store(true)
	c.quiesce()
}
