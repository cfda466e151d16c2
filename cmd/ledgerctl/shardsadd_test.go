package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/transport"
)

// `shards add 1` splits the one shard of a node in two, prints its progress
// and returns once done; `--to 2` asked again changes nothing; the accounts
// are all still there, half on each shard; a provider is refused.
func TestShardsAddSplitsShards(t *testing.T) {
	srv := startPlaced(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const accounts = 40
	createAccounts(ctx, t, srv, accounts)
	code, out, errOut := ctl(t, ctx, append([]string{"shards", "add", "1", "--server", srv.ClientURL()}, operatorArgs...)...)
	if code != 0 || !strings.Contains(out, "done: 2 of 2 shards, 2048 to 2048 slots a shard") {
		t.Fatalf("shards add 1: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = ctl(t, ctx, append([]string{"shards", "add", "--to", "2", "--server", srv.ClientURL(), "-o", "json"}, operatorArgs...)...)
	var p nodeops.ShardsProgress
	if code != 0 || json.Unmarshal([]byte(strings.TrimSpace(out)), &p) != nil || !p.Done || p.Shards != 2 || p.Wanted != 2 {
		t.Fatalf("shards add --to 2: exit %d, %+v\n%s%s", code, p, out, errOut)
	}
	code, out, errOut = ctl(t, ctx, append([]string{"shards", "--server", srv.ClientURL(), "-o", "json"}, operatorArgs...)...)
	var v shardsView
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || len(v.Shards) != 2 {
		t.Fatalf("shards: exit %d\n%s%s", code, out, errOut)
	}
	var held uint64
	for _, s := range v.Shards {
		if s.Slots != transport.SlotCount/2 || s.Accounts == 0 || s.Leader != "n1" {
			t.Errorf("shard %+v", s)
		}
		held += s.Accounts
	}
	if held != accounts {
		t.Fatalf("the shards hold %d accounts, want %d", held, accounts)
	}
	code, _, errOut = ctl(t, ctx, "shards", "add", "1", "--server", srv.ClientURL(), "--user", "acme", "--password", "acme-pw")
	if code == 0 || !strings.Contains(errOut, "unauthorized: shards are added by operators") {
		t.Fatalf("a provider's shards add: exit %d, %s", code, errOut)
	}
	for _, bad := range [][]string{{"shards", "add"}, {"shards", "add", "0"}, {"shards", "add", "2", "--to", "4"}, {"shards", "add", "x"}} {
		if code, _, errOut := ctl(t, ctx, append(append(bad, "--server", srv.ClientURL()), operatorArgs...)...); code == 0 || errOut == "" {
			t.Errorf("%v: exit %d, %q", bad, code, errOut)
		}
	}
}
