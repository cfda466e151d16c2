// Package auth owns who may use the cluster: the providers file, the NATS
// accounts it becomes (one account per provider, importing the ledger's
// service from an account no provider can reach), and the identity of a
// request, which the NATS server passes to the service in a header.
package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"unicode"

	"github.com/nats-io/nkeys"
	"sigs.k8s.io/yaml"

	"github.com/ledgerd/ledgerd/transport"
)

// Limits of a provider, each per provider. Connections and subscriptions are
// counted by the NATS server over the provider's whole account; requests in
// flight by each router (each node) on its own.
type Limits struct {
	Connections      int `json:"connections,omitempty"`
	Subscriptions    int `json:"subscriptions,omitempty"`
	RequestsInFlight int `json:"requests_in_flight,omitempty"`
	// PendingTransfers bounds the open pending transfers the provider may
	// hold on each shard (transport.Owner.PendingMax).
	PendingTransfers int `json:"pending_transfers,omitempty"`
}

// Default limits of a provider that sets none. 64 connections and 512
// requests in flight per router carry the bench's 64 unbatched clients
// with room; a client needs 1 subscription for its replies, more for its
// own subjects.
const (
	DefaultConnections      = 64
	DefaultSubscriptions    = 1024
	DefaultRequestsInFlight = 512
	// DefaultPendingTransfers: 100,000 open pending transfers a shard, a
	// few tens of MB of a shard's memory per provider.
	DefaultPendingTransfers = 100_000
)

func (l Limits) withDefaults() Limits {
	if l.Connections == 0 {
		l.Connections = DefaultConnections
	}
	if l.Subscriptions == 0 {
		l.Subscriptions = DefaultSubscriptions
	}
	if l.RequestsInFlight == 0 {
		l.RequestsInFlight = DefaultRequestsInFlight
	}
	if l.PendingTransfers == 0 {
		l.PendingTransfers = DefaultPendingTransfers
	}
	return l
}

// User is one NATS user: a name with a password (plain or a bcrypt hash,
// "$2a$..."), or a public user NKey instead.
type User struct {
	User     string `json:"user"`
	Password string `json:"password,omitempty"`
	NKey     string `json:"nkey,omitempty"`
}

// Provider is a payment provider: its user, the ledgers it may use and
// the id prefixes it owns.
type Provider struct {
	User
	Ledgers  []uint32 `json:"ledgers"`
	Accounts []string `json:"accounts"`
	Limits   Limits   `json:"limits,omitempty"`
}

// File is the providers file (YAML, so JSON too).
type File struct {
	Operators []User     `json:"operators"`
	Providers []Provider `json:"providers"`
}

// Identity is who sent a request. Owner is nil for an operator.
type Identity struct {
	Name   string
	Owner  *transport.Owner
	Limits Limits
}

// Operator reports whether the identity has every right.
func (id *Identity) Operator() bool { return id.Owner == nil }

// Policy is a checked providers file. It is immutable: a reload makes a
// new one.
type Policy struct {
	file      File
	byAccount map[string]*Identity // NATS account name → identity
}

// NATS account names. Provider accounts are ProviderAccountPrefix + user,
// which no user name can make collide with the other two.
const (
	InternalAccount       = "LEDGER"
	OperatorsAccount      = "LEDGER_OPERATORS"
	ProviderAccountPrefix = "provider-"
)

// userNameBytesMax bounds a user name (it names a NATS account).
const userNameBytesMax = 64

// Load reads and checks the providers file at path.
func Load(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("providers file: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("providers file %s: %w", path, err)
	}
	return p, nil
}

