// promcheck checks a Prometheus text exposition read from stdin the way
// `promtool check metrics` does (prometheus/prometheus cmd/promtool/main.go, CheckMetrics):
// client_golang's promlint over the expfmt text parser, at the client_golang version
// promtool v0.316.0 (Prometheus 3.16) builds with. promtool itself is not built here: its
// module pulls in every service-discovery SDK (Kubernetes, AWS, Azure, GCP, ...), far too
// much to compile on the test machines for one linter.
//
// Exit status 0: parsed, no lint problems; 1: a parse error or lint problems (printed to
// stderr, one per line, as promtool prints them); 2: usage.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func main() {
	if len(os.Args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: promcheck < metrics.txt")
		os.Exit(2)
	}
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error while linting:", err)
		os.Exit(1)
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
