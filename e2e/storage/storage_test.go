// Package storage holds the storage-fault test: a data directory written by
// a real ledgerd process and killed with SIGKILL, copied and damaged (bytes
// flipped, a page zeroed) in raft.db, a snapshot or a history file, and the
// real binary restarted on the copy. It must refuse to start, naming the
// damage, or serve every acknowledged account and transfer exactly; a read
// that meets damage the start did not check (the history store's blocks) may
// fail, never answer wrong, and then the node refuses to start.
//
// The three-node variants check that a damaged replica repairs from its
// peers and then answers exactly: at its restart, and while it runs,
// without a restart (live_test.go, which also checks that a single node
// that finds damage while running exits 1, naming it).
//
//	go test ./e2e/storage                                                  # three seeds
//	go test ./e2e/storage -run TestDamagedData -v -timeout 0 -storage.seeds=500
//	go test ./e2e/storage -run 'TestDamagedReplica|TestDamageFound' -v    # three nodes, live
package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/testnet"
	"github.com/ledgerd/ledgerd/transport"
	"go.etcd.io/bbolt"
)

var (
	seedsFlag   = flag.Int("storage.seeds", 3, "damaged copies to try, one ledgerd start each")
	clusterFlag = flag.Bool("storage.cluster", true, "run the three-node repair test (15 to 50 s); -storage.cluster=false skips it")
	seedFlag    = flag.Uint64("storage.seed", 0, "the first seed (0: from the clock)")
)

// snapshotOften makes every group snapshot each 16 entries and keep 4
// behind: the copy holds snapshots, a compacted log and flushed sstables.
var snapshotOften = []string{"--snapshot-threshold", "16", "--snapshot-interval", "100ms", "--snapshot-trailing-logs", "4"}

const (
	ledgerID  = 1
	wallets   = 12
	batches   = 30
	batchSize = 8
	// Hang guards: a request, and a batch retried until it is answered.
	reqGuard    = 30 * time.Second
	createGuard = 2 * time.Minute
)

func TestDamagedDataIsRefusedOrServedExactly(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped in -short mode")
	}
	bin := testnet.BuildLedgerd(t, false)
	template := filepath.Join(t.TempDir(), "data")
	ids := writeData(t, bin, template)
	want := baseline(t, bin, template, ids)

	first := *seedFlag
	if first == 0 {
		first = uint64(time.Now().UnixNano())
	}
	t.Logf("seeds %d.. (rerun one with -storage.seed S -storage.seeds 1)", first)
	kinds := fileKinds(t, template)
	order := kindOrder(kinds)
	outcomes := map[string]map[string]int{} // file kind -> outcome -> count
	for i := range *seedsFlag {
		seed := first + uint64(i)
		kind := order[i%len(order)]
		outcome := trySeed(t, bin, template, seed, kinds[kind], ids, want)
		if outcomes[kind] == nil {
			outcomes[kind] = map[string]int{}
		}
		outcomes[kind][outcome]++
	}
	for _, kind := range slices.Sorted(maps.Keys(outcomes)) {
		t.Logf("%-20s %v", kind, outcomes[kind])
	}
}

// trySeed damages a copy of the template and restarts ledgerd on it.
func trySeed(t *testing.T, bin, template string, seed uint64, files []string, ids *accountsAndTransfers, want string) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.CopyFS(dir, os.DirFS(template)); err != nil {
		t.Fatal(err)
	}
	file := files[rng.IntN(len(files))]
	what := damageFile(t, rng, filepath.Join(dir, file))
	desc := fmt.Sprintf("seed %d: %s: %s", seed, file, what)
	c, p, ready := startLedgerd(t, bin, dir, true)
	if !ready {
		if line := damageLine(p); line != "" {
			t.Logf("%s: refused: %s", desc, shorten(line))
			return "refused"
		}
		t.Errorf("%s: ledgerd exited without naming the damage (%v):\n%s", desc, p.WaitErr, p.Log.Tail(30))
		return "refused without naming it"
	}
	got, err := readUntilDamage(t, c, ids)
	if err == nil {
		c.End(0, syscall.SIGTERM) // a damaged copy need not exit cleanly
		if got != want {
			t.Errorf("%s: ledgerd served wrong answers:\n%s\nwant\n%s", desc, got, want)
			return "WRONG ANSWERS"
		}
		t.Logf("%s: served exactly", desc)
		return "served exactly"
	}
	c.End(0, syscall.SIGKILL) // unless it exited on finding the damage
	if damageLine(p) == "" {
		t.Errorf("%s: a read failed (%v) and ledgerd did not name damage:\n%s", desc, err, p.Log.Tail(30))
		return "read failed without naming damage"
	}
	if _, again, ready := startLedgerd(t, bin, dir, true); ready || damageLine(again) == "" {
		t.Errorf("%s: after a read found damage, ledgerd started again (ready %v):\n%s", desc, ready, again.Log.Tail(30))
	}
	t.Logf("%s: a read found it: %s", desc, shorten(damageLine(p)))
	return "a read found it, then refused"
}

