package raftfsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"go.etcd.io/bbolt"
)

func TestSealCoversEveryByteOfTheEntry(t *testing.T) {
	l := &raft.Log{Index: 7, Term: 3, Type: raft.LogCommand, Data: encodeEntry(9, [][]byte{[]byte("command")})}
	l.Extensions = proposalSeal(l.Data)
	if err := sealEntry(l); err != nil || l.Extensions[0] != sealV1 {
		t.Fatalf("seal a proposal: %v, %x", err, l.Extensions)
	}
	if err := verifySeal(l); err != nil {
		t.Fatal(err)
	}
	flip := func(name string, mutate func(c *raft.Log)) {
		c := *l
		c.Data, c.Extensions = bytes.Clone(l.Data), bytes.Clone(l.Extensions)
		mutate(&c)
		if err := verifySeal(&c); err == nil {
			t.Errorf("%s: the seal still holds", name)
		}
	}
	for i := range l.Data {
		flip(fmt.Sprintf("data byte %d", i), func(c *raft.Log) { c.Data[i] ^= 1 })
	}
	for i := range l.Extensions {
		flip(fmt.Sprintf("seal byte %d", i), func(c *raft.Log) { c.Extensions[i] ^= 1 })
	}
	flip("index", func(c *raft.Log) { c.Index ^= 1 << 40 })
	flip("term", func(c *raft.Log) { c.Term++ })
	flip("type", func(c *raft.Log) { c.Type = raft.LogNoop })
	flip("no seal", func(c *raft.Log) { c.Extensions = nil })

	// A proposal whose data changed before it reached the store.
	p := &raft.Log{Index: 8, Data: []byte("abc"), Extensions: proposalSeal([]byte("abd"))}
	if err := sealEntry(p); !errors.Is(err, errSealMismatch) {
		t.Fatalf("a changed proposal was sealed: %v", err)
	}
	// Raft's own entries are sealed from scratch.
	noop := &raft.Log{Index: 9, Term: 3, Type: raft.LogNoop}
	if err := sealEntry(noop); err != nil || verifySeal(noop) != nil {
		t.Fatalf("seal a noop: %v", err)
	}
}

// Every byte of an entry as bbolt stores it is checked (flipped, the entry
// fails to decode or its seal fails), but for the value of AppendedAt,
// Raft's timestamp for metrics, which the seal leaves out.
func TestEveryByteOfAStoredEntryIsChecked(t *testing.T) {
	l := &raft.Log{Index: 7, Term: 3, Type: raft.LogCommand, Data: encodeEntry(9, [][]byte{[]byte("amount-1000")}),
		AppendedAt: time.Unix(1_800_000_000, 5)}
	if err := sealEntry(l); err != nil {
		t.Fatal(err)
	}
	stored := storedEntry(t, l)
	key := bytes.Index(stored, []byte("AppendedAt"))
	unchecked := 0
	for i := range stored {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			b := bytes.Clone(stored)
			b[i] ^= x
			f := &boltFacts{checkedFrom: 1, terms: map[uint64]uint64{}, configs: map[uint64]raft.Configuration{}}
			if f.checkStoredEntry(7, b, nil) != "" {
				continue
			}
			if i < key+len("AppendedAt")+1 || i > key+len("AppendedAt")+16 { // the time's bytes follow its name
				t.Errorf("byte %d of %d flipped by %#x: read as a good entry", i, len(stored), x)
			}
			unchecked++
		}
	}
	t.Logf("%d flips of %d bytes read as good, all in AppendedAt's value", unchecked, len(stored))
}

