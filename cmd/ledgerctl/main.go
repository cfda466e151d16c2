// Command ledgerctl is the command line of a ledgerd cluster: it creates and
// looks up accounts and transfers, shows the cluster's status and its
// conservation of money, and runs the load benchmark (`ledgerctl bench`).
// It talks to the cluster only over NATS, through package client, exactly as
// a payment provider does.
//
// Exit status: 0 on success, 1 on any error, on a result code other than ok
// or exists, and on a failed conservation check.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/ledgerd/ledgerd/client"
	"github.com/ledgerd/ledgerd/transport"
)

const serverDefault = "nats://127.0.0.1:4222"

// errReported fails the command after its output already said why.
var errReported = errors.New("failed")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(&app{stdout: os.Stdout, stderr: os.Stderr}).ExecuteContext(ctx)
	stop()
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "ledgerctl:", err)
		}
		os.Exit(1)
	}
}

// app holds the global flags and where output goes.
type app struct {
	server, prefix, output string
	timeout                time.Duration
	stdout, stderr         io.Writer
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "ledgerctl",
		Short:         "Operate and measure a ledgerd cluster over NATS",
		SilenceUsage:  true, // a failed request is not a usage mistake
		SilenceErrors: true, // main prints errors once
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if a.output != "table" && a.output != "json" {
				return fmt.Errorf("--output %q: want table or json", a.output)
			}
			return nil
		},
	}
	server := os.Getenv("LEDGER_SERVER")
	if server == "" {
		server = serverDefault
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.server, "server", server, "NATS URL of the cluster (env LEDGER_SERVER)")
	pf.StringVar(&a.prefix, "prefix", transport.DefaultPrefix, "subject prefix of the cluster")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "give up a request after this long, retries included (bench: per batch)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(newAccountCmd(a), newTransferCmd(a), newStatusCmd(a), newNodesCmd(a), newBenchCmd(a))
	return root
}

// dial opens a NATS connection to --server.
func (a *app) dial() (*nats.Conn, error) {
	nc, err := nats.Connect(a.server, nats.Name("ledgerctl"))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", a.server, err)
	}
	return nc, nil
}

func (a *app) client(nc *nats.Conn) *client.Client {
	return client.New(nc, client.WithPrefix(a.prefix))
}

// do runs fn with a client on a connection of its own, under --timeout.
func (a *app) do(ctx context.Context, fn func(ctx context.Context, c *client.Client) error) error {
	nc, err := a.dial()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return fn(ctx, a.client(nc))
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
