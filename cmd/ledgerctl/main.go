// Command ledgerctl is the command line of a ledgerd cluster: it creates and
// looks up accounts and transfers, shows the cluster's status and its
// conservation of money, and runs the load benchmark (`ledgerctl bench`).
// It talks to the cluster only over NATS, through package client, exactly as
// a payment provider does, with the credentials its flags give.
//
// Exit status: 0 on success; 1 on any error, on a result code other than ok
// or exists, and on a failed conservation check; 2 on a usage mistake (an
// unknown command or flag, a bad flag value), which is printed with where
// to find the usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/internal/buildinfo"
	"github.com/ledgerd/ledgerd/transport"
)

const serverDefault = "nats://127.0.0.1:4222"

// Exit statuses.
const (
	exitFailed = 1
	exitUsage  = 2
)

// errReported fails the command after its output already said why.
var errReported = errors.New("failed")

// usageError is a mistake in the command line: exit 2, with a pointer to
// the usage.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, &app{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

// execute runs ledgerctl with args, prints its error, and returns its exit
// status.
func execute(ctx context.Context, a *app, args []string) int {
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if !errors.Is(err, errReported) {
		fmt.Fprintln(a.stderr, "ledgerctl:", err)
	}
	var ue usageError
	if errors.As(err, &ue) || !a.ran {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	}
	return exitFailed
}

// app holds the global flags and where output goes.
type app struct {
	server, prefix, output string
	timeout                time.Duration
	creds                  client.Credentials
	stdout, stderr         io.Writer
	// ran: a command's RunE started, so its errors are not usage mistakes
	// unless it says so (usageError).
	ran bool
	// denied gets NATS's refusal of a subject: nothing of the cluster
	// serves it for this connection.
	denied chan error
}

// envPrefix names the environment variables of the global flags:
// LEDGERCTL_<FLAG>, dashes as underscores (LEDGERCTL_TLS_CA). --server
// also reads LEDGER_SERVER, its older name.
const envPrefix = "LEDGERCTL_"

func newRootCmd(a *app) *cobra.Command {
	a.denied = make(chan error, 1)
	root := &cobra.Command{
		Use:           "ledgerctl",
		Short:         "Operate and measure a ledgerd cluster over NATS",
		Long:          "Every global flag can also be set with an environment variable LEDGERCTL_<NAME>, e.g. LEDGERCTL_SERVER or LEDGERCTL_PASSWORD.",
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true, // a failed request is not a usage mistake; execute points to the usage
		SilenceErrors: true, // execute prints errors once
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := flagsFromEnv(cmd.Root().PersistentFlags()); err != nil {
				return err
			}
			if a.output != "table" && a.output != "json" {
				return fmt.Errorf("--output %q: want table or json", a.output)
			}
			if _, err := a.creds.Options(); err != nil {
				return err
			}
			// cobra checks these after this hook; they are usage mistakes.
			if err := cmd.ValidateRequiredFlags(); err != nil {
				return err
			}
			if err := cmd.ValidateFlagGroups(); err != nil {
				return err
			}
			a.ran = true
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.server, "server", serverDefault, "NATS URL of the cluster; a comma-separated list to reconnect among (env LEDGERCTL_SERVER or LEDGER_SERVER)")
	pf.StringVar(&a.prefix, "prefix", transport.DefaultPrefix, "subject prefix of the cluster")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "give up a request after this long, retries included (bench: per batch)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&a.creds.User, "user", "", "NATS user name (with --password)")
	pf.StringVar(&a.creds.Password, "password", "", "NATS password (prefer env LEDGERCTL_PASSWORD: a flag shows in the process list)")
	pf.StringVar(&a.creds.NKeySeedFile, "nkey", "", "`file` holding the NKey seed to authenticate with")
	pf.StringVar(&a.creds.CredsFile, "creds", "", "NATS creds `file` (user JWT and NKey seed)")
	pf.StringVar(&a.creds.TLSCA, "tls-ca", "", "PEM `file` of the CA of the cluster's client port (TLS)")
	pf.StringVar(&a.creds.TLSCert, "tls-cert", "", "PEM `file` of this client's certificate, for a cluster that asks for one")
	pf.StringVar(&a.creds.TLSKey, "tls-key", "", "PEM `file` of the key of --tls-cert")
	root.AddCommand(newAccountCmd(a), newTransferCmd(a), newStatusCmd(a), newShardsCmd(a), newNodesCmd(a), newBenchCmd(a), newVersionCmd(a))
	return root
}

// flagsFromEnv sets every flag of fs not given on the command line from
// LEDGERCTL_<NAME>.
func flagsFromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok && f.Name == "server" {
			name = "LEDGER_SERVER"
			v, ok = os.LookupEnv(name)
		}
		if ok && !f.Changed && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = usagef("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

// suggestDistance is cobra's own default: how many edits away an unknown
// command may be from one it suggests.
const suggestDistance = 2

// group makes cmd a group of subcommands that refuses an unknown one
// (cobra would print the help and succeed) and shows its help without one.
func group(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = suggestDistance
		}
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return usageError{errors.New(msg)}
	}
	return cmd
}

