package sim

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"

	"github.com/ledgerd/ledgerd/shard"
	"github.com/ledgerd/ledgerd/transport"
)

// Ref is the reference model: a plain ledger that applies each transfer, as
// a whole, when the cluster says it was applied (ok, or exists for a copy
// whose first reply was lost), and judges every client reply against what it
// knows. It knows what was sent and what was acknowledged, never the
// cluster's state, so it accepts a reply when some order of the requests in
// flight could give it, and rejects what none could: a second ok for one id,
// exists without an earlier copy, a refusal that the acknowledged history
// rules out, ok for a transfer that cannot have been valid.
//
// Transfer ids are unique per debit shard (docs/protocol.md's known gap):
// the model keys transfers by (debit shard, id).
type Ref struct {
	w         *World
	canon     []transport.Account // the accounts, one set of fields each
	ghosts    []string            // account ids never created
	accounts  map[string]*refAccount
	transfers map[refKey]*refTransfer
	history   []transport.Transfer // valid transfers drawn so far, for repeats
	hot       []int
}

type refAccount struct {
	canon   transport.Account
	ghost   bool
	created bool
	ts      uint64
	copies  int // deliveries of the account's creation
	// Acknowledged transfers' sums, and sums over every transfer delivered
	// at least once (an upper bound on what can have been applied).
	ackedDebits, ackedCredits       uint64
	possibleDebits, possibleCredits uint64
}

type refKey struct {
	ds uint32
	id string
}

type refTransfer struct {
	variants  []*refVariant
	applied   *refVariant
	appliedAt uint64 // when the model learnt it
	ts        uint64
	okSeen    bool
}

// refVariant is one set of fields sent under a key.
type refVariant struct {
	key       refKey
	t         transport.Transfer
	field     transport.Code // the code its fields alone earn (ok when valid)
	copies    int            // deliveries to a shard
	firstSend uint64
	sent      bool
	// At the first send: whether each account's creation was acknowledged,
	// and the debit account's acknowledged credits and the credit
	// account's acknowledged debits.
	debitCreated, creditCreated bool
	debitCredits, creditDebits  uint64
}

func newRef(w *World) *Ref {
	ref := &Ref{w: w, accounts: map[string]*refAccount{}, transfers: map[refKey]*refTransfer{}}
	r := w.rngWork
	for i := range w.p.Accounts {
		a := transport.Account{ID: fmt.Sprintf("a%d", i), Code: 1 + uint16(r.IntN(3))}
		if i < w.p.Ledgers {
			a.Ledger = uint32(i + 1) // the ledger's operator: no limit
		} else {
			a.Ledger = 1 + uint32(r.IntN(w.p.Ledgers))
			switch x := r.Float64(); {
			case x < 0.55:
				a.Flags = transport.AccountDebitsMustNotExceedCredits
			case x < 0.7:
				a.Flags = transport.AccountCreditsMustNotExceedDebits
			case x < 0.77:
				a.Flags = transport.AccountClosed
			case x < 0.85:
				a.Flags = transport.AccountHistory
			}
			if on(r, 0.1) {
				a.Metadata = map[string]string{"owner": fmt.Sprint(i)}
			}
		}
		ref.canon = append(ref.canon, a)
		ref.accounts[a.ID] = &refAccount{canon: a}
	}
	for i := range w.p.Ghosts {
		id := fmt.Sprintf("ghost%d", i)
		ref.ghosts = append(ref.ghosts, id)
		ref.accounts[id] = &refAccount{ghost: true, canon: transport.Account{ID: id, Ledger: 1, Code: 1}}
	}
	for i := range min(3, len(ref.canon)) {
		ref.hot = append(ref.hot, len(ref.canon)-1-i)
	}
	return ref
}

// pick draws an account, hot ones preferred; with same set, one of its
// ledger other than it (any account if there is none).
func (ref *Ref) pick(r *rand.Rand, same *transport.Account) *transport.Account {
	for range 8 {
		var a *transport.Account
		if on(r, ref.w.p.HotP) {
			a = &ref.canon[ref.hot[r.IntN(len(ref.hot))]]
		} else {
			a = &ref.canon[r.IntN(len(ref.canon))]
		}
		if same == nil || a.Ledger == same.Ledger && a.ID != same.ID {
			return a
		}
	}
	for i := range ref.canon {
		if a := &ref.canon[i]; a.Ledger == same.Ledger && a.ID != same.ID {
			return a
		}
	}
	return &ref.canon[r.IntN(len(ref.canon))]
}

