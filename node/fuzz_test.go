package node

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/internal/fuzzcheck"
	"github.com/ledgerd/ledgerd/transport"
)

// FuzzDecodeHistoryPage decodes the two messages of a history copy, as a
// replica serving it (historyPageRequest) and one copying it (historyPage)
// do. Each that decodes is one map and round-trips; a page that check
// passes is one fetchHistory can go on from.
func FuzzDecodeHistoryPage(f *testing.F) {
	for _, v := range []any{
		&historyPageRequest{After: []byte("a\x04acct\x00\x00\x00\x00\x00\x00\x00\x09"), Applied: 42},
		&historyPageRequest{},
		&historyPage{Rows: []history.Row{{Key: []byte("tx"), Value: []byte{0, 0, 0, 0, 0, 0, 0, 9, 0x80}}}, More: true},
		&historyPage{Retry: "applied 3, below the snapshot's 9"},
	} {
		b, err := transport.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Regression in testdata/fuzz/FuzzDecodeHistoryPage: a page with more
	// to come and no row, on which fetchHistory indexed past the end.
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzcheck.Stable[historyPageRequest](t, data)
		page := fuzzcheck.Stable[historyPage](t, data)
		if page == nil || page.check() != nil {
			return
		}
		if page.More && len(page.Rows) == 0 { // fetchHistory asks next for the rows after the last
			t.Fatalf("check passed a page with more to come after no row: %+v", page)
		}
	})
}

// A page of small rows holds more than a message may list (a balance row
// is about 50 bytes: 1 MiB of them is 20,000); every page a replica serves
// must still decode where it is copied, and the pages together hold every
// row.
func TestHistoryPagesOfSmallRowsDecode(t *testing.T) {
	src, err := history.Open(t.TempDir(), history.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const rowsWant = 3 * transport.BatchEventsMax
	src.Begin()
	for i := range rowsWant {
		src.PutBalance(fmt.Sprintf("a%d", i%7), &transport.Balance{Timestamp: uint64(i + 1), DebitsPosted: uint64(i)})
	}
	if err := src.Commit(); err != nil {
		t.Fatal(err)
	}
	var after []byte
	rows, pages := 0, 0
	for more := true; more; pages++ {
		page, err := exportPage(src, after)
		if err != nil {
			t.Fatal(err)
		}
		b, err := transport.Marshal(&page)
		if err != nil {
			t.Fatal(err)
		}
		var got historyPage
		if err := transport.Unmarshal(b, &got); err != nil {
			t.Fatalf("page %d of %d rows, %d bytes: %v", pages, len(page.Rows), len(b), err)
		}
		if err := got.check(); err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		rows += len(got.Rows)
		more = got.More
		if more {
			after = got.Rows[len(got.Rows)-1].Key
		}
	}
	if rows != rowsWant {
		t.Fatalf("%d pages copied %d rows, want %d", pages, rows, rowsWant)
	}
}
