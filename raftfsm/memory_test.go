//go:build !race

package raftfsm

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// Memory bounds of a shard, checked by TestMemoryDoesNotGrowWithHistory and
// documented in docs/design.md. The live heap holds the accounts and open
// transfers; history is on disk.
const (
	heapBaseMax        = 64 << 20 // the store's caches and memtables, buffers
	heapPerAccountMax  = 1024     // bytes per account (10,000 in the test)
	heapGrowthMax      = 16 << 20 // from 1M to 3M transfers
	memoryTestAccounts = 10_000
	// Bytes per open pending transfer (with a timeout: it is in the
	// expiry index too) and per credit half held for a pending transfer of
	// another shard, checked by TestHeapPerAccountAndOpenTransfer.
	heapPerOpenTransferMax  = 1024
	heapPerPendingCreditMax = 1024
)

// TestMemoryDoesNotGrowWithHistory applies 1,000,000 and then 3,000,000
// transfers over 10,000 accounts through the shard machine with its history
// store on disk, and measures the live heap after each: the bound does not
// depend on the transfer count. (Not under -race, whose shadow memory would
// be measured too; scripts/test runs it without.)
func TestMemoryDoesNotGrowWithHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("applies 3M transfers")
	}
	m, closeStore := memoryMachine(t)
	defer closeStore()
	index := uint64(0)
	apply := func(cmd *shard.Command) {
		t.Helper()
		b, err := msgpack.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		index++
		for _, r := range m.Apply(index, 1_700_000_000_000_000_000+index*1000, [][]byte{b}) {
			if err, ok := r.(error); ok {
				t.Fatal(err)
			}
		}
	}
	accounts := make([]transport.Account, memoryTestAccounts)
	for i := range accounts {
		accounts[i] = transport.Account{ID: "acct-" + strconv.Itoa(i), Ledger: 1, Code: 1, Flags: transport.AccountHistory}
	}
	for i := 0; i < len(accounts); i += 1000 {
		apply(&shard.Command{Kind: shard.KindCreateAccounts, Accounts: accounts[i : i+1000]})
	}
	base := liveHeap()
	first, extra := 1_000_000, 2_000_000
	if n, err := strconv.Atoi(os.Getenv("MEMTEST_TRANSFERS")); err == nil { // profiling a shorter run
		first, extra = n, 0
	}
	sent := 0
	send := func(n int) {
		const batch = 4096
		for n > 0 {
			k := min(n, batch)
			cmd := shard.Command{Kind: shard.KindCreateTransfers, Transfers: make([]transport.Transfer, k)}
			for j := range cmd.Transfers {
				d, c := (sent+j)%memoryTestAccounts, (sent+j*7+1)%memoryTestAccounts
				if c == d {
					c = (c + 1) % memoryTestAccounts
				}
				cmd.Transfers[j] = transport.Transfer{ID: "t-" + strconv.Itoa(sent+j), DebitAccountID: accounts[d].ID,
					CreditAccountID: accounts[c].ID, Amount: 1, Ledger: 1, Code: 1}
			}
			apply(&cmd)
			sent += k
			n -= k
		}
	}
	send(first)
	at1M := liveHeap()
	send(extra)
	at3M := liveHeap()
	t.Logf("live heap: %s with %d accounts; %s after 1M transfers; %s after 3M (RSS %s)",
		mib(base), memoryTestAccounts, mib(at1M), mib(at3M), mib(rss()))
	if bound := uint64(heapBaseMax + heapPerAccountMax*memoryTestAccounts); at1M > bound || at3M > bound {
		t.Fatalf("live heap %s / %s over the bound %s", mib(at1M), mib(at3M), mib(bound))
	}
	if at3M > at1M+heapGrowthMax {
		t.Fatalf("live heap grew from %s to %s between 1M and 3M transfers", mib(at1M), mib(at3M))
	}
	// The history is all there: the first and the last transfer, and the
	// id of the first refused again.
	m.Read(func(st *shard.State, _ uint64) {
		if got := st.LookupTransfers([]string{"t-0", "t-" + strconv.Itoa(sent-1)}); len(got) != 2 {
			t.Fatalf("lookup of the first and last transfers: %d found", len(got))
		}
	})
	dup := shard.Command{Kind: shard.KindCreateTransfers, Transfers: []transport.Transfer{{ID: "t-0",
		DebitAccountID: accounts[0].ID, CreditAccountID: accounts[1].ID, Amount: 1, Ledger: 1, Code: 1}}}
	b, _ := msgpack.Marshal(&dup)
	index++
	out := m.Apply(index, 1_700_000_000_000_000_000+index*1000, [][]byte{b})[0].(*shard.Output)
	if out.Events[0][0].Code != transport.CodeExists {
		t.Fatalf("t-0 sent again after 3M transfers: %v, want exists", out.Events[0][0].Code)
	}
}