// dial opens a NATS connection to --server with the credentials of the
// flags. NATS's refusal of a subject goes to a.denied rather than to
// stderr, once.
func (a *app) dial() (*nats.Conn, error) {
	return client.Connect(a.server, a.creds, nats.Name("ledgerctl"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			select {
			case a.denied <- err:
			default:
			}
			return
		}
		fmt.Fprintln(a.stderr, "ledgerctl: nats:", err)
	}))
}

func (a *app) client(nc *nats.Conn) *client.Client {
	return client.New(nc, client.WithPrefix(a.prefix))
}

// guard returns ctx canceled as soon as NATS refuses a subject of ours,
// with errDenied as its cause: retrying would only be refused again.
func (a *app) guard(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case err := <-a.denied:
			cancel(fmt.Errorf("nothing serves prefix %q for this connection on %s: NATS refused the subject (%w); check --prefix, and the credentials", a.prefix, a.server, err))
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// do runs fn with a client on a connection of its own, under --timeout.
// When the cluster does not answer in time it asks the cluster's status
// why (a shard without a leader).
func (a *app) do(ctx context.Context, fn func(ctx context.Context, c *client.Client) error) error {
	return a.doConn(ctx, func(ctx context.Context, _ *nats.Conn, c *client.Client) error { return fn(ctx, c) })
}

// doConn is do with the connection too, for the requests the client does
// not make (the meta leader's operator subjects, node/nodeops).
func (a *app) doConn(ctx context.Context, fn func(ctx context.Context, nc *nats.Conn, c *client.Client) error) error {
	nc, err := a.dial()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := a.guard(ctx)
	defer cancel()
	if err := a.probe(ctx, nc); err != nil {
		return a.explain(ctx, nc, err)
	}
	rctx, rcancel := context.WithTimeout(ctx, a.timeout)
	defer rcancel()
	err = fn(rctx, nc, a.client(nc))
	return a.explain(ctx, nc, err)
}

// probeTimeout bounds the probe; a cluster slower than that is left to the
// request's own --timeout.
const probeTimeout = 2 * time.Second

// probe sends an empty lookup, which every router answers at once without
// asking a shard, to tell a prefix nothing serves (no responders, or NATS
// refuses the subject) at once rather than retry until --timeout as the
// client does while a cluster restarts.
func (a *app) probe(ctx context.Context, nc *nats.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	body, err := transport.Marshal(&transport.LookupRequest{IDs: []string{}})
	if err != nil {
		return err
	}
	_, err = nc.RequestWithContext(ctx, transport.Subjects{Prefix: a.prefix}.AccountsLookup(), body)
	if errors.Is(err, nats.ErrNoResponders) {
		return err
	}
	return nil // answered, or slow: the request will tell
}

// explainTimeout bounds the status request that explains a failure.
const explainTimeout = 6 * time.Second

// explain replaces a bare context error with what stopped the request.
func (a *app) explain(ctx context.Context, nc *nats.Conn, err error) error {
	switch {
	case err == nil:
		return nil
	case context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled):
		return context.Cause(ctx) // NATS refused the subject
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("nothing answers on prefix %q at %s: is the cluster running, with that --prefix? (%w)", a.prefix, a.server, err)
	case !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, explainTimeout)
	defer cancel()
	st, serr := a.client(nc).Status(sctx)
	if serr != nil {
		return fmt.Errorf("no answer within --timeout %s (%w); the cluster's status did not answer either", a.timeout, err)
	}
	var why []string
	for _, s := range st.Shards {
		if s.Error != "" {
			why = append(why, fmt.Sprintf("shard %d has no leader (%s): a majority of its replicas must be up", s.ID, s.Error))
		}
	}
	if len(why) == 0 {
		return fmt.Errorf("no answer within --timeout %s (%w); every shard has a leader now: try again", a.timeout, err)
	}
	return fmt.Errorf("no answer within --timeout %s (%w): the cluster answers unavailable: %s", a.timeout, err, strings.Join(why, "; "))
}

// print writes v as indented JSON with -o json, or calls table otherwise.
func (a *app) print(v any, table func(w io.Writer)) error {
	if a.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ledgerctl's version, the commit it was built from and its Go version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			i := buildinfo.Get()
			v := struct {
				Version  string `json:"version"`
				Commit   string `json:"commit"`
				Modified bool   `json:"modified"`
				Go       string `json:"go"`
			}{i.Version, i.Commit, i.Modified, i.Go}
			return a.print(v, func(w io.Writer) { fmt.Fprintln(w, "ledgerctl", i) })
		},
	}
}
