package raftmux

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// NewTransport builds the group's raft.NetworkTransport over l. It returns
// the concrete NetworkTransport on purpose: raft enables optional features
// (pre-vote, heartbeat fast path) by type-asserting its Transport, and a
// wrapper that does not embed it would silently turn them off (VoteGate
// embeds it). Closing the transport closes l.
func NewTransport(l *Layer, logger *slog.Logger) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  l,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  HCLogger(logger, "raft-net", l.id),
	})
}

// VoteGate is a group's NetworkTransport that can refuse every vote and
// pre-vote: the transport of a node that lost its data and is joining again.
// Such a node remembers neither the votes it gave nor the entries it
// acknowledged; raft grants a vote from an empty log to any candidate, so
// it could elect a second leader in a term it already voted in, or a
// leader without entries it helped commit. Once sent the old
// configuration, in which it is still a voter, it would also campaign,
// voting for itself in terms it may have voted in already. It stays out of
// elections until its join has made it a new member (Allow): it refuses
// every vote and pre-vote it is asked for, and asks for none. Embedding
// keeps every optional interface raft asserts on the NetworkTransport
// (pre-vote among them).
type VoteGate struct {
	*raft.NetworkTransport
	allowed atomic.Bool
	refused atomic.Uint64
	rpcs    chan raft.RPC
	done    chan struct{}
	once    sync.Once
}

// NewVoteGate wraps t, refusing votes until Allow.
func NewVoteGate(t *raft.NetworkTransport) *VoteGate {
	g := &VoteGate{NetworkTransport: t, rpcs: make(chan raft.RPC), done: make(chan struct{})}
	go g.forward()
	return g
}

// Allow lets the group vote from now on.
func (g *VoteGate) Allow() { g.allowed.Store(true) }

// Refused counts the votes and pre-votes refused so far.
func (g *VoteGate) Refused() uint64 { return g.refused.Load() }

// errRejoining fails the vote requests of a node that is not yet allowed
// to vote.
var errRejoining = errors.New("raftmux: rejoining after a data loss: no elections until rejoined")

// RequestVote asks target for its vote, once this node may vote.
func (g *VoteGate) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if !g.allowed.Load() {
		return errRejoining
	}
	return g.NetworkTransport.RequestVote(id, target, args, resp)
}

// RequestPreVote asks target for its pre-vote, once this node may vote.
func (g *VoteGate) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if !g.allowed.Load() {
		return errRejoining
	}
	return g.NetworkTransport.RequestPreVote(id, target, args, resp)
}

// Consumer yields the RPCs raft must handle: all but refused votes.
func (g *VoteGate) Consumer() <-chan raft.RPC { return g.rpcs }

// Close closes the transport and stops forwarding.
func (g *VoteGate) Close() error {
	err := g.NetworkTransport.Close()
	g.once.Do(func() { close(g.done) })
	return err
}

func (g *VoteGate) forward() {
	in := g.NetworkTransport.Consumer()
	for {
		var rpc raft.RPC
		select {
		case rpc = <-in:
		case <-g.done:
			return
		}
		if !g.allowed.Load() {
			// Refused in the candidate's own term: it neither steps
			// down nor counts the vote.
			switch req := rpc.Command.(type) {
			case *raft.RequestVoteRequest:
				g.refused.Add(1)
				rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: false}, nil)
				continue
			case *raft.RequestPreVoteRequest:
				g.refused.Add(1)
				rpc.Respond(&raft.RequestPreVoteResponse{Term: req.Term, Granted: false}, nil)
				continue
			}
		}
		select {
		case g.rpcs <- rpc:
		case <-g.done:
			return
		}
	}
}
