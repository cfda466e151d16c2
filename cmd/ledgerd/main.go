// Command ledgerd runs a ledger cluster node. With no flags it is a whole
// single-node cluster: embedded NATS on 127.0.0.1:4222, the router, the meta
// group and the shards, data in ./data.
//
// Exit status: 0 after a requested stop (SIGTERM or SIGINT, even while
// starting), 1 when the node fails, 2 on a usage mistake (a bad flag,
// argument or LEDGER_* variable), which is printed with the usage.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/internal/buildinfo"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/server"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

// Exit statuses.
const (
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs ledgerd with args and returns its exit status.
func execute(args []string, stdout, stderr io.Writer) int {
	cmd, ran := command(stderr)
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	switch err := cmd.Execute(); {
	case err == nil:
		return 0
	case *ran:
		return exitFailed // logged by RunE
	default:
		// cobra printed the error; the usage goes with it, to stderr
		// (cobra would print it to stdout, where --help goes).
		fmt.Fprint(stderr, cmd.UsageString())
		return exitUsage
	}
}

// options are the flags that are not server.Config fields.
type options struct {
	logLevel, logFormat string
	shards              uint32
	http                httpOptions
}

// command returns the ledgerd command and whether its RunE ran: an error
// before that is a usage mistake, which cobra prints with the usage; once
// RunE runs, errors are the node's and are logged.
func command(logOut io.Writer) (*cobra.Command, *bool) {
	var cfg server.Config
	var o options
	ran := new(bool)
	cmd := &cobra.Command{
		Use:     "ledgerd",
		Short:   "Run a ledgerd node (by default a whole single-node cluster)",
		Long:    "Every flag can also be set with an environment variable LEDGER_<NAME>, e.g. LEDGER_DATA_DIR.",
		Version: buildinfo.Get().String(),
		Args:    cobra.NoArgs,
		// Errors before RunE are usage mistakes: cobra prints them, execute
		// adds the usage.
		SilenceUsage: true,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := flagsFromEnv(cmd.Flags()); err != nil {
				return err
			}
			return o.check(&cfg)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			*ran = true
			cmd.SilenceErrors = true // the node's errors are logged
			cfg.Logger = o.logger(logOut)
			cfg.Shards = o.shards
			err := run(cfg, o.http)
			if err != nil {
				cfg.Logger.Error("ledgerd failed", "err", err)
			}
			return err
		},
	}
	addFlags(cmd.Flags(), &cfg, &o)
	return cmd, ran
}

