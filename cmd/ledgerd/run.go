package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ledgerd/ledgerd/metrics"
	"github.com/ledgerd/ledgerd/server"
)

// startTimeout bounds server.Start: forming a cluster waits for its peers.
const startTimeout = 2 * time.Minute

// run serves until SIGTERM or SIGINT, or until the node fails (Node.Failed:
// a group stopped that it cannot repair). The operator endpoints listen first,
// so /healthz answers from the start and a taken port stops ledgerd before
// anything else is started. A stop asked for while starting is a clean
// exit, not a failure.
func run(cfg server.Config, ho httpOptions) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reg, err := metrics.New() // served from the start, like /healthz
	if err != nil {
		return err
	}
	cfg.Metrics = reg
	ops, err := startHTTP(ho, reg, cfg.Logger)
	if err != nil {
		return err
	}
	defer ops.close()
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	start := time.Now()
	srv, err := server.Start(startCtx, cfg)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			cfg.Logger.Info("stopped before the node was ready")
			return nil
		}
		return err
	}
	ops.serve(srv)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg.Logger.Info("ledgerd ready", "node", cfg.NodeID, "nats", srv.ClientURL(), "raft", cfg.RaftListen,
		"data", cfg.DataDir, "startup", time.Since(start).Round(time.Millisecond))
	for {
		select {
		case <-hup:
			// A bad file changes nothing: the operator fixes it and
			// signals again.
			if err := srv.ReloadProviders(); err != nil {
				cfg.Logger.Error("SIGHUP: providers not reloaded", "err", err)
			}
		case <-ctx.Done():
			cfg.Logger.Info("stopping")
			return srv.Close()
		case <-srv.Node().Failed():
			// A group stopped and this node cannot repair it (a single
			// node whose storage was found damaged): exit non-zero, so
			// that whoever supervises it sees it, rather than answer for
			// the other groups only.
			return errors.Join(srv.Node().Err(), srv.Close())
		}
	}
}