// The checked log store seals what it stores, refuses an entry that arrives
// damaged, and on reading back an entry damaged on disk returns an error
// naming the group, file and index, records it in the group's directory and
// reports it, never the damaged bytes.
func TestCheckedLogStoreRefusesDamagedEntries(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "raft.db")
	if _, err := checkBolt(path, 3, nil); err != nil {
		t.Fatal(err)
	}
	s, reported := openCheckedStore(t, dir, 1)
	logs := []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand, Data: encodeEntry(1, [][]byte{[]byte("a")})},
		{Index: 2, Term: 1, Type: raft.LogCommand, Data: encodeEntry(2, [][]byte{[]byte("transfer-amount-1000")})},
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	damaged := &raft.Log{Index: 3, Term: 1, Data: []byte("x"), Extensions: sealBytes(sealV1, 42)}
	if err := s.StoreLog(damaged); !errors.Is(err, errSealMismatch) {
		t.Fatalf("a damaged entry from a leader: %v", err)
	}
	if last, _ := s.LastIndex(); last != 2 {
		t.Fatalf("last index %d after refusing entry 3", last)
	}
	s.Close()
	mutateEntry(t, path, 2, func(l *raft.Log) { l.Data[bytes.Index(l.Data, []byte("1000"))] = '9' })
	s, reported = openCheckedStore(t, dir, 1)
	defer s.Close()
	var l raft.Log
	if err := s.GetLog(1, &l); err != nil {
		t.Fatalf("entry 1: %v", err)
	}
	err := s.GetLog(2, &l)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "raft.db: entry 2") || !strings.Contains(err.Error(), "group 3") {
		t.Fatalf("entry 2 damaged on disk: %v", err)
	}
	if len(*reported) != 1 {
		t.Fatalf("damage reported %d times", len(*reported))
	}
	if d, _ := recordedDamage(dir, 3); d == nil || !strings.Contains(d.Error(), "entry 2") {
		t.Fatalf("damage not recorded: %v", d)
	}
}

func openCheckedStore(t *testing.T, dir string, checkedFrom uint64) (*checkedLogStore, *[]error) {
	t.Helper()
	path := filepath.Join(dir, "raft.db")
	bs, err := openBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var reported []error
	return &checkedLogStore{BoltStore: bs, group: 3, dir: dir, file: path, checkedFrom: checkedFrom,
		onDamage: func(err error) { reported = append(reported, err) }}, &reported
}

// mutateEntry rewrites entry index of raft.db as bbolt stores it, changed
// by fn: damage below the checksum's reach (fn's change) or of its reach
// (a seal changed with the entry).
func mutateEntry(t *testing.T, path string, index uint64, fn func(l *raft.Log)) {
	t.Helper()
	mutateBolt(t, path, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketLogs)
		key := binary.BigEndian.AppendUint64(nil, index)
		var l raft.Log
		if err := codec.NewDecoderBytes(b.Get(key), &codec.MsgpackHandle{}).Decode(&l); err != nil {
			return err
		}
		fn(&l)
		var v []byte
		if err := codec.NewEncoderBytes(&v, &codec.MsgpackHandle{}).Encode(&l); err != nil {
			return err
		}
		return b.Put(key, v)
	})
}

func mutateBolt(t *testing.T, path string, fn func(tx *bbolt.Tx) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// groupFixture is a shard group's directory: accounts a and b, transfers
// t0..t49 in a snapshot, t50..t79 after it in the log only.
type groupFixture struct {
	dir           string
	hash, applied uint64
}

func makeGroupFixture(t *testing.T) groupFixture {
	t.Helper()
	dir := t.TempDir()
	tg := openTestGroup(t, dir)
	createAccounts(t, tg.g, "a", "b")
	for i := range 80 {
		if i == 50 {
			if err := tg.g.Raft().Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
		}
		if c := transfer(t, tg.g, fmt.Sprintf("t%d", i), "a", "b", 1); c != transport.CodeOK {
			t.Fatalf("transfer %d: %v", i, c)
		}
	}
	hash, applied := tg.hash()
	tg.close(t)
	return groupFixture{dir: dir, hash: hash, applied: applied}
}

// copy returns a copy of the fixture's directory.
func (f groupFixture) copy(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "g")
	if err := os.CopyFS(dir, os.DirFS(f.dir)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// entryHolding finds the entry whose data holds s.
func entryHolding(t *testing.T, path, s string) uint64 {
	t.Helper()
	var found uint64
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketLogs).ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte(s)) {
				found = binary.BigEndian.Uint64(k)
			}
			return nil
		})
	})
	if found == 0 {
		t.Fatalf("no entry holds %q", s)
	}
	return found
}

