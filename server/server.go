// Package server assembles one ledgerd process: an embedded NATS server (or
// a connection to an external one), the node hosting the Raft groups, and
// the router. cmd/ledgerd parses flags into a Config; tests start the same
// thing in-process.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ledgerd/ledgerd/auth"
	"github.com/ledgerd/ledgerd/metrics"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/raftfsm"
	"github.com/ledgerd/ledgerd/router"
	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
	"github.com/ledgerd/ledgerd/transport/nodetls"
)

// DefaultShards is the shard count of a new cluster when none is given. On
// one node one shard is fastest for every load measured (docs/design.md):
// each more shard is another fsync stream on the same disk, and splits
// transfers into cross-shard sagas that cost three Raft commands instead of
// one. Shards pay off across nodes; use --shards for that.
const DefaultShards = 1

// Config configures a process.
type Config struct {
	NodeID        string
	DataDir       string
	NATSListen    string // embedded NATS address; "" with NATSURL set embeds none
	NATSURL       string // external NATS; overrides NATSListen
	RaftListen    string
	RaftAdvertise string
	// NATSClusterListen and NATSRoutes join the embedded NATS server to
	// the other nodes' (embedNATS).
	NATSClusterListen string
	NATSRoutes        []string
	// TLS, if set, makes the Raft port and the NATS cluster routes mutual
	// TLS between nodes of one CA (nodetls).
	TLS nodetls.Files
	// BootstrapExpect: the number of nodes that form a new cluster
	// (node.Config.BootstrapExpect); Join: add this new node to the
	// running cluster (node.Config.Join).
	BootstrapExpect int
	Join            bool
	Shards          uint32
	// Replicas is how many voters each shard group of a new cluster has,
	// placed on the nodes (node.Config.Replicas); 0: every node holds
	// every shard, as before placement. ledgerd's --replicas defaults to
	// DefaultReplicas.
	Replicas uint32
	Prefix   string
	Logger   *slog.Logger
	// RequestDeadline bounds one client request in the router (0:
	// router.DefaultRequestDeadline).
	RequestDeadline time.Duration
	// Snapshots is every Raft group's snapshot policy (zero: the defaults).
	Snapshots raftfsm.SnapshotPolicy
	// Providers is the path of the providers file (docs/security.md):
	// with it, clients authenticate and each is an operator or a provider
	// confined to its ledgers and id prefixes; without it every client is
	// an operator (a development setup).
	Providers string
	// ClientTLS, if set, is TLS on the client port (--nats-tls-*).
	ClientTLS ClientTLS
	// Insecure lets a multi-node node run without node TLS.
	Insecure bool
	// Salvage starts a single node whose storage is damaged from its last
	// good state instead of refusing to (node.Config.Salvage,
	// docs/storage.md).
	Salvage bool
	// SagaFault injects faults into saga messages (tests only).
	SagaFault func(to uint32, cmd *shard.Command) node.Fault
	// Metrics is the process's registry, served at /metrics (nil: Start
	// makes one, Server.Metrics). The node's groups and the router's
	// requests are registered in it until Close.
	Metrics *metrics.Registry
}

// ClientTLS is the embedded NATS server's TLS on the client port: its
// certificate and key, and optionally a CA whose certificate every client
// must show.
type ClientTLS struct {
	Cert, Key, CA string
}

// Enabled reports whether client TLS was asked for.
func (t ClientTLS) Enabled() bool { return t.Cert != "" || t.Key != "" || t.CA != "" }

// Server is a running process.
type Server struct {
	ns     *natsserver.Server
	nodeNC *nats.Conn
	rtNC   *nats.Conn
	node   *node.Node
	router *router.Router
	log    *slog.Logger
	url    string
	secret string // of the embedded server's internal user
	// natsOpts: the embedded server's options, which a reload of the
	// providers file copies with new accounts.
	natsOpts *natsserver.Options
	// providers: the path of the providers file and the policy in force
	// (nil: every client is an operator).
	providers string
	policy    atomic.Pointer[auth.Policy]
	prefix    string
	nodeID    string
	// metrics: the registry, and what Start registered in it.
	metrics    *metrics.Registry
	registered []prometheus.Collector
}

