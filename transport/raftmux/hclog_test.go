package raftmux

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestHCLoggerQuietUnlessDebug(t *testing.T) {
	var buf bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := HCLogger(lg, "raft", 7)
	h.Debug("hidden-debug")
	h.Warn("hidden-warn") // routine raft warnings stay out of an info log
	h.Error("failed to commit logs", "error", "disk full")
	out := buf.String()
	for _, hidden := range []string{"hidden-debug", "hidden-warn"} {
		if strings.Contains(out, hidden) {
			t.Fatalf("%s passed an info-level logger: %s", hidden, out)
		}
	}
	for _, want := range []string{"level=ERROR", "failed to commit logs", `error="disk full"`, "raft_group=7", "logger=raft"} {
		if !strings.Contains(out, want) {
			t.Fatalf("missing %q in %q", want, out)
		}
	}

	buf.Reset()
	dbg := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	HCLogger(dbg, "raft", 3).Warn("election started")
	if out := buf.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "election started") {
		t.Fatalf("a debug logger must see raft warnings: %q", out)
	}
}

// A clean stop makes raft's transport fail its reads with transport
// shutdown: that is no error of the operator's.
func TestHCLoggerStopIsNoError(t *testing.T) {
	var buf bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	HCLogger(lg, "raft-net", 1).Error("failed to decode incoming command", "error", raft.ErrTransportShutdown)
	HCLogger(lg, "raft", 1).Error("failed to take snapshot", "error", fmt.Errorf("snapshot: %w", raft.ErrNothingNewToSnapshot))
	if buf.Len() != 0 {
		t.Fatalf("an info log shows routine records: %s", &buf)
	}
}

// A peer that is down fails every group's heartbeats and replication many
// times a second: one warning per message and peer passes a period, with
// the count held back, and none is an ERROR.
func TestHCLoggerPeerDownIsARateLimitedWarning(t *testing.T) {
	var buf bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	saved := peerWarnings
	peerWarnings = &limiter{every: time.Hour, last: map[string]*limited{}}
	defer func() { peerWarnings = saved }()
	down := errors.New("dial tcp 127.0.0.1:7403: connect: connection refused")
	for g := range uint32(3) {
		h := HCLogger(lg, "raft", g)
		for range 50 {
			h.Error("failed to heartbeat to", "peer", "127.0.0.1:7403", "backoff time", time.Second, "error", down)
			h.Error("failed to appendEntries to", "peer", "{Voter node-3 127.0.0.1:7403}", "error", down)
		}
	}
	HCLogger(lg, "raft-net", 0).Error("failed to accept connection", "error", "tls: bad certificate")
	out := buf.String()
	if n := strings.Count(out, "\n"); n != 3 || strings.Contains(out, "level=ERROR") || strings.Count(out, "level=WARN") != 3 {
		t.Fatalf("want 3 warnings, one per message and peer:\n%s", out)
	}

	// The next that passes says how many were held back.
	l := &limiter{every: time.Second, last: map[string]*limited{}}
	now := time.Now()
	for i := range 5 {
		if _, ok := l.allow("k", now.Add(time.Duration(i)*time.Millisecond)); ok != (i == 0) {
			t.Fatalf("record %d: passed %v", i, ok)
		}
	}
	if held, ok := l.allow("k", now.Add(2*time.Second)); !ok || held != 4 {
		t.Fatalf("after the period: held %d, passed %v; want 4, true", held, ok)
	}
}
