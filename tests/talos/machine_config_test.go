package talos

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
)

// `tsbridge patch --machine-config` on a machine configuration written by Talos's own
// generator and encoder (documentation comments included, as `talosctl gen config` writes
// it), made dual-stack by a Talos config patch: the ExtensionServiceConfig gets the
// cluster's podSubnets and serviceSubnets, both families.
func TestPatchTakesTheClustersSubnetsFromItsMachineConfig(t *testing.T) {
	for _, talos := range []string{"v1.13.0", "v1.7.0"} {
		t.Run(talos, func(t *testing.T) {
			base := baseConfig(t, talos, true)

			dualStack, err := configpatcher.LoadPatch([]byte(`cluster:
  network:
    podSubnets: [10.244.0.0/16, fd00:10:244::/56]
    serviceSubnets: [10.96.0.0/12, fd00:10:96::/112]
`))
			if err != nil {
				t.Fatal(err)
			}

			res, err := configpatcher.Apply(configpatcher.WithConfig(base), []configpatcher.Patch{dualStack})
			if err != nil {
				t.Fatal(err)
			}

			cfg, err := res.Config()
			if err != nil {
				t.Fatal(err)
			}

			text, err := cfg.EncodeBytes(encoder.WithComments(encoder.CommentsAll))
			if err != nil {
				t.Fatal(err)
			}

			if !strings.Contains(string(text), "fd00:10:244::/56") {
				t.Fatalf("the dual-stack patch did not apply:\n%s", text)
			}

			file := filepath.Join(t.TempDir(), "controlplane.yaml")
			if err := os.WriteFile(file, text, 0o600); err != nil {
				t.Fatal(err)
			}

			cmd := exec.Command(mustEnv(t, "TSBRIDGE_BIN"), "patch", "--talos-version", "1.13",
				"--lab-subnet", lab, "--control-plane", "--machine-config", file)
			cmd.Env = []string{}

			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("tsbridge patch --machine-config: %v\n%s", err, out)
			}

			for _, want := range []string{
				`"TSBRIDGE_POD_CIDRS=10.244.0.0/16,fd00:10:244::/56"`,
				`"TSBRIDGE_SERVICE_CIDRS=10.96.0.0/12,fd00:10:96::/112"`,
			} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s missing in:\n%s", want, out)
				}
			}

			// The generated configuration's secrets never reach the output.
			secrets := regexp.MustCompile(`(?m)^\s*(?:secret|token|key|crt): (\S{8,})`).FindAllStringSubmatch(string(text), -1)
			if len(secrets) == 0 {
				t.Fatalf("no secrets found in the generated configuration:\n%s", text)
			}

			for _, m := range secrets {
				if strings.Contains(string(out), m[1]) {
					t.Errorf("a secret of the machine configuration leaked into the patch: %s", m[0][:20])
				}
			}
		})
	}
}