// Start starts everything and returns once every group has a leader.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Prefix == "" {
		cfg.Prefix = transport.DefaultPrefix
	}
	s := &Server{log: cfg.Logger, nodeID: cfg.NodeID, metrics: cfg.Metrics}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	var nodeTLS *tls.Config
	if cfg.TLS.Enabled() {
		if nodeTLS, err = nodetls.Load(cfg.TLS); err != nil {
			return nil, err
		}
	} else if cfg.BootstrapExpect > 1 || cfg.Join || cfg.NATSClusterListen != "" {
		if !cfg.Insecure {
			return nil, ErrNoNodeTLS
		}
		cfg.Logger.Warn("--insecure: no node TLS: the Raft port and the NATS cluster port accept anyone who reaches them, who can then forge the cluster's own messages and move money")
	}
	s.providers, s.prefix = cfg.Providers, cfg.Prefix
	if cfg.Providers != "" {
		p, err := auth.Load(cfg.Providers)
		if err != nil {
			return nil, err
		}
		s.policy.Store(p)
		cfg.Logger.Info("providers", "file", cfg.Providers, "providers", len(p.Providers()))
	} else {
		cfg.Logger.Warn("no --providers: every client is an operator and may move any account's money; give a providers file before serving anyone else")
	}
	var opts []nats.Option
	if cfg.NATSURL != "" {
		s.url = cfg.NATSURL
	} else {
		if s.secret, err = randomSecret(); err != nil {
			return nil, err
		}
		if s.natsOpts, err = natsOptions(cfg, s.secret, nodeTLS, s.policy.Load()); err != nil {
			return nil, err
		}
		if s.ns, err = embedNATS(s.natsOpts); err != nil {
			return nil, err
		}
		if p := s.policy.Load(); p != nil {
			if err := addImports(s.ns, p, cfg.Prefix); err != nil {
				return nil, err
			}
		}
		s.url = s.ns.ClientURL()
		opts = append(opts, nats.InProcessServer(s.ns), nats.UserInfo(internalUser, s.secret))
	}
	connect := func(name string) (*nats.Conn, error) {
		o := append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
		return nats.Connect(s.internalURL(), o...)
	}
	// Two connections, so a burst of client traffic queued on the router's
	// cannot delay the shards' saga messages.
	if s.nodeNC, err = connect("ledgerd-node-" + cfg.NodeID); err != nil {
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	if s.rtNC, err = connect("ledgerd-router-" + cfg.NodeID); err != nil {
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	s.node, err = node.Start(ctx, node.Config{
		NodeID: cfg.NodeID, DataDir: cfg.DataDir, RaftListen: cfg.RaftListen, RaftAdvertise: cfg.RaftAdvertise, RaftTLS: nodeTLS,
		Shards: cfg.Shards, Conn: s.nodeNC, Prefix: cfg.Prefix, Logger: cfg.Logger, SagaFault: cfg.SagaFault,
		Snapshots: cfg.Snapshots, BootstrapExpect: cfg.BootstrapExpect, Join: cfg.Join, Salvage: cfg.Salvage,
		Replicas: cfg.Replicas, Operator: s.operator,
	})
	if err != nil {
		return nil, err
	}
	rm, err := s.registerMetrics()
	if err != nil {
		return nil, err
	}
	// The router hands the commands of the shards this node leads to the
	// node directly (node.Node.Command), and sends the rest on NATS.
	rcfg := router.Config{Conn: s.rtNC, Prefix: cfg.Prefix, Logger: cfg.Logger, RequestDeadline: cfg.RequestDeadline, Metrics: rm, Local: s.node}
	if cfg.Providers != "" {
		rcfg.Policy = s.policy.Load
	}
	if s.router, err = router.Start(rcfg); err != nil {
		return nil, err
	}
	for !s.node.Ready() {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for shard leaders: %w", ctx.Err())
		case <-s.node.Failed():
			return nil, s.node.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return s, nil
}

// DefaultReplicas is ledgerd's --replicas: three voters a shard survive
// the loss of one node.
const DefaultReplicas = 3

// operator reports whether the requester a NATS service import names
// (auth.RequestInfoHeader) is an operator; without a providers file every
// client is one.
func (s *Server) operator(info string) bool {
	p := s.policy.Load()
	if p == nil {
		return true
	}
	id, err := p.Requester(info)
	return err == nil && id.Operator()
}

// internalUser is the embedded NATS user of the node and router. Its
// password is random per process: only in-process connections know it.
const internalUser = "ledgerd"

func randomSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// clientPermissions is what every other connection may do: send requests to
// the client API and the micro service discovery subjects, and receive its
// replies. The internal subjects (<prefix>.internal.>) carry saga commands
// that move money between shards; a client that could publish there could
// forge a credit.
func clientPermissions(prefix string) *natsserver.Permissions {
	return &natsserver.Permissions{
		Publish:   &natsserver.SubjectPermission{Allow: []string{prefix + ".v1.>", "$SRV.>"}},
		Subscribe: &natsserver.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
}

// ErrNoNodeTLS: a multi-node node without node TLS and without --insecure.
var ErrNoNodeTLS = errors.New("a node of a multi-node cluster needs node TLS (--tls-cert, --tls-key, --tls-ca): without it anyone who reaches the Raft or NATS cluster port can forge the cluster's messages; --insecure runs without it")

// natsOptions are the embedded NATS server's options: addr, the protocol's
// max payload, client TLS, and who may connect. Without a policy,
// connections without credentials are clients with clientPermissions (a
// development setup). With one, the accounts of policy.NATSAccounts: no
// anonymous connection, each provider in its own account.
//
// With NATSClusterListen the server also listens for the other nodes' NATS
// servers and dials NATSRoutes: one NATS cluster, in which every node's
// subscriptions (shard leaders, routers) are reachable from every node.
// With nodeTLS the routes are mutual TLS between nodes of the cluster's CA;
// without, the cluster port carries no authentication: keep it on the
// nodes' network.
func natsOptions(cfg Config, secret string, nodeTLS *tls.Config, policy *auth.Policy) (*natsserver.Options, error) {
	addr, prefix := cfg.NATSListen, cfg.Prefix
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats listen port %q: %w", portStr, err)
	}
	if port == 0 {
		port = natsserver.RANDOM_PORT
	} else {
		// nats-server reports a busy port only in its log; say it here.
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS cannot listen on %s: %w", addr, err)
		}
		l.Close()
	}
	opts := &natsserver.Options{}
	if policy != nil {
		if err := setAccounts(opts, policy, prefix, secret); err != nil {
			return nil, err
		}
	} else {
		opts.Users = []*natsserver.User{
			{Username: internalUser, Password: secret},
			{Username: "client", Permissions: clientPermissions(prefix)},
		}
		opts.NoAuthUser = "client"
	}
	opts.ServerName, opts.Host, opts.Port = "ledgerd-"+cfg.NodeID, host, port
	opts.MaxPayload, opts.MaxPending = transport.MessageBytesMax, 4*transport.MessageBytesMax
	opts.NoSigs, opts.NoLog = true, true
	if cfg.ClientTLS.Enabled() {
		if cfg.ClientTLS.Cert == "" || cfg.ClientTLS.Key == "" {
			return nil, errors.New("client TLS needs both --nats-tls-cert and --nats-tls-key")
		}
		tc, err := natsserver.GenTLSConfig(&natsserver.TLSConfigOpts{
			CertFile: cfg.ClientTLS.Cert, KeyFile: cfg.ClientTLS.Key, CaFile: cfg.ClientTLS.CA,
			Verify: cfg.ClientTLS.CA != "", Timeout: clientTLSTimeout.Seconds(),
		})
		if err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = tc, true, cfg.ClientTLS.CA != "", clientTLSTimeout.Seconds()
	}
	if cfg.NATSClusterListen != "" {
		ch, cp, err := net.SplitHostPort(cfg.NATSClusterListen)
		if err != nil {
			return nil, fmt.Errorf("nats cluster listen address %q: %w", cfg.NATSClusterListen, err)
		}
		port, err := strconv.Atoi(cp)
		if err != nil {
			return nil, fmt.Errorf("nats cluster listen port %q: %w", cp, err)
		}
		opts.Cluster = natsserver.ClusterOpts{Name: "ledgerd-" + prefix, Host: ch, Port: port}
		if nodeTLS != nil {
			opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = nodeTLS.Clone(), routeTLSTimeout.Seconds()
		}
		var routes []string
		for _, r := range cfg.NATSRoutes {
			if !strings.Contains(r, "://") {
				r = "nats://" + r
			}
			routes = append(routes, r)
		}
		opts.Routes = natsserver.RoutesFromStr(strings.Join(routes, ","))
	} else if len(cfg.NATSRoutes) > 0 {
		return nil, errors.New("--nats-routes needs --nats-cluster-listen")
	}
	return opts, nil
}

// setAccounts sets opts' accounts and users to policy's.
func setAccounts(opts *natsserver.Options, policy *auth.Policy, prefix, secret string) error {
	conf, err := policy.NATSAccounts(prefix, auth.User{User: internalUser, Password: secret}, false)
	if err != nil {
		return err
	}
	var parsed natsserver.Options
	if err := parsed.ProcessConfigString(string(conf)); err != nil {
		return fmt.Errorf("providers: nats accounts: %w", err)
	}
	opts.Accounts, opts.Users, opts.Nkeys, opts.NoAuthUser = parsed.Accounts, parsed.Users, parsed.Nkeys, ""
	return nil
}

// addImports gives each account of policy its imports from the internal
// account (auth.Policy.Imports).
func addImports(ns *natsserver.Server, policy *auth.Policy, prefix string) error {
	internal, err := ns.LookupAccount(auth.InternalAccount)
	if err != nil {
		return fmt.Errorf("providers: %w", err)
	}
	for name, imports := range policy.Imports(prefix) {
		acc, err := ns.LookupAccount(name)
		if err != nil {
			return fmt.Errorf("providers: account %s: %w", name, err)
		}
		for _, im := range imports {
			claim := &jwt.Import{Subject: jwt.Subject(im.Subject), Account: auth.InternalAccount, Type: jwt.Service, Share: im.Share}
			if err := acc.AddServiceImportWithClaim(internal, im.Subject, im.Subject, claim); err != nil {
				return fmt.Errorf("providers: account %s imports %s: %w", name, im.Subject, err)
			}
		}
	}
	return nil
}

// clientTLSTimeout bounds a client's TLS handshake.
const clientTLSTimeout = 2 * time.Second

// embedNATS starts a NATS server with opts.
func embedNATS(opts *natsserver.Options) (*natsserver.Server, error) {
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not start")
	}
	return ns, nil
}

