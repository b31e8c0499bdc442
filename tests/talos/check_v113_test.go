//go:build talos113

// pkg/machinery v1.13.9 (go.v113.mod): the v1alpha1 accessors of Talos 1.7 to 1.13.
package talos

import (
	"slices"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config"
)

func checkPatched(t *testing.T, c patchCase, cfg config.Provider) {
	t.Helper()

	if got := cfg.Machine().Kubelet().NodeIP().ValidSubnets(); !slices.Equal(got, wantSubnets) {
		t.Errorf("kubelet nodeIP validSubnets %v, want %v", got, wantSubnets)
	}

	if c.controlPlane {
		if got := cfg.Cluster().Etcd().AdvertisedSubnets(); !slices.Equal(got, wantSubnets) {
			t.Errorf("etcd advertisedSubnets %v, want %v", got, wantSubnets)
		}
	}

	if c.coredns {
		if got := cfg.Machine().Kubelet().ClusterDNS(); !slices.Equal(got, []string{"10.96.0.10"}) {
			t.Errorf("kubelet clusterDNS %v, want [10.96.0.10]", got)
		}
	}

	if c.controlPlane {
		if got := cfg.Cluster().CoreDNS().Enabled(); got == c.coredns {
			t.Errorf("Talos CoreDNS enabled=%v with --coredns=%v", got, c.coredns)
		}

		var found []string

		for _, m := range cfg.Cluster().InlineManifests() {
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
