package raftmux

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

var _ raft.WithPreVote = (*VoteGate)(nil) // pre-vote survives the wrapper

// TestVoteGateRefusesVotesUntilAllowed: a gated group answers votes and
// pre-votes itself, not granted and in the candidate's term, without raft
// seeing them, and asks for none; everything else, and every vote once
// allowed, passes.
func TestVoteGateRefusesVotesUntilAllowed(t *testing.T) {
	ma, mb := newMux(t), newMux(t)
	ta := NewTransport(mustGroup(t, ma, 1), nil)
	defer ta.Close()
	gate := NewVoteGate(NewTransport(mustGroup(t, mb, 1), nil))
	defer gate.Close()

	// raft's side of b: it records what reached it and grants everything.
	reached := make(chan any, 16)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case rpc := <-gate.Consumer():
				reached <- rpc.Command
				switch req := rpc.Command.(type) {
				case *raft.RequestVoteRequest:
					rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
				case *raft.RequestPreVoteRequest:
					rpc.Respond(&raft.RequestPreVoteResponse{Term: req.Term, Granted: true}, nil)
				case *raft.AppendEntriesRequest:
					rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
				}
			case <-stop:
				return
			}
		}
	}()
	b := raft.ServerAddress(mb.Addr().String())
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("a"), Addr: []byte(ma.Addr().String())}
	vote := func() raft.RequestVoteResponse {
		var resp raft.RequestVoteResponse
		if err := ta.RequestVote("b", b, &raft.RequestVoteRequest{RPCHeader: hdr, Term: 7, LastLogIndex: 100, LastLogTerm: 6}, &resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	preVote := func() raft.RequestPreVoteResponse {
		var resp raft.RequestPreVoteResponse
		if err := ta.RequestPreVote("b", b, &raft.RequestPreVoteRequest{RPCHeader: hdr, Term: 8, LastLogIndex: 100, LastLogTerm: 6}, &resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if v := vote(); v.Granted || v.Term != 7 {
		t.Fatalf("gated vote: %+v, want refused in term 7", v)
	}
	if v := preVote(); v.Granted || v.Term != 8 {
		t.Fatalf("gated pre-vote: %+v, want refused in term 8", v)
	}
	var ae raft.AppendEntriesResponse
	err := ta.AppendEntries("b", b, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 7, PrevLogEntry: 1, PrevLogTerm: 1,
		Entries: []*raft.Log{{Index: 2, Term: 7, Type: raft.LogCommand, Data: []byte("x")}}}, &ae)
	if err != nil || !ae.Success {
		t.Fatalf("append entries through the gate: %v %+v", err, ae)
	}
	if got := <-reached; func() bool { _, ok := got.(*raft.AppendEntriesRequest); return !ok }() {
		t.Fatalf("raft saw %T first, want the append entries: the votes reached it", got)
	}

	// Nor does a gated node ask for votes.
	back := NewVoteGate(ta)
	defer back.Close()
	if err := back.RequestVote("b", b, &raft.RequestVoteRequest{RPCHeader: hdr, Term: 9}, new(raft.RequestVoteResponse)); err == nil {
		t.Fatal("a gated node asked for a vote")
	}
	if err := back.RequestPreVote("b", b, &raft.RequestPreVoteRequest{RPCHeader: hdr, Term: 9}, new(raft.RequestPreVoteResponse)); err == nil {
		t.Fatal("a gated node asked for a pre-vote")
	}
	select {
	case got := <-reached:
		t.Fatalf("raft saw %T from a gated node's request", got)
	default:
	}
	back.Allow()
	var vr raft.RequestVoteResponse
	if err := back.RequestVote("b", b, &raft.RequestVoteRequest{RPCHeader: hdr, Term: 9}, &vr); err != nil || vr.Granted {
		t.Fatalf("allowed, its request reaches b's gate: %v %+v", err, vr)
	}

	gate.Allow()
	if v := vote(); !v.Granted {
		t.Fatalf("allowed vote: %+v", v)
	}
	if v := preVote(); !v.Granted {
		t.Fatalf("allowed pre-vote: %+v", v)
	}
	for _, want := range []string{"vote", "pre-vote"} {
		select {
		case got := <-reached:
			switch got.(type) {
			case *raft.RequestVoteRequest, *raft.RequestPreVoteRequest:
			default:
				t.Fatalf("raft saw %T, want the %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the allowed %s never reached raft", want)
		}
	}
}

// member is one replica of a one-group cluster whose stores outlive its
// process (in memory), so it can be restarted, or wiped.
type member struct {
	id           raft.ServerID
	addr         string
	mux          *Mux
	trans        raft.Transport
	gate         *VoteGate
	r            *raft.Raft
	fsm          *seqFSM
	logs, stable *raft.InmemStore
	snaps        *raft.InmemSnapshotStore
}

func (m *member) start(t *testing.T, gated bool, bootstrap *raft.Configuration) {
	t.Helper()
	mux, err := Listen(m.addr, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.mux, m.fsm = mux, &seqFSM{seen: map[uint64]bool{}}
	nt := NewTransport(mustGroup(t, mux, 1), nil)
	m.trans, m.gate = nt, nil
	if gated {
		m.gate = NewVoteGate(nt)
		m.trans = m.gate
	}
	cfg := raft.DefaultConfig()
	cfg.LocalID = m.id
	cfg.Logger = hclog.NewNullLogger()
	if bootstrap != nil {
		if err := raft.BootstrapCluster(cfg, m.logs, m.stable, m.snaps, m.trans, *bootstrap); err != nil {
			t.Fatal(err)
		}
	}
	if m.r, err = raft.NewRaft(cfg, m.fsm, m.logs, m.stable, m.snaps, m.trans); err != nil {
		t.Fatal(err)
	}
}

func (m *member) stop(t *testing.T) {
	t.Helper()
	if m.r == nil {
		return
	}
	if err := m.r.Shutdown().Error(); err != nil {
		t.Error(err)
	}
	m.trans.(raft.WithClose).Close()
	m.mux.Close()
	m.r = nil
}

// TestWipedVoterStaysSilentUntilAllowed: a, b and c; c is down while a and
// b commit ten entries; a and b go down; b comes back with its data lost,
// still a voter in the others' configuration, and c comes back. Ungated, b
// grants c its vote from an empty log, and c leads without the committed
// entries: they are lost. Gated, b refuses; c cannot win; once a is back a
// leader with the entries is elected and c applies all ten.
func TestWipedVoterStaysSilentUntilAllowed(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft elections take seconds")
	}
	for _, gated := range []bool{false, true} {
		name := map[bool]string{false: "ungated: committed entries lost", true: "gated: entries kept"}[gated]
		t.Run(name, func(t *testing.T) { wipedVoter(t, gated) })
	}
}

func wipedVoter(t *testing.T, gated bool) {
	ms := make([]*member, 3)
	var conf raft.Configuration
	for i := range ms {
		m := &member{id: raft.ServerID(string(rune('a' + i))), logs: raft.NewInmemStore(), stable: raft.NewInmemStore(), snaps: raft.NewInmemSnapshotStore()}
		mux, err := Listen("127.0.0.1:0", nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.addr = mux.Addr().String()
		mux.Close()
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: m.id, Address: raft.ServerAddress(m.addr)})
		ms[i] = m
		t.Cleanup(func() { m.stop(t) })
	}
	a, b, c := ms[0], ms[1], ms[2]
	for _, m := range ms {
		m.start(t, false, &conf)
	}
	waitFor(t, "a leader", func() bool {
		for _, m := range ms {
			if m.r.State() == raft.Leader {
				return true
			}
		}
		return false
	})
	if a.r.State() != raft.Leader {
		for _, m := range ms {
			if m.r.State() == raft.Leader {
				if err := m.r.LeadershipTransferToServer(a.id, raft.ServerAddress(a.addr)).Error(); err != nil {
					t.Fatal(err)
				}
			}
		}
		waitFor(t, "a to lead", func() bool { return a.r.State() == raft.Leader })
	}

	c.stop(t)
	for s := range uint64(10) {
		if err := a.r.Apply(binary.BigEndian.AppendUint64(nil, s), 10*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	committed := a.r.LastIndex()
	waitFor(t, "b to apply the ten", func() bool { return b.fsm.count() == 10 })
	a.stop(t)
	b.stop(t)

	b.logs, b.stable, b.snaps = raft.NewInmemStore(), raft.NewInmemStore(), raft.NewInmemSnapshotStore() // wiped
	b.start(t, gated, nil)
	leads := make(chan raft.Observation, 8)
	c.start(t, false, nil)
	c.r.RegisterObserver(raft.NewObserver(leads, false, func(o *raft.Observation) bool {
		s, ok := o.Data.(raft.RaftState)
		return ok && s == raft.Leader
	}))

	if !gated {
		waitFor(t, "c to lead with b's vote", func() bool { return c.r.State() == raft.Leader })
		if c.r.LastIndex() >= committed {
			t.Fatalf("c leads with index %d, the committed entries end at %d: the scenario did not lose them", c.r.LastIndex(), committed)
		}
		return
	}
	waitFor(t, "b to refuse c's votes", func() bool { return b.gate.Refused() >= 3 })
	if len(leads) != 0 || c.r.State() == raft.Leader {
		t.Fatal("c led with the votes of a node that lost its data")
	}
	a.start(t, false, nil)
	waitFor(t, "a leader with the entries", func() bool { return a.r.State() == raft.Leader })
	waitFor(t, "c to apply the ten", func() bool { return c.fsm.count() == 10 })
	if len(leads) != 0 {
		t.Fatal("c led")
	}
}
