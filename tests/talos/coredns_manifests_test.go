package talos

import (
	"bytes"
	"os/exec"
	"testing"
)

// `tsbridge patch --coredns-manifests` prints the CoreDNS objects alone (for kubectl on a
// running cluster): the inline manifest's content, decoded as strictly as the inline one.
func TestCoreDNSManifestsAlone(t *testing.T) {
	cmd := exec.Command(mustEnv(t, "TSBRIDGE_BIN"), "patch", "--coredns-manifests", "--tailnet", tailnet)
	cmd.Env = []string{}

	var stderr bytes.Buffer

	cmd.Stderr = &stderr

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tsbridge patch --coredns-manifests: %v\n%s", err, stderr.String())
	}

	checkCoreDNSObjects(t, string(out))
}
