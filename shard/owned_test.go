package shard

import (
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// ownerCommand is a provider's create command: acme owns ids "a-" and "b-",
// and may hold max open pending transfers here.
func ownerCommand(max uint32, transfers ...transport.Transfer) Command {
	return Command{Kind: KindCreateTransfers, Transfers: transfers,
		Owner: &transport.Owner{Prefixes: []string{"a-", "b-"}, Ledgers: []uint32{1}, PendingMax: max}}
}

// applyOwned applies a provider's command and returns its results, or why
// it was refused as a whole.
func applyOwned(c *clock, s *State, cmd Command) ([]EventResult, string) {
	out := c.apply(s, cmd)
	return out.Events[0], out.Refused[0]
}

func TestPendingLimitRefusesTheWholeCommandAndChangesNothing(t *testing.T) {
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("a-1", 1, 0), acct("b-1", 1, 0), acct("z-1", 1, 0))
	// Another provider's pending transfer does not count against acme.
	mustTransfer(t, c, s, pending("z-p", "z-1", "a-1", 1, 0))
	if _, why := applyOwned(c, s, ownerCommand(2, pending("a-p1", "a-1", "z-1", 1, 0), pending("b-p2", "b-1", "z-1", 1, 0))); why != "" {
		t.Fatalf("two pending transfers under a limit of 2 refused: %s", why)
	}
	hash := s.Hash()
	res, why := applyOwned(c, s, ownerCommand(2, xfer("a-x", "a-1", "z-1", 1), pending("a-p3", "a-1", "z-1", 1, 0)))
	if why == "" || res != nil {
		t.Fatalf("a third pending transfer over a limit of 2: results %+v, refusal %q", res, why)
	}
	if !strings.Contains(why, "holds 2") || !strings.Contains(why, "limit there is 2") {
		t.Fatalf("refusal does not say the count and the limit: %q", why)
	}
	if s.Hash() != hash {
		t.Fatal("a refused command changed the state")
	}
	// A retry of an open pending transfer opens nothing: it is answered.
	if res, why := applyOwned(c, s, ownerCommand(2, pending("a-p1", "a-1", "z-1", 1, 0))); why != "" || res[0].Code != transport.CodeExists {
		t.Fatalf("retry of an open pending transfer at the limit: %+v %q", res, why)
	}
	// Posting one makes room for one.
	if res, why := applyOwned(c, s, ownerCommand(2, post("a-post", "a-p1", 0))); why != "" || res[0].Code != transport.CodeOK {
		t.Fatalf("post at the limit: %+v %q", res, why)
	}
	if res, why := applyOwned(c, s, ownerCommand(2, pending("a-p3", "a-1", "z-1", 1, 0))); why != "" || res[0].Code != transport.CodeOK {
		t.Fatalf("pending after a post made room: %+v %q", res, why)
	}
	// An operator has no limit; an owner without one neither.
	mustTransfer(t, c, s, pending("a-op", "a-1", "z-1", 1, 0))
	if _, why := applyOwned(c, s, ownerCommand(0, pending("a-p4", "a-1", "z-1", 1, 0))); why != "" {
		t.Fatalf("no limit, refused: %s", why)
	}
}

func TestPendingLimitCountsSurviveChainsExpiryAndSnapshots(t *testing.T) {
	s, c := New(1, nil), &clock{}
	mustCreateAccounts(t, c, s, acct("a-1", 1, 0), acct("z-1", 1, transport.AccountDebitsMustNotExceedCredits))
	// A failed linked chain rolls its pending transfer back: no count.
	p := pending("a-c1", "a-1", "z-1", 1, 0)
	p.Flags |= transport.TransferLinked
	res, why := applyOwned(c, s, ownerCommand(1, p, xfer("a-c2", "z-1", "a-1", 5)))
	if why != "" || res[1].Code != transport.CodeExceedsCredits {
		t.Fatalf("chain: %+v %q", res, why)
	}
	if _, why := applyOwned(c, s, ownerCommand(1, pending("a-t", "a-1", "z-1", 1, 1))); why != "" {
		t.Fatalf("a rolled-back chain still counts: %s", why)
	}
	// The one open pending transfer expires: room again.
	at, ok := s.NextExpiry()
	if !ok {
		t.Fatal("no expiry")
	}
	s.Apply(&Entry{Timestamp: at + 1, Commands: []Command{{Kind: KindExpire}}})
	c.now = at + 1
	if _, why := applyOwned(c, s, ownerCommand(1, pending("a-u", "a-1", "z-1", 1, 0))); why != "" {
		t.Fatalf("an expired pending transfer still counts: %s", why)
	}
	// A restored replica counts the same, and refuses the same.
	r := restored(t, s)
	e := &Entry{Timestamp: c.next(), Commands: []Command{ownerCommand(1, pending("a-v", "a-1", "z-1", 1, 0))}}
	if a, b := s.Apply(e).Refused[0], r.Apply(e).Refused[0]; a == "" || a != b {
		t.Fatalf("original and restored decide differently: %q, %q", a, b)
	}
	if r.Hash() != s.Hash() {
		t.Fatal("original and restored state diverge")
	}
}
