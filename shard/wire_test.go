package shard

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// legacyCommand is Command without its methods: msgpack encodes it by its
// struct tags, transfers as maps, as every command logged before the
// positional transfers was.
type legacyCommand Command

// codecCommands covers every field of a command and every optional field
// of a transfer.
func codecCommands() []Command {
	full := xfer("t1", "a", "b", 10)
	full.Flags, full.PendingID, full.Timeout = transport.TransferPending, "p0", 30
	full.Metadata = map[string]string{"order": "o-1", "channel": "web"}
	full.Timestamp, full.State = 77, transport.StatePending
	empty := xfer("t2", "b", "a", 1)
	empty.Metadata = map[string]string{}
	part := &ChainPart{Chain: "c", Leg: 1, ID: "c/1", Debit: true, DebitShard: 2, CreditShard: 3}
	return []Command{
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{full, empty, xfer("t3", "a", "c", 5)},
			CreditShards: []uint32{1, 2, 1}, DebitShards: []uint32{1, 1, 3},
			Owner: &transport.Owner{Prefixes: []string{"p:"}, Ledgers: []uint32{1}, PendingMax: 5}, Request: bytes.Repeat([]byte{7}, RequestIDBytes)},
		{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("a", 1, 0), acct("x", 2, transport.AccountClosed)}},
		{Kind: KindCredit, Credits: []Credit{{Transfer: full, DebitShard: 2, Part: part}}},
		{Kind: KindResolve, Answers: []Answer{{ID: "t1", Attempt: 9, Outcome: OutcomeRefused, Code: transport.CodeExceedsDebits, Timestamp: 4, Amount: 3}}},
		{Kind: KindForget, Forget: &Forget{DebitShard: 2, Below: 100}},
		{Kind: KindExpire},
	}
}

