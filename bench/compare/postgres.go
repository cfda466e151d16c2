package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgxpool"
)

// pgSchema is the ledger in PostgreSQL: balances, a transfers table, and
// transfer() doing what one ledgerd transfer does (row locks, a balance
// check, a durable record) in one round trip. The FOR UPDATE takes both rows
// in id order, so two transfers between the same accounts never deadlock.
const pgSchema = `
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE transfers (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL,
  amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION transfer(p_src int, p_dst int, p_amount bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE bal bigint;
BEGIN
  PERFORM 1 FROM accounts WHERE id IN (p_src, p_dst) ORDER BY id FOR UPDATE;
  SELECT balance INTO bal FROM accounts WHERE id = p_src;
  IF bal < p_amount THEN
    RAISE EXCEPTION 'insufficient funds on %', p_src;
  END IF;
  UPDATE accounts SET balance = balance - p_amount WHERE id = p_src;
  UPDATE accounts SET balance = balance + p_amount WHERE id = p_dst;
  INSERT INTO transfers (src, dst, amount) VALUES (p_src, p_dst, p_amount);
END $$;
`

// pgUser is the OS user the server runs as when we are root: postgres
// refuses to run as root. Debian's postgresql package creates it.
const pgUser = "postgres"

// postgres is a private PostgreSQL cluster in a temporary directory.
type postgres struct {
	dir, bin string
	pool     *pgxpool.Pool
}

// startPostgres initdbs a cluster in dir/pg (durable defaults: fsync and
// synchronous_commit on), starts it on 127.0.0.1:port, and loads accounts
// accounts of initial balance each.
func startPostgres(ctx context.Context, dir string, port, accounts, clients int, initial int64) (*postgres, error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	p := &postgres{dir: filepath.Join(dir, "pg"), bin: bin}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	if err := p.chownIfRoot(); err != nil {
		return nil, err
	}
	if err := p.pgRun("initdb", "-D", p.dir, "-A", "trust", "-U", "bench", "--no-instructions"); err != nil {
		return nil, err
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=100", port, p.dir)
	if err := p.pgRun("pg_ctl", "-D", p.dir, "-l", filepath.Join(p.dir, "log"), "-w", "-o", opts, "start"); err != nil {
		return nil, err
	}
	url := fmt.Sprintf("postgres://bench@127.0.0.1:%d/postgres?pool_max_conns=%d&pool_min_conns=%d", port, clients, clients)
	if p.pool, err = pgxpool.New(ctx, url); err != nil {
		p.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := p.load(ctx, accounts, initial); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// pgBinDir finds initdb: Debian keeps it off PATH, under
// /usr/lib/postgresql/<major>/bin.
func pgBinDir() (string, error) {
	if path, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(path), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(dirs) == 0 {
		return "", errors.New("postgres: no initdb on PATH or under /usr/lib/postgresql: run bench/setup")
	}
	return filepath.Dir(dirs[len(dirs)-1]), nil
}

// chownIfRoot hands the data directory (and the temporary directory above
// it, which postgres must traverse) to pgUser when we run as root.
func (p *postgres) chownIfRoot() error {
	if os.Geteuid() != 0 {
		return nil
	}
	for _, d := range []string{filepath.Dir(p.dir), p.dir} {
		if err := exec.Command("chown", pgUser, d).Run(); err != nil {
			return fmt.Errorf("postgres: chown %s %s: %w", pgUser, d, err)
		}
	}
	return nil
}

// pgRun runs a PostgreSQL program, as pgUser when we are root.
func (p *postgres) pgRun(prog string, args ...string) error {
	path := filepath.Join(p.bin, prog)
	cmd := exec.Command(path, args...)
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", pgUser, "--", path}, args...)...)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("postgres: %s: %w\n%s", prog, err, out)
	}
	return nil
}

func (p *postgres) load(ctx context.Context, accounts int, initial int64) error {
	if _, err := p.pool.Exec(ctx, pgSchema); err != nil {
		return fmt.Errorf("postgres schema: %w", err)
	}
	_, err := p.pool.Exec(ctx, "INSERT INTO accounts SELECT g, $1 FROM generate_series(0, $2 - 1) g", initial, accounts)
	if err != nil {
		return fmt.Errorf("postgres accounts: %w", err)
	}
	// A checkpoint now, so the load's dirty pages are not flushed during
	// the first scenario.
	for _, sql := range []string{"VACUUM ANALYZE", "CHECKPOINT"} {
		if _, err := p.pool.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres %s: %w", sql, err)
		}
	}
	return nil
}

// Name implements system.
func (p *postgres) Name() string { return "PostgreSQL" }

// CanBatch implements system: several transfers in one request would be
// one transaction, which is not the same thing (and deadlocks between
// clients, whose batches lock rows in no common order).
func (p *postgres) CanBatch() bool { return false }

// Shard implements system.
func (p *postgres) Shard(int32) int { return 0 }

// Send implements system: one SELECT transfer(), its own transaction,
// committed durably before it returns.
func (p *postgres) Send(ctx context.Context, _ int, batch []pair) error {
	for _, t := range batch {
		if _, err := p.pool.Exec(ctx, "SELECT transfer($1, $2, 1)", t.src, t.dst); err != nil {
			return fmt.Errorf("transfer %d→%d: %w", t.src, t.dst, err)
		}
	}
	return nil
}

// Close stops the server (fast shutdown) and leaves the directory to the
// caller's cleanup.
func (p *postgres) Close() {
	if p.pool != nil {
		p.pool.Close()
	}
	_ = p.pgRun("pg_ctl", "-D", p.dir, "-m", "fast", "-w", "-t", "30", "stop")
}
