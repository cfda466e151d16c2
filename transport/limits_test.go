package transport

import (
	"fmt"
	"maps"
	"math"
	"strings"
	"testing"
)

// The limits of docs/protocol.md. SlotCount can never change: it would move
// every account.
func TestLimitValues(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"BatchEventsMax", BatchEventsMax, 8190},
		{"IDBytesMax", IDBytesMax, 64},
		{"MetadataPairsMax", MetadataPairsMax, 16},
		{"MetadataBytesMax", MetadataBytesMax, 1024},
		{"MessageBytesMax", MessageBytesMax, 8 << 20},
		{"SlotCount", SlotCount, 4096},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestValidID(t *testing.T) {
	for _, c := range []struct {
		id   string
		want bool
	}{
		{"", false},
		{"a", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", IDBytesMax), true},
		{strings.Repeat("a", IDBytesMax+1), false},
		{strings.Repeat("é", 32), false}, // 64 bytes, not ASCII
		{"AZaz09", true},
		{"wallet:alice@example.com", true},
		{"a_b", true}, {"a.b", true}, {"a:b", true}, {"a@b", true}, {"a-b", true},
		{"_", true}, {".", true}, {":", true}, {"@", true}, {"-", true}, {"..", true},
		{"a b", false}, {" a", false}, {"a ", false}, {" ", false},
		{"a\tb", false}, {"a\nb", false}, {"a\x00", false},
		{"a/b", false}, {"a+b", false}, {"a#b", false}, {"a,b", false}, {"a~b", false},
		{"a`b", false}, {"a[b", false}, {"a{b", false}, {"a\\b", false}, {"a\"b", false},
		{"caf\u00e9", false}, // é is two bytes above 0x7f
		{"a\x80", false}, {"a\xff", false}, {"\u2013", false},
	} {
		if got := ValidID(c.id); got != c.want {
			t.Errorf("ValidID(%q) = %v, want %v", c.id, got, c.want)
		}
	}
	// Every single byte, against the protocol's class [A-Za-z0-9_.:@-].
	for b := range 256 {
		want := 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || strings.ContainsRune("_.:@-", rune(b))
		if got := ValidID(string([]byte{byte(b)})); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", []byte{byte(b)}, got, want)
		}
		// The byte at the end of a maximal id.
		id := strings.Repeat("x", IDBytesMax-1) + string([]byte{byte(b)})
		if got := ValidID(id); got != want {
			t.Errorf("ValidID(63 x + %q) = %v, want %v", []byte{byte(b)}, got, want)
		}
	}
}

func pairs(n, valueBytes int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", valueBytes)
	}
	return m
}

