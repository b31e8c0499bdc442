//go:build !talos113

// pkg/machinery v1.14.1 (go.mod): the accessors of Talos 1.14, which read the Kubernetes
// config documents and, for a v1alpha1 config, the same fields there.
package talos

import (
	"slices"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config"
)

func checkPatched(t *testing.T, c patchCase, cfg config.Provider) {
	t.Helper()

	if got := cfg.K8sNodeConfig().NodeIP().ValidSubnets(); !slices.Equal(got, wantSubnets) {
		t.Errorf("kubelet nodeIP validSubnets %v, want %v", got, wantSubnets)
	}

	if c.controlPlane {
		if got := cfg.Cluster().Etcd().AdvertisedSubnets(); !slices.Equal(got, wantSubnets) {
			t.Errorf("etcd advertisedSubnets %v, want %v", got, wantSubnets)
		}
	}

	if c.coredns {
		if got := cfg.K8sKubeletConfig().ClusterDNS(); !slices.Equal(got, []string{"10.96.0.10"}) {
			t.Errorf("kubelet clusterDNS %v, want [10.96.0.10]", got)
		}
	}

	if c.controlPlane {
		if got := cfg.K8sCoreDNSConfig().Enabled(); got == c.coredns {
			t.Errorf("Talos CoreDNS enabled=%v with --coredns=%v", got, c.coredns)
		}

		var found []string

		for _, m := range cfg.K8sInlineManifestConfigs() {
			found = append(found, m.Name())

			if m.Name() == "tsbridge-coredns" {
				checkCoreDNSObjects(t, m.Contents())
			}
		}

		if c.coredns != slices.Contains(found, "tsbridge-coredns") {
			t.Errorf("inline manifests %v with --coredns=%v", found, c.coredns)
		}
	}

	checkExtensionServiceConfig(t, cfg.ExtensionServiceConfigs())
}

// Talos >= 1.14: the Kubernetes config documents, on a base generated as Talos 1.14 would.
// The inline manifest is a named document there, merged by name: applying the patch a
// second time stays valid.
func TestPatchKubeDocuments(t *testing.T) {
	for _, c := range cases("1.14") {
		t.Run(c.String(), func(t *testing.T) {
			checkPatch(t, c, "v1.14.0", false)
		})
	}
}