// Parse checks a providers file's bytes. An error names the entry.
func Parse(b []byte) (*Policy, error) {
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, err
	}
	if len(f.Operators)+len(f.Providers) == 0 {
		return nil, errors.New("no operators and no providers: every connection would be refused")
	}
	p := &Policy{file: f, byAccount: map[string]*Identity{}}
	users := map[string]string{}
	checkUser := func(where string, u *User) error {
		if err := u.check(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if prev, dup := users[u.User]; dup {
			return fmt.Errorf("%s: user %q is also %s", where, u.User, prev)
		}
		users[u.User] = where
		return nil
	}
	for i := range f.Operators {
		if err := checkUser(fmt.Sprintf("operators[%d]", i), &f.Operators[i]); err != nil {
			return nil, err
		}
	}
	owners := map[string]string{} // prefix → provider
	for i := range f.Providers {
		pr := &f.Providers[i]
		where := fmt.Sprintf("providers[%d] (%s)", i, pr.User.User)
		if err := checkUser(where, &pr.User); err != nil {
			return nil, err
		}
		if err := pr.check(); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for _, prefix := range pr.Accounts {
			for other, who := range owners {
				if strings.HasPrefix(prefix, other) || strings.HasPrefix(other, prefix) {
					return nil, fmt.Errorf("%s: account prefix %q overlaps %q of %s: two providers would own the same ids", where, prefix, other, who)
				}
			}
			owners[prefix] = pr.User.User
		}
		limits := pr.Limits.withDefaults()
		p.byAccount[ProviderAccountPrefix+pr.User.User] = &Identity{
			Name: pr.User.User,
			Owner: &transport.Owner{Prefixes: slices.Clone(pr.Accounts), Ledgers: slices.Clone(pr.Ledgers),
				PendingMax: uint32(limits.PendingTransfers)},
			Limits: limits,
		}
	}
	p.byAccount[OperatorsAccount] = &Identity{Name: "operator"}
	return p, nil
}

func (u *User) check() error {
	switch {
	case u.User == "":
		return errors.New("user is empty")
	case len(u.User) > userNameBytesMax || strings.IndexFunc(u.User, notNameRune) >= 0:
		return fmt.Errorf("user %q: 1 to %d letters, digits, - or _", u.User, userNameBytesMax)
	case u.Password == "" && u.NKey == "":
		return fmt.Errorf("user %q has neither a password nor an nkey", u.User)
	case u.Password != "" && u.NKey != "":
		return fmt.Errorf("user %q has both a password and an nkey: give one", u.User)
	case strings.IndexFunc(u.Password, unicode.IsControl) >= 0:
		return fmt.Errorf("user %q: the password has a control character", u.User)
	case u.NKey != "" && !nkeys.IsValidPublicUserKey(u.NKey):
		return fmt.Errorf("user %q: nkey %q is not a public user NKey (U...)", u.User, u.NKey)
	}
	return nil
}

func notNameRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
}

func (pr *Provider) check() error {
	if len(pr.Ledgers) == 0 {
		return errors.New("ledgers is empty: the provider could use no ledger")
	}
	for _, l := range pr.Ledgers {
		if l == 0 {
			return errors.New("ledger 0 is no ledger")
		}
	}
	if len(pr.Accounts) == 0 {
		return errors.New("accounts (the id prefixes it owns) is empty")
	}
	for _, prefix := range pr.Accounts {
		// A prefix is the start of an id, so it is made of id bytes.
		if !transport.ValidID(prefix) {
			return fmt.Errorf("account prefix %q: 1 to %d bytes of [A-Za-z0-9_.:@-]", prefix, transport.IDBytesMax)
		}
	}
	l := pr.Limits
	if l.Connections < 0 || l.Subscriptions < 0 || l.RequestsInFlight < 0 || l.PendingTransfers < 0 {
		return fmt.Errorf("limits %+v: a limit is positive (0: the default)", l)
	}
	if l.PendingTransfers > math.MaxUint32 {
		return fmt.Errorf("limits: pending_transfers %d is over %d", l.PendingTransfers, uint32(math.MaxUint32))
	}
	return nil
}

// identify returns the identity of a NATS account, as the server reported
// it for a request.
func (p *Policy) identify(account string) (*Identity, bool) {
	id, ok := p.byAccount[account]
	return id, ok
}

// Providers returns the providers' user names.
func (p *Policy) Providers() []string {
	var names []string
	for _, pr := range p.file.Providers {
		names = append(names, pr.User.User)
	}
	return names
}