// TestHeapPerAccountAndOpenTransfer measures what the shard's state holds
// on the heap per account, per open pending transfer and per credit half of
// a pending transfer across shards: these, not the history (on disk, bounded
// by TestMemoryDoesNotGrowWithHistory), size a shard's memory. The history
// rows go to an archive that keeps nothing, so they are not measured.
func TestHeapPerAccountAndOpenTransfer(t *testing.T) {
	const n = 100_000
	st := shard.New(1, discardArchive{})
	now := uint64(1_700_000_000_000_000_000)
	batches := func(k func(i int) shard.Command) {
		for i := 0; i < n; i += 1000 {
			now += 1000
			out := st.Apply(&shard.Entry{Timestamp: now, Commands: []shard.Command{k(i)}})
			for _, evs := range out.Events {
				for _, e := range evs {
					if e.Code != transport.CodeOK {
						t.Fatalf("event: %+v", e)
					}
				}
			}
			for _, ans := range out.Answers {
				for _, a := range ans {
					if a.Outcome != shard.OutcomeCredited {
						t.Fatalf("credit: %+v", a)
					}
				}
			}
		}
	}
	id := func(prefix string, i int) string { return prefix + "-" + strconv.Itoa(i) }
	base := liveHeap()
	batches(func(i int) shard.Command {
		cmd := shard.Command{Kind: shard.KindCreateAccounts}
		for j := i; j < i+1000; j++ {
			cmd.Accounts = append(cmd.Accounts, transport.Account{ID: id("acct", j), Ledger: 1, Code: 1})
		}
		return cmd
	})
	withAccounts := liveHeap()
	batches(func(i int) shard.Command {
		cmd := shard.Command{Kind: shard.KindCreateTransfers}
		for j := i; j < i+1000; j++ {
			cmd.Transfers = append(cmd.Transfers, transport.Transfer{ID: id("hold", j), DebitAccountID: id("acct", j),
				CreditAccountID: id("acct", (j+1)%n), Amount: 1, Ledger: 1, Code: 1, Flags: transport.TransferPending, Timeout: 3600})
		}
		return cmd
	})
	withOpen := liveHeap()
	batches(func(i int) shard.Command { // credit halves of shard 2's pending transfers
		cmd := shard.Command{Kind: shard.KindCredit}
		for j := i; j < i+1000; j++ {
			cmd.Credits = append(cmd.Credits, shard.Credit{DebitShard: 2, Transfer: transport.Transfer{ID: id("remote", j),
				DebitAccountID: id("elsewhere", j), CreditAccountID: id("acct", j), Amount: 1, Ledger: 1, Code: 1,
				Flags: transport.TransferPending, Timestamp: uint64(j + 1)}})
		}
		return cmd
	})
	withCredits := liveHeap()
	runtime.KeepAlive(st)
	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / n }
	perAccount, perOpen, perCredit := per(base, withAccounts), per(withAccounts, withOpen), per(withOpen, withCredits)
	t.Logf("live heap per account %.0f B, per open pending transfer %.0f B, per pending credit held (with its inbox row) %.0f B",
		perAccount, perOpen, perCredit)
	if perAccount > heapPerAccountMax || perOpen > heapPerOpenTransferMax || perCredit > heapPerPendingCreditMax {
		t.Fatalf("over the bounds: %d B per account, %d per open transfer, %d per pending credit",
			heapPerAccountMax, heapPerOpenTransferMax, heapPerPendingCreditMax)
	}
}

