package raftfsm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
)

// inspection is what checking a group's files found.
type inspection struct {
	bolt   *boltFacts
	snaps  []*snapInfo
	damage []error
}

// checkFiles checks every file of a group before Raft reads any: the
// damage marker, raft.db (boltcheck.go), every snapshot (snapcheck.go), and
// that the log continues the newest snapshot the machine can restore. With
// salvage, damage found is cut away (salvage) and the files checked again.
func checkFiles(cfg GroupConfig, snaps raft.SnapshotStore, log *slog.Logger) (*inspection, error) {
	in, err := inspect(cfg, snaps)
	if err != nil || len(in.damage) == 0 {
		return in, err
	}
	if !cfg.Salvage {
		return nil, errors.Join(in.damage...)
	}
	if err := salvage(cfg, in, log); err != nil {
		return nil, fmt.Errorf("group %d: salvage: %w (damage: %w)", cfg.ID, err, errors.Join(in.damage...))
	}
	in, err = inspect(cfg, snaps)
	if err == nil && len(in.damage) > 0 {
		return nil, fmt.Errorf("group %d: salvage left damage: %w", cfg.ID, errors.Join(in.damage...))
	}
	return in, err
}

func inspect(cfg GroupConfig, snaps raft.SnapshotStore) (*inspection, error) {
	in := &inspection{}
	recorded, err := recordedDamage(cfg.Dir, cfg.ID)
	if err != nil {
		return nil, err
	}
	if recorded != nil {
		in.damage = append(in.damage, recorded)
	}
	if in.snaps, err = listSnapshots(cfg.Dir); err != nil {
		return nil, fmt.Errorf("group %d: %w", cfg.ID, err)
	}
	wanted := map[uint64]bool{}
	for _, s := range in.snaps {
		wanted[s.meta.Index], wanted[s.meta.ConfigurationIndex] = true, true
	}
	if in.bolt, err = checkBolt(filepath.Join(cfg.Dir, "raft.db"), cfg.ID, wanted); err != nil {
		return nil, err
	}
	in.damage = append(in.damage, in.bolt.damage...)
	for _, s := range in.snaps {
		s.checkAgainstLog(cfg.Dir, in.bolt, snaps, cfg.Machine)
		if !s.good() {
			in.damage = append(in.damage, &DamageError{Group: cfg.ID, File: filepath.Join(cfg.Dir, "snapshots", s.id), What: strings.Join(s.bad, "; ")})
		}
		if s.machineDamage != nil && !slices.ContainsFunc(in.damage, func(e error) bool { return e == s.machineDamage }) {
			in.damage = append(in.damage, s.machineDamage)
		}
	}
	if len(in.damage) == 0 {
		if what := in.gap(); what != "" {
			in.damage = append(in.damage, &DamageError{Group: cfg.ID, File: filepath.Join(cfg.Dir, "raft.db"), What: what})
		}
	}
	return in, nil
}

// start is the index Raft will start from: the newest good snapshot the
// machine can restore (dropUncovered removes the others), 0 if none.
func (in *inspection) start() uint64 {
	var s uint64
	for _, snap := range in.snaps {
		if snap.good() && snap.covered {
			s = max(s, snap.meta.Index)
		}
	}
	return s
}

// gap says if the log does not continue the state Raft starts from: Raft
// would apply entries it does not have (and panic), or start from a
// snapshot whose entries after it are lost.
func (in *inspection) gap() string {
	start := in.start()
	next := start + 1
	for _, k := range in.bolt.keys {
		if k.index <= start {
			continue
		}
		if k.index != next {
			return fmt.Sprintf("entries %d to %d are missing: the state starts at %d%s", next, k.index-1, start, in.uncovered())
		}
		next++
	}
	return ""
}

// uncovered explains a start older than the newest snapshot: the machine's
// own storage (the history store) does not cover the newer ones.
func (in *inspection) uncovered() string {
	var ids []string
	for _, s := range in.snaps {
		if s.good() && !s.covered {
			ids = append(ids, s.id)
		}
	}
	if len(ids) == 0 {
		return ""
	}
	return fmt.Sprintf(", as the history store does not cover snapshots %v: it lost rows it had made durable", ids)
}

// salvage cuts the damage away, keeping the last good state: damaged
// snapshots are moved to damaged/ (Raft falls back to the one before, if the
// log continues it); the log keeps its good run after that state, and before
// it what no damaged entry precedes; Raft's term is rebuilt and its vote
// dropped if they were damaged. A file bbolt cannot read is beyond it.
func salvage(cfg GroupConfig, in *inspection, log *slog.Logger) error {
	if in.bolt.broken {
		return errors.New("raft.db's pages are damaged beyond what salvage repairs: restore the group's directory from a copy, or move it away to start the group empty")
	}
	for _, err := range in.damage {
		log.Warn("salvage: cutting away damage", "err", err)
	}
	for _, s := range in.snaps {
		if !s.good() {
			if err := moveAside(cfg.Dir, filepath.Join("snapshots", s.id)); err != nil {
				return err
			}
		}
	}
	in.snaps = slices.DeleteFunc(in.snaps, func(s *snapInfo) bool { return !s.good() })
	drop := in.entriesToDrop()
	if len(drop) > 0 {
		log.Warn("salvage: dropping log entries", "first", drop[0], "last", drop[len(drop)-1], "count", len(drop))
	}
	if err := salvageBolt(filepath.Join(cfg.Dir, "raft.db"), in.bolt, drop); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(cfg.Dir, damageMarker)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(cfg.Dir)
}

// entriesToDrop lists the log's keys salvage removes: before the start
// state, every key up to the last damaged one (those entries only serve
// lagging peers); after it, every key past the good run that continues it.
func (in *inspection) entriesToDrop() []uint64 {
	start := in.start()
	var lastBadBefore uint64
	for _, k := range in.bolt.keys {
		if k.index <= start && k.bad {
			lastBadBefore = k.index
		}
	}
	var drop []uint64
	next, run := start+1, true
	for _, k := range in.bolt.keys {
		switch {
		case k.index <= lastBadBefore:
			drop = append(drop, k.index)
		case k.index <= start:
		case run && k.index == next && !k.bad:
			next++
		default:
			run = false
			drop = append(drop, k.index)
		}
	}
	return drop
}

// moveAside moves a damaged file or directory of the group to damaged/,
// for whoever looks into it later.
func moveAside(dir, rel string) error {
	to := filepath.Join(dir, "damaged", strings.ReplaceAll(rel, string(filepath.Separator), "-"))
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.Rename(filepath.Join(dir, rel), to)
}
