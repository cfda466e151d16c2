package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ledgerd/ledgerd/history"
	"github.com/ledgerd/ledgerd/internal/wire"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/nats-io/nats.go"
)

// Copying the history to a replica. A snapshot holds a shard's state in
// memory; the history the log entries before it wrote (every final
// transfer, every account's rows) is in the history store, which the
// snapshot does not carry. A replica that is sent a snapshot (new, wiped,
// or too far behind) therefore copies another replica's store page by page
// before it restores the state: the whole store, so it costs O(history),
// once per snapshot installed.
//
// Any replica that has applied the snapshot's index serves the copy, on a
// subject of its own (Subjects.History), whether it leads or not, and
// whether its shard serves clients yet or not: a new leader serves clients
// only once an entry of its term has committed, which may need the very
// replica that is copying.

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

// serveHistory answers history pages on this node's subject for the shard,
// for as long as the node runs.
func (s *shardServer) serveHistory() (*nats.Subscription, error) {
	return s.n.nc.Subscribe(s.n.subjects.History(s.id, s.n.cfg.NodeID), func(msg *nats.Msg) {
		select {
		case s.reads <- struct{}{}:
		default:
			respondPage(msg, &historyPage{Retry: "too many reads in flight"})
			return
		}
		go func() {
			defer func() { <-s.reads }()
			s.exportHistory(msg)
		}()
	})
}

// exportHistory answers a page, if this replica has applied the snapshot
// the asking replica restores (every row it needs is then in the store).
func (s *shardServer) exportHistory(msg *nats.Msg) {
	var req historyPageRequest
	var page historyPage
	if transport.Unmarshal(msg.Data, &req) != nil {
		page.Retry = "bad history page request"
	} else {
		var applied uint64
		s.m.Read(func(_ *shard.State, a uint64) { applied = a })
		if applied < req.Applied {
			page.Retry = fmt.Sprintf("applied %d, below the snapshot's %d", applied, req.Applied)
		} else {
			var err error
			if page, err = exportPage(s.m.History(), req.After); err != nil {
				page = historyPage{Retry: err.Error()}
			}
		}
	}
	respondPage(msg, &page)
}

// exportPage reads the rows after after: about historyPageBytes of them,
// and at most transport.BatchEventsMax, the longest list a message may hold
// (transport.Unmarshal refuses more): 1 MiB of balance rows, about 50 bytes
// each, is 20,000 rows, a page the copying replica could never decode.
func exportPage(store *history.Store, after []byte) (historyPage, error) {
	rows, more, err := store.Export(after, historyPageBytes)
	if err != nil {
		return historyPage{}, err
	}
	if len(rows) > transport.BatchEventsMax {
		rows, more = rows[:transport.BatchEventsMax], true
	}
	return historyPage{Rows: rows, More: more}, nil
}

// check refuses a page the copy cannot go on from: more rows to come after
// none.
func (p *historyPage) check() error {
	if p.More && len(p.Rows) == 0 {
		return errors.New("history page: more rows to come after none")
	}
	return nil
}

func respondPage(msg *nats.Msg, page *historyPage) {
	if b, err := transport.Marshal(page); err == nil && msg.Reply != "" {
		_ = msg.Respond(b)
	}
}

// historyRetryEvery paces a copy's requests while no replica can serve them.
const historyRetryEvery = 200 * time.Millisecond

// historySource picks a node, not this one, that reports this shard applied
// at least up to applied.
func (s *shardServer) historySource(ctx context.Context, applied uint64) (string, bool) {
	for _, st := range wire.NodeStatuses(ctx, s.n.nc, s.n.subjects) {
		if st.ID == s.n.cfg.NodeID {
			continue
		}
		for _, g := range st.Groups {
			if g.ID == s.id && g.AppliedIndex >= applied {
				return st.ID, true
			}
		}
	}
	return "", false
}

// fetchHistory copies another replica's history store into this one's, up
// to at least applied; it runs inside Restore, until it is done or the node
// closes. Pages may come from different replicas (one dies, another takes
// over): each covers applied, so together they hold every row up to it.
func (s *shardServer) fetchHistory(ctx context.Context, applied uint64) error {
	start := time.Now()
	req := historyPageRequest{Applied: applied}
	rows, pages := 0, 0
	source := ""
	for {
		var page historyPage
		var err error
		if source == "" {
			if id, ok := s.historySource(ctx, applied); ok {
				source = id
			} else {
				err = fmt.Errorf("no replica reports index %d applied", applied)
			}
		}
		if source != "" {
			err = s.n.request(ctx, s.n.subjects.History(s.id, source), "", &req, &page)
		}
		if err == nil && page.Retry == "" {
			err = page.check()
		}
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
		s.log.Debug("history copy: retrying", "source", source, "err", err, "retry", page.Retry)
		source = ""
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(historyRetryEvery):
		}
	}
}
