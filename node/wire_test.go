package node

import (
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

func TestAllReadWantsEveryServer(t *testing.T) {
	up := func(id string, wire uint32) transport.NodeStatus { return transport.NodeStatus{ID: id, Wire: wire} }
	for _, tc := range []struct {
		name     string
		servers  []string
		statuses []transport.NodeStatus
		want     bool
	}{
		{"every node reads it", []string{"a", "b"}, []transport.NodeStatus{up("b", 2), up("a", 2)}, true},
		{"one node of the older release", []string{"a", "b"}, []transport.NodeStatus{up("a", 2), up("b", 0)}, false},
		{"one node silent", []string{"a", "b"}, []transport.NodeStatus{up("a", 2)}, false},
		{"a node outside the configuration does not count", []string{"a"}, []transport.NodeStatus{up("a", 2), up("x", 0)}, true},
		{"no configuration", nil, nil, false},
	} {
		if got := allRead(tc.servers, tc.statuses, 2); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
