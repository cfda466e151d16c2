package wire

import (
	"context"
	"time"

	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// How long NodeStatuses collects answers: until none came for
// nodesQuiet after the last, at most nodesWaitMax.
const (
	nodesQuiet   = 100 * time.Millisecond
	nodesWaitMax = time.Second
)

// NodeStatuses asks every node on the NodesStatus subject and returns the
// answers, in the order they came. A node that is down, paused, cut off
// from NATS or still joining the cluster does not answer.
func NodeStatuses(ctx context.Context, nc *nats.Conn, subjects transport.Subjects) []transport.NodeStatus {
	var out []transport.NodeStatus
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subjects.NodesStatus(), inbox, nil); err != nil {
		return out
	}
	end := time.Now().Add(nodesWaitMax)
	for wait := nodesWaitMax; ctx.Err() == nil && wait > 0; wait = min(nodesQuiet, time.Until(end)) {
		msg, err := sub.NextMsg(wait)
		if err != nil {
			break
		}
		var n transport.NodeStatus
		if transport.Unmarshal(msg.Data, &n) == nil && n.ID != "" {
			out = append(out, n)
		}
	}
	return out
}
