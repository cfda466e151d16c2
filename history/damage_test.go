package history

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// A store with one sstable of rows: every byte of that file flipped in turn
// (a sample of offsets), the store either refuses to open, or every read
// returns exactly the rows written, or fails with ErrDamaged (recorded: the
// next Open refuses until salvaged). Never a wrong row.
func TestADamagedSSTableIsAnErrorNeverARow(t *testing.T) {
	clean := filepath.Join(t.TempDir(), "clean")
	s := open(t, clean)
	const rows = 300
	s.Begin()
	for i := range rows {
		ts := uint64(i + 1)
		s.PutTransfer(tr(fmt.Sprint("t", i), ts), ts)
		s.PutAccountTransferRef("a", ts, fmt.Sprint("t", i))
	}
	commit(t, s)
	if err := s.Sync(9); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ssts, _ := filepath.Glob(filepath.Join(clean, "*.sst"))
	if len(ssts) != 1 {
		t.Fatalf("%d sstables, want 1", len(ssts))
	}
	size := fileSize(t, ssts[0])
	outcomes := map[string]int{}
	const samples = 48
	for k := range samples {
		off := int64(k) * size / samples
		outcomes[flipAndRead(t, clean, filepath.Base(ssts[0]), off, rows)]++
	}
	t.Logf("%d flips in a %d-byte sstable: %v", samples, size, outcomes)
	if outcomes["damage reported"] == 0 {
		t.Fatal("no flip was reported as damage")
	}
}

// flipAndRead copies the store, flips the byte at off of file, and reads
// every row back. It fails the test on a wrong row.
func flipAndRead(t *testing.T, clean, file string, off int64, rows int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "h")
	copyDir(t, clean, dir)
	flipByte(t, filepath.Join(dir, file), off)
	s, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return "refused to open"
	}
	told := make(chan error, 1)
	s.OnDamage(func(err error) { told <- err })
	got, err := s.AccountTransfers(&transport.AccountFilter{AccountID: "a", Limit: uint32(rows + 1)}, 1<<30)
	s.Close()
	if errors.Is(err, ErrDamaged) {
		if e := <-told; !errors.Is(e, ErrDamaged) {
			t.Fatalf("flip at %d: OnDamage told %v", off, e)
		}
	}
	if err == nil {
		for i, x := range got {
			if want := tr(fmt.Sprint("t", i), uint64(i+1)); !reflect.DeepEqual(x, *want) {
				t.Fatalf("flip at %d: row %d is %+v, want %+v", off, i, x, *want)
			}
		}
		if len(got) == rows {
			return "every row exact"
		}
		t.Fatalf("flip at %d: %d rows read, %d written", off, len(got), rows)
	}
	if !errors.Is(err, ErrDamaged) {
		return "read error: " + err.Error()
	}
	if _, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler)}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("flip at %d: reopened after damage was found: %v", off, err)
	}
	s2, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler), Salvage: true})
	if err != nil {
		t.Fatalf("flip at %d: salvage: %v", off, err)
	}
	s2.Close()
	return "damage reported"
}

// A transfer read by id (shard.Archive, which has no error to return)
// panics on damage, naming it, rather than answer "not found".
func TestADamagedTransferLookupPanicsNamingTheDamage(t *testing.T) {
	clean := filepath.Join(t.TempDir(), "clean")
	s := open(t, clean)
	s.Begin()
	s.PutTransfer(tr("x", 5), 5)
	commit(t, s)
	if err := s.Sync(1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	ssts, _ := filepath.Glob(filepath.Join(clean, "*.sst"))
	flipByte(t, ssts[0], 3) // inside the first (only) data block
	s = open(t, clean)
	defer s.Close()
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(fmt.Sprint(r), ErrDamaged.Error()) {
			t.Fatalf("lookup of a damaged row: panic %v", r)
		}
	}()
	got, _, ok := s.Transfer("x")
	t.Fatalf("a damaged row was read: %+v %v", got, ok)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}
