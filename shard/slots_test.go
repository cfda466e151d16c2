package shard

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// splitFixture is a shard 1 that owned every slot, with accounts on both
// sides of a split: "m…" accounts are in the slots that leave for shard 2,
// "k…" accounts in slots that stay. Shard 7 is another shard with an
// account of its own ("far").
type splitFixture struct {
	t      *testing.T
	c      clock
	a, far *State
	b      *State // the child, once split
	leave  []uint16
}

func newSplitFixture(t *testing.T) *splitFixture {
	f := &splitFixture{t: t, a: New(1, nil), far: New(7, nil)}
	var leaving SlotSet
	for _, id := range []string{"m1", "m2", "m3"} {
		leaving.Add(transport.Slot(id))
	}
	for _, id := range []string{"k1", "k2", "k3", "far"} {
		if leaving.Has(transport.Slot(id)) {
			t.Fatalf("account %q shares a slot with the leaving ones: pick other ids", id)
		}
	}
	f.leave = leaving.Slots()
	var accounts []transport.Account
	for _, id := range []string{"m1", "m2", "m3", "k1", "k2", "k3"} {
		accounts = append(accounts, acct(id, 1, 0))
	}
	mustCreateAccounts(t, &f.c, f.a, accounts...)
	mustCreateAccounts(t, &f.c, f.far, acct("far", 1, 0))
	return f
}

func allSlots() []uint16 {
	s := make([]uint16, transport.SlotCount)
	for i := range s {
		s[i] = uint16(i)
	}
	return s
}

// split applies the split of f.leave to shard 2 at epoch 2 and reads the
// child back over a copy of the parent's archive, as raftfsm does.
func (f *splitFixture) split() *SplitResult {
	f.t.Helper()
	out := f.c.apply(f.a, Command{Kind: KindSplit, Slots: &SlotCommand{Epoch: 2, Slots: f.leave, Owned: allSlots(), To: 2}})
	r := out.Split
	if r == nil {
		f.t.Fatal("no split result")
	}
	if r.Child != nil {
		var buf bytes.Buffer
		if _, err := r.Child.WriteTo(&buf); err != nil {
			f.t.Fatal(err)
		}
		b, err := Read(&buf, f.a.archive.(*MemArchive).Clone())
		if err != nil {
			f.t.Fatal(err)
		}
		f.b = b
	}
	return r
}

func (f *splitFixture) shard(id uint32) *State {
	switch id {
	case 1:
		return f.a
	case 2:
		return f.b
	}
	return f.far
}

// owner is the slot map after the split.
func (f *splitFixture) owner(account string) uint32 {
	switch {
	case account == "far":
		return 7
	case slices.Contains(f.leave, transport.Slot(account)) && f.b != nil:
		return 2
	}
	return 1
}

// deliver runs every outbox to its end as node's dispatcher does: credits
// to the recorded credit shard, sent again to the account's owner when
// answered OutcomeMoved, and the answers resolved on the debit shard.
func (f *splitFixture) deliver() (moved int) {
	f.t.Helper()
	for range 10 {
		busy := false
		for _, s := range []*State{f.a, f.b, f.far} {
			if s == nil {
				continue
			}
			for _, row := range s.Outbox() {
				busy = true
				cr := Credit{Transfer: row.Transfer, DebitShard: s.ID(), Part: row.Part, Origin: row.Origin}
				to := row.CreditShard
				ans := f.c.apply(f.shard(to), Command{Kind: KindCredit, Credits: []Credit{cr}}).Answers[0][0]
				if ans.Outcome == OutcomeMoved {
					moved++
					ans = f.c.apply(f.shard(f.owner(row.Transfer.CreditAccountID)), Command{Kind: KindCredit, Credits: []Credit{cr}}).Answers[0][0]
				}
				f.c.apply(s, Command{Kind: KindResolve, Answers: []Answer{ans}})
			}
		}
		if !busy {
			return moved
		}
	}
	f.t.Fatal("outboxes never emptied")
	return moved
}

func (f *splitFixture) balances(id string) [4]uint64 {
	f.t.Helper()
	a := account(f.t, f.shard(f.owner(id)), id)
	return [4]uint64{a.DebitsPending, a.DebitsPosted, a.CreditsPending, a.CreditsPosted}
}

