package transport

// Limits of the client protocol. Each is named here, documented in
// docs/protocol.md and checked by a test.
const (
	// BatchEventsMax is the most events (or ids) one request may carry.
	BatchEventsMax = 8190
	// HistoryLimitMax is the most rows one accounts.transfers or
	// accounts.balances request may ask for.
	HistoryLimitMax = BatchEventsMax
	// IDBytesMax is the longest account or transfer id.
	IDBytesMax = 64
	// MetadataPairsMax is the most metadata pairs on one account or transfer.
	MetadataPairsMax = 16
	// MetadataBytesMax bounds the bytes of all metadata keys and values together.
	MetadataBytesMax = 1024
	// MessageBytesMax is the NATS max_payload the cluster is configured with.
	MessageBytesMax = 8 << 20
	// StatusLedgersMax bounds the per-ledger totals a shard reports in
	// cluster.status, so that the status fits a message.
	StatusLedgersMax = 4096
	// SlotCount is the number of hash slots account ids map to. Fixed forever:
	// changing it would move every account.
	SlotCount = 4096
)

// Account flags.
const (
	AccountLinked                     uint32 = 1 << 0
	AccountDebitsMustNotExceedCredits uint32 = 1 << 1
	AccountCreditsMustNotExceedDebits uint32 = 1 << 2
	AccountHistory                    uint32 = 1 << 3
	AccountClosed                     uint32 = 1 << 4
	accountFlagsKnown                        = 1<<5 - 1
)

// Transfer flags.
const (
	TransferLinked              uint32 = 1 << 0
	TransferPending             uint32 = 1 << 1
	TransferPostPendingTransfer uint32 = 1 << 2
	TransferVoidPendingTransfer uint32 = 1 << 3
	TransferBalancingDebit      uint32 = 1 << 4
	TransferBalancingCredit     uint32 = 1 << 5
	TransferClosingDebit        uint32 = 1 << 6
	TransferClosingCredit       uint32 = 1 << 7
	transferFlagsKnown                 = 1<<8 - 1
)

// AccountFlagsKnown reports whether flags has only defined account bits.
func AccountFlagsKnown(flags uint32) bool { return flags&^accountFlagsKnown == 0 }

// TransferFlagsKnown reports whether flags has only defined transfer bits.
func TransferFlagsKnown(flags uint32) bool { return flags&^transferFlagsKnown == 0 }

// ValidID reports whether id is 1..IDBytesMax bytes of [A-Za-z0-9_.:@-].
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > IDBytesMax {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !idByte[id[i]] {
			return false
		}
	}
	return true
}

var idByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "_.:@-" {
		t[c] = true
	}
	return t
}()

// ValidMetadata reports whether m is within the metadata limits: at most
// MetadataPairsMax pairs, no empty key, MetadataBytesMax bytes in all.
func ValidMetadata(m map[string]string) bool {
	if len(m) > MetadataPairsMax {
		return false
	}
	n := 0
	for k, v := range m {
		if k == "" {
			return false
		}
		n += len(k) + len(v)
	}
	return n <= MetadataBytesMax
}