// createdAccount returns an acknowledged account, for a repeat.
func (ref *Ref) createdAccount(r *rand.Rand) (transport.Account, bool) {
	a := ref.canon[r.IntN(len(ref.canon))]
	if !ref.accounts[a.ID].created {
		return a, false
	}
	a.Metadata = maps.Clone(a.Metadata)
	return a, true
}

func sameFields(a, b *transport.Transfer) bool {
	return a.DebitAccountID == b.DebitAccountID && a.CreditAccountID == b.CreditAccountID &&
		a.Amount == b.Amount && a.Ledger == b.Ledger && a.Code == b.Code && a.Flags == b.Flags &&
		a.PendingID == b.PendingID && a.Timeout == b.Timeout && maps.Equal(a.Metadata, b.Metadata)
}

// fieldCode is what a transfer's fields alone earn, in the protocol's order,
// for the defects the workload draws.
func fieldCode(t *transport.Transfer) transport.Code {
	switch {
	case !transport.ValidID(t.ID):
		return transport.CodeIDInvalid
	case t.Flags != 0:
		return transport.CodeFlagsInvalid // the workload draws only flags not served (issue 3)
	case t.Ledger == 0:
		return transport.CodeLedgerInvalid
	case t.Code == 0:
		return transport.CodeCodeInvalid
	case t.Amount == 0:
		return transport.CodeAmountInvalid
	case t.Timeout != 0:
		return transport.CodeTimeoutInvalid
	case t.DebitAccountID == t.CreditAccountID:
		return transport.CodeAccountsMustBeDifferent
	}
	return transport.CodeOK
}

func accountFieldCode(a *transport.Account) transport.Code {
	const both = transport.AccountDebitsMustNotExceedCredits | transport.AccountCreditsMustNotExceedDebits
	switch {
	case !transport.ValidID(a.ID):
		return transport.CodeIDInvalid
	case a.Flags&both == both || a.Flags&transport.AccountLinked != 0:
		return transport.CodeFlagsInvalid
	case a.Ledger == 0:
		return transport.CodeLedgerInvalid
	case a.Code == 0:
		return transport.CodeCodeInvalid
	case a.Timestamp != 0:
		return transport.CodeTimestampMustBeZero
	case a.DebitsPending|a.DebitsPosted|a.CreditsPending|a.CreditsPosted != 0:
		return transport.CodeBalancesMustBeZero
	}
	return transport.CodeOK
}

// variant registers a transfer the workload will send.
func (ref *Ref) variant(t transport.Transfer) *refVariant {
	key := refKey{ref.w.shardOf(t.DebitAccountID), t.ID}
	rt := ref.transfers[key]
	if rt == nil {
		rt = &refTransfer{}
		ref.transfers[key] = rt
	}
	for _, v := range rt.variants {
		if sameFields(&v.t, &t) {
			return v
		}
	}
	v := &refVariant{key: key, t: t, field: fieldCode(&t)}
	rt.variants = append(rt.variants, v)
	return v
}

func (ref *Ref) find(ds uint32, t *transport.Transfer) *refVariant {
	rt := ref.transfers[refKey{ds, t.ID}]
	if rt == nil {
		return nil
	}
	for _, v := range rt.variants {
		if sameFields(&v.t, t) {
			return v
		}
	}
	return nil
}

// sending: the router sends a part; the first send of each transfer takes
// what the model knows then.
func (ref *Ref) sending(p *part) {
	for i := range p.cmd.Transfers {
		v := ref.find(p.shard, &p.cmd.Transfers[i])
		if v == nil || v.sent {
			continue
		}
		v.sent, v.firstSend = true, ref.w.now
		dr, cr := ref.accounts[v.t.DebitAccountID], ref.accounts[v.t.CreditAccountID]
		if dr != nil {
			v.debitCreated, v.debitCredits = dr.created, dr.ackedCredits
		}
		if cr != nil {
			v.creditCreated, v.creditDebits = cr.created, cr.ackedDebits
		}
	}
}

// delivered: a client command reached a shard's leader.
func (ref *Ref) delivered(cmd *shard.Command) {
	for i := range cmd.Accounts {
		a := &cmd.Accounts[i]
		if ra := ref.accounts[a.ID]; ra != nil && sameAccount(&ra.canon, a) {
			ra.copies++
		}
	}
	for i := range cmd.Transfers {
		t := &cmd.Transfers[i]
		v := ref.find(ref.w.shardOf(t.DebitAccountID), t)
		if v == nil {
			continue
		}
		v.copies++
		if v.copies == 1 && v.field == transport.CodeOK {
			if dr := ref.accounts[t.DebitAccountID]; dr != nil {
				dr.possibleDebits += t.Amount
			}
			if cr := ref.accounts[t.CreditAccountID]; cr != nil {
				cr.possibleCredits += t.Amount
			}
		}
	}
}

