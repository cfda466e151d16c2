package transport

import "github.com/cespare/xxhash/v2"

// Slot maps an account id to its hash slot. Every router and every shard
// computes the same slot for the same id.
func Slot(accountID string) uint16 {
	return uint16(xxhash.Sum64String(accountID) % SlotCount)
}
