package node

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// Copying the history to a replica. A snapshot holds a shard's state in
// memory; the history the log entries before it wrote (every final
// transfer, every account's rows) is in the history store, which the
// snapshot does not carry. A replica that is sent a snapshot (new, wiped,
// or too far behind) therefore copies the leader's store page by page
// before it restores the state: the whole store, so it costs O(history),
// once per snapshot installed.

// historyPageBytes bounds one page's rows (NATS messages stay far below
// transport.MessageBytesMax).
const historyPageBytes = 1 << 20

// historyPageRequest asks for the rows after After, from a store that
// covers at least Applied.
type historyPageRequest struct {
	After   []byte `msgpack:"after"`
	Applied uint64 `msgpack:"applied"`
}

type historyPage struct {
	Rows  []history.Row `msgpack:"rows"`
	More  bool          `msgpack:"more"`
	Retry string        `msgpack:"retry,omitempty"`
}

// exportHistory answers a page, if this leader has applied the snapshot the
// replica restores (every row it needs is then in the store).
func (s *shardServer) exportHistory(msg *nats.Msg) {
	var req historyPageRequest
	var page historyPage
	switch {
	case transport.Unmarshal(msg.Data, &req) != nil:
		page.Retry = "bad history page request"
	case s.g.Raft().State() != raft.Leader:
		page.Retry = "not the leader"
	default:
		var applied uint64
		s.m.Read(func(_ *shard.State, a uint64) { applied = a })
		if applied < req.Applied {
			page.Retry = fmt.Sprintf("applied %d, below the snapshot's %d", applied, req.Applied)
			break
		}
		var err error
		if page.Rows, page.More, err = s.m.History().Export(req.After, historyPageBytes); err != nil {
			page.Rows, page.More, page.Retry = nil, false, err.Error()
		}
	}
	if b, err := transport.Marshal(&page); err == nil && msg.Reply != "" {
		_ = msg.Respond(b)
	}
}

// historyRetryEvery paces a copy's requests while no leader can serve them.
const historyRetryEvery = 200 * time.Millisecond

// fetchHistory copies the leader's history store into this replica's, up to
// at least applied; it runs inside Restore, until it is done or the node
// closes.
func (s *shardServer) fetchHistory(ctx context.Context, applied uint64) error {
	start := time.Now()
	req := historyPageRequest{Applied: applied}
	rows, pages := 0, 0
	for {
		var page historyPage
		err := s.n.request(ctx, s.n.subjects.Shard(s.id), shard.OpHistoryExport, &req, &page)
		if err == nil && page.Retry == "" {
			if err := s.m.History().Import(page.Rows); err != nil {
				return err
			}
			rows, pages = rows+len(page.Rows), pages+1
			if !page.More {
				s.log.Info("copied the history for a snapshot", "applied", applied, "rows", rows, "pages", pages, "took", time.Since(start).Round(time.Millisecond))
				return nil
			}
			req.After = page.Rows[len(page.Rows)-1].Key
			continue
		}
		s.log.Debug("history copy: retrying", "err", err, "retry", page.Retry)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(historyRetryEvery):
		}
	}
}
