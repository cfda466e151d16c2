package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisTransfer is the transfer as one atomic script: the balance check,
// both balance moves and a durable record (a stream entry), like
// PostgreSQL's transfer(). It returns 0 when src lacks the funds.
const redisTransfer = `
local bal = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if bal < amount then return 0 end
redis.call('DECRBY', KEYS[1], amount)
redis.call('INCRBY', KEYS[2], amount)
redis.call('XADD', KEYS[3], '*', 'src', KEYS[1], 'dst', KEYS[2], 'amount', ARGV[1])
return 1
`

// Redis loading and start-up bounds.
const (
	redisLoadChunk  = 1000
	redisStartWait  = 10 * time.Second
	redisStopWait   = 10 * time.Second
	redisTransfersK = "transfers"
)

// redisServer is a private redis-server with AOF fsynced on every write.
type redisServer struct {
	cmd    *exec.Cmd
	rdb    *redis.Client
	script *redis.Script
}

// startRedis starts redis-server on 127.0.0.1:port with its files in
// dir/redis, appendonly yes and appendfsync always, and loads accounts.
func startRedis(ctx context.Context, dir string, port, accounts, clients int, initial int64) (*redisServer, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis: no redis-server on PATH: run bench/setup")
	}
	d := filepath.Join(dir, "redis")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	r := &redisServer{cmd: exec.Command(path, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--dir", d, "--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--daemonize", "no", "--logfile", filepath.Join(d, "log"))}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	r.rdb = redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), PoolSize: clients, MinIdleConns: clients})
	if err := r.waitUp(ctx); err != nil {
		r.Close()
		return nil, err
	}
	r.script = redis.NewScript(redisTransfer)
	if err := r.load(ctx, accounts, initial); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *redisServer) waitUp(ctx context.Context) error {
	deadline := time.Now().Add(redisStartWait)
	for {
		err := r.rdb.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis: not up after %v: %w", redisStartWait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *redisServer) load(ctx context.Context, accounts int, initial int64) error {
	for lo := 0; lo < accounts; lo += redisLoadChunk {
		kv := make([]any, 0, 2*redisLoadChunk)
		for i := lo; i < min(lo+redisLoadChunk, accounts); i++ {
			kv = append(kv, redisKey(int32(i)), initial)
		}
		if err := r.rdb.MSet(ctx, kv...).Err(); err != nil {
			return fmt.Errorf("redis accounts: %w", err)
		}
	}
	if err := r.script.Load(ctx, r.rdb).Err(); err != nil {
		return fmt.Errorf("redis script: %w", err)
	}
	return nil
}

func redisKey(i int32) string { return "a:" + strconv.Itoa(int(i)) }

// Name implements system.
func (r *redisServer) Name() string { return "Redis" }

// CanBatch implements system: a pipeline of EVALSHA calls, each still its
// own atomic transfer, sent in one write and answered together.
func (r *redisServer) CanBatch() bool { return true }

// Shard implements system.
func (r *redisServer) Shard(int32) int { return 0 }

// Send implements system.
func (r *redisServer) Send(ctx context.Context, _ int, batch []pair) error {
	if len(batch) == 1 {
		return redisChecked(r.script.EvalSha(ctx, r.rdb, redisKeys(batch[0]), 1))
	}
	cmds := make([]*redis.Cmd, len(batch))
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range batch {
			cmds[i] = r.script.EvalSha(ctx, p, redisKeys(t), 1)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis pipeline: %w", err)
	}
	for _, c := range cmds {
		if err := redisChecked(c); err != nil {
			return err
		}
	}
	return nil
}

func redisKeys(t pair) []string { return []string{redisKey(t.src), redisKey(t.dst), redisTransfersK} }

// redisChecked turns a refused transfer (0) into an error.
func redisChecked(c *redis.Cmd) error {
	n, err := c.Int()
	if err != nil {
		return fmt.Errorf("redis transfer: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("redis transfer %v: insufficient funds", c.Args()[3:5])
	}
	return nil
}

// Close stops redis-server with SIGTERM (it fsyncs the AOF and exits).
func (r *redisServer) Close() {
	if r.rdb != nil {
		_ = r.rdb.Close()
	}
	stopProcess(r.cmd, redisStopWait)
}

// stopProcess sends SIGTERM to cmd, waits up to grace, then SIGKILLs it.
func stopProcess(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}