func TestValidMetadata(t *testing.T) {
	exact := pairs(MetadataPairsMax, 0)
	used := 0
	for k := range exact {
		used += len(k)
	}
	// 16 pairs, keys and values of exactly MetadataBytesMax bytes in all.
	exact["k00"] = strings.Repeat("v", MetadataBytesMax-used)
	over := maps.Clone(exact)
	over["k00"] += "v"

	for _, c := range []struct {
		name string
		m    map[string]string
		want bool
	}{
		{"nil", nil, true},
		{"empty", map[string]string{}, true},
		{"one pair", map[string]string{"k": "v"}, true},
		{"empty value", map[string]string{"k": ""}, true},
		{"empty key", map[string]string{"": "v"}, false},
		{"empty key and value", map[string]string{"": ""}, false},
		{"empty key among others", map[string]string{"a": "1", "": "2"}, false},
		{"16 pairs", pairs(MetadataPairsMax, 1), true},
		{"17 pairs", pairs(MetadataPairsMax+1, 1), false},
		{"17 tiny pairs", pairs(MetadataPairsMax+1, 0), false},
		{"1024 bytes in one value", map[string]string{"k": strings.Repeat("v", MetadataBytesMax-1)}, true},
		{"1025 bytes in one value", map[string]string{"k": strings.Repeat("v", MetadataBytesMax)}, false},
		{"1024 bytes in one key", map[string]string{strings.Repeat("k", MetadataBytesMax): ""}, true},
		{"1025 bytes in one key", map[string]string{strings.Repeat("k", MetadataBytesMax+1): ""}, false},
		{"1024 bytes over 16 pairs", exact, true},
		{"1025 bytes over 16 pairs", over, false},
		{"1024 bytes in two pairs", map[string]string{"a": strings.Repeat("1", 511), "b": strings.Repeat("2", 511)}, true},
		{"1025 bytes in two pairs", map[string]string{"a": strings.Repeat("1", 511), "b": strings.Repeat("2", 512)}, false},
	} {
		if got := ValidMetadata(c.m); got != c.want {
			t.Errorf("%s: ValidMetadata = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestFlagValues(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"AccountLinked", AccountLinked, 1},
		{"AccountDebitsMustNotExceedCredits", AccountDebitsMustNotExceedCredits, 2},
		{"AccountCreditsMustNotExceedDebits", AccountCreditsMustNotExceedDebits, 4},
		{"AccountHistory", AccountHistory, 8},
		{"AccountClosed", AccountClosed, 16},
		{"TransferLinked", TransferLinked, 1},
		{"TransferPending", TransferPending, 2},
		{"TransferPostPendingTransfer", TransferPostPendingTransfer, 4},
		{"TransferVoidPendingTransfer", TransferVoidPendingTransfer, 8},
		{"TransferBalancingDebit", TransferBalancingDebit, 16},
		{"TransferBalancingCredit", TransferBalancingCredit, 32},
		{"TransferClosingDebit", TransferClosingDebit, 64},
		{"TransferClosingCredit", TransferClosingCredit, 128},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestFlagsKnown(t *testing.T) {
	const accountAll = AccountLinked | AccountDebitsMustNotExceedCredits | AccountCreditsMustNotExceedDebits | AccountHistory | AccountClosed
	const transferAll = TransferLinked | TransferPending | TransferPostPendingTransfer | TransferVoidPendingTransfer |
		TransferBalancingDebit | TransferBalancingCredit | TransferClosingDebit | TransferClosingCredit
	for bit := range 32 {
		f := uint32(1) << bit
		if got, want := AccountFlagsKnown(f), f&accountAll != 0; got != want {
			t.Errorf("AccountFlagsKnown(1<<%d) = %v", bit, got)
		}
		if got, want := TransferFlagsKnown(f), f&transferAll != 0; got != want {
			t.Errorf("TransferFlagsKnown(1<<%d) = %v", bit, got)
		}
		// An unknown bit spoils every known combination.
		if f&accountAll == 0 && AccountFlagsKnown(accountAll|f) {
			t.Errorf("AccountFlagsKnown(all | 1<<%d) = true", bit)
		}
		if f&transferAll == 0 && TransferFlagsKnown(transferAll|f) {
			t.Errorf("TransferFlagsKnown(all | 1<<%d) = true", bit)
		}
	}
	for _, f := range []uint32{0, accountAll, AccountLinked | AccountHistory} {
		if !AccountFlagsKnown(f) {
			t.Errorf("AccountFlagsKnown(%#x) = false", f)
		}
	}
	for _, f := range []uint32{0, transferAll, TransferPending | TransferLinked} {
		if !TransferFlagsKnown(f) {
			t.Errorf("TransferFlagsKnown(%#x) = false", f)
		}
	}
	if AccountFlagsKnown(math.MaxUint32) || TransferFlagsKnown(math.MaxUint32) {
		t.Error("all 32 bits known")
	}
}

// Slot values are pinned: every router and shard, of every version, must
// put an account in the same slot. A change of hash or of SlotCount fails
// here.
func TestSlotIsStable(t *testing.T) {
	for id, want := range map[string]uint16{
		"acct-1":                   218,
		"wallet:alice@example.com": 1646,
		"operator":                 2084,
	} {
		if got := Slot(id); got != want {
			t.Errorf("Slot(%q) = %d, want %d", id, got, want)
		}
	}
}

func TestSlotInRangeAndSpread(t *testing.T) {
	counts := make([]int, SlotCount)
	const n = 100_000
	for i := range n {
		id := fmt.Sprintf("acct-%d", i)
		s := Slot(id)
		if int(s) >= SlotCount {
			t.Fatalf("Slot(%q) = %d, not below %d", id, s, SlotCount)
		}
		if Slot(id) != s {
			t.Fatalf("Slot(%q) not deterministic", id)
		}
		counts[s]++
	}
	for _, id := range []string{"", strings.Repeat("z", IDBytesMax), "\xff"} {
		if s := Slot(id); int(s) >= SlotCount {
			t.Errorf("Slot(%q) = %d", id, s)
		}
	}
	// About 24 ids a slot: every slot is used and none is crowded.
	for s, c := range counts {
		if c == 0 || c > 100 {
			t.Errorf("slot %d holds %d of %d ids", s, c, n)
		}
	}
}

func TestSubjects(t *testing.T) {
	s := Subjects{Prefix: DefaultPrefix}
	for got, want := range map[string]string{
		s.AccountsCreate():  "ledger.v1.accounts.create",
		s.TransfersCreate(): "ledger.v1.transfers.create",
		s.AccountsLookup():  "ledger.v1.accounts.lookup",
		s.TransfersLookup(): "ledger.v1.transfers.lookup",
		s.ClusterStatus():   "ledger.v1.cluster.status",
		s.Shard(7):          "ledger.internal.shard.7",
		s.Meta():            "ledger.internal.meta",
		Subjects{Prefix: "acme.prod"}.TransfersCreate(): "acme.prod.v1.transfers.create",
	} {
		if got != want {
			t.Errorf("subject %q, want %q", got, want)
		}
	}
}

func TestValidNodeID(t *testing.T) {
	for _, ok := range []string{"node-1", "ledgerd-0", "a", "N_2", strings.Repeat("x", NodeIDBytesMax)} {
		if err := ValidNodeID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "node.1", "node 1", "node*", "node>", "nöde", strings.Repeat("x", NodeIDBytesMax+1)} {
		if err := ValidNodeID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