func TestCommandRoundTrip(t *testing.T) {
	for _, c := range codecCommands() {
		b, err := transport.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		var got Command
		if err := transport.Unmarshal(b, &got); err != nil {
			t.Fatalf("kind %d: %v", c.Kind, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("kind %d: round trip\n got %+v\nwant %+v", c.Kind, got, c)
		}
		if k, err := PeekKind(b); err != nil || k != c.Kind {
			t.Fatalf("PeekKind = %d, %v; want %d", k, err, c.Kind)
		}
	}
}

// TestCommandLegacyDecodes: a command encoded by struct tags, transfers as
// maps (the log before positional transfers), decodes to the same command.
func TestCommandLegacyDecodes(t *testing.T) {
	for _, c := range codecCommands() {
		old, err := msgpack.Marshal((*legacyCommand)(&c))
		if err != nil {
			t.Fatal(err)
		}
		var got Command
		if err := transport.Unmarshal(old, &got); err != nil {
			t.Fatalf("kind %d: %v", c.Kind, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("kind %d: legacy decode\n got %+v\nwant %+v", c.Kind, got, c)
		}
	}
}

// TestCommandLegacyGolden decodes a create command in the log's first
// format (struct tags, transfers as maps: the encoding of every command up
// to commit f3649d8), kept in testdata so that a change to legacyCommand
// cannot hide a break. LEDGER_WRITE_GOLDEN=1 rewrites it.
func TestCommandLegacyGolden(t *testing.T) {
	const golden = "testdata/command-v1.msgpack"
	if os.Getenv("LEDGER_WRITE_GOLDEN") != "" {
		c := codecCommands()[0]
		b, err := msgpack.Marshal((*legacyCommand)(&c))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	var got Command
	if err := transport.Unmarshal(old, &got); err != nil {
		t.Fatal(err)
	}
	if want := codecCommands()[0]; !reflect.DeepEqual(got, want) {
		t.Fatalf("golden decode\n got %+v\nwant %+v", got, want)
	}
}

// wireV2 makes the test write the compact forms (transport.SetWireV2).
func wireV2(t testing.TB) {
	transport.SetWireV2(true)
	t.Cleanup(func() { transport.SetWireV2(false) })
}

// Until the cluster writes the compact forms, a command is what a node of
// the release before decodes: its transfers are maps.
func TestCommandBeforeWireV2IsWhatTheReleaseBeforeReads(t *testing.T) {
	for _, c := range codecCommands() {
		b, err := transport.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		var old legacyCommand
		if err := msgpack.Unmarshal(b, &old); err != nil {
			t.Fatalf("the release before cannot decode %+v: %v", c, err)
		}
		if !reflect.DeepEqual(Command(old), c) {
			t.Fatalf("the release before decodes\n %+v\nfrom\n %+v", old, c)
		}
	}
}

// TestCommandPositionalSmaller: the point of the positional form.
func TestCommandPositionalSmaller(t *testing.T) {
	wireV2(t)
	c := codecCommands()[0]
	old, _ := msgpack.Marshal((*legacyCommand)(&c))
	now, err := transport.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	if len(now) >= len(old) {
		t.Fatalf("positional command is %d bytes, legacy %d", len(now), len(old))
	}
}

// TestEntryApplySameEitherForm: a log of legacy commands and the same log
// positional leave identical states (apply sees the same values).
func TestEntryApplySameEitherForm(t *testing.T) {
	wireV2(t)
	cmds := []Command{
		{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("a", 1, 0), acct("b", 1, 0)}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("t1", "a", "b", 10), xfer("t2", "b", "a", 4)}, CreditShards: []uint32{1, 1}},
	}
	hash := func(encode func(*Command) ([]byte, error)) uint64 {
		s := New(1, nil)
		for i := range cmds {
			b, err := encode(&cmds[i])
			if err != nil {
				t.Fatal(err)
			}
			var c Command
			if err := transport.Unmarshal(b, &c); err != nil {
				t.Fatal(err)
			}
			s.Apply(&Entry{Timestamp: uint64(1000 + i), Commands: []Command{c}})
		}
		return s.Hash()
	}
	legacy := hash(func(c *Command) ([]byte, error) { return msgpack.Marshal((*legacyCommand)(c)) })
	if now := hash(func(c *Command) ([]byte, error) { return transport.Marshal(c) }); now != legacy {
		t.Fatalf("state hash %x positional, %x legacy", now, legacy)
	}
}

// benchCommand is a create command of 1000 transfers, one in ten with
// metadata, as the router sends a shard.
func benchCommand() *Command {
	c := &Command{Kind: KindCreateTransfers, Request: bytes.Repeat([]byte{1}, RequestIDBytes)}
	for i := range 1000 {
		t := xfer(fmt.Sprintf("payment-2026-11-22-%08d", i), fmt.Sprintf("wallet:customer-%04d", i%500), "merchant:acme", uint64(100+i*37))
		if i%10 == 0 {
			t.Metadata = map[string]string{"order": fmt.Sprintf("o-%d", i), "channel": "web"}
		}
		c.Transfers = append(c.Transfers, t)
		c.CreditShards = append(c.CreditShards, 1)
	}
	return c
}

func benchCommandForms(b *testing.B, run func(b *testing.B, c *Command, body []byte)) {
	c := benchCommand()
	legacy, err := msgpack.Marshal((*legacyCommand)(c))
	if err != nil {
		b.Fatal(err)
	}
	positional, err := transport.Marshal(c)
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct {
		name string
		body []byte
	}{{"legacy", legacy}, {"positional", positional}} {
		b.Run(f.name, func(b *testing.B) {
			b.SetBytes(int64(len(f.body)))
			b.ReportAllocs()
			run(b, c, f.body)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/transfer")
		})
	}
}

// BenchmarkCommandDecode: what a leader pays twice per create command
// (CheckCommand, then apply), per form.
func BenchmarkCommandDecode(b *testing.B) {
	wireV2(b)
	benchCommandForms(b, func(b *testing.B, _ *Command, body []byte) {
		for b.Loop() {
			var c Command
			if err := transport.Unmarshal(body, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCommandEncode: what the router pays per create command.
func BenchmarkCommandEncode(b *testing.B) {
	wireV2(b)
	benchCommandForms(b, func(b *testing.B, c *Command, body []byte) {
		legacy := bytes.Contains(body, []byte("debit_account_id"))
		for b.Loop() {
			var err error
			if legacy {
				_, err = msgpack.Marshal((*legacyCommand)(c))
			} else {
				_, err = transport.Marshal(c)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