// Import is a service import of an account from the internal account.
// Share passes the requester's identity to the service (the
// Nats-Request-Info header set by the server): that is how the router
// knows who asks.
type Import struct {
	Subject string
	Share   bool
}

// Imports returns, by NATS account name, what each account imports: the
// client API for operators and providers, with sharing, and the micro
// service discovery subjects for operators.
func (p *Policy) Imports(prefix string) map[string][]Import {
	api := Import{Subject: prefix + ".v1.>", Share: true}
	out := map[string][]Import{}
	if len(p.file.Operators) > 0 {
		out[OperatorsAccount] = []Import{api, {Subject: "$SRV.>"}}
	}
	for _, pr := range p.file.Providers {
		out[ProviderAccountPrefix+pr.User.User] = []Import{api}
	}
	return out
}

// NATSAccounts returns the "accounts" block of a nats-server configuration,
// as JSON (which nats-server reads): the internal account holding the
// ledger's own user (internal) and exporting the client API, the operators'
// account, and one account per provider with its limits; with imports, each
// account's Imports too. The internal subjects (sagas, history copies,
// discovery) live in the internal account, which exports nothing else, and
// replies never cross accounts except the one a service import maps back to
// its requester. (The embedded server adds the imports itself: nats-server
// does not subscribe the imports of an account that a reload adds.)
func (p *Policy) NATSAccounts(prefix string, internal User, imports bool) ([]byte, error) {
	type obj = map[string]any
	accounts := obj{}
	user := func(u User) obj {
		if u.NKey != "" {
			return obj{"nkey": u.NKey}
		}
		return obj{"user": u.User, "password": u.Password}
	}
	account := func(name string, users []obj) obj {
		a := obj{"users": users}
		if imports {
			var ims []obj
			for _, im := range p.Imports(prefix)[name] {
				o := obj{"service": obj{"account": InternalAccount, "subject": im.Subject}}
				if im.Share {
					o["share"] = true
				}
				ims = append(ims, o)
			}
			a["imports"] = ims
		}
		return a
	}
	var ops []obj
	for _, o := range p.file.Operators {
		ops = append(ops, user(o))
	}
	if len(ops) > 0 {
		accounts[OperatorsAccount] = account(OperatorsAccount, ops)
	}
	for _, pr := range p.file.Providers {
		name := ProviderAccountPrefix + pr.User.User
		l := pr.Limits.withDefaults()
		a := account(name, []obj{user(pr.User)})
		a["limits"] = obj{"max_connections": l.Connections, "max_subscriptions": l.Subscriptions}
		accounts[name] = a
	}
	accounts[InternalAccount] = obj{
		"users": []obj{user(internal)},
		// Public: every account is one of ours, and a provider added by a
		// reload imports an export that already exists.
		"exports": []obj{
			{"service": prefix + ".v1.>"},
			{"service": "$SRV.>", "accounts": []string{OperatorsAccount}, "response_type": "stream"},
		},
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // nats-server reads no \u escapes: ">" stays ">"
	enc.SetIndent("", "  ")
	if err := enc.Encode(obj{"accounts": accounts}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// RequestInfoHeader is the header in which the NATS server tells a service
// who sent a request it imported with sharing on. The server sets it on
// every request that crosses a service import, replacing whatever the
// client put there.
const RequestInfoHeader = "Nats-Request-Info"

// ErrNoIdentity: a request that did not come through a service import of a
// known account.
var ErrNoIdentity = errors.New("no verified identity: connect with the credentials of an operator or a provider")

// Requester identifies the sender of a request from the value of its
// RequestInfoHeader.
func (p *Policy) Requester(info string) (*Identity, error) {
	if info == "" {
		return nil, ErrNoIdentity
	}
	var ci struct {
		Account string `json:"acc"`
	}
	if err := json.Unmarshal([]byte(info), &ci); err != nil {
		return nil, fmt.Errorf("%w: bad %s header: %v", ErrNoIdentity, RequestInfoHeader, err)
	}
	id, ok := p.identify(ci.Account)
	if !ok {
		return nil, fmt.Errorf("%w: account %q is no operator's or provider's", ErrNoIdentity, ci.Account)
	}
	return id, nil
}
