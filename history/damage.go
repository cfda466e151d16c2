package history

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// check turns a read's error into one that says the store is damaged when
// Pebble found a checksum or a record that fails, recording it (once) so
// that the next Open refuses too. Other errors pass unchanged.
func (s *Store) check(err error) error {
	if err == nil || !pebble.IsCorruptionError(err) {
		return err
	}
	err = fmt.Errorf("history store %s: %w: %w", s.dir, ErrDamaged, err)
	s.damage.Do(func() {
		s.log.Error("the history store is damaged: this shard must be repaired from a peer, or started with salvage", "dir", s.dir, "err", err)
		if rerr := recordDamage(s.dir, err); rerr != nil {
			s.log.Error("record the damage", "err", rerr)
		}
		s.damaged.Store(&err)
		if fn := s.onDamage.Load(); fn != nil {
			s.notify.Do(func() { go (*fn)(err) })
		}
	})
	return err
}

// OnDamage sets what to call (once, in a goroutine of its own) when a read
// or a compaction finds the store damaged: the shard's group stops serving
// on this node. Damage found before it is set (a compaction at start) is
// told at once.
func (s *Store) OnDamage(fn func(error)) {
	s.onDamage.Store(&fn)
	if err := s.damaged.Load(); err != nil {
		s.notify.Do(func() { go fn(*err) })
	}
}

func recordDamage(dir string, found error) error {
	f, err := os.OpenFile(filepath.Join(dir, damageMarker), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, werr := fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), found)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// checkRecordedDamage refuses a store whose damage was recorded, unless
// salvaging it (then the record goes, with a warning).
func checkRecordedDamage(dir string, o Options) error {
	path := filepath.Join(dir, damageMarker)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open history store %s: %w", dir, err)
	}
	what := strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "; ")
	if !o.Salvage {
		return fmt.Errorf("history store %s: damage was found by an earlier run (%s): %w", dir, what, ErrDamaged)
	}
	o.Logger.Warn("salvage: opening a history store found damaged; reads of the damaged blocks still fail", "dir", dir, "damage", what)
	return os.Remove(path)
}