// discardArchive keeps no history.
type discardArchive struct{}

func (discardArchive) Transfer(string) (transport.Transfer, uint64, bool) {
	return transport.Transfer{}, 0, false
}
func (discardArchive) PutTransfer(*transport.Transfer, uint64)                {}
func (discardArchive) PutAccountTransfer(string, uint64, *transport.Transfer) {}
func (discardArchive) PutAccountTransferRef(string, uint64, string)           {}
func (discardArchive) PutBalance(string, *transport.Balance)                  {}

func memoryMachine(t testing.TB) (*ShardMachine, func()) {
	t.Helper()
	store, err := history.Open(filepath.Join(t.TempDir(), "history"), history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return NewShardMachine(1, store), func() { store.Close() }
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// rss is the process's resident set (Pebble's block cache and memtables
// live outside the Go heap when cgo is on).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// BenchmarkApplyWithHistory is the cost of a same-shard transfer through the
// shard machine with its history store (no Raft): apply, the id looked up in
// the store, three rows written (the transfer, one per account) by the
// store's writer, entries of 1000 transfers. The clock stops once the
// writer has written every entry; apply-ns/transfer is the time spent in
// Apply itself, the shard's serial path.
func BenchmarkApplyWithHistory(b *testing.B) { benchApplyWithHistory(b, 1000) }

// BenchmarkApplyWithHistorySmallEntries is BenchmarkApplyWithHistory with
// entries of 16 transfers, as under load of one transfer per request.
func BenchmarkApplyWithHistorySmallEntries(b *testing.B) { benchApplyWithHistory(b, 16) }

func benchApplyWithHistory(b *testing.B, batch int) {
	m, closeStore := memoryMachine(b)
	defer closeStore()
	const accounts = 10_000
	index := uint64(0)
	apply := func(cmd *shard.Command) {
		raw, err := msgpack.Marshal(cmd)
		if err != nil {
			b.Fatal(err)
		}
		index++
		m.Apply(index, 1_700_000_000_000_000_000+index*1000, [][]byte{raw})
	}
	acc := make([]transport.Account, accounts)
	for i := range acc {
		acc[i] = transport.Account{ID: "acct-" + strconv.Itoa(i), Ledger: 1, Code: 1}
	}
	for i := 0; i < accounts; i += 1000 {
		apply(&shard.Command{Kind: shard.KindCreateAccounts, Accounts: acc[i : i+1000]})
	}
	var cmds [][]byte
	for n := 0; n < b.N; n += batch {
		cmd := shard.Command{Kind: shard.KindCreateTransfers, Transfers: make([]transport.Transfer, batch)}
		for j := range cmd.Transfers {
			k := n + j
			cmd.Transfers[j] = transport.Transfer{ID: "t-" + strconv.Itoa(k), DebitAccountID: acc[k%accounts].ID,
				CreditAccountID: acc[(k*7+1)%accounts].ID, Amount: 1, Ledger: 1, Code: 1}
			if cmd.Transfers[j].DebitAccountID == cmd.Transfers[j].CreditAccountID {
				cmd.Transfers[j].CreditAccountID = acc[(k*7+2)%accounts].ID
			}
		}
		raw, _ := msgpack.Marshal(&cmd)
		cmds = append(cmds, raw)
	}
	if err := m.History().Drain(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for _, raw := range cmds {
		index++
		m.Apply(index, 1_700_000_000_000_000_000+index*1000, [][]byte{raw})
	}
	applied := b.Elapsed() // the serial path's share: Apply's calls
	if err := m.History().Drain(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(len(cmds)*batch), "ns/transfer")
	b.ReportMetric(float64(applied.Nanoseconds())/float64(len(cmds)*batch), "apply-ns/transfer")
}
