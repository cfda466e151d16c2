package raftfsm

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkGroupProposeTransfers is the cost of a transfer through a whole
// single-voter group on disk: propose, the actor's entry, bbolt's fsync,
// apply with the history store. Each command holds 100 transfers; 16
// proposers keep the actor batching.
func BenchmarkGroupProposeTransfers(b *testing.B) {
	tg := openTestGroup(b, b.TempDir())
	defer tg.close(b)
	const accounts, perCommand, proposers = 1000, 100, 16
	ids := make([]string, accounts)
	for i := range ids {
		ids[i] = "acct-" + strconv.Itoa(i)
	}
	createAccounts(b, tg.g, ids...)
	commands := max(b.N/perCommand, 1)
	raws := make([][]byte, commands)
	for n := range raws {
		c := shard.Command{Kind: shard.KindCreateTransfers, CreditShards: []uint32{1}, Transfers: make([]transport.Transfer, perCommand)}
		for j := range c.Transfers {
			k := n*perCommand + j
			c.Transfers[j] = transport.Transfer{ID: "t-" + strconv.Itoa(k), DebitAccountID: ids[k%accounts],
				CreditAccountID: ids[(k+1)%accounts], Amount: 1, Ledger: 1, Code: 1}
		}
		raw, err := msgpack.Marshal(&c)
		if err != nil {
			b.Fatal(err)
		}
		raws[n] = raw
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	next := make(chan []byte)
	for range proposers {
		wg.Go(func() {
			for raw := range next {
				if _, err := tg.g.ProposeWait(context.Background(), raw); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for _, raw := range raws {
		next <- raw
	}
	close(next)
	wg.Wait()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(commands*perCommand), "ns/transfer")
}

// BenchmarkEntryChecksum is the checksum's cost per entry, by entry size:
// what the leader pays (the actor's data CRC, the store extending it and
// checking the data, the FSM checking the seal before apply) and what
// every read of an entry back from disk pays (verify).
func BenchmarkEntryChecksum(b *testing.B) {
	for _, size := range []int{256, 64 << 10, 1 << 20} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		b.Run(fmt.Sprintf("leader/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				l := &raft.Log{Index: 9, Term: 2, Data: data, Extensions: proposalSeal(data)}
				if err := sealEntry(l); err != nil {
					b.Fatal(err)
				}
				if err := verifySeal(l); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("verify/%dB", size), func(b *testing.B) {
			l := &raft.Log{Index: 9, Term: 2, Data: data}
			if err := sealEntry(l); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			for range b.N {
				if err := verifySeal(l); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
