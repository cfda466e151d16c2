package shard

import (
	"bytes"
	"maps"
	"math"
	"math/big"
	"reflect"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/internal/fuzzcheck"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// fuzzEntriesMax bounds the entries decoded from one input.
const fuzzEntriesMax = 8

// fuzzFixture is shard 1 with accounts of every kind, reached through Apply
// like every state the fuzzer sees.
func fuzzFixture() *State {
	s := New(1, nil)
	s.Apply(&Entry{Timestamp: 1000, Commands: []Command{
		{Kind: KindCreateAccounts, Accounts: []transport.Account{
			acct("a", 1, 0), acct("b", 1, 0),
			acct("w", 1, transport.AccountDebitsMustNotExceedCredits),
			acct("c", 1, transport.AccountCreditsMustNotExceedDebits),
			acct("x", 1, transport.AccountClosed), acct("e", 2, 0),
		}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{
			xfer("fund-w", "a", "w", 100), xfer("fund-c", "c", "a", 50),
		}},
	}})
	return s
}

func fuzzSeed(f *testing.F, entries ...Entry) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	for i := range entries {
		if err := enc.Encode(&entries[i]); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(buf.Bytes())
}

// FuzzApplyEntry decodes entries from the input and applies them to two
// copies of one shard: as they are (forged saga messages included), and
// sanitised to a single shard (every credit account local, every Credit
// from this shard itself). Apply must not panic: its only panic guards an
// invariant that states reached through Apply keep. Both copies must keep
// the account limits, their reservations must match the outbox, their
// snapshots must round-trip; the single-shard copy must also balance every
// ledger, account by account.
func FuzzApplyEntry(f *testing.F) {
	x := xfer("t1", "a", "b", 10)
	cross := xfer("t2", "w", "remote", 60)
	credited := cross
	credited.Timestamp = 5000
	fuzzSeed(f, Entry{Timestamp: 2000, Commands: []Command{
		{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("n", 1, 0), acct("n", 1, 2), acct("bad id", 1, 0), acct("l", 1, 1)}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{x, x, xfer("t3", "w", "a", 101), xfer("t4", "a", "c", 51), xfer("t5", "a", "e", 1)}},
	}})
	fuzzSeed(f,
		Entry{Timestamp: 5000, Commands: []Command{{Kind: KindCreateTransfers, Transfers: []transport.Transfer{cross}, CreditShards: []uint32{2}}}},
		Entry{Timestamp: 6000, Commands: []Command{{Kind: KindCreateTransfers, Transfers: []transport.Transfer{cross}, CreditShards: []uint32{2}}}},
		Entry{Timestamp: 7000, Commands: []Command{{Kind: KindResolve, Answers: []Answer{
			{ID: "t2", Attempt: 5000, Outcome: OutcomeCredited, Timestamp: 1},
			{ID: "t2", Attempt: 5000, Outcome: OutcomeRefused, Code: transport.CodeExceedsDebits},
		}}}},
	)
	fuzzSeed(f,
		Entry{Timestamp: 5000, Commands: []Command{{Kind: KindCreateTransfers, Transfers: []transport.Transfer{cross}, CreditShards: []uint32{2}}}},
		Entry{Timestamp: 7000, Commands: []Command{{Kind: KindResolve, Answers: []Answer{{ID: "t2", Attempt: 5000, Outcome: OutcomeAborted}}}}},
	)
	incoming := xfer("in", "remote", "b", 25)
	incoming.Timestamp = 3000
	fuzzSeed(f,
		Entry{Timestamp: 4000, Commands: []Command{
			{Kind: KindCredit, Credits: []Credit{{Transfer: incoming, DebitShard: 2}, {Transfer: incoming, DebitShard: 1}}},
			{Kind: KindAbort, Credits: []Credit{{Transfer: incoming, DebitShard: 2}, {Transfer: credited, DebitShard: 3}}},
		}},
		Entry{Timestamp: 4500, Commands: []Command{{Kind: KindForget, Forget: &Forget{DebitShard: 2, Below: 3001}}}},
		Entry{Timestamp: 4600, Commands: []Command{{Kind: KindCredit, Credits: []Credit{{Transfer: incoming, DebitShard: 2}}}}},
	)
	fuzzSeed(f, Entry{Timestamp: ^uint64(0), Commands: []Command{
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{{ID: "big", DebitAccountID: "a", CreditAccountID: "b", Amount: ^uint64(0), Ledger: 1, Code: 1}}},
		{Kind: 99}, {Kind: KindForget},
	}})
	// Balances of several accounts near 2^64−1: the ledger's sums pass
	// 2^64, which Totals must carry exactly (checkTotals).
	fuzzSeed(f, Entry{Timestamp: 3000, Commands: []Command{
		{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("p1", 1, 0), acct("p2", 1, 0), acct("p3", 1, 0), acct("q1", 1, 0), acct("q2", 1, 0), acct("q3", 1, 0)}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("big1", "p1", "q1", maxU64), xfer("big2", "p2", "q2", maxU64), xfer("big3", "p3", "q3", maxU64)}},
	}})
	f.Add([]byte{})
	f.Add([]byte{0x81, 0xa1, 'c', 0x91, 0x81, 0xa1, 'k', 0x05})

	f.Fuzz(func(t *testing.T, data []byte) {
		// Decode as production does: each command goes through
		// transport.Unmarshal, whose bounds check keeps msgpack/v5 from
		// preallocating whatever length a header declares. The input is
		// a stream of entries, read one bounded value at a time.
		var entries []Entry
		dec := msgpack.NewDecoder(bytes.NewReader(data))
		for range fuzzEntriesMax {
			raw, err := transport.DecodeRaw(dec, transport.BatchEventsMax)
			if err != nil {
				break
			}
			var e Entry
			if transport.Unmarshal(raw, &e) != nil {
				break
			}
			// A leader's clock is time.Now().UnixNano(), below 2^63; near
			// 2^64 the timestamps would wrap.
			e.Timestamp &= 1<<63 - 1
			entries = append(entries, e)
		}
		raw, single := fuzzFixture(), fuzzFixture()
		for i := range entries {
			e := &entries[i]
			lastRaw, lastSingle := raw.last, single.last
			raw.Apply(e)
			single.Apply(singleShard(e, single.id))
			if raw.last < lastRaw || single.last < lastSingle {
				t.Fatalf("entry %d: the last timestamp went back", i)
			}
			checkShardInvariants(t, raw)
			checkShardInvariants(t, single)
			checkSingleShardBalanced(t, single)
			checkTotals(t, raw)
			checkTotals(t, single)
		}
		checkSnapshotRoundTrip(t, raw)
		checkSnapshotRoundTrip(t, single)
	})
}