func sameAccount(a, b *transport.Account) bool {
	return a.ID == b.ID && a.Ledger == b.Ledger && a.Code == b.Code && a.Flags == b.Flags && maps.Equal(a.Metadata, b.Metadata)
}

func (ref *Ref) bad(format string, args ...any) { ref.w.fail("reply", format, args...) }

// check judges the results of a request.
func (ref *Ref) check(call *routerCall) {
	sentAt := make([]uint64, len(call.results))
	for _, p := range call.parts {
		for _, i := range p.index {
			sentAt[i] = p.sentAt
		}
	}
	for i, res := range call.results {
		if call.req.kind == shard.KindCreateAccounts {
			ref.checkAccount(&call.req.accounts[i], res)
		} else {
			ref.checkTransfer(call.req.vars[i], res, sentAt[i])
		}
		if ref.w.failure != nil {
			return
		}
	}
}

func (ref *Ref) checkAccount(a *transport.Account, res transport.Result) {
	want := accountFieldCode(a)
	ra := ref.accounts[a.ID]
	switch {
	case want != transport.CodeOK:
		if res.Code != want {
			ref.bad("account %s: %s, its fields earn %s", a.ID, res.Code, want)
		}
	case ra == nil || ra.ghost:
		ref.bad("account %s was never drawn", a.ID)
	case !sameAccount(&ra.canon, a):
		// Sent only once the account was acknowledged.
		if res.Code != transport.CodeExistsWithDifferentFields {
			ref.bad("account %s with other fields: %s, want exists_with_different_fields", a.ID, res.Code)
		}
	case res.Code == transport.CodeOK:
		if ra.created {
			ref.bad("account %s created twice (ok again)", a.ID)
		}
		if res.Timestamp == 0 {
			ref.bad("account %s: ok without a timestamp", a.ID)
		}
		ra.created, ra.ts = true, res.Timestamp
	case res.Code == transport.CodeExists:
		if !ra.created && ra.copies < 2 {
			ref.bad("account %s: exists, but no earlier copy was delivered", a.ID)
		}
		if ra.created && ra.ts != res.Timestamp {
			ref.bad("account %s: exists with timestamp %d, created at %d", a.ID, res.Timestamp, ra.ts)
		}
		ra.created, ra.ts = true, res.Timestamp
	default:
		ref.bad("account %s: %s", a.ID, res.Code)
	}
}

func (ref *Ref) apply(rt *refTransfer, v *refVariant, ts uint64) {
	rt.applied, rt.appliedAt, rt.ts = v, ref.w.now, ts
	dr, cr := ref.accounts[v.t.DebitAccountID], ref.accounts[v.t.CreditAccountID]
	dr.ackedDebits += v.t.Amount
	cr.ackedCredits += v.t.Amount
	if dr.canon.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && dr.ackedDebits > dr.possibleCredits {
		ref.bad("transfer %s applied: %s has %d acknowledged debits, but at most %d credits were ever sent to it",
			v.t.ID, dr.canon.ID, dr.ackedDebits, dr.possibleCredits)
	}
	if cr.canon.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && cr.ackedCredits > cr.possibleDebits {
		ref.bad("transfer %s applied: %s has %d acknowledged credits, but at most %d debits were ever sent from it",
			v.t.ID, cr.canon.ID, cr.ackedCredits, cr.possibleDebits)
	}
}

// validForOK: could a transfer with these fields ever apply?
func (ref *Ref) validForOK(v *refVariant) string {
	t := &v.t
	dr, cr := ref.accounts[t.DebitAccountID], ref.accounts[t.CreditAccountID]
	switch {
	case v.field != transport.CodeOK:
		return "its fields earn " + v.field.String()
	case dr == nil || dr.ghost:
		return "its debit account was never created"
	case cr == nil || cr.ghost:
		return "its credit account was never created"
	case dr.copies == 0 || cr.copies == 0:
		return "an account's creation was never delivered"
	case dr.canon.Ledger != t.Ledger || cr.canon.Ledger != t.Ledger:
		return "the ledgers differ"
	case (dr.canon.Flags|cr.canon.Flags)&transport.AccountClosed != 0:
		return "an account is closed"
	}
	return ""
}

