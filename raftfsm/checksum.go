package raftfsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/hashicorp/raft"
)

// Every Raft entry written since format 2 (storeFormat) carries a seal in
// raft.Log.Extensions, which hashicorp/raft replicates and raft-boltdb
// stores with the entry: a format byte, then the CRC-32C of the entry's data
// followed by its index, term, type and that format byte. Extensions rather
// than the data envelope, so that Raft's own entries (configuration, noop,
// barrier), which have no envelope, are sealed too.
//
// The leader's actor seals a command's data when it proposes it
// (proposalSeal: the data's CRC alone, the index and term are not known
// yet); the leader's log store turns that into the entry's seal when it
// appends the entry, extending the same CRC, so the data is hashed once.
// Raft's own entries are sealed there from scratch. A follower verifies
// every sealed entry it is sent before it stores it, and every reader of the
// log store verifies what it reads (checkedLogStore).
const (
	sealV1       = 0x5e // a stored entry's seal, format 1
	sealProposed = 0xa1 // a command's data CRC, between the actor and the store; never stored
	sealLen      = 5    // format byte, CRC-32C big-endian
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Seal errors. errNoSeal is damage only where a seal is required (from the
// first entry a checking ledgerd wrote, storeMarker.checkedFrom).
var (
	errNoSeal       = errors.New("no checksum")
	errSealMismatch = errors.New("checksum mismatch")
)

// proposalSeal is what the actor passes with a command entry's data.
func proposalSeal(data []byte) []byte {
	return sealBytes(sealProposed, crc32.Checksum(data, castagnoli))
}

func sealBytes(format byte, sum uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{format}, sum)
}

// extendSeal extends the CRC of an entry's data with its header.
func extendSeal(dataSum uint32, l *raft.Log) uint32 {
	var h [18]byte
	binary.BigEndian.PutUint64(h[0:], l.Index)
	binary.BigEndian.PutUint64(h[8:], l.Term)
	h[16] = byte(l.Type)
	h[17] = sealV1
	return crc32.Update(dataSum, castagnoli, h[:])
}

// entrySum is the seal an entry should carry.
func entrySum(l *raft.Log) uint32 {
	return extendSeal(crc32.Checksum(l.Data, castagnoli), l)
}

// sealEntry gives an entry about to be stored its seal: checks a proposal's
// data CRC and extends it, seals an unsealed entry (Raft's own, or one a
// release without checksums sent), and checks a sealed one (sent by the
// leader). It replaces Extensions, never writes into it.
func sealEntry(l *raft.Log) error {
	if len(l.Extensions) == 0 {
		l.Extensions = sealBytes(sealV1, entrySum(l))
		return nil
	}
	if len(l.Extensions) != sealLen {
		return fmt.Errorf("entry %d: extensions of %d bytes: %w", l.Index, len(l.Extensions), errUnknownFormat)
	}
	stored := binary.BigEndian.Uint32(l.Extensions[1:])
	switch l.Extensions[0] {
	case sealProposed:
		if sum := crc32.Checksum(l.Data, castagnoli); sum != stored {
			return fmt.Errorf("entry %d: data changed between the proposal and the log (CRC-32C %08x, proposed %08x): %w", l.Index, sum, stored, errSealMismatch)
		}
		l.Extensions = sealBytes(sealV1, extendSeal(stored, l))
		return nil
	case sealV1:
		return verifySeal(l)
	default:
		return fmt.Errorf("entry %d: checksum format %#02x: %w", l.Index, l.Extensions[0], errUnknownFormat)
	}
}

// errUnknownFormat is a seal this release cannot read: written by a newer
// ledgerd, or damaged. Either way it is not served.
var errUnknownFormat = errors.New("unknown entry format: written by a newer ledgerd, or damaged")

// verifySeal checks a stored entry's seal. An entry without one is
// errNoSeal: the caller knows whether one is required.
func verifySeal(l *raft.Log) error {
	switch {
	case len(l.Extensions) == 0:
		return fmt.Errorf("entry %d: %w", l.Index, errNoSeal)
	case len(l.Extensions) != sealLen || l.Extensions[0] != sealV1:
		return fmt.Errorf("entry %d: extensions %x: %w", l.Index, l.Extensions, errUnknownFormat)
	}
	stored := binary.BigEndian.Uint32(l.Extensions[1:])
	if sum := entrySum(l); sum != stored {
		return fmt.Errorf("entry %d (term %d, %s, %d bytes): CRC-32C %08x, stored %08x: %w", l.Index, l.Term, l.Type, len(l.Data), sum, stored, errSealMismatch)
	}
	return nil
}

// checkEntry checks an entry read from the log store at index: a seal is
// required from checkedFrom on; before it (entries written by a release
// without checksums) an entry may have none, and one it has must be valid.
func checkEntry(l *raft.Log, index, checkedFrom uint64) error {
	if l.Index != index {
		return fmt.Errorf("entry %d: stored under index %d: %w", l.Index, index, errSealMismatch)
	}
	err := verifySeal(l)
	if errors.Is(err, errNoSeal) && index < checkedFrom {
		return nil
	}
	return err
}
