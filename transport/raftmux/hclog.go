package raftmux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// HCLogger adapts slog to the hclog.Logger raft wants. An intercept logger
// whose own output is off forwards every record to a sink; hclog's key/value
// args have the same shape as slog's.
//
// ERROR is for what an operator must act on, so raft's records are sorted:
//   - below error they pass only when the slog logger is at debug (raft
//     warns about routine events, each group's first election among them);
//   - an error that a stop causes (transport shutdown) or a routine one
//     (nothing new to snapshot) is debug;
//   - an error about a peer or the network (a peer down, a connection cut)
//     is a warning, since the cluster rides it out and status shows the
//     peer unreachable: at most one a peerWarnEvery for each message and
//     peer, whatever the group, with how many were held back;
//   - the rest (the log store, the snapshot store: this node's disk) stay
//     errors.
func HCLogger(logger *slog.Logger, name string, group uint32) hclog.Logger {
	if logger == nil {
		return hclog.NewNullLogger()
	}
	floor := hclog.Error
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		floor = hclog.Trace
	}
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: name, Level: hclog.Off, Output: io.Discard})
	il.RegisterSink(slogSink{l: logger.With("raft_group", group), floor: floor, limit: peerWarnings})
	return il
}

// peerWarnEvery is how often one kind of peer warning is logged at most.
const peerWarnEvery = 30 * time.Second

// peerWarnings is shared by every group of the process: a peer that is down
// fails every group's heartbeats at once.
var peerWarnings = &limiter{every: peerWarnEvery, last: map[string]*limited{}}

type slogSink struct {
	l     *slog.Logger
	floor hclog.Level
	limit *limiter
}

func (s slogSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level < s.floor {
		return
	}
	lv := slog.LevelInfo
	switch level {
	case hclog.Trace:
		lv = slog.LevelDebug - 4
	case hclog.Debug:
		lv = slog.LevelDebug
	case hclog.Warn:
		lv = slog.LevelWarn
	case hclog.Error:
		lv = slog.LevelError
	}
	args = append([]any{"logger", name}, args...)
	if level == hclog.Error {
		switch {
		case hasError(args, raft.ErrTransportShutdown, raft.ErrNothingNewToSnapshot):
			lv = slog.LevelDebug
		case aboutPeer(name, args):
			held, ok := s.limit.allow(msg+" "+peerOf(args), time.Now())
			if !ok {
				return
			}
			if held > 0 {
				args = append(args, "held_back", held)
			}
			lv = slog.LevelWarn
		}
		if !s.l.Enabled(context.Background(), lv) {
			return
		}
	}
	s.l.Log(context.Background(), lv, msg, args...)
}

// hasError reports whether an error among args is one of targets, or says
// so (errors that crossed the network arrive as text).
func hasError(args []any, targets ...error) bool {
	for _, a := range args {
		err, ok := a.(error)
		if !ok {
			continue
		}
		for _, t := range targets {
			if errors.Is(err, t) || strings.Contains(err.Error(), t.Error()) {
				return true
			}
		}
	}
	return false
}

// aboutPeer reports whether a raft error concerns another node or the
// network between: the network transport's own records, and raft's that
// name a peer (replication, heartbeats, votes, snapshots sent).
func aboutPeer(name string, args []any) bool {
	return name == "raft-net" || peerOf(args) != ""
}

func peerOf(args []any) string {
	for i := 0; i+1 < len(args); i += 2 {
		if k, _ := args[i].(string); k == "peer" || k == "target" || k == "remote-address" {
			return fmt.Sprint(args[i+1])
		}
	}
	return ""
}

// limiter lets one record of each key through every period and counts the
// ones it holds back.
type limiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]*limited
}

type limited struct {
	at   time.Time
	held int
}

// limiterKeysMax bounds the keys a limiter remembers (peers come and go).
const limiterKeysMax = 1024

// allow reports whether a record of key may pass at now, and how many were
// held back since the last that passed.
func (l *limiter) allow(key string, now time.Time) (held int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.last[key]
	if e != nil && now.Sub(e.at) < l.every {
		e.held++
		return 0, false
	}
	if e == nil {
		if len(l.last) >= limiterKeysMax {
			clear(l.last)
		}
		e = &limited{}
		l.last[key] = e
	}
	held, e.at, e.held = e.held, now, 0
	return held, true
}