// singleShard returns e with every transfer's credit account on shard id
// and every Credit or Abort claiming to come from shard id.
func singleShard(e *Entry, id uint32) *Entry {
	out := &Entry{Timestamp: e.Timestamp, Commands: make([]Command, len(e.Commands))}
	for i, c := range e.Commands {
		c.CreditShards = nil
		cs := make([]Credit, len(c.Credits))
		for j, cr := range c.Credits {
			cr.DebitShard = id
			cs[j] = cr
		}
		c.Credits = cs
		out.Commands[i] = c
	}
	return out
}

// checkShardInvariants: the limits accounts' flags set hold, nothing is
// credit-pending, and each account's debits_pending is what the outbox
// reserves on it.
func checkShardInvariants(t *testing.T, s *State) {
	t.Helper()
	reserved := map[string]uint64{}
	for _, row := range s.outbox {
		reserved[row.Transfer.DebitAccountID] += row.Transfer.Amount
		if s.accounts[row.Transfer.DebitAccountID] == nil {
			t.Fatalf("outbox row %q reserves on a missing account", row.Transfer.ID)
		}
	}
	for id, a := range s.accounts {
		if a.DebitsPending != reserved[id] {
			t.Fatalf("account %s: debits_pending %d, outbox reserves %d", id, a.DebitsPending, reserved[id])
		}
		if a.CreditsPending != 0 {
			t.Fatalf("account %s: credits_pending %d", id, a.CreditsPending)
		}
		if a.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && a.DebitsPending+a.DebitsPosted > a.CreditsPosted {
			t.Fatalf("account %s breaks debits_must_not_exceed_credits: %+v", id, *a)
		}
		if a.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && a.CreditsPosted > a.DebitsPosted {
			t.Fatalf("account %s breaks credits_must_not_exceed_debits: %+v", id, *a)
		}
		if !transport.ValidID(id) || a.Timestamp == 0 || a.Timestamp > s.last {
			t.Fatalf("account %q stored with timestamp %d (last %d)", id, a.Timestamp, s.last)
		}
	}
	for id, x := range s.allTransfers() {
		if !transport.ValidID(id) || x.Timestamp == 0 || x.Timestamp > s.last || s.accounts[x.DebitAccountID] == nil {
			t.Fatalf("transfer %+v stored (last %d)", *x, s.last)
		}
	}
}

