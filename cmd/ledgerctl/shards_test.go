package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/node/nodeops"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
)

// startPlaced starts a single node of a cluster that places replicas
// (--replicas 3), with the providers file of bench_cluster_test.go.
func startPlaced(t *testing.T, shards uint32) *server.Server {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "providers.yaml")
	if err := os.WriteFile(path, []byte(providersFile), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, server.Config{
		NodeID: "n1", DataDir: filepath.Join(dir, "data"), NATSListen: "127.0.0.1:0", RaftListen: "127.0.0.1:0",
		Shards: shards, Replicas: server.DefaultReplicas, Providers: path,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	})
	return srv
}

var operatorArgs = []string{"--user", "ops", "--password", "ops-pw"}

// `shards` lists every shard of a real node with its slots (4096 in all),
// its replica, leader and size; `status` adds the meta state's moves and
// draining nodes (none here) to its JSON and keeps every field it had. A
// provider is refused the meta state as it is refused a drain.
func TestShardsAndStatusShowThePlacement(t *testing.T) {
	srv := startPlaced(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const accounts = 30
	createAccounts(ctx, t, srv, accounts)

	t.Run("shards", func(t *testing.T) { checkShards(ctx, t, srv, accounts) })
	t.Run("status", func(t *testing.T) { checkStatusMeta(ctx, t, srv) })
	t.Run("operators only", func(t *testing.T) { checkMetaRefusesProviders(ctx, t, srv) })
}

// createAccounts creates n accounts, as the operator, and a transfer
// between each pair of them.
func createAccounts(ctx context.Context, t *testing.T, srv *server.Server, n int) {
	t.Helper()
	nc, err := client.Connect(srv.ClientURL(), client.Credentials{User: "ops", Password: "ops-pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	var as []transport.Account
	var ts []transport.Transfer
	for i := range n {
		as = append(as, transport.Account{ID: fmt.Sprintf("acc-%d", i), Ledger: 1, Code: 10})
		if i%2 == 1 {
			ts = append(ts, transport.Transfer{ID: fmt.Sprintf("t-%d", i), DebitAccountID: fmt.Sprintf("acc-%d", i-1),
				CreditAccountID: fmt.Sprintf("acc-%d", i), Amount: 1, Ledger: 1, Code: 1})
		}
	}
	for _, batch := range []func() ([]transport.Result, error){
		func() ([]transport.Result, error) { return c.CreateAccounts(ctx, as) },
		func() ([]transport.Result, error) { return c.CreateTransfers(ctx, ts) },
	} {
		rs, err := batch()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Code != transport.CodeOK {
				t.Fatalf("create: %+v", r)
			}
		}
	}
}

func checkShards(ctx context.Context, t *testing.T, srv *server.Server, accounts uint64) {
	code, out, errOut := ctl(t, ctx, append([]string{"shards", "--server", srv.ClientURL(), "-o", "json"}, operatorArgs...)...)
	if code != 0 {
		t.Fatalf("shards: exit %d, %s %s", code, out, errOut)
	}
	var v shardsView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("shards JSON: %v\n%s", err, out)
	}
	if v.Epoch == 0 || v.Replicas != server.DefaultReplicas || v.MetaError != "" || len(v.Shards) != 3 {
		t.Fatalf("shards: %+v", v)
	}
	slots, accs, transfers := 0, uint64(0), uint64(0)
	for i, s := range v.Shards {
		slots += s.Slots
		accs += s.Accounts
		transfers += s.Transfers
		want := []shardReplica{{Node: "n1", State: replicaLeader}}
		if s.ID != uint32(i+1) || s.Leader != "n1" || s.Move != nil || s.Error != "" || len(s.Replicas) != 1 || s.Replicas[0] != want[0] {
			t.Errorf("shard %d: %+v, want shard %d led by n1, its one replica", i, s, i+1)
		}
	}
	if slots != transport.SlotCount || accs != accounts || transfers < accounts/2 {
		t.Errorf("shards hold %d slots, %d accounts, %d transfers; want %d, %d, %d at least", slots, accs, transfers, transport.SlotCount, accounts, accounts/2)
	}

	code, out, errOut = ctl(t, ctx, append([]string{"shards", "--server", srv.ClientURL()}, operatorArgs...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 5 || !strings.HasPrefix(lines[0], "slot map epoch ") || !strings.HasSuffix(lines[0], "; 3 replicas a shard") ||
		strings.Join(strings.Fields(lines[1]), " ") != "SHARD SLOTS LEADER ACCOUNTS TRANSFERS REPLICAS MOVING" {
		t.Fatalf("shards table: exit %d\n%s%s", code, out, errOut)
	}
	for i, line := range lines[2:] {
		f := strings.Fields(line)
		if len(f) != 6 || f[0] != fmt.Sprint(i+1) || f[1] != fmt.Sprint(v.Shards[i].Slots) || f[2] != "n1" || f[5] != "n1:leader" {
			t.Errorf("shards table line %q", line)
		}
	}
}

// checkStatusMeta: status's JSON keeps its fields and adds moves and
// draining from the meta leader.
func checkStatusMeta(ctx context.Context, t *testing.T, srv *server.Server) {
	code, out, errOut := ctl(t, ctx, append([]string{"status", "--server", srv.ClientURL(), "-o", "json"}, operatorArgs...)...)
	if code != 0 {
		t.Fatalf("status: exit %d, %s %s", code, out, errOut)
	}
	var st struct {
		Nodes  []map[string]any `json:"nodes"`
		Shards []struct {
			ID       uint32                    `json:"id"`
			Slots    []string                  `json:"slots"`
			Replicas []transport.ReplicaStatus `json:"replicas"`
		} `json:"shards"`
		Ledgers   []map[string]any `json:"ledgers"`
		Moves     []nodeops.Move   `json:"moves"`
		Draining  []drainingNode   `json:"draining"`
		MetaError *string          `json:"meta_error"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	if len(st.Nodes) != 1 || len(st.Shards) != 3 || len(st.Ledgers) != 1 || st.Ledgers[0]["conservation"] != balanced {
		t.Errorf("status lost its fields:\n%s", out)
	}
	for _, s := range st.Shards {
		if len(s.Slots) == 0 || len(s.Replicas) != 1 || s.Replicas[0].Node != "n1" || s.Replicas[0].State != "Leader" {
			t.Errorf("shard %d: slots %v, replicas %+v", s.ID, s.Slots, s.Replicas)
		}
	}
	// The meta leader answered: empty lists, not null.
	if st.Moves == nil || len(st.Moves) != 0 || st.Draining == nil || len(st.Draining) != 0 || st.MetaError != nil {
		t.Errorf("status meta: moves %v, draining %v, meta error %v\n%s", st.Moves, st.Draining, st.MetaError, out)
	}
}

// checkMetaRefusesProviders: a provider asking the meta subject gets the
// refusal a provider's drain gets, and ledgerctl shards fails for it.
func checkMetaRefusesProviders(ctx context.Context, t *testing.T, srv *server.Server) {
	a := &app{prefix: transport.DefaultPrefix, timeout: 10 * time.Second}
	for _, who := range []struct {
		creds client.Credentials
		want  string // the error's start; "" for none
	}{
		{client.Credentials{User: "acme", Password: "acme-pw"}, "unauthorized: "},
		{client.Credentials{User: "ops", Password: "ops-pw"}, ""},
	} {
		nc, err := client.Connect(srv.ClientURL(), who.creds)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		meta, err := a.askMeta(ctx, nc, nodeops.MetaRequest{Members: true})
		if who.want == "" {
			if err != nil || meta.Leader != "n1" || len(meta.Shards) != 3 || len(meta.Shards[0].Voters) != 1 {
				t.Errorf("%s: meta %+v, %v", who.creds.User, meta, err)
			}
			continue // an operator's drain would drain the cluster's only node
		}
		if err == nil || !strings.HasPrefix(err.Error(), who.want) || meta != nil {
			t.Errorf("%s: meta %+v, %v; want refused %q", who.creds.User, meta, err, who.want)
		}
		body, err := transport.Marshal(&nodeops.Request{Node: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		drain, err := a.askNodes(ctx, nc, nodeops.DrainSubject(transport.Subjects{Prefix: transport.DefaultPrefix}), body)
		if err != nil || !strings.HasPrefix(drain.Error, who.want) {
			t.Errorf("%s: drain %+v, %v; want refused %q", who.creds.User, drain, err, who.want)
		}
	}
	code, out, errOut := ctl(t, ctx, "shards", "--server", srv.ClientURL(), "--user", "acme", "--password", "acme-pw")
	if code != exitFailed || !strings.Contains(errOut, "unauthorized") || out != "" {
		t.Errorf("a provider's shards: exit %d, %q %q; want refused", code, out, errOut)
	}
}

// The shards of a cluster that moves a replica: each replica's state comes
// from its group's configuration (nonvoter while it joins), the leader
// from the status, and a node that did not report the group is silent.
// Without the configuration the placement says who votes.
func TestShardsViewMergesConfigurationAndStatus(t *testing.T) {
	st := &transport.StatusReply{Shards: []transport.ShardStatus{
		{ID: 1, Leader: "n1", Slots: []uint16{0, 1}, Accounts: 5, Transfers: 7, Replicas: []transport.ReplicaStatus{
			{Node: "n1", State: "Leader"}, {Node: "n2", State: "Follower", Lag: 3}, {Node: "n4", State: "Follower"}}},
		{ID: 2, Error: "no leader answered", Replicas: []transport.ReplicaStatus{{Node: "n2", State: "Candidate"}, {Node: "n9", State: "Follower"}}},
	}}
	meta := &nodeops.Meta{Epoch: 4, Replicas: 3,
		Shards: []nodeops.MetaShard{
			{ID: 1, Slots: 2048, Placement: []string{"n1", "n2", "n3"}, Voters: []string{"n1", "n2", "n3"}, Nonvoters: []string{"n4"}},
			{ID: 2, Slots: 2048, Placement: []string{"n1", "n2", "n3"}, MembersError: "its leader did not answer"},
			{ID: 3, Placement: []string{"n1"}},
		},
		Moves: []nodeops.Move{{Shard: 1, Add: "n4", Remove: "n3"}},
	}
	v := newShardsView(st, meta, nil)
	a, out := testApp("table")
	if err := a.print(v, func(w io.Writer) { shardsTable(w, v) }); err != nil {
		t.Fatal(err)
	}
	want := `slot map epoch 4; 3 replicas a shard
SHARD  SLOTS  LEADER  ACCOUNTS  TRANSFERS  REPLICAS                                                MOVING
1      2048   n1      5         7          n1:leader n2:voter(lag 3) n3:voter(silent) n4:nonvoter  +n4 -n3
2      2048           0         0          n1:voter(silent) n2:voter n3:voter(silent) n9:unknown   
3      0              0         0          n1:voter(silent)                                        
shard 2: no leader answered
shard 3: not in the cluster status
`
	if got := out.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}

	// Without the meta leader, the shards' own reports.
	v = newShardsView(st, nil, errors.New("no meta leader"))
	if v.MetaError != "no meta leader" || len(v.Shards) != 2 || v.Shards[0].Slots != 2 || len(v.Shards[0].Replicas) != 3 ||
		v.Shards[0].Replicas[0].State != replicaLeader || v.Shards[0].Replicas[1].State != replicaUnknown {
		t.Fatalf("without meta: %+v", v)
	}
}

// status shows the moves under way and the draining nodes with the
// replicas still placed on them, in its table and its JSON.
func TestStatusShowsMovesAndDrainingNodes(t *testing.T) {
	meta := &nodeops.Meta{
		Nodes: []nodeops.MetaNode{{ID: "n1"}, {ID: "n3", Draining: true}},
		Shards: []nodeops.MetaShard{{ID: 1, Placement: []string{"n1", "n3"}}, {ID: 2, Placement: []string{"n3"}},
			{ID: 3, Placement: []string{"n1"}}},
		Moves:     []nodeops.Move{{Shard: 1, Add: "n2", Remove: "n3"}, {Shard: 2, Add: "n1", Remove: "n3"}},
		Splitting: &nodeops.SplitView{Parent: 3, Child: 4, Slots: 512},
	}
	st := &transport.StatusReply{Shards: []transport.ShardStatus{{ID: 1, Leader: "n1"}}}
	v := newStatusView(st).withMeta(meta, nil)
	a, out := testApp("table")
	if err := a.print(v, func(w io.Writer) { statusTable(w, v) }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MOVING SHARD  ADDING  REMOVING\n1             n2      n3\n2             n1      n3\n",
		"DRAINING NODE  REPLICAS LEFT\nn3             2\n", "SPLITTING SHARD  NEW SHARD  SLOTS\n3                4          512\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	a, out = testApp("json")
	if err := a.print(v, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"moves": [`, `"add": "n2"`, `"remove": "n3"`, `"draining": [`, `"node": "n3"`, `"replicas": 2`,
		`"splitting": {`, `"child": 4`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("JSON lacks %s:\n%s", want, out)
		}
	}

	// A meta leader that does not answer leaves the status whole, and says so.
	v = newStatusView(st).withMeta(nil, errors.New("no meta leader"))
	a, out = testApp("table")
	if err := a.print(v, func(w io.Writer) { statusTable(w, v) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "meta: no meta leader\n") || strings.Contains(out.String(), "MOVING") {
		t.Errorf("table without meta:\n%s", out)
	}
}
