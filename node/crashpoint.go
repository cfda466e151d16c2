package node

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// A test hook for crash tests: LEDGERD_TEST_CRASH_AT=point:n kills the
// process with SIGKILL the nth time a leader has applied an entry that
// reaches point, after the entry is committed and applied, before anything
// acts on it (a reply, the next message). Unset, it costs a nil check per
// entry. The points are the steps of a linked chain across shards
// (shard/chains.go):
const (
	// CrashChainBegun: the coordinator logged a chain; no hold is sent.
	CrashChainBegun = "chain-begun"
	// CrashPartHeld: a participant held a part; its answer is not sent.
	CrashPartHeld = "part-held"
	// CrashChainDecided: the coordinator logged its decision (commit or
	// release); no finish is sent.
	CrashChainDecided = "chain-decided"
	// CrashPartFinished: a participant committed or released a part; its
	// answer is not sent.
	CrashPartFinished = "part-finished"
	// CrashChainDebits: every credit side is committed; the debit sides'
	// finishes are logged, not sent.
	CrashChainDebits = "chain-debits"
	// CrashChainDone: every leg is final; the client is not answered.
	CrashChainDone = "chain-done"
)

// CrashPoints lists the points, in protocol order.
var CrashPoints = []string{CrashChainBegun, CrashPartHeld, CrashChainDecided, CrashPartFinished, CrashChainDebits, CrashChainDone}

// A test hook for chaos tests: LEDGERD_TEST_RAFT_VIA=peer=proxy,... makes
// this node dial each listed peer Raft address through the given proxy
// address, so that a test can cut one pair of nodes apart.
var raftDialVia = parseRaftVia(os.Getenv("LEDGERD_TEST_RAFT_VIA"))

func parseRaftVia(v string) map[string]string {
	if v == "" {
		return nil
	}
	m := map[string]string{}
	for _, pair := range strings.Split(v, ",") {
		if peer, via, ok := strings.Cut(pair, "="); ok {
			m[peer] = via
		}
	}
	return m
}

type crashHook struct {
	point string
	n     int64
	seen  atomic.Int64
}

var crashAt = parseCrashHook(os.Getenv("LEDGERD_TEST_CRASH_AT"))

func parseCrashHook(v string) *crashHook {
	point, count, ok := strings.Cut(v, ":")
	n, err := strconv.ParseInt(count, 10, 64)
	if v == "" || !ok || err != nil || n < 1 {
		return nil
	}
	return &crashHook{point: point, n: n}
}

// crashPoints kills the process if the applied entry of this kind (cmd is
// the command's bytes, for a participant's parts) reached the hook's point
// for the nth time.
func crashPoints(kind shard.Kind, cmd []byte, out *shard.Output) {
	h := crashAt
	if h == nil || out == nil {
		return
	}
	reached := map[string]bool{}
	for _, r := range out.Reserved {
		switch p := r.Part; {
		case p == nil:
		case !p.Finish:
			reached[CrashChainBegun] = true
		case p.Debit && p.Commit:
			reached[CrashChainDebits] = true
		default:
			reached[CrashChainDecided] = true
		}
	}
	for _, r := range out.Resolved {
		reached[CrashChainDone] = reached[CrashChainDone] || r.Chain
	}
	if kind == shard.KindCredit || kind == shard.KindAbort {
		var c shard.Command
		if transport.Unmarshal(cmd, &c) == nil {
			for _, cr := range c.Credits {
				if cr.Part != nil && cr.Part.Finish {
					reached[CrashPartFinished] = true
				} else if cr.Part != nil {
					reached[CrashPartHeld] = true
				}
			}
		}
	}
	if reached[h.point] && h.seen.Add(1) == h.n {
		slog.Warn("test crash point reached: SIGKILL", "point", h.point, "n", h.n)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns: nothing may act on the entry
	}
}
