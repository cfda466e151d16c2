package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

func TestTransferCreateFileExcludesTheOtherFlags(t *testing.T) {
	o, fs := parse(t, addTransferFlags, "--file", "-", "--id", "t1")
	if _, err := o.readFile(fs, strings.NewReader(`[{"id":"t2"}]`)); err == nil || !strings.Contains(err.Error(), "--id") {
		t.Fatalf("--file with --id: err %v", err)
	}
	o, fs = parse(t, addTransferFlags, "--amount", "3")
	if _, err := o.build(fs); err == nil {
		t.Fatal("neither --id nor --file accepted")
	}
	o, fs = parse(t, addTransferFlags, "--file", "-")
	for _, in := range []string{``, `[]`, `{"id":"t1"}`, `[{"id":"t1","amount":-1}]`, `[{"id":"t1","colour":"red"}]`} {
		if _, err := o.readFile(fs, strings.NewReader(in)); err == nil {
			t.Errorf("--file - with %q accepted", in)
		}
	}
	got, err := o.readFile(fs, strings.NewReader(`[{"id":"t1","debit_account_id":"a","credit_account_id":"b","amount":2,"ledger":1,"code":1,"flags":1},
		{"id":"t2","debit_account_id":"a","credit_account_id":"c","amount":1,"ledger":1,"code":1,"metadata":{"k":"v"}}]`))
	want := []transport.Transfer{
		{ID: "t1", DebitAccountID: "a", CreditAccountID: "b", Amount: 2, Ledger: 1, Code: 1, Flags: transport.TransferLinked},
		{ID: "t2", DebitAccountID: "a", CreditAccountID: "c", Amount: 1, Ledger: 1, Code: 1, Metadata: map[string]string{"k": "v"}},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("transfers %+v, err %v; want %+v", got, err, want)
	}
}

// `transfer create --file` sends its transfers as one batch, so a linked
// chain in it succeeds or fails as one: a chain that funds a wallet and
// spends from it is applied, one whose spend exceeds the funds leaves no
// trace, and the command fails.
func TestTransferCreateFileSendsAChainAsOneBatch(t *testing.T) {
	srv := startServer(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	results, err := c.CreateAccounts(ctx, []transport.Account{{ID: "bank", Ledger: 1, Code: 1},
		{ID: "alice", Ledger: 1, Code: 1, Flags: transport.AccountDebitsMustNotExceedCredits}})
	if err != nil || results[0].Code != transport.CodeOK || results[1].Code != transport.CodeOK {
		t.Fatalf("accounts %+v, err %v", results, err)
	}
	run := func(stdin string, args ...string) (string, error) {
		var out bytes.Buffer
		root := newRootCmd(&app{stdout: &out, stderr: &out})
		root.SetArgs(append([]string{"transfer", "create", "--server", srv.ClientURL()}, args...))
		root.SetIn(strings.NewReader(stdin))
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}

	file := filepath.Join(t.TempDir(), "chain.json")
	chain := `[{"id":"fund","debit_account_id":"bank","credit_account_id":"alice","amount":10,"ledger":1,"code":1,"flags":1},
		{"id":"spend","debit_account_id":"alice","credit_account_id":"bank","amount":4,"ledger":1,"code":1}]`
	if err := os.WriteFile(file, []byte(chain), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run("", "--file", file)
	if err != nil || out != "INDEX  ID     CODE\n0      fund   ok\n1      spend  ok\n" {
		t.Fatalf("chain: err %v, output\n%s", err, out)
	}

	overspend := `[{"id":"fund2","debit_account_id":"bank","credit_account_id":"alice","amount":5,"ledger":1,"code":1,"flags":1},
		{"id":"spend2","debit_account_id":"alice","credit_account_id":"bank","amount":100,"ledger":1,"code":1}]`
	out, err = run(overspend, "--file", "-", "-o", "json")
	var got []struct {
		Index int    `json:"index"`
		Code  string `json:"code"`
	}
	if jerr := json.Unmarshal([]byte(out), &got); err != errReported || jerr != nil || len(got) != 2 ||
		got[0].Code != "linked_event_failed" || got[1].Code != "exceeds_credits" || got[1].Index != 1 {
		t.Fatalf("overspending chain: err %v, output\n%s", err, out)
	}
	if found, err := c.LookupTransfers(ctx, []string{"fund2", "spend2"}); err != nil || len(found) != 0 {
		t.Fatalf("failed chain left %+v, err %v", found, err)
	}
	accounts, err := c.LookupAccounts(ctx, []string{"alice"})
	if err != nil || len(accounts) != 1 || accounts[0].CreditsPosted != 10 || accounts[0].DebitsPosted != 4 {
		t.Fatalf("alice %+v, err %v; want the first chain's 10 in and 4 out only", accounts, err)
	}
}
