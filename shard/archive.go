package shard

import (
	"maps"

	"github.com/ledgerd/ledgerd/transport"
)

// Archive holds the shard's history, which the in-memory state lets go of:
// every transfer once it is final (posted, voided, expired), each account's
// transfers in timestamp order, and the balance rows of accounts flagged
// history. Apply writes it and reads final transfers back by id (idempotency
// forever, posts of old pending transfers); readers query it for history.
//
// Whatever Apply writes derives from the log alone, so every replica writes
// the same rows, and writing a row again (a replay after a crash) writes the
// same bytes. The production archive is package history (on disk, made
// durable before Raft may drop the log entries that wrote it).
type Archive interface {
	// Transfer returns the last version put of the transfer with this id,
	// and the timestamp it was put at.
	Transfer(id string) (t transport.Transfer, at uint64, ok bool)
	// PutTransfer stores a transfer by id (replacing an earlier version) at
	// a timestamp of the state's: the event that made it final.
	PutTransfer(t *transport.Transfer, at uint64)
	// PutAccountTransfer puts t in account's history at ts (which orders
	// the history; the transfer's own timestamp, except for the credit half
	// of a cross-shard transfer, which is listed when it was credited).
	PutAccountTransfer(account string, ts uint64, t *transport.Transfer)
	// PutAccountTransferRef is PutAccountTransfer for a transfer archived
	// by id (PutTransfer), so its history row need not copy it.
	PutAccountTransferRef(account string, ts uint64, id string)
	// PutBalance records account's balances right after the event at
	// b.Timestamp.
	PutBalance(account string, b *transport.Balance)
}

// MemArchive is an Archive in memory, for tests and the simulator. It grows
// with history: production uses package history.
type MemArchive struct {
	Transfers        map[string]ArchivedTransfer
	AccountTransfers map[string]map[uint64]transport.Transfer
	Balances         map[string]map[uint64]transport.Balance
}

// ArchivedTransfer is a transfer and the timestamp it was archived at.
type ArchivedTransfer struct {
	T  transport.Transfer
	At uint64
}

// NewMemArchive returns an empty MemArchive.
func NewMemArchive() *MemArchive {
	return &MemArchive{
		Transfers:        make(map[string]ArchivedTransfer),
		AccountTransfers: make(map[string]map[uint64]transport.Transfer),
		Balances:         make(map[string]map[uint64]transport.Balance),
	}
}

// Transfer implements Archive.
func (m *MemArchive) Transfer(id string) (transport.Transfer, uint64, bool) {
	a, ok := m.Transfers[id]
	return a.T, a.At, ok
}

// PutTransfer implements Archive.
func (m *MemArchive) PutTransfer(t *transport.Transfer, at uint64) {
	m.Transfers[t.ID] = ArchivedTransfer{T: *t, At: at}
}

// PutAccountTransfer implements Archive.
func (m *MemArchive) PutAccountTransfer(account string, ts uint64, t *transport.Transfer) {
	if m.AccountTransfers[account] == nil {
		m.AccountTransfers[account] = make(map[uint64]transport.Transfer)
	}
	m.AccountTransfers[account][ts] = *t
}

// PutAccountTransferRef implements Archive: the row holds only the id.
func (m *MemArchive) PutAccountTransferRef(account string, ts uint64, id string) {
	m.PutAccountTransfer(account, ts, &transport.Transfer{ID: id})
}

// PutBalance implements Archive.
func (m *MemArchive) PutBalance(account string, b *transport.Balance) {
	if m.Balances[account] == nil {
		m.Balances[account] = make(map[uint64]transport.Balance)
	}
	m.Balances[account][b.Timestamp] = *b
}

// Clone returns a deep copy (the simulator ships it with a snapshot, as an
// installed replica would receive the leader's history).
func (m *MemArchive) Clone() *MemArchive {
	c := &MemArchive{
		Transfers:        maps.Clone(m.Transfers),
		AccountTransfers: make(map[string]map[uint64]transport.Transfer, len(m.AccountTransfers)),
		Balances:         make(map[string]map[uint64]transport.Balance, len(m.Balances)),
	}
	for k, v := range m.AccountTransfers {
		c.AccountTransfers[k] = maps.Clone(v)
	}
	for k, v := range m.Balances {
		c.Balances[k] = maps.Clone(v)
	}
	return c
}

// archived returns the final transfer with this id, as of the state's last
// timestamp. Every version is put at a fresh timestamp (the event that made
// it final, ticked before the put), so a version written later in the log
// than the state has reached (the archive survives a crash; the state
// restarts from an older snapshot and replays) is not visible yet.
func (s *State) archived(id string) (transport.Transfer, bool) {
	t, at, ok := s.archive.Transfer(id)
	if !ok || at > s.last {
		return transport.Transfer{}, false
	}
	return t, true
}

// recordTransfer lists a transfer in the history of its accounts on this
// shard, at its own timestamp, and archives it if it is final: at must be
// the timestamp just ticked for the event that made it so.
func (s *State) recordTransfer(t *transport.Transfer, final bool, at uint64) {
	for _, account := range [2]string{t.DebitAccountID, t.CreditAccountID} {
		if _, ok := s.accounts[account]; !ok {
			continue // on another shard
		}
		if final {
			s.archive.PutAccountTransferRef(account, t.Timestamp, t.ID)
		} else {
			s.archive.PutAccountTransfer(account, t.Timestamp, t)
		}
	}
	if final {
		s.archive.PutTransfer(t, at)
	}
}

// recordBalance writes a balance row at ts if the account keeps history.
func (s *State) recordBalance(a *transport.Account, ts uint64) {
	if a == nil || a.Flags&transport.AccountHistory == 0 {
		return
	}
	s.archive.PutBalance(a.ID, &transport.Balance{
		Timestamp:     ts,
		DebitsPending: a.DebitsPending, DebitsPosted: a.DebitsPosted,
		CreditsPending: a.CreditsPending, CreditsPosted: a.CreditsPosted,
	})
}
