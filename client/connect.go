package client

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Credentials are how a client proves who it is to the cluster's NATS (the
// protocol's "Who may do what": identity comes from the connection, never
// from a request). Give at most one of a user and password, an NKey seed
// file or a creds file; the TLS files go with any of them.
type Credentials struct {
	User, Password string
	// NKeySeedFile holds an NKey seed (SU...): the connection signs the
	// server's nonce with it and sends only the public key.
	NKeySeedFile string
	// CredsFile is a NATS creds file: a user JWT and its NKey seed.
	CredsFile string
	// TLSCA is the PEM CA that signed the cluster's client-port
	// certificate; TLSCert and TLSKey are this client's own certificate,
	// for a cluster that asks for one.
	TLSCA, TLSCert, TLSKey string
}

// Options returns the nats.go options that present c, for nats.Connect.
func (c Credentials) Options() ([]nats.Option, error) {
	given := 0
	for _, set := range []bool{c.User != "" || c.Password != "", c.NKeySeedFile != "", c.CredsFile != ""} {
		if set {
			given++
		}
	}
	if given > 1 {
		return nil, errors.New("credentials: give one of a user and password, an NKey seed file or a creds file")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("credentials: a TLS client certificate needs both its certificate and its key")
	}
	var opts []nats.Option
	switch {
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Password != "":
		return nil, errors.New("credentials: a password needs a user")
	case c.NKeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("credentials: NKey seed %s: %w", c.NKeySeedFile, err)
		}
		opts = append(opts, o)
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// Connect opens a NATS connection to url (a comma-separated list of
// servers to reconnect among) as creds; more options (a name, an error
// handler) may follow. The caller owns the connection: Close it.
func Connect(url string, creds Credentials, more ...nats.Option) (*nats.Conn, error) {
	opts, err := creds.Options()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, append(opts, more...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", url, err)
	}
	return nc, nil
}
