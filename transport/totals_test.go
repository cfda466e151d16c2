package transport

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

var u128Max = Uint128{Hi: math.MaxUint64, Lo: math.MaxUint64}

func TestUint128AddCarriesAndReportsOverflow(t *testing.T) {
	sum, ok := U128(math.MaxUint64).Add(U128(1))
	if !ok || sum != (Uint128{Hi: 1}) {
		t.Fatalf("2^64-1 + 1 = %+v, %v", sum, ok)
	}
	if sum, ok := u128Max.Add(U128(1)); ok || sum != (Uint128{}) {
		t.Fatalf("2^128-1 + 1 = %+v, %v: want the wrap reported", sum, ok)
	}
}

func TestUint128DecimalRoundTrip(t *testing.T) {
	for want, v := range map[string]Uint128{
		"0":                    {},
		"18446744073709551615": U128(math.MaxUint64),
		"18446744073709551616": {Hi: 1},
		"55340232221128654845": {Hi: 2, Lo: math.MaxUint64 - 2}, // 3 × (2^64−1)
		"340282366920938463463374607431768211455": u128Max,
	} {
		if got := v.String(); got != want {
			t.Errorf("%+v prints %s, want %s", v, got, want)
		}
		if got, err := ParseUint128(want); err != nil || got != v {
			t.Errorf("ParseUint128(%s) = %+v, %v", want, got, err)
		}
	}
	for _, bad := range []string{"", "-1", "+1", "01", "1 ", " 1", "1e3", "0x10", "1_000",
		"340282366920938463463374607431768211456", strings.Repeat("9", 40)} {
		if v, err := ParseUint128(bad); err == nil {
			t.Errorf("ParseUint128(%q) = %+v, want an error", bad, v)
		}
	}
}

// Three accounts at 2^64−1 each on one ledger: the sums pass 2^64. The
// uint64 fields saturate (never wrap) and Exact carries the sums, on the
// wire as decimal strings, through msgpack and JSON alike.
func TestLedgerTotalsPastTwoToThe64AreExact(t *testing.T) {
	var e ExactTotals
	for range 3 {
		e.AddAccount(&Account{DebitsPosted: math.MaxUint64, CreditsPosted: math.MaxUint64, DebitsPending: 7})
	}
	three := Uint128{Hi: 2, Lo: math.MaxUint64 - 2}
	tot := NewLedgerTotals(9, e)
	if tot.DebitsPosted != math.MaxUint64 || tot.CreditsPosted != math.MaxUint64 || tot.DebitsPending != 21 || tot.Exact == nil {
		t.Fatalf("totals %+v: want saturated posted sums and Exact set", tot)
	}
	if s := tot.Sums(); s.DebitsPosted != three || s.CreditsPosted != three || s.DebitsPending != U128(21) || s.CreditsPending != (Uint128{}) {
		t.Fatalf("sums %+v", s)
	}

	var back LedgerTotals
	if err := Unmarshal(mustMarshal(t, &tot), &back); err != nil || !reflect.DeepEqual(back, tot) {
		t.Fatalf("msgpack round trip: %+v, %v", back, err)
	}
	keys := wireKeys(t, mustMarshal(t, &tot))
	if exact, ok := keys["exact"].(map[string]any); !ok || exact["debits_posted"] != "55340232221128654845" {
		t.Fatalf("msgpack exact: %#v", keys["exact"])
	}

	j, err := json.Marshal(tot)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"debits_posted":18446744073709551615`, `"debits_pending":21`,
		`"exact":{"debits_posted":"55340232221128654845","credits_posted":"55340232221128654845","debits_pending":"21","credits_pending":"0"}`} {
		if !strings.Contains(string(j), want) {
			t.Errorf("JSON %s lacks %s", j, want)
		}
	}
	var fromJSON LedgerTotals
	if err := json.Unmarshal(j, &fromJSON); err != nil || !reflect.DeepEqual(fromJSON, tot) {
		t.Fatalf("JSON round trip: %+v, %v", fromJSON, err)
	}
}

// Totals that fit 64 bits keep the shape they always had: no exact field.
func TestLedgerTotalsWithin64BitsHaveNoExact(t *testing.T) {
	var e ExactTotals
	e.AddAccount(&Account{DebitsPosted: math.MaxUint64})
	tot := NewLedgerTotals(1, e)
	if tot.Exact != nil || tot.DebitsPosted != math.MaxUint64 || tot.Sums() != e {
		t.Fatalf("totals %+v", tot)
	}
	if _, ok := wireKeys(t, mustMarshal(t, &tot))["exact"]; ok {
		t.Fatal("msgpack has an exact field")
	}
	if j, _ := json.Marshal(tot); strings.Contains(string(j), "exact") {
		t.Fatalf("JSON %s has an exact field", j)
	}
}

func TestExactTotalsAddRefusesToWrap(t *testing.T) {
	e := ExactTotals{CreditsPending: u128Max}
	before := e
	if err := e.Add(ExactTotals{DebitsPosted: U128(1), CreditsPending: U128(1)}); !errors.Is(err, errTotalsOverflow) || e != before {
		t.Fatalf("Add past 2^128-1: %v, %+v", err, e)
	}
}

// Exact totals come as decimal strings only.
func TestExactTotalsDecodeIsStrict(t *testing.T) {
	for name, body := range map[string][]byte{
		"an integer":   mp(t, mapHdr(2), "ledger", 1, "exact", mapHdr(1), "debits_posted", 5),
		"a sign":       mp(t, mapHdr(1), "exact", mapHdr(1), "credits_posted", "+5"),
		"past 2^128-1": mp(t, mapHdr(1), "exact", mapHdr(1), "debits_pending", "340282366920938463463374607431768211456"),
		"binary":       mp(t, mapHdr(1), "exact", mapHdr(1), "debits_posted", []byte("5")),
	} {
		if err := Unmarshal(body, new(LedgerTotals)); !errors.Is(err, ErrMalformed) {
			t.Errorf("exact total as %s: err = %v, want ErrMalformed", name, err)
		}
	}
}

// A status that failed as a whole is {error} alone, like every reply.
func TestStatusReplyErrorIsTheWholeReply(t *testing.T) {
	b := mustMarshal(t, &StatusReply{Shards: []ShardStatus{{ID: 1}}, Error: &Error{Code: ErrMalformedCode, Message: "x"}})
	if keys := wireKeys(t, b); len(keys) != 1 || keys["error"] == nil {
		t.Fatalf("error reply %v", keys)
	}
	var back StatusReply
	if err := Unmarshal(b, &back); err != nil || back.Error == nil || back.Error.Code != ErrMalformedCode || back.Shards != nil {
		t.Fatalf("decoded %+v, %v", back, err)
	}
	ok := mustMarshal(t, &StatusReply{Nodes: []NodeStatus{}, Shards: []ShardStatus{{ID: 1}}})
	if keys := wireKeys(t, ok); len(keys) != 2 || keys["shards"] == nil || keys["nodes"] == nil {
		t.Fatalf("reply %v", keys)
	}
}