// A damaged group refuses to open, naming the file and what is damaged;
// salvaged, it starts from the last good state; then it opens unsalvaged.
func TestDamagedGroupRefusesToOpenAndSalvageStartsFromTheLastGoodState(t *testing.T) {
	fx := makeGroupFixture(t)
	type want struct {
		says string // in the error
		lost bool   // salvage loses t60..t79
		// lastTx: salvage may lose bbolt's last transaction (entry 84):
		// the meta page that fails may be the newer one.
		lastTx bool
	}
	flipStateByte := func(dir string) {
		states, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "state.bin"))
		flipFileByte(t, states[0], 20)
	}
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want
	}{
		{"a transfer's amount in the log", func(t *testing.T, dir string) {
			db := filepath.Join(dir, "raft.db")
			mutateEntry(t, db, entryHolding(t, db, "t60"), func(l *raft.Log) { l.Data[len(l.Data)-1] ^= 1 })
		}, want{"checksum mismatch", true, false}},
		{"an entry's seal format byte", func(t *testing.T, dir string) {
			db := filepath.Join(dir, "raft.db")
			mutateEntry(t, db, entryHolding(t, db, "t60"), func(l *raft.Log) { l.Extensions[0] = 0x01 })
		}, want{"unknown entry format", true, false}},
		{"an entry's seal stripped", func(t *testing.T, dir string) {
			db := filepath.Join(dir, "raft.db")
			mutateEntry(t, db, entryHolding(t, db, "t60"), func(l *raft.Log) { l.Extensions = nil })
		}, want{"no checksum", true, false}},
		{"an entry moved to another key", func(t *testing.T, dir string) {
			db := filepath.Join(dir, "raft.db")
			index := entryHolding(t, db, "t60")
			mutateBolt(t, db, func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketLogs)
				v := bytes.Clone(b.Get(binary.BigEndian.AppendUint64(nil, index)))
				if err := b.Delete(binary.BigEndian.AppendUint64(nil, index)); err != nil {
					return err
				}
				return b.Put(binary.BigEndian.AppendUint64(nil, index|1<<40), v)
			})
		}, want{"stored under index", true, false}},
		{"bbolt's first meta page", func(t *testing.T, dir string) {
			flipFileByte(t, filepath.Join(dir, "raft.db"), 16+40)
		}, want{"meta page 0 fails its checksum", false, true}},
		{"bbolt's second meta page", func(t *testing.T, dir string) {
			flipFileByte(t, filepath.Join(dir, "raft.db"), 4096+16+64)
		}, want{"meta page 1", false, true}},
		{"Raft's current term", func(t *testing.T, dir string) {
			mutateBolt(t, filepath.Join(dir, "raft.db"), func(tx *bbolt.Tx) error {
				v := bytes.Clone(tx.Bucket(bucketConf).Get(keyTerm))
				v[7] ^= 0x10
				return tx.Bucket(bucketConf).Put(keyTerm, v)
			})
		}, want{"CurrentTerm", false, false}},
		{"the format marker's name", func(t *testing.T, dir string) {
			mutateBolt(t, filepath.Join(dir, "raft.db"), func(tx *bbolt.Tx) error {
				b := tx.Bucket(bucketConf)
				v := bytes.Clone(b.Get(keyFormat))
				if err := b.Delete(keyFormat); err != nil {
					return err
				}
				return b.Put([]byte("ledgerd-storage-formap"), v)
			})
		}, want{"format marker is missing", false, false}},
		{"a snapshot's state", func(t *testing.T, dir string) { flipStateByte(dir) }, want{"state.bin: CRC mismatch", false, false}},
		{"a snapshot's index in meta.json", func(t *testing.T, dir string) {
			metas, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "meta.json"))
			b, _ := os.ReadFile(metas[0])
			var m fileSnapshotMeta
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			b = bytes.Replace(b, fmt.Appendf(nil, `"Index":%d`, m.Index), fmt.Appendf(nil, `"Index":%d`, m.Index+9), 1)
			if err := os.WriteFile(metas[0], b, 0o644); err != nil {
				t.Fatal(err)
			}
		}, want{"do not match the directory", false, false}},
		{"damage found while running", func(t *testing.T, dir string) {
			if err := recordDamage(dir, errors.New("entry 77: checksum mismatch")); err != nil {
				t.Fatal(err)
			}
		}, want{"found while running", false, false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // each waits out elections, mostly idle
			dir := fx.copy(t)
			c.damage(t, dir)
			tg, err := tryOpenTestGroup(t, dir, false)
			if err == nil {
				tg.close(t)
				t.Fatal("a damaged group opened")
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("refused with %v, want %q naming the file", err, c.says)
			}
			tg, err = tryOpenTestGroup(t, dir, true)
			if err != nil {
				t.Fatalf("salvage: %v", err)
			}
			h, applied := tg.hash()
			t59, t60 := transfer(t, tg.g, "t59", "a", "b", 1), transfer(t, tg.g, "t60", "a", "b", 1)
			tg.close(t)
			switch {
			case c.lastTx && (applied+1 < fx.applied || t59 != transport.CodeExists):
				t.Fatalf("salvaged state at %d, want %d or the one before; t59 %v", applied, fx.applied, t59)
			case c.lastTx:
			case !c.lost && (h != fx.hash || applied < fx.applied):
				t.Fatalf("salvaged state %016x at %d, want %016x at %d", h, applied, fx.hash, fx.applied)
			case c.lost && (t59 != transport.CodeExists || t60 != transport.CodeOK):
				t.Fatalf("salvaged from before t60: t59 %v, t60 %v", t59, t60)
			}
			tg = openTestGroup(t, dir) // clean now
			tg.close(t)
		})
	}
}

func flipFileByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x08
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A command that would not decode is refused before it is proposed (apply
// would stop the group on it), and apply stops on one rather than skip it.
func TestUndecodableCommandIsRefusedBeforeTheLogAndStopsApply(t *testing.T) {
	tg := openTestGroup(t, t.TempDir())
	defer tg.close(t)
	before := tg.g.Raft().LastIndex()
	bad := []byte{0x81, 0xa1, 'k', 0xa3, 'x', 'y', 'z'} // {"k": "xyz"}: the kind is a number
	res, err := tg.g.ProposeWait(t.Context(), bad)
	if err != nil || !errors.Is(res.(error), ErrUndecodable) {
		t.Fatalf("undecodable command: %v, %v", res, err)
	}
	if after := tg.g.Raft().LastIndex(); after != before {
		t.Fatalf("an undecodable command reached the log: %d -> %d", before, after)
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "shard 1 log index 99") {
			t.Fatalf("apply of an undecodable command: %v", r)
		}
	}()
	tg.m.Apply(99, 1, [][]byte{bad})
	t.Fatal("apply skipped an undecodable command")
}

func TestMetaApplyStopsOnAnUndecodableCommand(t *testing.T) {
	var m MetaMachine
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "meta group log index 4") {
			t.Fatalf("apply of an undecodable command: %v", r)
		}
	}()
	m.Apply(4, 0, [][]byte{{0xc1}})
	t.Fatal("apply skipped an undecodable command")
}

// A data directory written by the release before checksums (testdata/v1,
// made by `go run ./cmd/ledgerd` at 7f616d2: 2 shards, 6 accounts, 19
// transfers, a snapshot of each shard and entries after it) opens, serves
// what that release acknowledged, and is marked format 2: its old entries
// read unchecked, every new one sealed and required to be.
func TestDataOfTheReleaseWithoutChecksumsOpens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.CopyFS(dir, os.DirFS("testdata/v1/data")); err != nil {
		t.Fatal(err)
	}
	var wantAccounts []transport.Account
	readJSON(t, "testdata/v1/accounts.json", &wantAccounts)
	var wantTransfers []map[string]any
	readJSON(t, "testdata/v1/transfers.json", &wantTransfers)
	if len(wantAccounts) != 6 || len(wantTransfers) != 19 {
		t.Fatalf("fixture of %d accounts, %d transfers", len(wantAccounts), len(wantTransfers))
	}
	var accounts []transport.Account
	var transfers []transport.Transfer
	for id := uint32(1); id <= 2; id++ {
		gdir := filepath.Join(dir, fmt.Sprintf("shard-%d", id))
		tg, err := tryOpenShardGroup(t, gdir, id, "node-1", false)
		if err != nil {
			t.Fatalf("shard %d: %v", id, err)
		}
		tg.m.Read(func(st *shard.State, _ uint64) {
			for _, a := range wantAccounts {
				accounts = append(accounts, st.LookupAccounts([]string{a.ID})...)
			}
			for _, tr := range wantTransfers {
				transfers = append(transfers, st.LookupTransfers([]string{tr["id"].(string)})...)
			}
		})
		last := tg.g.Raft().LastIndex()
		tg.close(t)
		f, err := checkBolt(filepath.Join(gdir, "raft.db"), id, nil)
		if err != nil || len(f.damage) > 0 {
			t.Fatalf("shard %d reopened: %v %v", id, err, f.damage)
		}
		if f.checkedFrom == 0 || f.checkedFrom > last+1 || f.lastUnsealed >= f.checkedFrom {
			t.Fatalf("shard %d: seals required from %d, last unsealed entry %d, last entry %d", id, f.checkedFrom, f.lastUnsealed, last)
		}
		// Past the boundary, an entry without its seal is damage.
		mutateEntry(t, filepath.Join(gdir, "raft.db"), last, func(l *raft.Log) { l.Extensions = nil })
		if f, _ := checkBolt(filepath.Join(gdir, "raft.db"), id, nil); len(f.damage) == 0 {
			t.Fatalf("shard %d: entry %d past the boundary read without its seal", id, last)
		}
	}
	slices.SortFunc(accounts, func(a, b transport.Account) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(wantAccounts, func(a, b transport.Account) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(transfers, func(a, b transport.Transfer) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(wantTransfers, func(a, b map[string]any) int { return strings.Compare(a["id"].(string), b["id"].(string)) })
	if got, want := jsonOf(t, accounts), jsonOf(t, wantAccounts); got != want {
		t.Fatalf("accounts:\n%s\nwant\n%s", got, want)
	}
	t.Logf("%d accounts, %d transfers as acknowledged", len(accounts), len(transfers))
	if got, want := jsonOf(t, transfers), jsonOf(t, wantTransfers); got != want {
		t.Fatalf("transfers:\n%s\nwant\n%s", got, want)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // timestamps do not fit a float64
	if err := dec.Decode(v); err != nil {
		t.Fatal(err)
	}
}

// jsonOf is v as JSON with sorted keys (decoded back to maps first).
func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		t.Fatal(err)
	}
	b, _ = json.MarshalIndent(generic, "", " ")
	return string(b)
}

// A format this release does not know is refused, and not as damage: a
// node with peers must not drop a newer release's data to repair it.
func TestNewerStorageFormatIsRefusedNotRepaired(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "raft.db")
	if _, err := checkBolt(path, 1, nil); err != nil {
		t.Fatal(err)
	}
	mutateBolt(t, path, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketConf).Put(keyFormat, encodeStable(keyFormat, binary.BigEndian.AppendUint64([]byte{storeFormat + 1}, 1)))
	})
	_, err := checkBolt(path, 1, nil)
	if err == nil || errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "newer ledgerd") {
		t.Fatalf("a newer format: %v", err)
	}
}

