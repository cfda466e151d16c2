package shard

import (
	"bytes"
	"testing"

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
	f.Add([]byte{})
	f.Add([]byte{0x81, 0xa1, 'c', 0x91, 0x81, 0xa1, 'k', 0x05})

	f.Fuzz(func(t *testing.T, data []byte) {
		// Decode as production does: each command goes through
		// transport.Unmarshal, whose bounds check keeps msgpack/v5 from
		// preallocating whatever length a header declares.
		var entries []Entry
		rest := data
		for range fuzzEntriesMax {
			if transport.CheckBounds(rest, transport.BatchEventsMax) != nil {
				break
			}
			r := bytes.NewReader(rest)
			var e Entry
			if msgpack.NewDecoder(r).Decode(&e) != nil {
				break
			}
			rest = rest[len(rest)-r.Len():]
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