func addFlags(f *pflag.FlagSet, cfg *server.Config, o *options) {
	f.StringVar(&cfg.NodeID, "node-id", "node-1", "stable name of this node (its Raft server id): up to 64 letters, digits, - or _")
	f.StringVar(&cfg.DataDir, "data-dir", "./data", "directory of the Raft logs and snapshots")
	f.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "address of the embedded NATS server")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "use this external NATS instead of embedding one")
	f.StringVar(&cfg.RaftListen, "raft-listen", "127.0.0.1:7400", "address of the Raft port (every group shares it)")
	f.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "Raft address peers dial (default: the listen address)")
	f.StringVar(&cfg.NATSClusterListen, "nats-cluster-listen", "", "address on which the embedded NATS server accepts the other nodes' NATS servers (multi-node; mutual TLS with --tls-cert)")
	f.StringSliceVar(&cfg.NATSRoutes, "nats-routes", nil, "the other nodes' --nats-cluster-listen addresses, comma separated")
	f.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 1, "number of nodes that form a new cluster; each waits until it has found them all (a node with data never bootstraps again)")
	f.BoolVar(&cfg.Join, "join", false, "add this new node (no data yet) to the cluster running on this NATS: every group's leader adds it as a nonvoter, then a voter once it has caught up")
	f.StringVar(&cfg.TLS.Cert, "tls-cert", "", "this node's PEM certificate, issued by the cluster CA for server and client auth and naming --tls-server-name: makes the Raft port and the NATS cluster routes mutual TLS")
	f.StringVar(&cfg.TLS.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&cfg.TLS.CA, "tls-ca", "", "the cluster CA's PEM certificate: peers must show a certificate it issued")
	f.StringVar(&cfg.TLS.ServerName, "tls-server-name", nodetls.DefaultServerName, "the DNS name every node certificate carries, checked by the dialing node")
	f.BoolVar(&cfg.Insecure, "insecure", false, "let a multi-node node run without node TLS (--tls-cert, --tls-key, --tls-ca): anyone who reaches its Raft or NATS cluster port can forge the cluster's messages")
	f.BoolVar(&cfg.Salvage, "salvage", false, "start a single node whose storage is damaged from its last good state instead of refusing to; acknowledged transfers after the damage may be lost (docs/storage.md)")
	f.StringVar(&cfg.Providers, "providers", "", "the providers `file`: clients authenticate, each an operator or a provider confined to its ledgers and id prefixes (without it every client is an operator)")
	f.StringVar(&cfg.ClientTLS.Cert, "nats-tls-cert", "", "PEM certificate of the embedded NATS server's client port: clients connect with TLS")
	f.StringVar(&cfg.ClientTLS.Key, "nats-tls-key", "", "the private key of --nats-tls-cert (PEM)")
	f.StringVar(&cfg.ClientTLS.CA, "nats-tls-ca", "", "PEM CA whose certificate every client must show on the client port (optional)")
	f.Uint32Var(&cfg.Replicas, "replicas", server.DefaultReplicas, "voters of each shard group of a new cluster, placed on the nodes (fewer while the cluster has fewer nodes); 0: every node holds every shard")
	f.Uint32Var(&o.shards, "shards", server.DefaultShards, "number of shards when the cluster is created (fixed afterwards)")
	f.StringVar(&cfg.Prefix, "prefix", transport.DefaultPrefix, "NATS subject prefix")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (debug shows Raft's own logs too)")
	f.StringVar(&o.logFormat, "log-format", "text", "text or json")
	f.StringVar(&o.http.listen, "http-listen", "", "serve the operator endpoints on this address: /healthz, /readyz and /metrics, and with --http-token-file POST /admin/remove-node and /debug/pprof (off when empty)")
	f.StringVar(&o.http.tokenFile, "http-token-file", "", "`file` holding the bearer token that /admin/* and /debug/* require (without it they are not served)")
	f.DurationVar(&o.http.removeGrace, "remove-grace", node.RemoveGraceDefault, "how long /admin/remove-node watches a node that does not answer before it removes it (?force=1 skips it)")
	f.Uint64Var(&cfg.Snapshots.Threshold, "snapshot-threshold", 4096, "Raft entries between snapshots of a group")
	f.DurationVar(&cfg.Snapshots.Interval, "snapshot-interval", 30*time.Second, "how often a group checks whether to snapshot (jittered up to twice that)")
	f.Uint64Var(&cfg.Snapshots.TrailingLogs, "snapshot-trailing-logs", 2048, "Raft entries kept behind a snapshot")
}

// check refuses the values a flag's type lets through but ledgerd does not
// take, before anything starts (NATS would otherwise be first to complain,
// in its own words).
func (o *options) check(cfg *server.Config) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", o.logFormat)
	}
	if err := transport.ValidNodeID(cfg.NodeID); err != nil {
		return fmt.Errorf("--node-id: %w", err)
	}
	if o.shards == 0 {
		return errors.New("--shards must be at least 1")
	}
	if cfg.BootstrapExpect < 1 {
		return errors.New("--bootstrap-expect must be at least 1")
	}
	if o.http.tokenFile != "" && o.http.listen == "" {
		return errors.New("--http-token-file needs --http-listen")
	}
	if o.http.removeGrace < 0 {
		return errors.New("--remove-grace must not be negative")
	}
	return nil
}

func (o *options) logger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(o.logLevel)) // checked by check
	opts := &slog.HandlerOptions{Level: level}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// flagsFromEnv sets every flag not given on the command line from
// LEDGER_<NAME> (dashes become underscores).
func flagsFromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Name == "version" {
			return
		}
		name := "LEDGER_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && !f.Changed && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}
