package raftfsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ledgerd/ledgerd/history"
)

// ErrDamaged is wrapped by every error that reports damaged storage: a
// checksum that fails, a file that does not decode, a log that may have lost
// entries it had acknowledged. A node with peers drops the group's copy and
// joins again; a single node refuses to start (GroupConfig.Salvage starts it
// anyway from the last good state).
var ErrDamaged = history.ErrDamaged

// DamageError says what is damaged, where.
type DamageError struct {
	Group uint32
	File  string // the damaged file
	Index uint64 // the Raft entry, if one (0: none)
	What  string
}

func (e *DamageError) Error() string {
	s := fmt.Sprintf("group %d: %s: ", e.Group, e.File)
	if e.Index != 0 {
		s += fmt.Sprintf("entry %d: ", e.Index)
	}
	return s + e.What + ": damaged storage"
}

func (e *DamageError) Unwrap() error { return ErrDamaged }

// damageMarker, in a group's directory, records damage found while the
// group ran (a log entry that failed its check when read back): the next
// start finds it there even if the process stopped before it could act. It is
// written before the error is returned, and removed only by a start that
// salvages the group or a repair that drops the group's copy.
const damageMarker = "DAMAGED"

// recordDamage appends what was found to the group's marker, synced.
func recordDamage(dir string, found error) error {
	f, err := os.OpenFile(filepath.Join(dir, damageMarker), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("record damage: %w", err)
	}
	_, werr := fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), found)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("record damage: %w", err)
	}
	return syncDir(dir)
}

// recordedDamage returns the damage recorded in dir, if any.
func recordedDamage(dir string, group uint32) (*DamageError, error) {
	path := filepath.Join(dir, damageMarker)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	what := strings.TrimSpace(string(b))
	return &DamageError{Group: group, File: path, What: "damage found while running: " + strings.ReplaceAll(what, "\n", "; ")}, nil
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