// shorten keeps a log line readable.
func shorten(s string) string {
	const max = 400
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// readUntilDamage reads as read does, giving up as soon as the node logs
// damage: its group stops, and the client would retry until its deadline.
func readUntilDamage(t *testing.T, c *testnet.Cluster, ids *accountsAndTransfers) (string, error) {
	t.Helper()
	p := c.Nodes[0].Cur
	ctx, cancel := context.WithTimeout(context.Background(), reqGuard)
	defer cancel()
	go func() {
		for ctx.Err() == nil && damageLine(p) == "" {
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
	}()
	return read(ctx, t, c, ids)
}

// damageLine is the first line of p's output that names damaged storage.
func damageLine(p *testnet.Process) string {
	for _, s := range []string{"damaged storage", "storage damaged"} {
		if l := p.Log.First(s); l != "" {
			return l
		}
	}
	return ""
}

// damageFile flips one to three bytes of the file, or zeroes a page of it
// (bbolt's page size, at a page boundary; 32 bytes of a small file), and
// says what it did. Flips of raft.db go to its meta pages a third of the
// time: most of a bbolt file is free pages, where a flip changes nothing.
func damageFile(t *testing.T, rng *rand.Rand, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const page = 4096
	var what string
	if filepath.Base(path) == "raft.db" && rng.IntN(3) == 0 {
		bucket := "logs"
		if rng.IntN(4) == 0 {
			bucket = "conf"
		}
		return flipValueIn(t, rng, path, bucket, "")
	}
	switch span := len(b); {
	case rng.IntN(4) == 0 && span >= page:
		off := rng.IntN(span/page) * page
		clear(b[off : off+page])
		what = fmt.Sprintf("zeroed the page at %d", off)
	case rng.IntN(4) == 0:
		off := rng.IntN(max(span-32, 1))
		clear(b[off:min(off+32, span)])
		what = fmt.Sprintf("zeroed 32 bytes at %d", off)
	default:
		if filepath.Base(path) == "raft.db" && rng.IntN(3) == 0 {
			span = 2 * page
		}
		var offs []int
		for range 1 + rng.IntN(3) {
			off := rng.IntN(span)
			b[off] ^= byte(1 + rng.IntN(255))
			offs = append(offs, off)
		}
		what = fmt.Sprintf("flipped bytes at %v", offs)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return what
}

// flipValueIn flips a byte of a value bbolt holds in raft.db: of key, or of
// a key drawn at random from bucket ("logs": an entry; "conf": Raft's term
// and vote). Random offsets in the file mostly land in free pages.
func flipValueIn(t *testing.T, rng *rand.Rand, path, bucket, key string) string {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var keys, values [][]byte
	_ = db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucket)).ForEach(func(k, v []byte) error {
			if key == "" || string(k) == key {
				keys, values = append(keys, bytes.Clone(k)), append(values, bytes.Clone(v))
			}
			return nil
		})
	})
	db.Close()
	if len(values) == 0 {
		t.Fatalf("no %q in %s/%s", key, path, bucket)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := rng.IntN(len(values))
	// Copy-on-write leaves older copies of a page in free pages: the same
	// byte is flipped in every copy of the value, the live one among them.
	var ats []int
	for at := 0; ; at++ {
		n := bytes.Index(file[at:], values[i])
		if n < 0 {
			break
		}
		at += n
		ats = append(ats, at)
	}
	if len(ats) == 0 {
		t.Fatalf("value of %s/%x not found in the file", bucket, keys[i])
	}
	k, x := rng.IntN(len(values[i])), byte(1+rng.IntN(255))
	for _, at := range ats {
		file[at+k] ^= x
	}
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("flipped byte %d of the value of %s/%x (%d bytes; %d copies in the file)", k, bucket, keys[i], len(values[i]), len(ats))
}

