package raftmux

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// NewTransport builds the group's raft.NetworkTransport over l. It returns
// the concrete NetworkTransport on purpose: raft enables optional features
// (pre-vote, heartbeat fast path) by type-asserting its Transport, and a
// wrapper would silently turn them off. Closing the transport closes l.
func NewTransport(l *Layer, logger *slog.Logger) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  l,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  HCLogger(logger, "raft-net", l.id),
	})
}

// HCLogger adapts slog to the hclog.Logger raft wants. An intercept logger
// whose own output is off forwards every record to a sink; hclog's key/value
// args have the same shape as slog's. Raft warns about routine events (each
// group's first election among them), so below error its records pass only
// when the slog logger is at debug.
func HCLogger(logger *slog.Logger, name string, group uint32) hclog.Logger {
	if logger == nil {
		return hclog.NewNullLogger()
	}
	floor := hclog.Error
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		floor = hclog.Trace
	}
	il := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: name, Level: hclog.Off, Output: io.Discard})
	il.RegisterSink(slogSink{l: logger.With("raft_group", group), floor: floor})
	return il
}

type slogSink struct {
	l     *slog.Logger
	floor hclog.Level
}

func (s slogSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level == hclog.Error && nothingToSnapshot(args) {
		// Routine: the snapshot check counts log entries the state
		// machine has not applied yet; the next check takes it.
		level = hclog.Debug
	}
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
	s.l.Log(context.Background(), lv, msg, append([]any{"logger", name}, args...)...)
}

func nothingToSnapshot(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && errors.Is(err, raft.ErrNothingNewToSnapshot) {
			return true
		}
	}
	return false
}
