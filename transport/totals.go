package transport

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"strconv"

	"github.com/vmihailenco/msgpack/v5"
)

// Uint128 is an unsigned 128-bit integer. A ledger's total over accounts is
// one: each balance is a uint64, so the sum over n accounts may pass 2^64
// (and, with fewer than 2^64 accounts, never 2^128). On the wire (msgpack
// and JSON) it is a decimal string, readable and exact in any language.
type Uint128 struct{ Hi, Lo uint64 }

// U128 returns v as a Uint128.
func U128(v uint64) Uint128 { return Uint128{Lo: v} }

// Add returns a+b and whether it fits 128 bits (false: the sum wrapped).
func (a Uint128) Add(b Uint128) (Uint128, bool) {
	lo, carry := bits.Add64(a.Lo, b.Lo, 0)
	hi, carry := bits.Add64(a.Hi, b.Hi, carry)
	return Uint128{Hi: hi, Lo: lo}, carry == 0
}

// Uint64 returns a if it fits 64 bits, else 2^64−1 (saturated, never
// wrapped), and whether it fits.
func (a Uint128) Uint64() (uint64, bool) {
	if a.Hi != 0 {
		return math.MaxUint64, false
	}
	return a.Lo, true
}

func (a Uint128) big() *big.Int {
	b := new(big.Int).SetUint64(a.Hi)
	return b.Lsh(b, 64).Or(b, new(big.Int).SetUint64(a.Lo))
}

// String returns a in decimal.
func (a Uint128) String() string {
	if a.Hi == 0 {
		return strconv.FormatUint(a.Lo, 10)
	}
	return a.big().String()
}

// uint128DigitsMax is the length of 2^128−1 in decimal.
const uint128DigitsMax = 39

// ParseUint128 parses a decimal string as String writes it: digits only, no
// sign, no leading zero, at most 2^128−1.
func ParseUint128(s string) (Uint128, error) {
	if s == "" || len(s) > uint128DigitsMax || len(s) > 1 && s[0] == '0' {
		return Uint128{}, fmt.Errorf("%q is not a decimal 128-bit integer", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return Uint128{}, fmt.Errorf("%q is not a decimal 128-bit integer", s)
		}
	}
	b, _ := new(big.Int).SetString(s, 10) // digits only: cannot fail
	if b.BitLen() > 128 {
		return Uint128{}, fmt.Errorf("%s is more than 2^128-1", s)
	}
	lo := new(big.Int).And(b, new(big.Int).SetUint64(math.MaxUint64)).Uint64()
	return Uint128{Hi: b.Rsh(b, 64).Uint64(), Lo: lo}, nil
}

// MarshalText writes a in decimal (a JSON string).
func (a Uint128) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText parses a decimal string.
func (a *Uint128) UnmarshalText(b []byte) error {
	v, err := ParseUint128(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder: a decimal str.
func (a Uint128) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.EncodeString(a.String()) }

// DecodeMsgpack implements msgpack.CustomDecoder: a decimal str only.
func (a *Uint128) DecodeMsgpack(dec *msgpack.Decoder) error {
	s, err := decodeStr(dec)
	if err != nil {
		return err
	}
	return a.UnmarshalText([]byte(s))
}

// ExactTotals are one ledger's four sums, exactly.
type ExactTotals struct {
	DebitsPosted   Uint128 `msgpack:"debits_posted" json:"debits_posted"`
	CreditsPosted  Uint128 `msgpack:"credits_posted" json:"credits_posted"`
	DebitsPending  Uint128 `msgpack:"debits_pending" json:"debits_pending"`
	CreditsPending Uint128 `msgpack:"credits_pending" json:"credits_pending"`
}

// errTotalsOverflow: a sum passed 2^128−1, which the balances of fewer than
// 2^64 accounts cannot reach.
var errTotalsOverflow = errors.New("a ledger's total passed 2^128-1")

// Add adds o's sums to e's. It fails, leaving e as it was, if a sum would
// pass 2^128−1.
func (e *ExactTotals) Add(o ExactTotals) error {
	var sum ExactTotals
	var ok [4]bool
	sum.DebitsPosted, ok[0] = e.DebitsPosted.Add(o.DebitsPosted)
	sum.CreditsPosted, ok[1] = e.CreditsPosted.Add(o.CreditsPosted)
	sum.DebitsPending, ok[2] = e.DebitsPending.Add(o.DebitsPending)
	sum.CreditsPending, ok[3] = e.CreditsPending.Add(o.CreditsPending)
	if ok != [4]bool{true, true, true, true} {
		return errTotalsOverflow
	}
	*e = sum
	return nil
}

// AddAccount adds an account's balances. Fewer than 2^64 accounts cannot
// pass 2^128−1, so a failure is a broken invariant.
func (e *ExactTotals) AddAccount(a *Account) {
	err := e.Add(ExactTotals{DebitsPosted: U128(a.DebitsPosted), CreditsPosted: U128(a.CreditsPosted),
		DebitsPending: U128(a.DebitsPending), CreditsPending: U128(a.CreditsPending)})
	if err != nil {
		panic(err)
	}
}

// NewLedgerTotals returns ledger's totals with the sums e: each uint64 field
// holds its sum, or 2^64−1 if the sum does not fit 64 bits, and then Exact
// holds all four sums exactly.
func NewLedgerTotals(ledger uint32, e ExactTotals) LedgerTotals {
	t := LedgerTotals{Ledger: ledger}
	var fits [4]bool
	t.DebitsPosted, fits[0] = e.DebitsPosted.Uint64()
	t.CreditsPosted, fits[1] = e.CreditsPosted.Uint64()
	t.DebitsPending, fits[2] = e.DebitsPending.Uint64()
	t.CreditsPending, fits[3] = e.CreditsPending.Uint64()
	if fits != [4]bool{true, true, true, true} {
		t.Exact = &e
	}
	return t
}

// Sums returns the four sums exactly: Exact if it is set, else the uint64
// fields.
func (t *LedgerTotals) Sums() ExactTotals {
	if t.Exact != nil {
		return *t.Exact
	}
	return ExactTotals{DebitsPosted: U128(t.DebitsPosted), CreditsPosted: U128(t.CreditsPosted),
		DebitsPending: U128(t.DebitsPending), CreditsPending: U128(t.CreditsPending)}
}
