package client

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/transport"
)

// fakeClient answers each request with reply(request body), without NATS.
func fakeClient(reply func(subject string, body []byte) []byte) *Client {
	c := New(nil, WithRequestTimeout(time.Second))
	c.send = func(_ context.Context, subject string, body []byte) ([]byte, error) {
		return reply(subject, body), nil
	}
	return c
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := transport.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCreateTransfersRebasesIndexesAcrossRequests(t *testing.T) {
	var requests atomic.Int32
	c := fakeClient(func(subject string, body []byte) []byte {
		requests.Add(1)
		var req transport.CreateTransfersRequest
		if err := transport.Unmarshal(body, &req); err != nil {
			t.Error(err)
		}
		var reply transport.ResultsReply
		for i, tr := range req.Transfers {
			code := transport.CodeOK
			if tr.Amount%1000 == 0 { // the amount says where the event was in the caller's slice
				code = transport.CodeExceedsCredits
			}
			reply.Results = append(reply.Results, transport.Result{Index: uint32(i), Code: code})
		}
		return mustMarshal(t, &reply)
	})
	ts := transfers(20000)
	results, err := c.CreateTransfers(context.Background(), ts)
	if err != nil {
		t.Fatal(err)
	}
	if requests.Load() != 3 || len(results) != len(ts) {
		t.Fatalf("%d requests, %d results; want 3 requests, %d results", requests.Load(), len(results), len(ts))
	}
	for i, r := range results {
		want := transport.CodeOK
		if ts[i].Amount%1000 == 0 {
			want = transport.CodeExceedsCredits
		}
		if int(r.Index) != i || r.Code != want {
			t.Fatalf("results[%d] = %+v, want index %d code %v", i, r, i, want)
		}
	}
}

func TestRequestErrorIsReturnedAsTransportErrorWithoutRetry(t *testing.T) {
	var requests atomic.Int32
	c := fakeClient(func(string, []byte) []byte {
		requests.Add(1)
		return mustMarshal(t, &transport.ResultsReply{Error: &transport.Error{Code: transport.ErrMalformedCode, Message: "bad"}})
	})
	_, err := c.CreateAccounts(context.Background(), []transport.Account{{ID: "a", Ledger: 1, Code: 1}})
	var e *transport.Error
	if !errors.As(err, &e) || e.Code != transport.ErrMalformedCode {
		t.Fatalf("err = %v, want a *transport.Error %s", err, transport.ErrMalformedCode)
	}
	if requests.Load() != 1 {
		t.Fatalf("%d requests, want 1: malformed_request is not retried", requests.Load())
	}
}

func TestRetryGivesUpWhenContextIsDone(t *testing.T) {
	var requests atomic.Int32
	c := fakeClient(func(string, []byte) []byte {
		requests.Add(1)
		return mustMarshal(t, &transport.AccountsReply{Error: &transport.Error{Code: transport.ErrTimeoutCode}})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.LookupAccounts(ctx, []string{"a"})
	var e *transport.Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &e) || e.Code != transport.ErrTimeoutCode {
		t.Fatalf("err = %v, want the deadline and the last timeout", err)
	}
	if requests.Load() < 3 {
		t.Fatalf("%d requests in 200ms, want retries", requests.Load())
	}
}

func TestLookupConcatenatesRequestsAndLeavesOutUnknownIDs(t *testing.T) {
	c := fakeClient(func(_ string, body []byte) []byte {
		var req transport.LookupRequest
		if err := transport.Unmarshal(body, &req); err != nil {
			t.Error(err)
		}
		if len(req.IDs) > lookupIDsMax {
			t.Errorf("lookup of %d ids, want at most %d", len(req.IDs), lookupIDsMax)
		}
		var reply transport.AccountsReply
		for _, id := range req.IDs {
			if id != "unknown" {
				reply.Accounts = append(reply.Accounts, transport.Account{ID: id})
			}
		}
		return mustMarshal(t, &reply)
	})
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = "a" + string(rune('a'+i%26))
	}
	ids[5000] = "unknown"
	accounts, err := c.LookupAccounts(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(accounts) != len(ids)-1 || accounts[5000].ID != ids[5001] {
		t.Fatalf("%d accounts, want %d in order", len(accounts), len(ids)-1)
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	for attempt, lo := range []time.Duration{backoffMin / 2, backoffMin, 2 * backoffMin} {
		if d := backoff(attempt); d < lo || d >= 2*lo {
			t.Errorf("backoff(%d) = %v, want in [%v, %v)", attempt, d, lo, 2*lo)
		}
	}
	for _, attempt := range []int{20, 64, 1000} {
		if d := backoff(attempt); d < backoffMax/2 || d >= backoffMax {
			t.Errorf("backoff(%d) = %v, want in [%v, %v)", attempt, d, backoffMax/2, backoffMax)
		}
	}
}