// flipAt flips the byte at off of the file.
func flipAt(t *testing.T, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x20
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }

// fileKinds groups the template's non-empty files by what they are.
func fileKinds(t *testing.T, dir string) map[string][]string {
	t.Helper()
	kinds := map[string][]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if fi, err := d.Info(); err != nil || fi.Size() == 0 {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		kinds[fileKind(rel)] = append(kinds[fileKind(rel)], rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return kinds
}

// kindOrder lists the kinds found, those that matter most first: the
// default few seeds damage raft.db, a history sstable and a snapshot.
func kindOrder(kinds map[string][]string) []string {
	var order []string
	for _, k := range []string{"raft.db", "history sstable", "snapshot state.bin", "snapshot meta.json", "history manifest", "history options"} {
		if _, ok := kinds[k]; ok {
			order = append(order, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		if !slices.Contains(order, k) {
			order = append(order, k)
		}
	}
	return order
}

func fileKind(rel string) string {
	base := filepath.Base(rel)
	switch {
	case base == "raft.db":
		return "raft.db"
	case strings.Contains(rel, "snapshots"):
		return "snapshot " + base
	case strings.HasSuffix(base, ".sst"):
		return "history sstable"
	case strings.HasPrefix(base, "MANIFEST"):
		return "history manifest"
	case strings.HasPrefix(base, "OPTIONS"):
		return "history options"
	case strings.HasSuffix(base, ".log"):
		return "history wal"
	}
	return "other " + base
}

// accountsAndTransfers is everything acknowledged, as sent.
type accountsAndTransfers struct {
	accounts  []transport.Account
	transfers []transport.Transfer
}

// writeData runs ledgerd on dir, creates accounts and transfers (every one
// acknowledged), and kills it with SIGKILL.
func writeData(t *testing.T, bin, dir string) *accountsAndTransfers {
	t.Helper()
	c, p, ready := startLedgerd(t, bin, dir, false)
	if !ready {
		t.Fatalf("ledgerd exited: %v\n%s", p.WaitErr, p.Log.Tail(30))
	}
	nc, cl := c.ConnectTo(0)
	defer nc.Close()
	ids := &accountsAndTransfers{accounts: walletAccounts()}
	mustCreate(t, func(ctx context.Context) ([]transport.Result, error) { return cl.CreateAccounts(ctx, ids.accounts) }, len(ids.accounts))
	rng := rand.New(rand.NewPCG(1, 2))
	for b := range batches {
		batch := transferBatch(rng, ids.accounts, "t", b)
		mustCreate(t, func(ctx context.Context) ([]transport.Result, error) { return cl.CreateTransfers(ctx, batch) }, len(batch))
		ids.transfers = append(ids.transfers, batch...)
		if b == batches-3 {
			time.Sleep(time.Second) // snapshots of everything so far, then the last batches after them
		}
	}
	c.Kill(0)
	return ids
}

func mustCreate(t *testing.T, create func(ctx context.Context) ([]transport.Result, error), n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), reqGuard)
	defer cancel()
	res, err := create(ctx)
	if err != nil || len(res) != n {
		t.Fatalf("create: %d results of %d, %v", len(res), n, err)
	}
	for _, r := range res {
		if r.Code != transport.CodeOK {
			t.Fatalf("create event %d: %v", r.Index, r.Code)
		}
	}
}

// baseline restarts ledgerd on a copy of the undamaged template, checks that
// it serves what was acknowledged, and returns its answers: what every
// damaged copy that starts must answer too.
func baseline(t *testing.T, bin, template string, ids *accountsAndTransfers) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.CopyFS(dir, os.DirFS(template)); err != nil {
		t.Fatal(err)
	}
	c, p, ready := startLedgerd(t, bin, dir, false)
	if !ready {
		t.Fatalf("the undamaged copy did not start: %v\n%s", p.WaitErr, p.Log.Tail(30))
	}
	ctx, cancel := context.WithTimeout(context.Background(), reqGuard)
	defer cancel()
	got, err := read(ctx, t, c, ids)
	if err != nil {
		t.Fatalf("read the undamaged copy: %v", err)
	}
	c.Stop(0)
	var a answers
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatal(err)
	}
	checkAcknowledged(t, &a, ids)
	checkRows(t, &a, ids)
	return got
}

