// Command ledgerd runs a ledger cluster node. With no flags it is a whole
// single-node cluster: embedded NATS on 127.0.0.1:4222, the router, the meta
// group and the shards, data in ./data.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

func main() {
	if err := command().Execute(); err != nil {
		os.Exit(1)
	}
}

func command() *cobra.Command {
	var cfg server.Config
	var logLevel, httpListen string
	var shards uint32
	cmd := &cobra.Command{
		Use:           "ledgerd",
		Short:         "Run a ledgerd node (by default a whole single-node cluster)",
		Long:          "Every flag can also be set with an environment variable LEDGER_<NAME>, e.g. LEDGER_DATA_DIR.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return flagsFromEnv(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg.Shards = shards
			err := run(cfg, httpListen)
			if err != nil {
				cfg.Logger.Error("ledgerd failed", "err", err)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeID, "node-id", "node-1", "stable name of this node (its Raft server id): up to 64 letters, digits, - or _")
	f.StringVar(&cfg.DataDir, "data-dir", "./data", "directory of the Raft logs and snapshots")
	f.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "address of the embedded NATS server")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "use this external NATS instead of embedding one")
	f.StringVar(&cfg.RaftListen, "raft-listen", "127.0.0.1:7400", "address of the Raft port (every group shares it)")
	f.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "Raft address peers dial (default: the listen address)")
	f.StringVar(&cfg.NATSClusterListen, "nats-cluster-listen", "", "address on which the embedded NATS server accepts the other nodes' NATS servers (multi-node; mutual TLS with --tls-cert, otherwise unauthenticated)")
	f.StringSliceVar(&cfg.NATSRoutes, "nats-routes", nil, "the other nodes' --nats-cluster-listen addresses, comma separated")
	f.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 1, "number of nodes that form a new cluster; each waits until it has found them all (a node with data never bootstraps again)")
	f.BoolVar(&cfg.Join, "join", false, "add this new node (no data yet) to the cluster running on this NATS: every group's leader adds it as a nonvoter, then a voter once it has caught up")
	f.StringVar(&cfg.TLS.Cert, "tls-cert", "", "this node's PEM certificate, issued by the cluster CA for server and client auth and naming --tls-server-name: makes the Raft port and the NATS cluster routes mutual TLS")
	f.StringVar(&cfg.TLS.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&cfg.TLS.CA, "tls-ca", "", "the cluster CA's PEM certificate: peers must show a certificate it issued")
	f.StringVar(&cfg.TLS.ServerName, "tls-server-name", nodetls.DefaultServerName, "the DNS name every node certificate carries, checked by the dialing node")
	f.Uint32Var(&shards, "shards", server.DefaultShards, "number of shards when the cluster is created (fixed afterwards)")
	f.StringVar(&cfg.Prefix, "prefix", "ledger", "NATS subject prefix")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&httpListen, "http-listen", "", "serve /healthz, /readyz, POST /admin/remove-node and /debug/pprof on this address, for the operator alone (off when empty)")
	f.Uint64Var(&cfg.Snapshots.Threshold, "snapshot-threshold", 4096, "Raft entries between snapshots of a group")
	f.DurationVar(&cfg.Snapshots.Interval, "snapshot-interval", 30*time.Second, "how often a group checks whether to snapshot (jittered up to twice that)")
	f.Uint64Var(&cfg.Snapshots.TrailingLogs, "snapshot-trailing-logs", 2048, "Raft entries kept behind a snapshot")
	return cmd
}

// flagsFromEnv sets every flag not given on the command line from
// LEDGER_<NAME> (dashes become underscores).
func flagsFromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		name := "LEDGER_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && !f.Changed && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", name, e)
			}
		}
	})
	return err
}

func run(cfg server.Config, httpListen string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	srv, err := server.Start(startCtx, cfg)
	if err != nil {
		return err
	}
	if httpListen != "" {
		go serveHTTP(httpListen, srv, cfg.Logger)
	}
	cfg.Logger.Info("ledgerd ready", "node", cfg.NodeID, "nats", srv.ClientURL(), "raft", cfg.RaftListen,
		"data", cfg.DataDir, "startup", time.Since(start).Round(time.Millisecond))
	<-ctx.Done()
	cfg.Logger.Info("stopping")
	return srv.Close()
}

// removeNodeTimeout bounds one /admin/remove-node request.
const removeNodeTimeout = time.Minute

// serveHTTP serves the operator endpoints: liveness, readiness (every group
// has a leader), the removal of a node that is gone for good, and the Go
// profiler. They are for the operator alone: keep the address private.
func serveHTTP(addr string, srv *server.Server, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !srv.Node().Ready() {
			http.Error(w, "a group has no leader", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("POST /admin/remove-node", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if id == "" {
			http.Error(w, "remove-node needs ?id=<node id>", http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), removeNodeTimeout)
		defer cancel()
		groups, err := srv.Node().RemoveNode(ctx, id)
		switch {
		case errors.Is(err, node.ErrNotMember):
			http.Error(w, err.Error(), http.StatusNotFound)
		case errors.Is(err, node.ErrNodeUp), errors.Is(err, node.ErrLastVoter):
			http.Error(w, err.Error(), http.StatusConflict)
		case errors.Is(err, context.DeadlineExceeded):
			http.Error(w, err.Error()+" (a quorum of the remaining voters must be up; ask again)", http.StatusGatewayTimeout)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			fmt.Fprintf(w, "removed %s from %d groups\n", id, groups)
		}
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	if err := http.ListenAndServe(addr, mux); err != nil {
		log.Error("http endpoint", "err", err)
	}
}