// Damage a read finds while the group runs (a log entry sent to a peer, a
// history row) stops the group on this node: it neither serves nor votes.
func TestDamageFoundWhileRunningStopsTheGroup(t *testing.T) {
	tg := openTestGroup(t, t.TempDir())
	defer tg.close(t)
	found := &DamageError{Group: 1, File: "raft.db", Index: 3, What: "checksum mismatch"}
	tg.g.found(found)
	deadline := time.Now().Add(10 * time.Second) // hang guard
	for tg.g.Raft().State() != raft.Shutdown {
		if time.Now().After(deadline) {
			t.Fatalf("group still %v after damage was found", tg.g.Raft().State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tg.g.Damaged(); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Damaged() = %v", err)
	}
	select {
	case <-tg.g.Halted(): // what the node waits for to repair the group
	case <-time.After(10 * time.Second):
		t.Fatal("Halted not closed once the group stopped on damage")
	}
	if _, err := tg.g.ProposeWait(t.Context(), encode(t, &shard.Command{Kind: shard.KindExpire})); err == nil {
		t.Fatal("a stopped group took a proposal")
	}
}

// bbolt panics, in a goroutine no recover reaches, when it opens a file
// with a damaged tree page: every page of a raft.db zeroed, or its header
// damaged, in turn is damage reported by checkBolt, or harmless (a free
// page), never a crash.
func TestEveryPageOfRaftDBDamagedIsAnErrorNotAPanic(t *testing.T) {
	clean, err := os.ReadFile("testdata/v1/data/shard-1/raft.db")
	if err != nil {
		t.Fatal(err)
	}
	const page = 4096
	outcomes := map[string]int{}
	for id := 0; id < len(clean)/page; id++ {
		for _, damage := range []string{"zeroed", "header"} {
			b := bytes.Clone(clean)
			if damage == "zeroed" {
				clear(b[id*page : (id+1)*page])
			} else {
				b[id*page+1] ^= 0x04 // the page id
			}
			path := filepath.Join(t.TempDir(), "raft.db")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := checkBolt(path, 1, nil)
			switch {
			case err != nil:
				t.Fatalf("page %d %s: %v", id, damage, err)
			case len(f.damage) > 0:
				outcomes["damage"]++
			default:
				outcomes["harmless"]++
			}
		}
	}
	t.Logf("%d pages: %v", len(clean)/page, outcomes)
	if outcomes["damage"] == 0 {
		t.Fatal("no damage found")
	}
}