// answers is everything a client can read of the ledger.
type answers struct {
	Accounts  []transport.Account             `json:"accounts"`
	Transfers []transport.Transfer            `json:"transfers"`
	Rows      map[string][]transport.Transfer `json:"rows"`     // each account's history rows
	Balances  map[string][]transport.Balance  `json:"balances"` // each history account's balances
}

// read asks the one node of c for every account, transfer and history row,
// as JSON.
func read(ctx context.Context, t *testing.T, c *testnet.Cluster, ids *accountsAndTransfers) (string, error) {
	t.Helper()
	nc, cl := c.ConnectTo(0)
	defer nc.Close()
	return readWith(ctx, cl, ids)
}

// readWith asks c for every account, transfer and history row, as JSON.
func readWith(ctx context.Context, c *client.Client, ids *accountsAndTransfers) (string, error) {
	a := answers{Rows: map[string][]transport.Transfer{}, Balances: map[string][]transport.Balance{}}
	var err error
	var accountIDs, transferIDs []string
	for _, x := range ids.accounts {
		accountIDs = append(accountIDs, x.ID)
	}
	for _, x := range ids.transfers {
		transferIDs = append(transferIDs, x.ID)
	}
	if a.Accounts, err = c.LookupAccounts(ctx, accountIDs); err != nil {
		return "", fmt.Errorf("lookup accounts: %w", err)
	}
	if a.Transfers, err = c.LookupTransfers(ctx, transferIDs); err != nil {
		return "", fmt.Errorf("lookup transfers: %w", err)
	}
	for _, x := range ids.accounts {
		if err := readHistory(ctx, c, &a, x); err != nil {
			return "", err
		}
	}
	b, err := json.MarshalIndent(&a, "", " ")
	return string(b), err
}

func readHistory(ctx context.Context, c *client.Client, a *answers, x transport.Account) error {
	f := transport.AccountFilter{AccountID: x.ID, Limit: transport.HistoryLimitMax}
	rows, err := c.AccountTransfers(ctx, f)
	if err != nil {
		return fmt.Errorf("transfers of %s: %w", x.ID, err)
	}
	a.Rows[x.ID] = rows
	if x.Flags&transport.AccountHistory != 0 {
		if a.Balances[x.ID], err = c.AccountBalances(ctx, f); err != nil {
			return fmt.Errorf("balances of %s: %w", x.ID, err)
		}
	}
	return nil
}

// checkAcknowledged compares answers with what was acknowledged: every
// transfer as sent, every balance the sum of its transfers.
func checkAcknowledged(t *testing.T, a *answers, ids *accountsAndTransfers) {
	t.Helper()
	if len(a.Transfers) != len(ids.transfers) || len(a.Accounts) != len(ids.accounts) {
		t.Fatalf("%d accounts and %d transfers found, %d and %d acknowledged", len(a.Accounts), len(a.Transfers), len(ids.accounts), len(ids.transfers))
	}
	debits, credits := map[string]uint64{}, map[string]uint64{}
	for i, sent := range ids.transfers {
		got := a.Transfers[i]
		if got.ID != sent.ID || got.DebitAccountID != sent.DebitAccountID || got.CreditAccountID != sent.CreditAccountID ||
			got.Amount != sent.Amount || got.State != transport.StatePosted {
			t.Fatalf("transfer %s: %+v, sent %+v", sent.ID, got, sent)
		}
		debits[sent.DebitAccountID] += sent.Amount
		credits[sent.CreditAccountID] += sent.Amount
	}
	for _, got := range a.Accounts {
		if got.DebitsPosted != debits[got.ID] || got.CreditsPosted != credits[got.ID] {
			t.Fatalf("account %s: posted %d/%d, acknowledged transfers make %d/%d", got.ID, got.DebitsPosted, got.CreditsPosted, debits[got.ID], credits[got.ID])
		}
	}
}
