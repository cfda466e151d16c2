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
// the model keys transfers by (debit shard, id). A post or void is keyed by
// the shard the router sent it to (found by a lookup when it names no debit
// account), and judged against what that shard may store under its pending
// id: the pending transfer's possible fields, whether it may have expired by
// then in log time, and the other posts and voids sent for it.
type Ref struct {
	w         *World
	canon     []transport.Account // the accounts, one set of fields each
	ghosts    []string            // account ids never created
	accounts  map[string]*refAccount
	transfers map[refKey]*refTransfer
	history   []transport.Transfer // valid transfers drawn so far, for repeats
	hot       []int

	// pendings: pending transfers drawn not to be refused (they may be,
	// by the limits), for posts and voids to name; pendingByID the first
	// fields drawn under each pending id.
	pendings     []transport.Transfer
	accepted     []transport.Transfer // pending transfers a client saw applied
	pendingByID  map[string]transport.Transfer
	resolutions  []transport.Transfer // posts and voids drawn, for retries
	resolutionOf map[refKey][]refKey  // (shard, pending id) -> keys of the posts and voids sent there for it
	// chains: the linked chains drawn (each whole), to be sent again.
	chains [][]transport.Transfer
	// balancings: the balancing transfers drawn, to be sent again.
	balancings []transport.Transfer
	// calls: the router's tries by request id, to tell which request
	// delivered each copy.
	calls map[string]*routerCall
}

// senders remembers which router tries delivered copies of an event (the
// first two distinct ones are all the checks need) and whether one command
// carried it twice: exists is right only for a copy another request
// delivered, or the other copy of the same command (one answer per
// request, docs/protocol.md).
type senders struct {
	by1, by2 *routerCall
	twice    bool
}

func (s *senders) add(c *routerCall, n int) {
	switch {
	case c == nil:
	case s.by1 == nil:
		s.by1 = c
	case s.by1 != c && s.by2 == nil:
		s.by2 = c
	}
	s.twice = s.twice || n > 1
}

// other: a copy came from a try other than c, or twice in one command.
func (s *senders) other(c *routerCall) bool {
	return s.twice || s.by1 != nil && s.by1 != c || s.by2 != nil && s.by2 != c
}

type refAccount struct {
	canon   transport.Account
	ghost   bool
	created bool
	ts      uint64
	copies  int // deliveries of the account's creation
	senders
	// Acknowledged posted sums (a lower bound of what is posted), and sums
	// over every transfer delivered at least once, pending ones included
	// (an upper bound on what can be posted and pending).
	ackedDebits, ackedCredits       uint64
	possibleDebits, possibleCredits uint64
}

type refKey struct {
	ds uint32
	id string
}

type refTransfer struct {
	variants  []*refVariant
	applied   *refVariant // the fields applied, when the model knows them
	appliedAt uint64      // when the model learnt that a record exists under the key
	ts        uint64
	tsKnown   bool // a reply told the record's timestamp (a post or void answered exists may leave applied unknown)
	okSeen    bool
	// A pending transfer: the post or void the model learnt resolved it.
	resolvedBy   refKey
	resolvedPost bool
	resolvedAt   uint64 // 0: none known
	resolvedTS   uint64
}

// refVariant is one set of fields sent under a key.
type refVariant struct {
	key    refKey
	t      transport.Transfer
	field  transport.Code // the code its fields alone earn (ok when valid)
	copies int            // deliveries to a shard
	senders
	firstSend uint64
	sent      bool
	// At the first send: whether each account's creation was acknowledged,
	// and the debit account's acknowledged credits and the credit
	// account's acknowledged debits.
	debitCreated, creditCreated bool
	debitCredits, creditDebits  uint64
	// logAtDelivery: the shard's log time (a lower bound) at the first
	// delivery; a transfer applied later gets a larger timestamp.
	logAtDelivery uint64
	ewdf          bool // once answered exists_with_different_fields
}

