// Package testnet runs ledgerd processes for the tests: their ports, the
// binary, their logs, and clusters of them (Cluster).
package testnet

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// handedOut holds every port FreePort has returned in this run.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a loopback address whose port was free a moment ago,
// below the kernel's ephemeral range: a port from that range (what
// listening on port 0 gives) can be taken by any outgoing connection
// before the node binds it, and a long run hit that ("embedded NATS did not
// start"). It never returns a port twice in a run: nine random picks a
// seed, over hundreds of seeds, drew the same one for two nodes ("bind:
// address already in use").
func FreePort(t testing.TB) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	for range 1000 {
		port := 10000 + rand.IntN(max(low-10000, 1))
		handedOut.Lock()
		taken := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if taken {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		defer l.Close()
		return l.Addr().String()
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}
