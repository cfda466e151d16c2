package transport

import (
	"fmt"
	"testing"
)

const benchTransfers = 1000

// benchRequest is a batch of 1000 transfers as a payment provider sends
// them: distinct ids, a few accounts, one in ten with metadata.
func benchRequest() *CreateTransfersRequest {
	xs := make([]Transfer, benchTransfers)
	for i := range xs {
		xs[i] = Transfer{
			ID:              fmt.Sprintf("payment-2026-11-22-%08d", i),
			DebitAccountID:  fmt.Sprintf("wallet:customer-%04d", i%500),
			CreditAccountID: "merchant:acme",
			Amount:          uint64(100 + i*37),
			Ledger:          978,
			Code:            1,
		}
		if i%10 == 0 {
			xs[i].Metadata = map[string]string{"order": fmt.Sprintf("o-%d", i), "channel": "web"}
		}
	}
	return &CreateTransfersRequest{Transfers: xs}
}

func reportPerTransfer(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchTransfers, "ns/transfer")
}

func BenchmarkDecodeTransfers1000(b *testing.B) {
	body, err := Marshal(benchRequest())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var r CreateTransfersRequest
		if err := Unmarshal(body, &r); err != nil {
			b.Fatal(err)
		}
		if len(r.Transfers) != benchTransfers {
			b.Fatalf("%d transfers", len(r.Transfers))
		}
	}
	reportPerTransfer(b)
}

func BenchmarkEncodeTransfers1000(b *testing.B) {
	req := benchRequest()
	body, err := Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(req); err != nil {
			b.Fatal(err)
		}
	}
	reportPerTransfer(b)
}