func newRef(w *World) *Ref {
	ref := &Ref{w: w, accounts: map[string]*refAccount{}, transfers: map[refKey]*refTransfer{},
		pendingByID: map[string]transport.Transfer{}, resolutionOf: map[refKey][]refKey{}, calls: map[string]*routerCall{}}
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

// pickOnShard draws an account of same's ledger, other than it, on the
// given shard; nil if there is none.
func (ref *Ref) pickOnShard(r *rand.Rand, same *transport.Account, s uint32) *transport.Account {
	var c []*transport.Account
	for i := range ref.canon {
		if a := &ref.canon[i]; a.Ledger == same.Ledger && a.ID != same.ID && ref.w.shardOf(a.ID) == s {
			c = append(c, a)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[r.IntN(len(c))]
}

// pickOffShard draws an account of same's ledger on another shard than s,
// with every flag of flags; nil if there is none.
func (ref *Ref) pickOffShard(r *rand.Rand, same *transport.Account, s uint32, flags uint32) *transport.Account {
	var c []*transport.Account
	for i := range ref.canon {
		if a := &ref.canon[i]; a.Ledger == same.Ledger && ref.w.shardOf(a.ID) != s && a.Flags&flags == flags {
			c = append(c, a)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[r.IntN(len(c))]
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

const resolves = transport.TransferPostPendingTransfer | transport.TransferVoidPendingTransfer

// balancing are the flags of a balancing transfer, whose amount the shard
// clamps: it is stored with at most the amount sent.
const balancing = transport.TransferBalancingDebit | transport.TransferBalancingCredit

func isBalancing(t *transport.Transfer) bool { return t.Flags&balancing != 0 }

// holds: a pending transfer, balancing or not, linked or not.
func holds(t *transport.Transfer) bool {
	return t.Flags&^(transport.TransferLinked|balancing) == transport.TransferPending
}

// sameOrClamped: stored has sent's fields, or, for a balancing transfer,
// all but the amount, which may be clamped (more than 0, at most sent's).
func sameOrClamped(stored, sent *transport.Transfer) bool {
	if !isBalancing(sent) {
		return sameFields(stored, sent)
	}
	s := *stored
	s.Amount = sent.Amount
	return stored.Amount > 0 && stored.Amount <= sent.Amount && sameFields(&s, sent)
}

// isPending: a pending transfer, linked or not (a leg of a chain).
func isPending(t *transport.Transfer) bool {
	return t.Flags&^transport.TransferLinked == transport.TransferPending
}

func isResolution(t *transport.Transfer) bool {
	return t.Flags == transport.TransferPostPendingTransfer || t.Flags == transport.TransferVoidPendingTransfer
}

func isPost(t *transport.Transfer) bool { return t.Flags == transport.TransferPostPendingTransfer }

func resolutionKind(post bool) string {
	if post {
		return "post"
	}
	return "void"
}

// fieldCode is what a transfer's fields alone earn, in the protocol's order,
// for the defects the workload draws.
func fieldCode(t *transport.Transfer) transport.Code {
	const twoPhase = transport.TransferPending | resolves
	res := t.Flags&resolves != 0
	tp := t.Flags & twoPhase
	switch {
	case !transport.ValidID(t.ID):
		return transport.CodeIDInvalid
	case t.Flags&^(twoPhase|transport.TransferLinked|balancing) != 0 || tp&(tp-1) != 0 || res && t.Flags&balancing != 0:
		return transport.CodeFlagsInvalid // the workload's: undefined, closing alone, or two of pending, post, void
	case t.Ledger == 0 && !res:
		return transport.CodeLedgerInvalid
	case t.Code == 0 && !res:
		return transport.CodeCodeInvalid
	case t.Amount == 0 && !res:
		return transport.CodeAmountInvalid
	case t.Timeout != 0 && t.Flags&transport.TransferPending == 0:
		return transport.CodeTimeoutInvalid
	case res && (!transport.ValidID(t.PendingID) || t.PendingID == t.ID), !res && t.PendingID != "":
		return transport.CodePendingIDInvalid
	case t.DebitAccountID == t.CreditAccountID && !(res && t.DebitAccountID == ""):
		return transport.CodeAccountsMustBeDifferent
	}
	return transport.CodeOK
}

func accountFieldCode(a *transport.Account) transport.Code {
	const both = transport.AccountDebitsMustNotExceedCredits | transport.AccountCreditsMustNotExceedDebits
	switch {
	case !transport.ValidID(a.ID):
		return transport.CodeIDInvalid
	case a.Flags&both == both || !transport.AccountFlagsKnown(a.Flags):
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

// variant registers fields sent under an id to a shard.
func (ref *Ref) variant(ds uint32, t *transport.Transfer) *refVariant {
	key := refKey{ds, t.ID}
	rt := ref.transfers[key]
	if rt == nil {
		rt = &refTransfer{}
		ref.transfers[key] = rt
	}
	for _, v := range rt.variants {
		if sameFields(&v.t, t) {
			return v
		}
	}
	v := &refVariant{key: key, t: *t, field: fieldCode(t)}
	rt.variants = append(rt.variants, v)
	if pk := (refKey{ds, t.PendingID}); isResolution(t) && v.field == transport.CodeOK && !slices.Contains(ref.resolutionOf[pk], key) {
		ref.resolutionOf[pk] = append(ref.resolutionOf[pk], key)
	}
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
	for i := range p.Cmd.Transfers {
		v := ref.variant(keyShard(&p.Cmd, i, p.Shard), &p.Cmd.Transfers[i])
		if v.sent {
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

// delivered: a client command reached shard to's leader.
func (ref *Ref) delivered(to uint32, cmd *shard.Command) {
	call := ref.calls[string(cmd.Request)]
	for i := range cmd.Accounts {
		a := &cmd.Accounts[i]
		if ra := ref.accounts[a.ID]; ra != nil && sameAccount(&ra.canon, a) {
			ra.copies++
			ra.add(call, countAccounts(cmd, a))
		}
	}
	for i := range cmd.Transfers {
		t := &cmd.Transfers[i]
		ds := keyShard(cmd, i, to)
		v := ref.find(ds, t)
		if v == nil {
			continue
		}
		v.copies++
		v.add(call, countTransfers(cmd, t))
		// A leg of a chain across shards sent again holds its credit on
		// its credit shard again, even once the chain committed (the
		// hold is released at the finish): every copy counts in the
		// possible sums.
		again := len(cmd.DebitShards) == len(cmd.Transfers) &&
			(t.Flags&transport.TransferLinked != 0 || i > 0 && cmd.Transfers[i-1].Flags&transport.TransferLinked != 0)
		if v.copies > 1 && !again {
			continue
		}
		if v.copies == 1 {
			v.logAtDelivery = ref.w.chk.logLow[ds-1]
		}
		if v.field == transport.CodeOK && !isResolution(t) {
			if dr := ref.accounts[t.DebitAccountID]; dr != nil {
				dr.possibleDebits += t.Amount
			}
			if cr := ref.accounts[t.CreditAccountID]; cr != nil {
				cr.possibleCredits += t.Amount
			}
		}
	}
}

// countAccounts counts a's copies in cmd.
func countAccounts(cmd *shard.Command, a *transport.Account) int {
	n := 0
	for i := range cmd.Accounts {
		if cmd.Accounts[i].ID == a.ID {
			n++
		}
	}
	return n
}

// countTransfers counts t's copies (its id) in cmd.
func countTransfers(cmd *shard.Command, t *transport.Transfer) int {
	n := 0
	for i := range cmd.Transfers {
		if cmd.Transfers[i].ID == t.ID {
			n++
		}
	}
	return n
}

// keyShard is the shard whose ids transfer i of cmd, sent to shard to, is
// keyed by: its debit shard. A chain across shards goes to its coordinator,
// with each transfer's debit shard in DebitShards (for every transfer of the
// command, chained or not).
func keyShard(cmd *shard.Command, i int, to uint32) uint32 {
	if len(cmd.DebitShards) == len(cmd.Transfers) {
		return cmd.DebitShards[i]
	}
	return to
}

func sameAccount(a, b *transport.Account) bool {
	return a.ID == b.ID && a.Ledger == b.Ledger && a.Code == b.Code && a.Flags == b.Flags && maps.Equal(a.Metadata, b.Metadata)
}

func (ref *Ref) bad(format string, args ...any) { ref.w.fail("reply", format, args...) }

// check judges the results of a request, each against the shard that
// answered it.
func (ref *Ref) check(call *routerCall) {
	type sent struct {
		shard, to     uint32 // the shard its id is keyed by, the one it went to
		sentAt, logAt uint64
	}
	at := make([]sent, len(call.results))
	for _, p := range call.parts {
		for j, i := range p.Index {
			ks := p.Shard
			if call.req.kind == shard.KindCreateTransfers {
				ks = keyShard(&p.Cmd, j, p.Shard)
			}
			sentAt := p.sentAt
			if ref.w.reqIDs {
				// A re-send carries the request's id and is answered as
				// its first application: ok for what the request created
				// before this send.
				sentAt = p.firstAt
			}
			at[i] = sent{ks, p.Shard, sentAt, p.logAt}
		}
	}
	var inChain []bool
	if call.req.kind == shard.KindCreateTransfers {
		inChain = ref.checkChains(call, func(i int) uint32 { return at[i].to })
		if ref.w.failure != nil {
			return
		}
	}
	for i, res := range call.results {
		if call.req.kind == shard.KindCreateAccounts {
			ref.checkAccount(call, &call.req.accounts[i], res)
		} else if inChain[i] {
			continue // judged as its chain
		} else if v := ref.find(at[i].shard, &call.req.transfers[i]); v == nil {
			ref.bad("transfer %s: answered by shard %d, where it was never sent", call.req.transfers[i].ID, at[i].shard)
		} else if ref.reach(v, res.Code); isResolution(&v.t) && v.field == transport.CodeOK {
			ref.checkResolution(call, v, res, at[i].sentAt, at[i].logAt)
		} else {
			ref.checkTransfer(call, v, res, at[i].sentAt)
		}
		if ref.w.failure != nil {
			return
		}
	}
}

// checkChains judges the linked chains of a transfer request (each event
// of a chain is flagged linked but the last) as wholes, and reports the
// events it judged, which the caller leaves alone: the rest are judged one
// by one. A chain open at the end of the batch answers
// linked_event_chain_open on each event, from the router; any other chain
// is applied all or nothing: ok on every event, exists on every event, or
// one event's refusal (judged as that event's) and linked_event_failed on
// the others. A chain on one shard goes whole to that shard; a chain across
// shards (an event on another shard, or a credit account there) to its
// coordinator, the first debit account's shard, which answers it the same
// way once its two-phase commit is over (a chain aborted answers retry, and
// its client sends it again). Where a chain across shards went is not
// judged here (the router's routing is not the point: what it applied is,
// and finalChecks judge that too). sentTo is the shard an event went to (0:
// none).
func (ref *Ref) checkChains(call *routerCall, sentTo func(i int) uint32) []bool {
	w := ref.w
	ts, res := call.req.transfers, call.results
	judged := make([]bool, len(ts))
	codes := func(i, j int) []transport.Code {
		var cs []transport.Code
		for k := i; k < j; k++ {
			cs = append(cs, res[k].Code)
		}
		return cs
	}
	shard.EachChain(len(ts), func(i int) bool { return ts[i].Flags&transport.TransferLinked != 0 }, func(i, j int, open bool) {
		if w.failure != nil || j-i == 1 && !open {
			return
		}
		spanning := false
		for k := i; k < j; k++ {
			if ds := w.shardOf(ts[k].DebitAccountID); ds != w.shardOf(ts[i].DebitAccountID) || w.shardOf(ts[k].CreditAccountID) != ds {
				spanning = true
			}
		}
		for k := i; k < j; k++ {
			judged[k] = true
			switch {
			case open:
				if s := sentTo(k); s != 0 || res[k].Code != transport.CodeLinkedEventChainOpen {
					ref.bad("chain %s..%s (open): event %s answered %s by shard %d, want linked_event_chain_open from the router: %v",
						ts[i].ID, ts[j-1].ID, ts[k].ID, res[k].Code, s, codes(i, j))
					return
				}
			case !spanning:
				if s := sentTo(k); s != w.shardOf(ts[i].DebitAccountID) {
					ref.bad("chain %s..%s: event %s answered by shard %d, not sent whole to shard %d: %v", ts[i].ID, ts[j-1].ID, ts[k].ID, s, w.shardOf(ts[i].DebitAccountID), codes(i, j))
					return
				}
			}
		}
		if open {
			w.reached["chain open at the end of the batch"]++
			return
		}
		prefix := "chain "
		if spanning {
			prefix = "chain across shards "
		}
		n := j - i
		count := map[transport.Code]int{}
		failing := -1
		for k := i; k < j; k++ {
			count[res[k].Code]++
			if res[k].Code != transport.CodeLinkedEventFailed {
				failing = k
			}
		}
		switch {
		case count[transport.CodeOK] == n:
			w.reached[prefix+"ok"]++
		case count[transport.CodeExists] == n:
			w.reached[prefix+"exists"]++
		case count[transport.CodeLinkedEventFailed] == n-1 && res[failing].Code != transport.CodeOK:
			w.reached[prefix+"linked_event_failed"]++
			w.reached[prefix+"failed on "+res[failing].Code.String()]++
			// A coordinator refuses a leg that is neither plain nor pending
			// (its fields valid): judged here, not as a plain transfer.
			if f := &ts[failing]; spanning && res[failing].Code == transport.CodeFlagsInvalid && fieldCode(f) == transport.CodeOK &&
				f.Flags&^(transport.TransferLinked|transport.TransferPending) != 0 {
				return
			}
			judged[failing] = false
			return
		default:
			ref.bad("%s%s..%s on shard %d: %v: neither applied as one nor refused as one", prefix, ts[i].ID, ts[j-1].ID, sentTo(i), codes(i, j))
			return
		}
		for k := i; k < j; k++ {
			judged[k] = false // each applied event is judged as any other
		}
	})
	return judged
}

func (ref *Ref) checkAccount(call *routerCall, a *transport.Account, res transport.Result) {
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
		if ref.w.reqIDs && !ra.other(call) {
			ref.bad("account %s: exists, but every copy delivered was this request's (one answer per request)", a.ID)
		}
		if ra.created && ra.ts != res.Timestamp {
			ref.bad("account %s: exists with timestamp %d, created at %d", a.ID, res.Timestamp, ra.ts)
		}
		ra.created, ra.ts = true, res.Timestamp
	default:
		ref.bad("account %s: %s", a.ID, res.Code)
	}
}

// apply records that v's fields are stored under its key, at ts. A plain
// transfer moves the acknowledged sums; a pending one moves nothing posted.
func (ref *Ref) apply(rt *refTransfer, v *refVariant, ts uint64) {
	rt.applied, rt.appliedAt, rt.ts, rt.tsKnown = v, ref.w.now, ts, true
	if v.ewdf {
		// Other fields were in flight under the id, and refused since.
		ref.w.reached["exists_with_different_fields, then applied"]++
	}
	if isPending(&v.t) {
		ref.accepted = append(ref.accepted, v.t)
		ref.checkDeadline(v.key)
		return
	}
	if isBalancing(&v.t) {
		// The amount it moved is at most the one sent, and the reply does
		// not say: the acknowledged sums stay a lower bound.
		return
	}
	ref.acked(v.t.DebitAccountID, v.t.CreditAccountID, v.t.Amount, v.t.ID)
}

// acked adds an amount known posted to the acknowledged sums, and checks
// them against what was ever sent.
func (ref *Ref) acked(debit, credit string, amount uint64, id string) {
	dr, cr := ref.accounts[debit], ref.accounts[credit]
	dr.ackedDebits += amount
	cr.ackedCredits += amount
	if dr.canon.Flags&transport.AccountDebitsMustNotExceedCredits != 0 && dr.ackedDebits > dr.possibleCredits {
		ref.bad("transfer %s applied: %s has %d acknowledged debits, but at most %d credits were ever sent to it",
			id, dr.canon.ID, dr.ackedDebits, dr.possibleCredits)
	}
	if cr.canon.Flags&transport.AccountCreditsMustNotExceedDebits != 0 && cr.ackedCredits > cr.possibleDebits {
		ref.bad("transfer %s applied: %s has %d acknowledged credits, but at most %d debits were ever sent from it",
			id, cr.canon.ID, cr.ackedCredits, cr.possibleDebits)
	}
}

// validForOK: could a plain or pending transfer with these fields ever apply?
func (ref *Ref) validForOK(v *refVariant) string {
	t := &v.t
	dr, cr := ref.accounts[t.DebitAccountID], ref.accounts[t.CreditAccountID]
	switch {
	case v.field != transport.CodeOK:
		return "its fields earn " + v.field.String()
	case isResolution(t):
		return "it is a post or void"
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

func (ref *Ref) checkTransfer(call *routerCall, v *refVariant, res transport.Result, sentAt uint64) {
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
		if rt.applied != nil && rt.applied != v && !clampable(&rt.applied.t, t) {
			// (A balancing transfer sent again with another amount may
			// answer ok or exists: the record has at most the amount of
			// each copy that did.)
			ref.bad("transfer %s (shard %d): %s, but other fields were applied under its id", t.ID, v.key.ds, res.Code)
			return
		}
		if cs := ref.w.shardOf(t.CreditAccountID); cs != v.key.ds && !ref.w.chk.landed[idKey{v.key.ds, t.ID}] {
			// ok means both halves committed.
			ref.bad("transfer %s (shard %d): %s before its credit landed on shard %d", t.ID, v.key.ds, res.Code, cs)
			return
		}
		if res.Code == transport.CodeOK {
			// One application answers ok once; the other copies get
			// exists (which may arrive first), with its timestamp.
			if rt.okSeen {
				ref.bad("transfer %s (shard %d): ok twice", t.ID, v.key.ds)
				return
			}
			if known {
				ref.bad("transfer %s (shard %d): ok, but it was applied before this copy was sent", t.ID, v.key.ds)
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
		if ref.w.reqIDs && !otherRequest(rt, call) {
			ref.bad("transfer %s (shard %d): exists, but every copy delivered was this request's (one answer per request)", t.ID, v.key.ds)
			return
		}
		if rt.applied == nil {
			if copies := ref.clampableCopies(rt, v); copies < 2 {
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
		if known && clampable(&rt.applied.t, t) && t.Amount >= rt.applied.t.Amount {
			ref.bad("transfer %s: exists_with_different_fields, but it is stored with at most %d (balancing), and this copy has %d", t.ID, rt.applied.t.Amount, t.Amount)
			return
		}
		// Other fields delivered under the id, applied or in flight when
		// this copy was decided (perhaps refused since, and these fields
		// applied after).
		for _, u := range rt.variants {
			if u != v && u.copies > 0 && u.field == transport.CodeOK {
				v.ewdf = true
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
			ref.bad("transfer %s %s->%s %d flags %d (shard %d): %s, but %s", t.ID, t.DebitAccountID, t.CreditAccountID, t.Amount, t.Flags, v.key.ds, res.Code, why)
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
		// A balancing_debit is clamped, limit flag or not, and refused
		// only when it would move nothing.
		clamped := t.Flags&transport.TransferBalancingDebit != 0
		if !exists(dr) || !clamped && dr.canon.Flags&transport.AccountDebitsMustNotExceedCredits == 0 {
			return "the debit account has no such limit"
		}
		need := t.Amount
		if clamped {
			need = 1
		}
		others := dr.possibleDebits - min(dr.possibleDebits, ownShare(v))
		if v.debitCredits >= others+need {
			return fmt.Sprintf("its %d acknowledged credits cover every debit ever sent from it (%d) and this one", v.debitCredits, others)
		}
	case transport.CodeExceedsDebits:
		clamped := t.Flags&transport.TransferBalancingCredit != 0
		if !exists(cr) || !clamped && cr.canon.Flags&transport.AccountCreditsMustNotExceedDebits == 0 {
			return "the credit account has no such limit"
		}
		need := t.Amount
		if clamped {
			need = 1
		}
		others := cr.possibleCredits - min(cr.possibleCredits, ownShare(v))
		if v.creditDebits >= others+need {
			return fmt.Sprintf("its %d acknowledged debits cover every credit ever sent to it (%d) and this one", v.creditDebits, others)
		}
	case transport.CodeFlagsInvalid:
		// Only a chain cut by shard (the mutation) leaves a linked
		// transfer across shards without its coordinator.
		if t.Flags&transport.TransferLinked == 0 || ref.w.shardOf(t.CreditAccountID) == v.key.ds {
			return "its flags are served on one shard"
		}
	default:
		return "no transfer the workload draws can earn it"
	}
	return ""
}

// clampable: a and b are balancing transfers with the same fields but
// perhaps the amount, which a shard may store clamped: a copy of either
// answers exists once the other is stored with at most its amount.
func clampable(a, b *transport.Transfer) bool {
	s := *a
	s.Amount = b.Amount
	return isBalancing(a) && sameFields(&s, b)
}

// otherRequest: a copy of some fields under rt's key was delivered by a
// try other than call (or twice in one command).
func otherRequest(rt *refTransfer, call *routerCall) bool {
	return slices.ContainsFunc(rt.variants, func(u *refVariant) bool { return u.other(call) })
}

// clampableCopies counts the deliveries under v's key of v's fields, or of
// a balancing transfer's fields with any amount.
func (ref *Ref) clampableCopies(rt *refTransfer, v *refVariant) int {
	n := 0
	for _, u := range rt.variants {
		if u == v || clampable(&u.t, &v.t) {
			n += u.copies
		}
	}
	return n
}

// ownShare is the variant's own amount in the possible sums.
func ownShare(v *refVariant) uint64 {
	if v.copies > 0 {
		return v.t.Amount
	}
	return 0
}

// stored lists the fields a shard may store under a key: the applied ones
// if the model knows them, else every valid set delivered.
func (ref *Ref) stored(k refKey) []*refVariant {
	rt := ref.transfers[k]
	if rt == nil {
		return nil
	}
	if rt.applied != nil {
		return []*refVariant{rt.applied}
	}
	var out []*refVariant
	for _, u := range rt.variants {
		if u.copies > 0 && (isResolution(&u.t) && u.field == transport.CodeOK || ref.validForOK(u) == "") {
			out = append(out, u)
		}
	}
	return out
}

// fieldsMatch: the optional fields a post or void gives are the pending
// transfer's (checked before anything else: pending_transfer_mismatch).
func fieldsMatch(r, p *transport.Transfer) bool {
	return (r.DebitAccountID == "" || r.DebitAccountID == p.DebitAccountID) &&
		(r.CreditAccountID == "" || r.CreditAccountID == p.CreditAccountID) &&
		(r.Ledger == 0 || r.Ledger == p.Ledger) && (r.Code == 0 || r.Code == p.Code)
}

// canResolve: post or void r can apply to pending transfer p while it is
// open and unexpired.
func canResolve(r, p *transport.Transfer) bool {
	return isPending(p) && fieldsMatch(r, p) && r.Amount <= p.Amount && (isPost(r) || r.Amount == 0 || r.Amount == p.Amount)
}

// effAmount is what a post or void of p moves out of pending: 0 means all.
func effAmount(r, p *transport.Transfer) uint64 {
	if r.Amount == 0 {
		return p.Amount
	}
	return r.Amount
}

// equivalent: with u stored as the resolution of p, a copy with v's fields
// answers exists (shard.sameResolution): the fields v omits are filled in
// from p, and amount 0 is p's amount.
func equivalent(u, v, p *transport.Transfer) bool {
	return fieldsMatch(u, p) && fieldsMatch(v, p) && u.Flags == v.Flags && u.PendingID == v.PendingID &&
		u.Timeout == v.Timeout && effAmount(u, p) == effAmount(v, p) && maps.Equal(u.Metadata, v.Metadata)
}

// deadline is when pending transfer p expires, given its timestamp (0: no
// timeout).
func deadline(p *transport.Transfer, ts uint64) uint64 {
	if p.Timeout == 0 {
		return 0
	}
	return ts + uint64(p.Timeout)*second
}

// checkResolution judges the reply to a post or void with valid fields,
// from shard v.key.ds. sentAt is when the router sent this copy, logAt the
// shard's log time then (a lower bound of when it applies).
func (ref *Ref) checkResolution(call *routerCall, v *refVariant, res transport.Result, sentAt, logAt uint64) {
	rt := ref.transfers[v.key]
	t := &v.t
	pk := refKey{v.key.ds, t.PendingID}
	prt := ref.transfers[pk]
	ps := ref.stored(pk)
	what := fmt.Sprintf("%s %s of %s (shard %d, amount %d)", resolutionKind(isPost(t)), t.ID, t.PendingID, v.key.ds, t.Amount)
	pExists := prt != nil && (prt.applied != nil && prt.appliedAt < sentAt || prt.resolvedAt != 0 && prt.resolvedAt < sentAt)
	resolvedBefore := prt != nil && prt.resolvedAt != 0 && prt.resolvedAt < sentAt && prt.resolvedBy != v.key
	known := rt.tsKnown && rt.appliedAt < sentAt
	// surelyExpired: p's deadline passed before this copy can apply.
	surelyExpired := func(p *refVariant) bool {
		if prt == nil || prt.applied != p {
			return false
		}
		d := deadline(&p.t, prt.ts)
		return d != 0 && d <= logAt+1
	}
	switch res.Code {
	case transport.CodeOK:
		if rt.okSeen {
			ref.bad("%s: ok twice", what)
			return
		}
		if !ref.settlementLanded(v, what, res.Code) {
			return
		}
		if known {
			ref.bad("%s: ok, but its id was stored before this copy was sent", what)
			return
		}
		if rt.tsKnown && rt.ts != res.Timestamp {
			ref.bad("%s: ok at %d, but its record was stored at %d", what, res.Timestamp, rt.ts)
			return
		}
		if res.Timestamp == 0 {
			ref.bad("%s: ok without a timestamp", what)
		}
		if !slices.ContainsFunc(ps, func(p *refVariant) bool { return canResolve(t, &p.t) }) {
			ref.bad("%s: ok, but no pending transfer it can resolve was delivered under %s", what, t.PendingID)
			return
		}
		rt.okSeen, rt.applied, rt.appliedAt, rt.ts, rt.tsKnown = true, v, ref.w.now, res.Timestamp, true
		ref.learnResolved(pk, v, res.Timestamp)
	case transport.CodeExists:
		if rt.tsKnown && rt.ts != res.Timestamp {
			ref.bad("%s: exists at %d, but its record was stored at %d", what, res.Timestamp, rt.ts)
			return
		}
		if !ref.settlementLanded(v, what, res.Code) {
			return
		}
		if !ref.couldBeStored(rt, v, ps, true) {
			ref.bad("%s: exists, but no copy it repeats was delivered earlier", what)
			return
		}
		if ref.w.reqIDs && !otherRequest(rt, call) {
			ref.bad("%s: exists, but every copy delivered was this request's (one answer per request)", what)
			return
		}
		if !rt.tsKnown {
			rt.ts, rt.tsKnown, rt.appliedAt = res.Timestamp, true, ref.w.now
		}
		ref.learnResolved(pk, v, res.Timestamp)
	case transport.CodeExistsWithDifferentFields:
		if known && rt.applied == v {
			ref.bad("%s: exists_with_different_fields, but these very fields were applied", what)
			return
		}
		if !ref.couldBeStored(rt, v, ps, false) {
			ref.bad("%s: exists_with_different_fields, but no other post or void it differs from was delivered under its id", what)
		}
	default:
		if known {
			ref.bad("%s: %s, but it was applied before this copy was sent", what, res.Code)
			return
		}
		if res.Timestamp != 0 {
			ref.bad("%s: %s with timestamp %d", what, res.Code, res.Timestamp)
		}
		if why := ref.resolutionRefusalImpossible(v, res.Code, ps, pExists, resolvedBefore, surelyExpired); why != "" {
			ref.bad("%s: %s, but %s", what, res.Code, why)
		}
	}
}

// settlementLanded: a post or void of a pending transfer across shards is
// answered ok (or exists) only once its settlement has landed on the
// credit shard (the checks saw the credit shard apply it).
func (ref *Ref) settlementLanded(v *refVariant, what string, code transport.Code) bool {
	rv := ref.w.chk.settlements[idKey{v.key.ds, v.t.ID}]
	if rv == nil || rv.credited {
		return true
	}
	ref.bad("%s: %s before its settlement landed on shard %d", what, code, rv.cs)
	return false
}

// couldBeStored: some post or void delivered under v's key may be stored
// there, and v repeats it (same) or differs from it (!same).
func (ref *Ref) couldBeStored(rt *refTransfer, v *refVariant, ps []*refVariant, same bool) bool {
	for _, u := range rt.variants {
		switch {
		case rt.applied != nil && u != rt.applied,
			u.field != transport.CodeOK || !isResolution(&u.t),
			u == v && (!same || v.copies < 2 && rt.applied != v),
			u != v && u.copies == 0:
			continue
		}
		for _, p := range ps {
			if canResolve(&u.t, &p.t) && equivalent(&u.t, &v.t, &p.t) == same {
				return true
			}
		}
	}
	return false
}

// resolutionRefusalImpossible says why no order of the requests in flight
// gives a post or void this refusal, or "" if one can. ps are the fields
// the shard may store under the pending id.
func (ref *Ref) resolutionRefusalImpossible(v *refVariant, code transport.Code, ps []*refVariant, pExists, resolvedBefore bool,
	surelyExpired func(*refVariant) bool) string {
	t := &v.t
	pk := refKey{v.key.ds, t.PendingID}
	prt := ref.transfers[pk]
	open := func(p *refVariant) bool { // p may be pending, open and unexpired when t applies
		return isPending(&p.t) && fieldsMatch(t, &p.t) && !resolvedBefore && !surelyExpired(p)
	}
	any := func(f func(p *refVariant) bool) bool { return slices.ContainsFunc(ps, f) }
	switch code {
	case transport.CodePendingTransferNotFound:
		if pExists {
			return "the model knew it stored before this copy was sent"
		}
	case transport.CodePendingTransferMismatch:
		if !any(func(p *refVariant) bool {
			return !fieldsMatch(t, &p.t) || open(p) && !isPost(t) && t.Amount != 0 && t.Amount < p.t.Amount
		}) {
			return "the fields it gives match every transfer stored under its id, and it is no part void of one"
		}
	case transport.CodePendingTransferNotPending:
		if !any(func(p *refVariant) bool { return !isPending(&p.t) && fieldsMatch(t, &p.t) }) {
			return "no transfer delivered under its pending id is a plain one"
		}
	case transport.CodePendingTransferAlreadyPosted, transport.CodePendingTransferAlreadyVoided:
		post := code == transport.CodePendingTransferAlreadyPosted
		if !any(func(p *refVariant) bool { return isPending(&p.t) && fieldsMatch(t, &p.t) }) {
			return "no pending transfer it matches was delivered under its pending id"
		}
		if prt.resolvedAt != 0 && prt.resolvedBy != v.key {
			if prt.resolvedPost != post {
				return fmt.Sprintf("the model knows it was resolved by %s (post=%v)", prt.resolvedBy.id, prt.resolvedPost)
			}
			return ""
		}
		if !ref.otherResolution(v, post, ps) {
			return "no other " + resolutionKind(post) + " of it was delivered"
		}
	case transport.CodePendingTransferExpired:
		if resolvedBefore {
			return fmt.Sprintf("the model knew it resolved by %s before this copy was sent", prt.resolvedBy.id)
		}
		logHigh := ref.w.chk.logHigh[v.key.ds-1] + 1
		if !any(func(p *refVariant) bool {
			if !isPending(&p.t) || !fieldsMatch(t, &p.t) || p.t.Timeout == 0 {
				return false
			}
			ts := p.logAtDelivery + 1 // the earliest it can have been applied at
			if prt.applied == p {
				ts = prt.ts
			}
			return deadline(&p.t, ts) <= logHigh
		}) {
			return fmt.Sprintf("no pending transfer it matches can have expired by log time %d", rel(logHigh))
		}
	case transport.CodeExceedsPendingTransferAmount:
		if !any(func(p *refVariant) bool { return open(p) && t.Amount > p.t.Amount }) {
			return "no open pending transfer it matches has a smaller amount"
		}
	default:
		return "no post or void the workload draws can earn it"
	}
	return ""
}

// otherResolution: a post (or void) of the same pending transfer under
// another id was delivered to the shard, and may have applied.
func (ref *Ref) otherResolution(v *refVariant, post bool, ps []*refVariant) bool {
	for _, k := range ref.resolutionOf[refKey{v.key.ds, v.t.PendingID}] {
		if k == v.key {
			continue
		}
		for _, u := range ref.transfers[k].variants {
			if u.copies == 0 || u.field != transport.CodeOK || isPost(&u.t) != post || u.t.PendingID != v.t.PendingID {
				continue
			}
			if slices.ContainsFunc(ps, func(p *refVariant) bool { return canResolve(&u.t, &p.t) }) {
				return true
			}
		}
	}
	return false
}

// learnResolved: the post or void v (or fields equivalent to it) is stored
// under its key, at ts, so the pending transfer it names was resolved by it.
func (ref *Ref) learnResolved(pk refKey, v *refVariant, ts uint64) {
	prt := ref.transfers[pk]
	post := isPost(&v.t)
	switch {
	case prt.resolvedAt == 0:
		prt.resolvedBy, prt.resolvedPost, prt.resolvedAt, prt.resolvedTS = v.key, post, ref.w.now, ts
	case prt.resolvedBy != v.key:
		ref.bad("pending %s (shard %d) resolved by both %s and %s", pk.id, pk.ds, prt.resolvedBy.id, v.key.id)
		return
	default:
		return
	}
	ref.checkDeadline(pk)
	ps := ref.stored(pk)
	if !post || len(ps) != 1 {
		return // the amount posted is known at the end
	}
	p := &ps[0].t
	ref.acked(p.DebitAccountID, p.CreditAccountID, effAmount(&v.t, p), v.t.ID)
}

// checkDeadline: a pending transfer known applied and resolved was resolved
// before its deadline.
func (ref *Ref) checkDeadline(pk refKey) {
	prt := ref.transfers[pk]
	if prt.applied == nil || prt.resolvedAt == 0 {
		return
	}
	if d := deadline(&prt.applied.t, prt.ts); d != 0 && prt.resolvedTS >= d {
		ref.bad("pending %s (shard %d) applied at %d with timeout %ds resolved by %s at %d, after its deadline",
			pk.id, pk.ds, rel(prt.ts), prt.applied.t.Timeout, prt.resolvedBy.id, rel(prt.resolvedTS))
	}
}

// settle is the end of the run: every transfer whose outcome no client saw
// is looked up on its shard, every record must be one some client sent,
// every pending transfer must have ended as its posts, voids and timeout
// say, and every balance must equal the sums of the records.
func (ref *Ref) settle() {
	w := ref.w
	keys := slices.SortedFunc(maps.Keys(ref.transfers), func(a, b refKey) int {
		return cmp.Or(cmp.Compare(a.ds, b.ds), cmp.Compare(a.id, b.id))
	})
	stored := map[uint32]int{}
	records := map[refKey]transport.Transfer{}
	for _, k := range keys {
		rt := ref.transfers[k]
		found := w.group(k.ds).leader.r.st.LookupTransfers([]string{k.id})
		if len(found) == 0 {
			if rt.tsKnown {
				w.fail("final", "transfer %s (shard %d) was acknowledged but is not stored", k.id, k.ds)
				return
			}
			continue
		}
		f := found[0]
		if rt.tsKnown && f.Timestamp != rt.ts {
			w.fail("final", "transfer %s (shard %d) is stored at %d, acknowledged at %d", k.id, k.ds, f.Timestamp, rt.ts)
			return
		}
		if why := ref.storedAsSent(k, rt, &f); why != "" {
			w.fail("final", "shard %d stores transfer %s as %+v: %s", k.ds, k.id, f, why)
			return
		}
		records[k] = f
		stored[k.ds]++
	}
	for _, g := range w.groups {
		_, n, _, _ := g.leader.r.st.Counts()
		if n != stored[g.id] {
			w.fail("final", "%s stores %d transfers, the model found %d with it as debit shard", g.name(), n, stored[g.id])
			return
		}
	}
	type sums struct{ dPosted, cPosted, dPending, cPending uint64 }
	bal := map[string]*sums{}
	add := func(id string) *sums {
		if bal[id] == nil {
			bal[id] = &sums{}
		}
		return bal[id]
	}
	for _, k := range keys {
		f, ok := records[k]
		if !ok {
			continue
		}
		switch {
		case holds(&f):
			if why := ref.pendingEnded(k, &f, records); why != "" {
				w.fail("final", "pending %s (shard %d) %+v: %s", k.id, k.ds, f, why)
				return
			}
			if f.State == transport.StatePending {
				add(f.DebitAccountID).dPending += f.Amount
				add(f.CreditAccountID).cPending += f.Amount
			}
		case isResolution(&f):
			if isPost(&f) {
				add(f.DebitAccountID).dPosted += f.Amount
				add(f.CreditAccountID).cPosted += f.Amount
			}
		default:
			add(f.DebitAccountID).dPosted += f.Amount
			add(f.CreditAccountID).cPosted += f.Amount
		}
	}
	for _, id := range slices.Sorted(maps.Keys(ref.accounts)) {
		ra := ref.accounts[id]
		g := w.group(w.shardOf(id))
		found := g.leader.r.st.LookupAccounts([]string{id})
		want := add(id)
		if ra.ghost {
			if len(found) != 0 {
				w.fail("final", "account %s was never sent, but exists", id)
			}
			continue
		}
		if len(found) == 0 {
			if ra.created || *want != (sums{}) {
				w.fail("final", "account %s is acknowledged but does not exist", id)
			}
			continue
		}
		a := found[0]
		if !sameAccount(&a, &ra.canon) {
			w.fail("final", "account %s stored as %+v, sent as %+v", id, a, ra.canon)
		}
		if a.DebitsPosted != want.dPosted || a.CreditsPosted != want.cPosted || a.DebitsPending != want.dPending || a.CreditsPending != want.cPending {
			w.fail("final", "account %s: debits %d posted %d pending, credits %d posted %d pending; its transfers explain debits %d %d, credits %d %d",
				id, a.DebitsPosted, a.DebitsPending, a.CreditsPosted, a.CreditsPending, want.dPosted, want.dPending, want.cPosted, want.cPending)
		}
		if ra.ackedDebits > a.DebitsPosted || ra.ackedCredits > a.CreditsPosted {
			w.fail("final", "account %s: debits %d credits %d posted, less than the %d and %d acknowledged", id, a.DebitsPosted, a.CreditsPosted, ra.ackedDebits, ra.ackedCredits)
		}
		if w.failure != nil {
			return
		}
	}
}

// storedAsSent says why a stored record is none that clients delivered
// under its key (or not the one the model knows applied), or "".
func (ref *Ref) storedAsSent(k refKey, rt *refTransfer, f *transport.Transfer) string {
	if !isResolution(f) {
		v := ref.find(k.ds, f)
		if isBalancing(f) {
			v = ref.clampedFrom(k, rt, f)
		}
		switch {
		case v == nil || v.copies == 0:
			return "no client delivered these fields"
		case rt.applied != nil && rt.applied != v:
			return fmt.Sprintf("the model knows %+v applied", rt.applied.t)
		}
		if why := ref.validForOK(v); why != "" {
			return why
		}
		if rt.applied == nil {
			if v.ewdf {
				ref.w.reached["exists_with_different_fields, then applied"]++
			}
			rt.applied, rt.ts, rt.tsKnown = v, f.Timestamp, true
		}
		return ""
	}
	// A post or void is stored with its pending transfer's fields and the
	// amount it moved: some delivered copy must give exactly it.
	ps := ref.w.group(k.ds).leader.r.st.LookupTransfers([]string{f.PendingID})
	if len(ps) == 0 || !isPending(&ps[0]) {
		return "its pending transfer is not stored"
	}
	p := &ps[0]
	for _, u := range rt.variants {
		if rt.applied != nil && u != rt.applied || u.copies == 0 || u.field != transport.CodeOK || !isResolution(&u.t) || !canResolve(&u.t, p) {
			continue
		}
		s := u.t
		s.DebitAccountID, s.CreditAccountID, s.Ledger, s.Code, s.Amount = p.DebitAccountID, p.CreditAccountID, p.Ledger, p.Code, effAmount(&u.t, p)
		if sameFields(&s, f) {
			return ""
		}
	}
	return fmt.Sprintf("no delivered post or void of %+v gives it", *p)
}

// clampedFrom is the delivered balancing transfer that stored record f can
// be: the same fields with an amount at least f's (the shard clamps it), the
// one the model knows applied if it knows it.
func (ref *Ref) clampedFrom(k refKey, rt *refTransfer, f *transport.Transfer) *refVariant {
	for _, u := range rt.variants {
		s := u.t
		s.Amount = f.Amount
		if u.copies > 0 && (rt.applied == nil || u == rt.applied) && f.Amount > 0 && u.t.Amount >= f.Amount && sameFields(&s, f) {
			return u
		}
	}
	return nil
}

// pendingEnded says why a stored pending transfer did not end as its posts,
// voids and timeout say, or "": posted or voided by exactly one stored post
// or void (as the model learnt), expired only after its deadline's time
// came, never still pending with a timeout at the end.
func (ref *Ref) pendingEnded(k refKey, p *transport.Transfer, records map[refKey]transport.Transfer) string {
	var by []refKey
	for _, rk := range ref.resolutionOf[k] {
		if r, ok := records[rk]; ok && isResolution(&r) && r.PendingID == k.id {
			by = append(by, rk)
		}
	}
	prt := ref.transfers[k]
	d := deadline(p, p.Timestamp)
	switch p.State {
	case transport.StatePending, transport.StateExpired:
		if len(by) != 0 {
			return fmt.Sprintf("%s, but %s resolved it", p.State, by[0].id)
		}
		if p.State == transport.StatePending && p.Timeout != 0 {
			return "still pending at the end, with a timeout"
		}
		if p.State == transport.StateExpired && p.Timeout == 0 {
			return "expired without a timeout"
		}
		if prt.resolvedAt != 0 {
			return fmt.Sprintf("%s, but a client was told %s resolved it", p.State, prt.resolvedBy.id)
		}
	case transport.StatePosted, transport.StateVoided:
		if len(by) != 1 {
			return fmt.Sprintf("%s by %d posts and voids", p.State, len(by))
		}
		r := records[by[0]]
		switch {
		case isPost(&r) != (p.State == transport.StatePosted):
			return fmt.Sprintf("%s by %+v", p.State, r)
		case prt.resolvedAt != 0 && prt.resolvedBy != by[0]:
			return fmt.Sprintf("resolved by %s, but a client was told %s resolved it", by[0].id, prt.resolvedBy.id)
		case d != 0 && r.Timestamp >= d:
			return fmt.Sprintf("resolved by %s at %d, at or after its deadline %d", r.ID, rel(r.Timestamp), rel(d))
		case r.Amount > p.Amount || !isPost(&r) && r.Amount != p.Amount:
			return fmt.Sprintf("%s by %s moving %d", p.State, r.ID, r.Amount)
		}
	default:
		return "in no state a pending transfer can be in"
	}
	return ""
}

// drawn records a transfer the workload made, for later repeats, posts
// and voids.
func (ref *Ref) drawn(t transport.Transfer) {
	ref.history = append(ref.history, t)
	if fieldCode(&t) != transport.CodeOK {
		return
	}
	switch {
	case isPending(&t):
		if _, ok := ref.pendingByID[t.ID]; !ok {
			ref.pendingByID[t.ID] = t
		}
	case isResolution(&t):
		ref.resolutions = append(ref.resolutions, t)
	}
}

// lookedUp checks the router's lookup of ids on shard s, sent at sentAt:
// the leader that answers (it confirmed its leadership and has applied
// everything committed) finds every transfer the model knew stored there
// before the lookup was sent. Else the router would send a post or void to
// the wrong shard, which answers pending_transfer_not_found.
func (ref *Ref) lookedUp(s uint32, ids []string, rep lookupReply, sentAt uint64) {
	for _, id := range ids {
		if slices.ContainsFunc(rep.found, func(t transport.Transfer) bool { return t.ID == id }) {
			continue
		}
		rt := ref.transfers[refKey{s, id}]
		if rt == nil || !rt.tsKnown || rt.appliedAt >= sentAt {
			continue
		}
		ref.w.fail("lookup", "shard %d's leader (term %d) did not find transfer %s, acknowledged before the lookup was sent", s, rep.term, id)
		return
	}
}

// reach counts a two-phase outcome.
func (ref *Ref) reach(v *refVariant, code transport.Code) {
	var kind string
	switch {
	case isPending(&v.t) && ref.w.shardOf(v.t.CreditAccountID) != v.key.ds:
		kind = "cross-shard pending"
	case isPending(&v.t):
		kind = "pending"
	case isBalancing(&v.t):
		kind = "balancing"
	case isResolution(&v.t):
		kind = resolutionKind(isPost(&v.t))
		if p, ok := ref.pendingByID[v.t.PendingID]; ok && ref.w.shardOf(p.DebitAccountID) == v.key.ds && ref.w.shardOf(p.CreditAccountID) != v.key.ds {
			kind = "cross-shard " + kind
		}
	default:
		return
	}
	ref.w.reached[kind+" "+code.String()]++
}
