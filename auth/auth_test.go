package auth

import (
	"strings"
	"testing"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/ledgerd/ledgerd/transport"
)

const good = `
operators:
  - {user: ops, password: ops-pw}
providers:
  - user: acme
    password: acme-pw
    ledgers: [1]
    accounts: ["acme-"]
  - user: globex
    nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4
    ledgers: [1, 2]
    accounts: ["globex-", "gx:"]
    limits: {requests_in_flight: 8}
`

func TestParseNamesTheBadEntry(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{`providers: [{user: a, password: p, ledgers: [1], accounts: ["a-"], colour: red}]`, "colour"},
		{`operators: [{user: ops}]`, `operators[0]: user "ops" has neither a password nor an nkey`},
		{`operators: [{user: ops, password: p, nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4}]`, "both a password and an nkey"},
		{`operators: [{user: ops, nkey: SUAM...}]`, "not a public user NKey"},
		{`operators: [{user: "o ps", password: p}]`, `user "o ps": 1 to 64 letters`},
		{`operators: [{user: ops, password: p}, {user: ops, password: q}]`, `operators[1]: user "ops" is also operators[0]`},
		{`providers: [{user: a, password: p, accounts: ["a-"]}]`, "providers[0] (a): ledgers is empty"},
		{`providers: [{user: a, password: p, ledgers: [0], accounts: ["a-"]}]`, "ledger 0"},
		{`providers: [{user: a, password: p, ledgers: [1]}]`, "accounts (the id prefixes it owns) is empty"},
		{`providers: [{user: a, password: p, ledgers: [1], accounts: ["a b"]}]`, `account prefix "a b"`},
		{`providers: [{user: a, password: p, ledgers: [1], accounts: ["acme"]}, {user: b, password: q, ledgers: [1], accounts: ["acme-x"]}]`, `providers[1] (b): account prefix "acme-x" overlaps "acme" of a`},
		{`providers: [{user: a, password: p, ledgers: [1], accounts: ["a-"], limits: {connections: -1}}]`, "a limit is positive"},
		{`providers: [{user: a, password: p, ledgers: [1], accounts: ["a-"], limits: {pending_transfers: -1}}]`, "a limit is positive"},
		{`providers: [{user: a, password: p, ledgers: [1], accounts: ["a-"], limits: {pending_transfers: 4294967296}}]`, "pending_transfers 4294967296 is over"},
		{`providers: [{user: a, password: "p` + "\x01" + `", ledgers: [1], accounts: ["a-"]}]`, "control character"},
		{``, "no operators and no providers"},
	} {
		_, err := Parse([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant an error containing %q", tc.file, err, tc.want)
		}
	}
}

func TestPolicyIdentifiesAccounts(t *testing.T) {
	p, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	acme, err := p.Requester(`{"acc":"provider-acme","rtt":1000}`)
	if err != nil || acme.Operator() || !acme.Owner.Owns("acme-1") || acme.Owner.Owns("globex-1") || acme.Limits.RequestsInFlight != DefaultRequestsInFlight {
		t.Fatalf("acme: %+v %v", acme, err)
	}
	globex, err := p.Requester(`{"acc":"provider-globex"}`)
	if err != nil || !globex.Owner.Allows(2) || globex.Limits.RequestsInFlight != 8 || !globex.Owner.Owns("gx:9") {
		t.Fatalf("globex: %+v", globex)
	}
	if ops, err := p.Requester(`{"acc":"LEDGER_OPERATORS"}`); err != nil || !ops.Operator() {
		t.Fatalf("operator: %+v %v", ops, err)
	}
	for _, info := range []string{"", "{", `{"acc":"LEDGER"}`, `{"acc":"$G"}`, `{"acc":"provider-nobody"}`, `{"user":"acme"}`} {
		if id, err := p.Requester(info); err == nil {
			t.Errorf("header %q identified %+v", info, id)
		}
	}
}

// The generated accounts are a configuration nats-server takes, with the
// imports sharing the requester's identity.
func TestNATSAccountsParse(t *testing.T) {
	p, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	for _, imports := range []bool{false, true} {
		conf, err := p.NATSAccounts("ledger", User{User: "ledgerd", Password: `s"e\cret$x`}, imports)
		if err != nil {
			t.Fatal(err)
		}
		var o natsserver.Options
		if err := o.ProcessConfigString(string(conf)); err != nil {
			t.Fatalf("imports %v: %v\n%s", imports, err, conf)
		}
		if len(o.Accounts) != 4 || len(o.Users) != 3 || len(o.Nkeys) != 1 {
			t.Fatalf("imports %v: %d accounts, %d users, %d nkeys", imports, len(o.Accounts), len(o.Users), len(o.Nkeys))
		}
		for _, u := range o.Users {
			if u.Username == "ledgerd" && u.Password != `s"e\cret$x` {
				t.Fatalf("the internal password came out as %q", u.Password)
			}
		}
		if imports != strings.Contains(string(conf), `"share": true`) {
			t.Fatalf("imports %v:\n%s", imports, conf)
		}
	}
}

func TestOwnerRules(t *testing.T) {
	o := &transport.Owner{Prefixes: []string{"a-"}, Ledgers: []uint32{1}}
	var operator *transport.Owner
	mine, theirs := "a-1", "b-1"
	for _, tc := range []struct {
		t    transport.Transfer
		want bool
	}{
		{transport.Transfer{ID: mine, DebitAccountID: mine, CreditAccountID: theirs, Ledger: 1}, true},
		{transport.Transfer{ID: mine, DebitAccountID: theirs, CreditAccountID: mine, Ledger: 1}, false},
		{transport.Transfer{ID: theirs, DebitAccountID: mine, CreditAccountID: mine, Ledger: 1}, false},
		{transport.Transfer{ID: mine, DebitAccountID: mine, CreditAccountID: mine, Ledger: 2}, false},
		{transport.Transfer{ID: mine, PendingID: "x", Flags: transport.TransferPostPendingTransfer}, true},
		{transport.Transfer{ID: mine, DebitAccountID: mine, CreditAccountID: theirs, Ledger: 1, Flags: transport.TransferClosingCredit | transport.TransferPending}, false},
		{transport.Transfer{ID: mine, DebitAccountID: mine, CreditAccountID: theirs, Ledger: 1, Flags: transport.TransferBalancingCredit}, false},
		{transport.Transfer{ID: mine, DebitAccountID: mine, CreditAccountID: mine, Ledger: 1, Flags: transport.TransferBalancingCredit}, true},
	} {
		if got := o.MayCreateTransfer(&tc.t); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.t, got, tc.want)
		}
		if !operator.MayCreateTransfer(&tc.t) {
			t.Errorf("the operator may not %+v", tc.t)
		}
	}
	if o.MayResolve(&transport.Transfer{DebitAccountID: theirs, Ledger: 1}) || !o.MayResolve(&transport.Transfer{DebitAccountID: mine, Ledger: 1}) {
		t.Error("MayResolve")
	}
	if o.SeesTransfer(&transport.Transfer{DebitAccountID: theirs, CreditAccountID: "c", Ledger: 1}) || !o.SeesTransfer(&transport.Transfer{DebitAccountID: theirs, CreditAccountID: mine, Ledger: 1}) {
		t.Error("SeesTransfer")
	}
}