// TestSplitMovesEverythingOfItsSlots: accounts, open pending transfers of
// every kind a split meets (both accounts leaving, one of them, none, one
// with its credit half on another shard, a credit half held for another
// shard), and the history; the money is where it was, every replica
// derives the same two states, and what the split made two-phase across
// shards posts and voids to the right balances.
func TestSplitMovesEverythingOfItsSlots(t *testing.T) {
	f := newSplitFixture(t)
	mustTransfer(t, &f.c, f.a, xfer("fund-m1", "k1", "m1", 1000), xfer("fund-k2", "m2", "k2", 300))
	pend := func(id, debit, credit string, amount uint64) transport.Transfer {
		x := xfer(id, debit, credit, amount)
		x.Flags = transport.TransferPending
		return x
	}
	mustTransfer(t, &f.c, f.a,
		pend("p-both", "m1", "m2", 10),   // both leave
		pend("p-debit", "m1", "k3", 20),  // the debit leaves, the credit stays
		pend("p-credit", "k1", "m3", 30), // the credit leaves, the debit stays
		pend("p-none", "k1", "k2", 40))   // neither leaves
	// A remote pending transfer debited on m1, credited on shard 7, and a
	// credit half held here for shard 7.
	if r := f.c.createTransfers(f.a, 7, pend("p-remote", "m1", "far", 50)); !r[0].InFlight {
		t.Fatalf("remote pending: %+v", r[0])
	}
	if r := f.c.createTransfers(f.far, 1, pend("p-held", "far", "m2", 60)); !r[0].InFlight {
		t.Fatalf("pending from shard 7: %+v", r[0])
	}
	f.deliver()

	before := ledgerSums(f.a, f.far)
	pendingBefore := pendingSums(f.a)
	replica := restored(t, f.a) // another replica, at the same index
	r := f.split()
	if r.Refused != "" {
		t.Fatalf("split refused: %s", r.Refused)
	}
	// Every replica derives the same halves.
	r2 := replica.Apply(&Entry{Timestamp: f.c.now, Commands: []Command{{Kind: KindSplit, Slots: &SlotCommand{Epoch: 2, Slots: f.leave, Owned: allSlots(), To: 2}}}}).Split
	if replica.Hash() != f.a.Hash() || r2.Child.Hash() != f.b.Hash() {
		t.Fatal("two replicas split into different states")
	}
	if got := ledgerSums(f.a, f.b, f.far); got[1] != before[1] {
		t.Fatalf("posted sums %v after the split, %v before", got, before)
	}
	if got := pendingSums(f.a, f.b); got != pendingBefore {
		t.Fatalf("pending sums %v after the split, %v before", got, pendingBefore)
	}
	for _, id := range []string{"m1", "m2", "m3"} {
		if len(f.a.LookupAccounts([]string{id})) != 0 || len(f.b.LookupAccounts([]string{id})) != 1 {
			t.Fatalf("account %q is not on the child alone", id)
		}
	}
	for _, id := range []string{"k1", "k2", "k3"} {
		if len(f.b.LookupAccounts([]string{id})) != 0 || len(f.a.LookupAccounts([]string{id})) != 1 {
			t.Fatalf("account %q is not on the parent alone", id)
		}
	}
	owned, epoch, ok := f.b.Slots()
	if !ok || epoch != 2 || !slices.Equal(owned.Slots(), f.leave) {
		t.Fatalf("child owns %v at epoch %d (%v), want %v at 2", owned.Slots(), epoch, ok, f.leave)
	}
	if owned, _, _ := f.a.Slots(); owned.Len() != transport.SlotCount-len(f.leave) {
		t.Fatalf("parent owns %d slots", owned.Len())
	}
	// History: the child answers for the final transfers debited on its
	// accounts; an id used before the split stays taken on both sides.
	if got := f.b.LookupTransfers([]string{"fund-k2"}); len(got) != 1 || got[0].Amount != 300 {
		t.Fatalf("child's lookup of fund-k2: %+v", got)
	}
	if res := f.c.createTransfers(f.b, 0, xfer("fund-k2", "m2", "m3", 1)); res[0].Code != transport.CodeExistsWithDifferentFields {
		t.Fatalf("an id taken before the split, reused on the child: %v", res[0].Code)
	}

	// Every pending transfer is posted (p-debit, p-credit, p-remote) or
	// voided (the others), wherever it now lives.
	post := func(s *State, id string, void bool) {
		flags := transport.TransferPostPendingTransfer
		if void {
			flags = transport.TransferVoidPendingTransfer
		}
		res := f.c.createTransfers(s, 0, transport.Transfer{ID: "r-" + id, PendingID: id, Flags: flags})
		if res[0].Code != transport.CodeOK && !res[0].InFlight {
			t.Fatalf("resolve %q on shard %d: %+v", id, s.ID(), res[0])
		}
	}
	post(f.b, "p-both", true)
	post(f.b, "p-debit", false)
	post(f.a, "p-credit", false)
	post(f.a, "p-none", true)
	post(f.b, "p-remote", false)
	post(f.far, "p-held", false)
	if moved := f.deliver(); moved != 1 {
		t.Fatalf("%d messages answered moved, want 1 (p-held's settlement, sent to the parent)", moved)
	}
	want := map[string][4]uint64{
		"m1": {0, 70, 0, 1000}, "m2": {0, 300, 0, 60}, "m3": {0, 0, 0, 30},
		"k1": {0, 1030, 0, 0}, "k2": {0, 0, 0, 300}, "k3": {0, 0, 0, 20}, "far": {0, 60, 0, 50},
	}
	for id, w := range want {
		if got := f.balances(id); got != w {
			t.Errorf("%s: balances %v, want %v", id, got, w)
		}
	}
	if got := pendingSums(f.a, f.b, f.far); got != [2]uint64{} {
		t.Fatalf("pending left after every resolution: %v", got)
	}
	if got := ledgerSums(f.a, f.b, f.far); got[1][0] != got[1][1] {
		t.Fatalf("debits %d != credits %d", got[1][0], got[1][1])
	}
}

