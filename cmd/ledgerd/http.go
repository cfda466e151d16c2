package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ledgerd/ledgerd/metrics"
	"github.com/ledgerd/ledgerd/node"
	"github.com/ledgerd/ledgerd/server"
)

// httpOptions are the operator endpoints' flags.
type httpOptions struct {
	listen, tokenFile string
	removeGrace       time.Duration
}

// Limits of the operator endpoints.
const (
	// removeNodeTimeout bounds one /admin/remove-node request besides its
	// grace period.
	removeNodeTimeout = time.Minute
	// tokenBytesMin: a shorter token could be guessed.
	tokenBytesMin = 16
	// readHeaderTimeout bounds a request's headers, so an idle connection
	// cannot hold the endpoint.
	readHeaderTimeout = 10 * time.Second
	// httpCloseTimeout bounds the wait for requests in flight at a stop.
	httpCloseTimeout = 5 * time.Second
	// readyTimeout bounds one /readyz: a follower asks its leaders, who
	// answer within a second (wire.NodeStatuses).
	readyTimeout = 2 * time.Second
)

// operator serves the operator endpoints: liveness, readiness (every group
// has a leader and this node has caught up, server.Ready), the metrics,
// the removal of a node that is gone for good and the Go profiler. The
// last two change or expose the node, so they need the
// bearer token of --http-token-file, and without one they are not served
// at all. A browser cannot set that header on a cross-origin form post, so
// a page the operator visits cannot use them either.
type operator struct {
	srv    atomic.Pointer[server.Server] // nil until the node is ready
	http   *http.Server
	grace  time.Duration
	log    *slog.Logger
	closed chan struct{}
}

// startHTTP listens on ho.listen (nothing when empty) and serves /healthz
// and /metrics (the process's, then the node's too) at once; the rest
// answers 503 until serve hands it the server.
func startHTTP(ho httpOptions, reg *metrics.Registry, log *slog.Logger) (*operator, error) {
	o := &operator{grace: ho.removeGrace, log: log, closed: make(chan struct{})}
	if ho.listen == "" {
		close(o.closed)
		return o, nil
	}
	var token []byte
	if ho.tokenFile != "" {
		var err error
		if token, err = readToken(ho.tokenFile); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("tcp", ho.listen)
	if err != nil {
		return nil, fmt.Errorf("--http-listen: %w", err)
	}
	o.http = &http.Server{Handler: o.mux(token, reg), ReadHeaderTimeout: readHeaderTimeout}
	go func() {
		defer close(o.closed)
		if err := o.http.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Error("operator endpoints stopped", "err", err)
		}
	}()
	log.Info("operator endpoints", "http", l.Addr().String(), "admin", token != nil)
	return o, nil
}

// readToken reads the bearer token: the file's content, surrounding
// whitespace (a final newline) left out.
func readToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--http-token-file: %w", err)
	}
	token := []byte(strings.TrimSpace(string(b)))
	if len(token) < tokenBytesMin {
		return nil, fmt.Errorf("--http-token-file %s: the token must be at least %d characters", path, tokenBytesMin)
	}
	return token, nil
}

func (o *operator) serve(srv *server.Server) { o.srv.Store(srv) }

func (o *operator) close() {
	if o.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), httpCloseTimeout)
	defer cancel()
	_ = o.http.Shutdown(ctx)
	<-o.closed
}

func (o *operator) mux(token []byte, reg *metrics.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", o.ready)
	// Open like the probes: the metrics say how the node does, never
	// what the ledger holds (docs/security.md).
	mux.Handle("/metrics", reg.Handler())
	if token == nil {
		return mux // no /admin, no /debug: 404
	}
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), token) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="ledgerd"`)
				http.Error(w, "unauthorized: send Authorization: Bearer <the token of --http-token-file>", http.StatusUnauthorized)
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("POST /admin/remove-node", auth(o.removeNode))
	mux.HandleFunc("/debug/pprof/", auth(pprof.Index))
	mux.HandleFunc("/debug/pprof/cmdline", auth(pprof.Cmdline))
	mux.HandleFunc("/debug/pprof/profile", auth(pprof.Profile))
	mux.HandleFunc("/debug/pprof/symbol", auth(pprof.Symbol))
	mux.HandleFunc("/debug/pprof/trace", auth(pprof.Trace))
	return mux
}

// ready answers 200 once the node is ready (server.Ready), 503 with the
// reason before.
func (o *operator) ready(w http.ResponseWriter, r *http.Request) {
	srv := o.srv.Load()
	if srv == nil {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if err := srv.Ready(ctx); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// removeNode removes node ?id= from every group, once it has stayed silent
// for the grace period, or at once with ?force=1.
func (o *operator) removeNode(w http.ResponseWriter, r *http.Request) {
	srv := o.srv.Load()
	if srv == nil {
		http.Error(w, "starting: ask again once the node is ready", http.StatusServiceUnavailable)
		return
	}
	q := r.URL.Query()
	id := q.Get("id")
	if id == "" {
		http.Error(w, "remove-node needs ?id=<node id>", http.StatusBadRequest)
		return
	}
	opts := node.RemoveOptions{Grace: o.grace, Force: q.Get("force") == "1"}
	ctx, cancel := context.WithTimeout(r.Context(), o.grace+removeNodeTimeout)
	defer cancel()
	groups, err := srv.Node().RemoveNode(ctx, id, opts)
	switch {
	case errors.Is(err, node.ErrNotMember):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, node.ErrNodeUp), errors.Is(err, node.ErrHeardFrom), errors.Is(err, node.ErrLastVoter):
		http.Error(w, err.Error(), http.StatusConflict)
	case errors.Is(err, context.DeadlineExceeded):
		http.Error(w, err.Error()+" (a quorum of the remaining voters must be up; ask again)", http.StatusGatewayTimeout)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	default:
		o.log.Info("removed a node", "node", id, "groups", groups, "forced", opts.Force)
		fmt.Fprintf(w, "removed %s from %d groups\n", id, groups)
	}
}
