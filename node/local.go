package node

import "github.com/ledgerd/ledgerd/internal/wire"

// Command hands shard id a command's bytes (the body of a wire.OpCommand)
// in-process, if this node serves the shard now (it leads it, in a term),
// and reports whether it took them. Taken, the command goes the way of one
// that came on the shard's subject (shardServer.command): the same checks,
// proposal, crash points and waits for cross-shard transfers, and answer
// gets, at most once, the Reply the subject's reply would carry (none if the
// reply expires unanswered, as a NATS reply would not come). answer runs on
// the shard's completer goroutine or its term's end: it must not block.
// Not taken, the caller sends the command on NATS: the leader is elsewhere
// or being elected.
//
// The router of this process calls it for every command of a shard
// (server wires it as router.Config.Local): a request whose shard is led
// here then crosses NATS only from the client and back.
func (n *Node) Command(id uint32, body []byte, answer func(*wire.Reply)) bool {
	n.mu.Lock()
	s := n.shards[id]
	n.mu.Unlock()
	if s == nil || !s.takes() {
		return false
	}
	s.command(body, answer)
	return true
}

// takes reports whether a term serves the shard now.
func (s *shardServer) takes() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving
}
