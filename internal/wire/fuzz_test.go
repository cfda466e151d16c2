package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// FuzzDecodeShardReply decodes what comes back on a shard's subject and
// the membership requests it serves: a Reply (to the router and to a
// saga's sender), a Join and a Remove. Each that decodes is one map and
// round-trips; a status's exact totals parse back.
func FuzzDecodeShardReply(f *testing.F) {
	big := transport.NewLedgerTotals(1, transport.ExactTotals{DebitsPosted: transport.Uint128{Hi: 1}, CreditsPosted: transport.Uint128{Hi: 1}})
	for _, v := range []any{
		&Reply{Results: []transport.Result{{Index: 1, Code: transport.CodeOverflow}}, Answers: []shard.Answer{{ID: "x", Attempt: 7, Outcome: shard.OutcomeCredited}}},
		&Reply{Accounts: []transport.Account{{ID: "a", Ledger: 1, Code: 1}}, Transfers: []transport.Transfer{{ID: "t", DebitAccountID: "a", CreditAccountID: "b", Amount: 1, Ledger: 1, Code: 1}}, Balances: []transport.Balance{{Timestamp: 9}}},
		&Reply{Status: &transport.ShardStatus{ID: 1, Slots: []uint16{1, 2}, Ledgers: []transport.LedgerTotals{big}}},
		&Reply{Retry: "not the leader", Unknown: true},
		&Join{Node: transport.NodeInfo{ID: "node-2", RaftAddr: "127.0.0.1:7402"}, Promote: true, Applied: 12},
		&Remove{Node: "node-3"},
	} {
		f.Add(mustMarshal(f, v))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if r := fuzzStable[Reply](t, data); r != nil && r.Status != nil {
			for _, l := range r.Status.Ledgers {
				s := l.Sums()
				if back, err := transport.ParseUint128(s.CreditsPosted.String()); err != nil || back != s.CreditsPosted {
					t.Fatalf("total %+v: %v", s.CreditsPosted, err)
				}
			}
		}
		fuzzStable[Join](t, data)
		fuzzStable[Remove](t, data)
	})
}

// fuzzStable decodes data as a *T with transport.Unmarshal; if that
// succeeds, data is one body (a byte after it is malformed) and the
// value's encoding is stable.
func fuzzStable[T any](t *testing.T, data []byte) *T {
	var v T
	if transport.Unmarshal(data, &v) != nil {
		return nil
	}
	for _, tail := range []byte{0x80, 0xc0, 0xc1} {
		if err := transport.Unmarshal(append(bytes.Clone(data), tail), new(T)); !errors.Is(err, transport.ErrMalformed) {
			t.Fatalf("%T with the trailing byte %02x: %v", v, tail, err)
		}
	}
	b1 := mustMarshal(t, &v)
	var back T
	if err := transport.Unmarshal(b1, &back); err != nil {
		t.Fatalf("re-decoding %T: %v", v, err)
	}
	if b2 := mustMarshal(t, &back); !bytes.Equal(b1, b2) {
		t.Fatalf("%T: encoding not stable:\n% x\n% x", v, b1, b2)
	}
	return &v
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := transport.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