// pendingSums is Σ debits_pending and Σ credits_pending over the shards.
func pendingSums(states ...*State) [2]uint64 {
	var sum [2]uint64
	for _, s := range states {
		for _, a := range s.accounts {
			sum[0] += a.DebitsPending
			sum[1] += a.CreditsPending
		}
	}
	return sum
}

// TestSplitWaitsForWhatIsInFlight: a reservation waiting for its credit
// shard holds the split off (its answer addresses the parent); once it
// resolves, the split goes through. A refused split changes nothing.
func TestSplitWaitsForWhatIsInFlight(t *testing.T) {
	f := newSplitFixture(t)
	mustTransfer(t, &f.c, f.a, xfer("fund", "k1", "m1", 100))
	if r := f.c.createTransfers(f.a, 7, xfer("out", "m1", "far", 5)); !r[0].InFlight {
		t.Fatalf("cross-shard transfer: %+v", r[0])
	}
	hash := f.a.Hash()
	if r := f.split(); r.Refused == "" || r.Child != nil {
		t.Fatalf("split with a reservation in flight: %+v", r)
	}
	if f.a.Hash() != hash {
		t.Fatal("a refused split changed the state")
	}
	f.deliver()
	if r := f.split(); r.Refused != "" {
		t.Fatalf("split refused once nothing is in flight: %s", r.Refused)
	}
	if got := f.balances("m1"); got != [4]uint64{0, 5, 0, 100} {
		t.Fatalf("m1: %v", got)
	}
}

