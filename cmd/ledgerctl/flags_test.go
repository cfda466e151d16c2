package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/transport"
)

func parse[O any](t *testing.T, add func(*pflag.FlagSet) O, args ...string) (O, *pflag.FlagSet) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o := add(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o, fs
}

func TestAccountCreateFlagsBuildTheAccount(t *testing.T) {
	o, fs := parse(t, addAccountFlags, "--id", "alice", "--ledger", "7", "--code", "2", "--history",
		"--debits-must-not-exceed-credits", "--metadata", "k=v", "--metadata", "url=a=b,c")
	got, err := o.build(fs)
	if err != nil {
		t.Fatal(err)
	}
	want := transport.Account{ID: "alice", Ledger: 7, Code: 2,
		Flags:    transport.AccountHistory | transport.AccountDebitsMustNotExceedCredits,
		Metadata: map[string]string{"k": "v", "url": "a=b,c"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("account %+v, want %+v", got, want)
	}

	o, fs = parse(t, addAccountFlags, "--id", "b", "--flags", "24")
	if got, err := o.build(fs); err != nil || got.Flags != 24 || got.Metadata != nil {
		t.Fatalf("--flags 24: account %+v, err %v; want flags 24 and no metadata", got, err)
	}
}

func TestAccountCreateRefusesFlagsWithNamedFlags(t *testing.T) {
	o, fs := parse(t, addAccountFlags, "--id", "a", "--flags", "8", "--closed")
	if _, err := o.build(fs); err == nil {
		t.Fatal("--flags with --closed accepted")
	}
}

func TestTransferCreateFlagsBuildTheTransfer(t *testing.T) {
	o, fs := parse(t, addTransferFlags, "--id", "t1", "--debit", "alice", "--credit", "bob", "--amount", "18446744073709551615",
		"--ledger", "1", "--code", "9", "--flags", "1", "--metadata", "order=42")
	got, err := o.build(fs)
	if err != nil {
		t.Fatal(err)
	}
	want := transport.Transfer{ID: "t1", DebitAccountID: "alice", CreditAccountID: "bob", Amount: 1<<64 - 1,
		Ledger: 1, Code: 9, Flags: transport.TransferLinked, Metadata: map[string]string{"order": "42"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("transfer %+v, want %+v", got, want)
	}
}

func TestParseMetadataRefusesBadPairs(t *testing.T) {
	for _, pairs := range [][]string{{"novalue"}, {"=v"}, {"k=1", "k=2"}} {
		if _, err := parseMetadata(pairs); err == nil {
			t.Errorf("parseMetadata(%q) accepted", pairs)
		}
	}
	if m, err := parseMetadata([]string{"k="}); err != nil || m["k"] != "" || len(m) != 1 {
		t.Errorf("parseMetadata(k=) = %v, %v; want an empty value", m, err)
	}
}

func TestBenchOptionsDefaultClientsByBatch(t *testing.T) {
	for batch, want := range map[string]int{"1": 64, "1000": 8} {
		o, _ := parse(t, addBenchFlags, "--batch", batch, "--id-prefix", "run1")
		if err := o.check(); err != nil || o.clients != want {
			t.Errorf("--batch %s: clients %d, err %v; want %d", batch, o.clients, err, want)
		}
		if o.seed == 0 || o.crossShard != -1 || o.accounts != 10000 || o.transfers != 1000000 || o.twoPhase != 0 || o.linked != 0 || o.legs != 2 {
			t.Errorf("defaults %+v", o)
		}
	}
	for _, args := range [][]string{{"--cross-shard", "1.5"}, {"--accounts", "1"}, {"--batch", "0"}, {"--id-prefix", "bad prefix"}, {"--amount", "0"},
		{"--two-phase", "1.5"}, {"--two-phase", "-0.1"}, {"--void", "0.5"}, {"--two-phase", "1", "--void", "2"},
		{"--two-phase", "1", "--partial", "0.5"}, {"--linked", "1.5"}, {"--linked", "-1"}, {"--legs", "3"}, {"--linked", "1", "--legs", "1"},
		{"--linked", "1", "--legs", "11", "--batch", "10"}} {
		o, _ := parse(t, addBenchFlags, args...)
		if err := o.check(); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestBenchOptionsAcceptChainsUpToTheBatch(t *testing.T) {
	o, _ := parse(t, addBenchFlags, "--linked", "1", "--legs", "10", "--batch", "10", "--id-prefix", "run1")
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	if m := o.mix(); m.linked != 1 || m.legs != 10 || m.chainLegs() != 10 {
		t.Fatalf("mix %+v", m)
	}
}

func TestRootRefusesUnknownOutputBeforeConnecting(t *testing.T) {
	a, out := testApp("table")
	root := newRootCmd(a)
	root.SetArgs([]string{"status", "-o", "yaml", "--server", "nats://127.0.0.1:1"})
	root.SetOut(out)
	err := root.Execute()
	if err == nil || !strings.Contains(err.Error(), "yaml") {
		t.Fatalf("err = %v, want the output format refused", err)
	}
}

func TestJSONOutputUsesWireFieldNames(t *testing.T) {
	a, out := testApp("json")
	if err := a.printResult([]transport.Result{{Code: transport.CodeExists, Timestamp: 5}}); err != nil {
		t.Fatalf("exists must succeed: %v", err)
	}
	if err := a.print([]transport.Account{{ID: "a", DebitsPosted: 3}}, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"code": "exists"`, `"timestamp": 5`, `"debits_posted": 3`, `"credits_pending": 0`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("JSON output lacks %s:\n%s", want, out)
		}
	}
}

func TestPrintResultFailsOnRefusal(t *testing.T) {
	a, out := testApp("table")
	if err := a.printResult([]transport.Result{{Code: transport.CodeExceedsCredits}}); err != errReported {
		t.Fatalf("err = %v, want errReported", err)
	}
	if got := out.String(); got != "exceeds_credits\n" {
		t.Fatalf("output %q", got)
	}
}

func testApp(output string) (*app, *bytes.Buffer) {
	var out bytes.Buffer
	return &app{output: output, stdout: &out, stderr: &out}, &out
}

func TestTransferCreateTwoPhaseFlags(t *testing.T) {
	o, fs := parse(t, addTransferFlags, "--id", "h", "--debit", "a", "--credit", "b", "--amount", "5", "--ledger", "1", "--code", "1",
		"--pending", "--pending-timeout", "30")
	x, err := o.build(fs)
	if err != nil || x.Flags != transport.TransferPending || x.Timeout != 30 {
		t.Fatalf("pending: %+v %v", x, err)
	}
	o, fs = parse(t, addTransferFlags, "--id", "p", "--post", "h", "--amount", "3")
	if x, err = o.build(fs); err != nil || x.Flags != transport.TransferPostPendingTransfer || x.PendingID != "h" || x.Amount != 3 {
		t.Fatalf("post: %+v %v", x, err)
	}
	o, fs = parse(t, addTransferFlags, "--id", "v", "--void", "h")
	if x, err = o.build(fs); err != nil || x.Flags != transport.TransferVoidPendingTransfer || x.PendingID != "h" {
		t.Fatalf("void: %+v %v", x, err)
	}
	o, fs = parse(t, addTransferFlags, "--id", "x", "--post", "h", "--void", "h")
	if _, err = o.build(fs); err == nil {
		t.Fatal("--post with --void accepted")
	}
}