// ReloadProviders reads the providers file again and puts it in force:
// new users may connect, and the connections of removed users are closed
// by the NATS server. A bad file changes nothing and is reported. With an
// external NATS the operator reloads its configuration; the router's
// rules change here.
func (s *Server) ReloadProviders() error {
	if s.providers == "" {
		return errors.New("no --providers file to reload")
	}
	p, err := auth.Load(s.providers)
	if err != nil {
		return err
	}
	if s.ns != nil {
		opts := s.natsOpts.Clone()
		if err := setAccounts(opts, p, s.prefix, s.secret); err != nil {
			return err
		}
		if err := s.ns.ReloadOptions(opts); err != nil {
			return fmt.Errorf("reload NATS accounts: %w", err)
		}
		// The reload dropped every import; a request in between is
		// answered no responders, which clients retry.
		if err := addImports(s.ns, p, s.prefix); err != nil {
			return err
		}
		s.natsOpts = opts
	}
	s.policy.Store(p)
	s.log.Info("providers reloaded", "file", s.providers, "providers", len(p.Providers()))
	return nil
}

// routeTLSTimeout bounds a NATS route's TLS handshake.
const routeTLSTimeout = 2 * time.Second

// ConnectInternal opens an in-process connection with the node's rights on
// the embedded NATS server (tests that play a shard use it); it fails when
// NATS is external.
func (s *Server) ConnectInternal() (*nats.Conn, error) {
	if s.ns == nil {
		return nil, errors.New("no embedded NATS server")
	}
	return nats.Connect(s.internalURL(), nats.InProcessServer(s.ns), nats.UserInfo(internalUser, s.secret))
}

// internalURL is the URL of the node's and router's own connections: an
// in-process connection to the embedded server needs no TLS, which a
// tls:// URL would ask for (and check the client port's certificate).
func (s *Server) internalURL() string {
	if s.ns == nil {
		return s.url
	}
	return strings.Replace(s.url, "tls://", "nats://", 1)
}

// ClientURL is the NATS URL clients connect to.
func (s *Server) ClientURL() string { return s.url }

// Node returns the node, for tests and status.
func (s *Server) Node() *node.Node { return s.node }

// Close stops in order: no new requests, drain NATS, stop Raft, stop NATS.
func (s *Server) Close() error {
	var errs []error
	if s.router != nil {
		errs = append(errs, s.router.Stop())
	}
	for _, nc := range []*nats.Conn{s.rtNC, s.nodeNC} {
		if nc != nil {
			_ = nc.Drain()
		}
	}
	if s.node != nil {
		errs = append(errs, s.node.Close())
	}
	for _, nc := range []*nats.Conn{s.rtNC, s.nodeNC} {
		if nc != nil {
			nc.Close()
		}
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	for _, c := range s.registered {
		s.metrics.Registerer().Unregister(c)
	}
	return errors.Join(errs...)
}
