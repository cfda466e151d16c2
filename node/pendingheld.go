package node

import (
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// handlePendingHeld answers the router's preflight of a provider's limit on
// open pending transfers (plan.PendingOpens): how many it holds here. The
// answer is advisory (apply decides exactly, command by command), so it is
// read from this replica's state without a leadership barrier.
func (s *shardServer) handlePendingHeld(msg *nats.Msg) {
	var o transport.Owner
	if err := transport.Unmarshal(msg.Data, &o); err != nil {
		respond(msg, &wire.Reply{Invalid: err.Error()})
		return
	}
	var held int
	s.m.Read(func(st *shard.State, _ uint64) { held = st.PendingHeld(&o) })
	respond(msg, &wire.Reply{PendingHeld: uint32(min(held, 1<<32-1))})
}
