package wire

import (
	"testing"

	"github.com/ledgerd/ledgerd/internal/fuzzcheck"
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
		b, err := transport.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if r := fuzzcheck.Stable[Reply](t, data); r != nil && r.Status != nil {
			for _, l := range r.Status.Ledgers {
				s := l.Sums()
				if back, err := transport.ParseUint128(s.CreditsPosted.String()); err != nil || back != s.CreditsPosted {
					t.Fatalf("total %+v: %v", s.CreditsPosted, err)
				}
			}
		}
		fuzzcheck.Stable[Join](t, data)
		fuzzcheck.Stable[Remove](t, data)
	})
}