func (ref *Ref) checkTransfer(v *refVariant, res transport.Result, sentAt uint64) {
	rt := ref.transfers[v.key]
	t := &v.t
	known := rt.applied != nil && rt.appliedAt < sentAt // applied before this copy was sent
	switch res.Code {
	case transport.CodeOK, transport.CodeExists:
		if why := ref.validForOK(v); why != "" {
			ref.bad("transfer %s (shard %d): %s, but %s", t.ID, v.key.ds, res.Code, why)
			return
		}
		if res.Timestamp == 0 {
			ref.bad("transfer %s: %s without a timestamp", t.ID, res.Code)
		}
		if rt.applied != nil && rt.applied != v {
			ref.bad("transfer %s (shard %d): %s, but other fields were applied under its id", t.ID, v.key.ds, res.Code)
			return
		}
		if res.Code == transport.CodeOK {
			// One application answers ok once; the other copies get
			// exists (which may arrive first), with its timestamp.
			if rt.okSeen {
				ref.bad("transfer %s (shard %d): ok twice", t.ID, v.key.ds)
				return
			}
			rt.okSeen = true
			if rt.applied == nil {
				ref.apply(rt, v, res.Timestamp)
			} else if rt.ts != res.Timestamp {
				ref.bad("transfer %s (shard %d): ok at %d, but it was applied at %d (applied twice)", t.ID, v.key.ds, res.Timestamp, rt.ts)
			}
			return
		}
		if rt.applied == nil {
			if v.copies < 2 {
				ref.bad("transfer %s (shard %d): exists, but no earlier copy was delivered", t.ID, v.key.ds)
				return
			}
			ref.apply(rt, v, res.Timestamp)
			return
		}
		if rt.ts != res.Timestamp {
			ref.bad("transfer %s: exists with timestamp %d, applied at %d", t.ID, res.Timestamp, rt.ts)
		}
	case transport.CodeExistsWithDifferentFields:
		if v.field != transport.CodeOK {
			ref.bad("transfer %s: %s, its fields earn %s", t.ID, res.Code, v.field)
			return
		}
		if known && rt.applied == v {
			ref.bad("transfer %s: exists_with_different_fields, but these very fields were applied", t.ID)
			return
		}
		// Other fields delivered under the id, applied or in flight when
		// this copy was decided (perhaps refused since, and these fields
		// applied after).
		for _, u := range rt.variants {
			if u != v && u.copies > 0 && u.field == transport.CodeOK {
				return
			}
		}
		ref.bad("transfer %s (shard %d): exists_with_different_fields, but no other fields were delivered under its id", t.ID, v.key.ds)
	default:
		if v.field != transport.CodeOK {
			if res.Code != v.field {
				ref.bad("transfer %s: %s, its fields earn %s", t.ID, res.Code, v.field)
			}
			return
		}
		if known {
			ref.bad("transfer %s (shard %d): %s, but it was applied before this copy was sent", t.ID, v.key.ds, res.Code)
			return
		}
		if res.Timestamp != 0 {
			ref.bad("transfer %s: %s with timestamp %d", t.ID, res.Code, res.Timestamp)
		}
		if why := ref.refusalImpossible(v, res.Code); why != "" {
			ref.bad("transfer %s %s->%s %d (shard %d): %s, but %s", t.ID, t.DebitAccountID, t.CreditAccountID, t.Amount, v.key.ds, res.Code, why)
		}
	}
}