// TestCommandsForSlotsElsewhere: after the split, a client command naming
// an account the shard does not own is refused as a whole with the epoch,
// whatever else it holds; a frozen slot refuses commands as frozen; a
// credit for an account that left answers OutcomeMoved and records nothing.
func TestCommandsForSlotsElsewhere(t *testing.T) {
	f := newSplitFixture(t)
	mustTransfer(t, &f.c, f.a, xfer("fund", "k1", "m1", 100))

	// Frozen: refused as a whole, nothing applied.
	f.c.apply(f.a, Command{Kind: KindFreeze, Slots: &SlotCommand{Epoch: 2, Slots: f.leave}})
	out := f.c.apply(f.a, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("ok-1", "k1", "k2", 1), xfer("frozen", "k1", "m2", 1)}})
	if m, ok := out.Moved[0]; !ok || !m.Frozen || out.Events[0] != nil {
		t.Fatalf("a command on a frozen slot: %+v", out)
	}
	if got := f.balances("k2"); got != [4]uint64{} {
		t.Fatalf("a refused command applied: k2 %v", got)
	}
	if out := f.c.apply(f.a, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("ok-1", "k1", "k2", 1)}}); out.Moved != nil || out.Events[0][0].Code != transport.CodeOK {
		t.Fatalf("a command off the frozen slots: %+v", out)
	}
	if r := f.split(); r.Refused != "" {
		t.Fatal(r.Refused)
	}
	for _, tc := range []struct {
		s   *State
		cmd Command
	}{
		{f.a, Command{Kind: KindCreateAccounts, Accounts: []transport.Account{acct("k9", 1, 0), acct("m1", 1, 0)}}},
		{f.a, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("x1", "m1", "k1", 1)}}},
		{f.a, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("x2", "k1", "m1", 1)}}},
		{f.b, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("x3", "m1", "k1", 1)}}},
		{f.b, Command{Kind: KindCreateTransfers, Transfers: []transport.Transfer{xfer("x4", "k2", "m1", 1)}, CreditShards: []uint32{2}}},
	} {
		out := f.c.apply(tc.s, tc.cmd)
		if m, ok := out.Moved[0]; !ok || m.Frozen || m.Epoch != 2 || out.Events[0] != nil {
			t.Fatalf("shard %d, %+v: %+v", tc.s.ID(), tc.cmd, out)
		}
	}
	// Routed right, the same accounts are served.
	if r := f.c.createTransfers(f.b, 1, xfer("x3", "m1", "k1", 1)); !r[0].InFlight {
		t.Fatalf("child's cross-shard transfer: %+v", r[0])
	}
	f.deliver()
	if got := f.balances("k1"); got != [4]uint64{0, 101, 0, 1} { // fund, ok-1; x3
		t.Fatalf("k1: %v", got)
	}
	// A credit from shard 7 for m2, sent to the parent: moved, no record.
	cr := Credit{Transfer: mod(xfer("c1", "far", "m2", 3), func(t *transport.Transfer) { t.Timestamp = 5 }), DebitShard: 7}
	inbox := len(f.a.inbox)
	if ans := f.c.apply(f.a, Command{Kind: KindCredit, Credits: []Credit{cr}}).Answers[0][0]; ans.Outcome != OutcomeMoved {
		t.Fatalf("credit for an account that left: %+v", ans)
	}
	if ans := f.c.apply(f.a, Command{Kind: KindAbort, Credits: []Credit{cr}}).Answers[0][0]; ans.Outcome != OutcomeMoved {
		t.Fatalf("abort for an account that left: %+v", ans)
	}
	if len(f.a.inbox) != inbox {
		t.Fatal("a moved answer was recorded")
	}
	if ans := f.c.apply(f.b, Command{Kind: KindCredit, Credits: []Credit{cr}}).Answers[0][0]; ans.Outcome != OutcomeCredited {
		t.Fatalf("credit on the child: %+v", ans)
	}
}

// TestSplitRefusals: a split that would leave a side empty, name a slot not
// owned, go to itself, or repeat an epoch changes nothing.
func TestSplitRefusals(t *testing.T) {
	f := newSplitFixture(t)
	for _, c := range []*SlotCommand{
		nil,
		{Epoch: 2, Slots: allSlots(), Owned: allSlots(), To: 2},
		{Epoch: 2, Slots: nil, Owned: allSlots(), To: 2},
		{Epoch: 2, Slots: f.leave, Owned: allSlots(), To: 1},
		{Epoch: 2, Slots: f.leave, Owned: allSlots()[:10], To: 2},
	} {
		hash := f.a.Hash()
		if r := f.c.apply(f.a, Command{Kind: KindSplit, Slots: c}).Split; r.Refused == "" {
			t.Fatalf("split %+v accepted", c)
		}
		if f.a.Hash() != hash {
			t.Fatalf("refused split %+v changed the state", c)
		}
	}
	if r := f.split(); r.Refused != "" {
		t.Fatal(r.Refused)
	}
	if r := f.c.apply(f.a, Command{Kind: KindSplit, Slots: &SlotCommand{Epoch: 2, Slots: allSlots()[:1], To: 3}}).Split; r.Refused == "" {
		t.Fatal("a second split at the same epoch was accepted")
	}
	if !bytes.Equal(encoded(t, restored(t, f.a)), encoded(t, f.a)) || !bytes.Equal(encoded(t, restored(t, f.b)), encoded(t, f.b)) {
		t.Fatal("a split state does not survive its snapshot")
	}
	// A shard that never split writes the version the release before
	// reads; one that did, the version with its slots.
	version := func(s *State) uint8 {
		v, err := msgpack.NewDecoder(bytes.NewReader(encoded(t, s))).DecodeUint8()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := version(f.far); v != 5 {
		t.Fatalf("a shard that never split writes snapshot version %d, want 5", v)
	}
	if v := version(f.a); v != snapshotVersion {
		t.Fatalf("a split shard writes snapshot version %d, want %d", v, snapshotVersion)
	}
}

func encoded(t *testing.T, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