// checkSingleShardBalanced: on one shard with no saga, every account is
// explained by the posted transfers, and so every ledger balances.
func checkSingleShardBalanced(t *testing.T, s *State) {
	t.Helper()
	if len(s.outbox) != 0 || len(s.inbox) != 0 {
		t.Fatalf("single shard: outbox %d, inbox %d", len(s.outbox), len(s.inbox))
	}
	debits, credits := map[string]uint64{}, map[string]uint64{}
	for _, x := range s.allTransfers() {
		debits[x.DebitAccountID] += x.Amount
		credits[x.CreditAccountID] += x.Amount
	}
	for id, a := range s.accounts {
		if a.DebitsPosted != debits[id] || a.CreditsPosted != credits[id] {
			t.Fatalf("account %s: debits %d credits %d, transfers explain %d and %d", id, a.DebitsPosted, a.CreditsPosted, debits[id], credits[id])
		}
	}
	assertBalanced(t, s)
	for _, l := range s.Totals() {
		if sums := l.Sums(); sums.DebitsPosted != sums.CreditsPosted {
			t.Fatalf("single shard: ledger %d has debits posted %s, credits posted %s", l.Ledger, sums.DebitsPosted, sums.CreditsPosted)
		}
	}
}

// checkTotals: Totals sums every ledger exactly (against math/big), and a
// sum past 2^64−1 saturates its uint64 field and sets Exact, never wraps.
func checkTotals(t *testing.T, s *State) {
	t.Helper()
	want := map[uint32]*[4]big.Int{}
	for _, a := range s.accounts {
		w := want[a.Ledger]
		if w == nil {
			w = new([4]big.Int)
			want[a.Ledger] = w
		}
		for i, v := range [4]uint64{a.DebitsPosted, a.CreditsPosted, a.DebitsPending, a.CreditsPending} {
			w[i].Add(&w[i], new(big.Int).SetUint64(v))
		}
	}
	totals := s.Totals()
	if len(totals) != len(want) {
		t.Fatalf("totals of %d ledgers, the accounts have %d", len(totals), len(want))
	}
	limit := new(big.Int).SetUint64(math.MaxUint64)
	for _, l := range totals {
		w, sums := want[l.Ledger], l.Sums()
		wide := false
		for i, got := range [4]transport.Uint128{sums.DebitsPosted, sums.CreditsPosted, sums.DebitsPending, sums.CreditsPending} {
			field := [4]uint64{l.DebitsPosted, l.CreditsPosted, l.DebitsPending, l.CreditsPending}[i]
			if got.String() != w[i].String() {
				t.Fatalf("ledger %d sum %d: %s, the accounts sum to %s", l.Ledger, i, got, &w[i])
			}
			fits := w[i].Cmp(limit) <= 0
			wide = wide || !fits
			if fits && field != w[i].Uint64() || !fits && field != math.MaxUint64 {
				t.Fatalf("ledger %d sum %d is %s; its uint64 field says %d", l.Ledger, i, &w[i], field)
			}
		}
		if wide != (l.Exact != nil) {
			t.Fatalf("ledger %d: exact %+v, a sum past 2^64-1: %v", l.Ledger, l.Exact, wide)
		}
	}
}

func checkSnapshotRoundTrip(t *testing.T, s *State) {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	r, err := Read(&buf, s.Archive())
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if r.Hash() != s.Hash() {
		t.Fatal("snapshot round trip changed the state")
	}
}