// refusalImpossible says why no order of the requests in flight can give
// this refusal, or "" if one can.
func (ref *Ref) refusalImpossible(v *refVariant, code transport.Code) string {
	t := &v.t
	dr, cr := ref.accounts[t.DebitAccountID], ref.accounts[t.CreditAccountID]
	exists := func(a *refAccount) bool { return a != nil && !a.ghost }
	switch code {
	case transport.CodeDebitAccountNotFound:
		if exists(dr) && v.debitCreated {
			return "the debit account's creation was acknowledged before the transfer was first sent"
		}
	case transport.CodeCreditAccountNotFound:
		if exists(cr) && v.creditCreated {
			return "the credit account's creation was acknowledged before the transfer was first sent"
		}
	case transport.CodeLedgerMismatch:
		if !(exists(dr) && dr.canon.Ledger != t.Ledger || exists(cr) && cr.canon.Ledger != t.Ledger) {
			return "both accounts are on the transfer's ledger"
		}
	case transport.CodeAccountClosed:
		if !(exists(dr) && dr.canon.Flags&transport.AccountClosed != 0 || exists(cr) && cr.canon.Flags&transport.AccountClosed != 0) {
			return "neither account is closed"
		}
	case transport.CodeExceedsCredits:
		if !exists(dr) || dr.canon.Flags&transport.AccountDebitsMustNotExceedCredits == 0 {
			return "the debit account has no such limit"
		}
		others := dr.possibleDebits - min(dr.possibleDebits, ownShare(v))
		if v.debitCredits >= others+t.Amount {
			return fmt.Sprintf("its %d acknowledged credits cover every debit ever sent from it (%d) and this one", v.debitCredits, others)
		}
	case transport.CodeExceedsDebits:
		if !exists(cr) || cr.canon.Flags&transport.AccountCreditsMustNotExceedDebits == 0 {
			return "the credit account has no such limit"
		}
		others := cr.possibleCredits - min(cr.possibleCredits, ownShare(v))
		if v.creditDebits >= others+t.Amount {
			return fmt.Sprintf("its %d acknowledged debits cover every credit ever sent to it (%d) and this one", v.creditDebits, others)
		}
	default:
		return "no transfer the workload draws can earn it"
	}
	return ""
}

// ownShare is the variant's own amount in the possible sums.
func ownShare(v *refVariant) uint64 {
	if v.copies > 0 {
		return v.t.Amount
	}
	return 0
}

// settle is the end of the run: every transfer whose outcome no client saw
// is looked up on its debit shard, then every balance must equal the
// model's, and every applied transfer must be stored exactly once.
func (ref *Ref) settle() {
	w := ref.w
	keys := slices.SortedFunc(maps.Keys(ref.transfers), func(a, b refKey) int {
		return cmp.Or(cmp.Compare(a.ds, b.ds), cmp.Compare(a.id, b.id))
	})
	stored := map[uint32]int{}
	for _, k := range keys {
		rt := ref.transfers[k]
		st := w.group(k.ds).leader.r.st
		found := st.LookupTransfers([]string{k.id})
		if rt.applied == nil {
			if len(found) == 0 {
				continue
			}
			v := ref.find(k.ds, &found[0])
			if v == nil || v.copies == 0 || v.field != transport.CodeOK {
				w.fail("final", "shard %d stores transfer %s with fields no client delivered: %+v", k.ds, k.id, found[0])
				return
			}
			if why := ref.validForOK(v); why != "" {
				w.fail("final", "shard %d stores transfer %s, but %s", k.ds, k.id, why)
				return
			}
			ref.apply(rt, v, found[0].Timestamp)
		}
		stored[k.ds]++
		if len(found) != 1 {
			w.fail("final", "transfer %s (shard %d) was acknowledged but is not stored", k.id, k.ds)
			return
		}
		if !sameFields(&found[0], &rt.applied.t) || found[0].Timestamp != rt.ts {
			w.fail("final", "transfer %s (shard %d) is stored as %+v, acknowledged as %+v at %d", k.id, k.ds, found[0], rt.applied.t, rt.ts)
			return
		}
	}
	for _, g := range w.groups {
		_, n, _, _ := g.leader.r.st.Counts()
		if n != stored[g.id] {
			w.fail("final", "%s stores %d transfers, the model applied %d with it as debit shard", g.name(), n, stored[g.id])
			return
		}
	}
	for _, id := range slices.Sorted(maps.Keys(ref.accounts)) {
		ra := ref.accounts[id]
		g := w.group(w.shardOf(id))
		found := g.leader.r.st.LookupAccounts([]string{id})
		if ra.ghost {
			if len(found) != 0 {
				w.fail("final", "account %s was never sent, but exists", id)
			}
			continue
		}
		if len(found) == 0 {
			if ra.created || ra.ackedCredits+ra.ackedDebits > 0 {
				w.fail("final", "account %s is acknowledged but does not exist", id)
			}
			continue
		}
		a := found[0]
		if !sameAccount(&a, &ra.canon) {
			w.fail("final", "account %s stored as %+v, sent as %+v", id, a, ra.canon)
		}
		if a.DebitsPosted != ra.ackedDebits || a.CreditsPosted != ra.ackedCredits || a.DebitsPending != 0 || a.CreditsPending != 0 {
			w.fail("final", "account %s: debits %d posted %d pending, credits %d posted %d pending; the model applied debits %d credits %d",
				id, a.DebitsPosted, a.DebitsPending, a.CreditsPosted, a.CreditsPending, ra.ackedDebits, ra.ackedCredits)
		}
		if w.failure != nil {
			return
		}
	}
}
