package buildinfo

import (
	"runtime"
	"strings"
	"testing"

	"github.com/ledgerd/ledgerd/transport"
)

// A test binary carries no VCS stamp: the commit says so, and the version
// and the Go version are still there.
func TestGetNamesVersionCommitAndGo(t *testing.T) {
	i := Get()
	if i.Version != transport.Version || i.Go != runtime.Version() || i.Commit == "" {
		t.Fatalf("info %+v", i)
	}
	if s := i.String(); !strings.HasPrefix(s, transport.Version+", commit ") || !strings.HasSuffix(s, ", "+runtime.Version()) {
		t.Fatalf("String() = %q", s)
	}
	i = Info{Version: "1.2.3", Commit: "abc", Modified: true, Go: "go1.26.8"}
	if got := i.Build(); got != "abc+modified go1.26.8" {
		t.Fatalf("Build() = %q", got)
	}
	if got := i.String(); got != "1.2.3, commit abc+modified, go1.26.8" {
		t.Fatalf("String() = %q", got)
	}
}