// FuzzDecodeCommand decodes a command as the shard leader and every replica
// do (transport.Unmarshal: router commands and saga messages alike). One
// that decodes is one map, with no byte after it, within the batch bound;
// it round-trips, and PeekKind, which routes it before it is proposed,
// reads the kind the replicas apply.
func FuzzDecodeCommand(f *testing.F) {
	cross := xfer("t2", "w", "remote", 60)
	cross.Timestamp = 5000
	for _, c := range []Command{
		{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("n", 1, 2)}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("t1", "a", "b", 10), cross}, CreditShards: []uint32{1, 2}, DebitShards: []uint32{1, 1},
			Owner: &transport.Owner{Prefixes: []string{"p-"}, Ledgers: []uint32{1}}},
		{Kind: KindCredit, Credits: []Credit{{Transfer: cross, DebitShard: 2, Part: &ChainPart{Chain: "c", Leg: 1, ID: "t2", Debit: true, DebitShard: 2, CreditShard: 1}}}},
		{Kind: KindResolve, Answers: []Answer{{ID: "t2", Attempt: 5000, Outcome: OutcomeRefused, Code: transport.CodeExceedsDebits, Amount: 3}}},
		{Kind: KindForget, Forget: &Forget{DebitShard: 2, Below: 3001}},
		{Kind: KindExpire},
	} {
		f.Add(mustMarshal(f, &c))
	}
	for _, c := range codecCommands() { // the log's first form too: transfers as maps
		f.Add(mustMarshal(f, (*legacyCommand)(&c)))
	}
	f.Add([]byte{0x82, 0xa1, 'k', 0x02, 0xa1, 'k', 0x01})
	f.Add([]byte{0x81, 0xa1, 'k', 0xcd, 0x01, 0x02})
	f.Add([]byte{0x81, 0xa1, 'k', 0x02, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		if transport.CheckBounds(data, transport.BatchEventsMax) == nil {
			_, _ = PeekKind(data) // as handleCommand does: bounds first
		}
		var c Command
		if transport.Unmarshal(data, &c) != nil {
			return
		}
		fuzzcheck.OneBody[Command](t, data)
		for _, n := range []int{len(c.Accounts), len(c.Transfers), len(c.CreditShards), len(c.DebitShards), len(c.Credits), len(c.Answers)} {
			if n > transport.BatchEventsMax {
				t.Fatalf("a command of %d elements", n)
			}
		}
		b1 := mustMarshal(t, &c)
		var back Command
		if err := transport.Unmarshal(b1, &back); err != nil {
			t.Fatalf("re-decoding %+v: %v", c, err)
		}
		if b2 := mustMarshal(t, &back); !bytes.Equal(b1, b2) {
			t.Fatalf("encoding not stable:\n% x\n% x", b1, b2)
		}
		if k, err := PeekKind(b1); err != nil || k != c.Kind {
			t.Fatalf("PeekKind of %+v: %v, %v", c, k, err)
		}
	})
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := transport.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzReadSnapshot restores a shard from a snapshot stream, as a replica
// does from its disk or from the leader. Read never panics, whatever the
// bytes; a state it returns has a version it knows, answers every read
// without panicking, and writes a snapshot that reads back to the same
// bytes.
func FuzzReadSnapshot(f *testing.F) {
	fx := fuzzFixture()
	hold := xfer("hold", "a", "b", 5)
	hold.Flags, hold.Timeout = transport.TransferPending, 60
	fx.Apply(&Entry{Timestamp: 2000, Commands: []Command{
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{hold}},
		{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("out", "a", "remote", 7)}, CreditShards: []uint32{2}},
	}})
	cl := threeShards(f)
	cl.send(linkedXfer("t1", "a2", "b", 5), xfer("t2", "b", "c", 4))
	home := cl.shard(1)
	for _, row := range home.Outbox()[:2] {
		cl.deliver(home, row, false, false)
	}
	for _, s := range append([]*State{New(7, nil), fx}, cl.states...) {
		var buf bytes.Buffer
		if _, err := s.WriteTo(&buf); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	// Regressions in testdata/fuzz/FuzzReadSnapshot: a chain row declaring
	// 268M legs (msgpack/v5 allocates a slice of any declared length:
	// tens of GiB of transfers, before it fails at the end of the input),
	// and one without legs (its key, Legs[0], panicked).
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Read(bytes.NewReader(data), nil)
		if err != nil {
			return
		}
		if v, err := msgpack.NewDecoder(bytes.NewReader(data)).DecodeUint64(); err != nil || v < 2 || v > snapshotVersion {
			t.Fatalf("read a snapshot of version %d (%v)", v, err)
		}
		_, _, _, _ = s.Counts()
		_ = s.Totals()
		_ = s.Outbox()
		_ = s.ForgetBelow()
		_ = s.LookupAccounts(slices.Collect(maps.Keys(s.accounts)))
		_ = s.LookupTransfers(slices.Collect(maps.Keys(s.transfers)))
		var b1 bytes.Buffer
		if _, err := s.Clone().WriteTo(&b1); err != nil {
			t.Fatalf("WriteTo of a restored state: %v", err)
		}
		again, err := Read(bytes.NewReader(b1.Bytes()), nil)
		if err != nil {
			t.Fatalf("reading back a restored state's snapshot: %v", err)
		}
		var b2 bytes.Buffer
		if _, err := again.WriteTo(&b2); err != nil || !bytes.Equal(b1.Bytes(), b2.Bytes()) {
			t.Fatalf("snapshot not stable (%v):\n% x\n% x", err, b1.Bytes(), b2.Bytes())
		}
		if again.Hash() != s.Hash() || !reflect.DeepEqual(again.Totals(), s.Totals()) {
			t.Fatal("the snapshot read back differs")
		}
	})
}
