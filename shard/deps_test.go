package shard

import (
	"os/exec"
	"strings"
	"testing"
)

// The state machine is pure: nothing of NATS (or any network client) is in
// its dependencies; the internal protocol around it is internal/wire's.
func TestNoNATSInTheStateMachine(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "nats-io") {
			t.Fatalf("shard depends on %s", dep)
		}
	}
}
