// Package e2e holds end-to-end tests: a whole ledgerd (embedded NATS, real
// Raft on BoltDB files in a temp dir, router) driven through the public
// client protocol.
package e2e
