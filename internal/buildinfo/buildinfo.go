// Package buildinfo says which ledgerd a binary is: the protocol version,
// the commit it was built from and the Go that built it, as `ledgerd
// --version`, `ledgerctl version` and the nodes' status show them.
package buildinfo

import (
	"fmt"
	"runtime/debug"

	"github.com/ledgerd/ledgerd/transport"
)

// commitChars is how much of a commit hash is shown: enough to be unique
// in this repository, short enough for a status column.
const commitChars = 12

// Info is what a binary knows of its build.
type Info struct {
	Version  string // transport.Version
	Commit   string // the VCS revision, shortened; "unknown" without VCS stamping (go run, tests)
	Modified bool   // built from a work tree with uncommitted changes
	Go       string // the Go version that built it
}

// Get reads the binary's build information (`go build` and `go install`
// stamp the commit from the repository they run in).
func Get() Info {
	info := Info{Version: transport.Version, Commit: "unknown", Go: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	info.Go = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value[:min(len(s.Value), commitChars)]
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// Build is the commit and the Go version, e.g. "7f616d2c4e1a+modified
// go1.26.8": what a node's status carries besides its version.
func (i Info) Build() string { return i.commit() + " " + i.Go }

func (i Info) commit() string {
	if i.Modified {
		return i.Commit + "+modified"
	}
	return i.Commit
}

// String is what `--version` prints after the program's name, e.g.
// "0.1.0, commit 7f616d2c4e1a, go1.26.8".
func (i Info) String() string {
	return fmt.Sprintf("%s, commit %s, %s", i.Version, i.commit(), i.Go)
}
