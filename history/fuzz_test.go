package history

import (
	"encoding/binary"
	"log/slog"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/ledgerd/ledgerd/transport"
)

// fuzzAccount's rows are where FuzzHistoryRows writes raw values.
const fuzzAccount = "acct"

func openForFuzz(f *testing.F, name string) *Store {
	s, err := Open(filepath.Join(f.TempDir(), name), Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	return s
}

// FuzzHistoryRows reads rows from the two places they come from: a peer's
// history-copy page (Import) and the store's own disk. A row Import accepts
// reads back without error, and Transfer, which panics on a row it cannot
// decode, finds it; the same bytes as a transfer, account or balance row on
// disk make the queries fail or answer, never panic, and a transfer that
// decodes round-trips.
func FuzzHistoryRows(f *testing.F) {
	peer, disk := openForFuzz(f, "peer"), openForFuzz(f, "disk")
	x := &transport.Transfer{ID: "x", DebitAccountID: "a", CreditAccountID: "b", Amount: 5, Ledger: 1, Code: 1,
		Timestamp: 9, State: transport.StatePosted, Metadata: map[string]string{"k": "v"}}
	enc, err := transport.Marshal(x)
	if err != nil {
		f.Fatal(err)
	}
	balance := make([]byte, 32)
	binary.BigEndian.PutUint64(balance[8:], 1<<63)
	f.Add(appendTransferKey(nil, "x"), append(binary.BigEndian.AppendUint64(nil, 9), enc...))
	f.Add(appendAccountKey(nil, prefixAccount, fuzzAccount, 9), append([]byte{rowCopy}, enc...))
	f.Add(appendAccountKey(nil, prefixAccount, fuzzAccount, 9), []byte{rowRef, 'x'})
	f.Add(appendAccountKey(nil, prefixBalance, fuzzAccount, 9), balance)
	f.Add([]byte{prefixMeta, 'd'}, []byte{0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{prefixAccount, 200, 'a'}, []byte{rowRef})
	// Regression in testdata/fuzz/FuzzHistoryRows: Import took a transfer
	// row that does not decode, on which Transfer then panicked.
	f.Fuzz(func(t *testing.T, key, value []byte) {
		if peer.Import([]Row{{Key: key, Value: value}}) == nil {
			readsBack(t, peer, key, value)
		}
		readsWithoutPanic(t, disk, value)
	})
}

// readsBack: a row Import accepted is read as it was written.
func readsBack(t *testing.T, s *Store, key, value []byte) {
	t.Helper()
	switch key[0] {
	case prefixTransfer:
		id := string(key[1:])
		got, at, ok := s.Transfer(id)
		want, wantAt, err := decodeTransfer(value)
		if !ok || err != nil || at != wantAt || !reflect.DeepEqual(got, want) {
			t.Fatalf("imported transfer %q reads %+v at %d (%v), want %+v at %d (%v)", id, got, at, ok, want, wantAt, err)
		}
	case prefixAccount, prefixBalance:
		account := string(key[2 : 2+int(key[1])])
		ts := binary.BigEndian.Uint64(key[len(key)-8:])
		if !transport.ValidID(account) {
			return // no filter can ask for it
		}
		f := &transport.AccountFilter{AccountID: account, TimestampMin: ts, TimestampMax: ts, Limit: 1}
		if key[0] == prefixBalance {
			if rows, err := s.AccountBalances(f); err != nil || len(rows) != 1 || rows[0].Timestamp != ts {
				t.Fatalf("imported balance row of %s at %d: %+v, %v", account, ts, rows, err)
			}
			return
		}
		rows, err := s.AccountTransfers(f, 1<<20)
		if value[0] == rowCopy && (err != nil || len(rows) != 1 || rows[0].Timestamp != ts) {
			t.Fatalf("imported transfer row of %s at %d: %+v, %v", account, ts, rows, err)
		}
	default:
		t.Fatalf("Import took a row of key %q", key)
	}
}

// readsWithoutPanic writes value as the disk might hold it (a transfer
// row, an account's transfer row, a balance row) and reads each back.
func readsWithoutPanic(t *testing.T, s *Store, value []byte) {
	t.Helper()
	b := s.db.NewBatch()
	defer b.Close()
	for _, k := range [][]byte{appendTransferKey(nil, "fz"), appendAccountKey(nil, prefixAccount, fuzzAccount, 7),
		appendAccountKey(nil, prefixBalance, fuzzAccount, 7)} {
		if err := b.Set(k, value, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if tr, _, err := decodeTransfer(value); err == nil {
		enc, err := transport.Marshal(&tr)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := decodeTransferValue(enc); err != nil || !reflect.DeepEqual(back, tr) {
			t.Fatalf("transfer %+v re-encodes to % x, which decodes to %+v (%v)", tr, enc, back, err)
		}
	}
	f := &transport.AccountFilter{AccountID: fuzzAccount, Limit: 10}
	balances, err := s.AccountBalances(f)
	if (err == nil) != (len(value) == 32) {
		t.Fatalf("balance row of %d bytes: %+v, %v", len(value), balances, err)
	}
	if err == nil && (len(balances) != 1 || balances[0].DebitsPosted != binary.BigEndian.Uint64(value[8:])) {
		t.Fatalf("balance row % x reads %+v", value, balances)
	}
	_, _ = s.AccountTransfers(f, 1<<20)
}
