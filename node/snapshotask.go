package node

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/ledgerd/ledgerd/internal/wire"
)

// A replica refuses a snapshot older than the state it applied (raftfsm:
// restoring it would rewind the state, hashicorp/raft#697). Its leader then
// sends the same snapshot again and again until it takes a newer one, after
// its snapshot threshold of new entries: a shard that gets none (its slots
// split off, a quiet ledger) never would, and the replica would lag for
// good. So the replica asks the leader to take a snapshot now (OpSnapshot),
// at most once every askSnapshotEvery.
const askSnapshotEvery = 5 * time.Second

// askSnapshot is the shard machine's SetStale hook: called on Raft's
// goroutine, it asks from its own.
func (s *shardServer) askSnapshot() {
	now := time.Now().UnixNano()
	last := s.snapshotAsked.Load()
	if now-last < int64(askSnapshotEvery) || !s.snapshotAsked.CompareAndSwap(last, now) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		var reply wire.Reply
		err := s.n.request(ctx, s.n.subjects.Shard(s.id), wire.OpSnapshot, nil, &reply)
		s.log.Info("refused a snapshot older than this replica: asked the leader for a newer one", "err", err, "retry", reply.Retry)
	}()
}

// handleSnapshot takes a snapshot on the leader, for a replica that refused
// an older one.
func (s *shardServer) handleSnapshot(msg *nats.Msg) {
	err := s.g.Raft().Snapshot().Error()
	switch {
	case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
		respond(msg, &wire.Reply{})
	default:
		respond(msg, &wire.Reply{Retry: err.Error()})
	}
}
