package router

import (
	"slices"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// refuseChains decides which events reach a shard: unauthorized events,
// chains cut across shards and open chains are answered here, and a chain
// with one refused event fails whole.
func TestRefuseChains(t *testing.T) {
	const L = true
	for _, tc := range []struct {
		name    string
		linked  []bool
		shards  []uint32
		allowed []bool
		want    []string // "" for sent
	}{
		{"all sent", []bool{false, L, false}, []uint32{1, 2, 2}, []bool{true, true, true}, []string{"", "", ""}},
		{"one unauthorized", []bool{false, false}, []uint32{1, 1}, []bool{true, false}, []string{"", "unauthorized"}},
		{"unauthorized fails its chain", []bool{L, L, false, false}, []uint32{1, 1, 1, 1}, []bool{true, false, true, true},
			[]string{"linked_event_failed", "unauthorized", "linked_event_failed", ""}},
		{"the first refusal names the chain's failure", []bool{L, L, false}, []uint32{1, 2, 2}, []bool{true, true, false},
			[]string{"linked_event_failed", "flags_invalid", "linked_event_failed"}},
		{"an open chain", []bool{false, L, L}, []uint32{1, 1, 1}, []bool{true, false, true},
			[]string{"", "linked_event_chain_open", "linked_event_chain_open"}},
	} {
		results := make([]transport.Result, len(tc.linked))
		sent := refuseChains(results, tc.shards, func(i int) bool { return tc.linked[i] }, func(i int) bool { return tc.allowed[i] })
		var got []string
		for i, r := range results {
			if sent[i] {
				got = append(got, "")
				continue
			}
			if r.Index != uint32(i) {
				t.Errorf("%s: result %d has index %d", tc.name, i, r.Index)
			}
			got = append(got, r.Code.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}
