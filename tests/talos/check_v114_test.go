//go:build talos114

// The accessors of pkg/machinery from v1.14 (the Kubernetes config documents), and the
// patch generation for Talos >= 1.14. Needs pkg/machinery v1.14 or newer and `-tags
// talos114`. The module proxy here serves no v1.14 release yet (v1.13.9 is the newest), so
// go.mod pins v1.13.9 and this file is not built by default; when v1.14.0 is served, pin
// it, drop check_v113_test.go and these build tags.
//
// It was run (2026-11-27, all passing) against the v1.14.0-rc.1 source tree with
//
//	go mod edit -replace github.com/siderolabs/talos/pkg/machinery=<tree>/pkg/machinery
//	go mod edit -replace github.com/jsimonetti/rtnetlink/v2=github.com/jsimonetti/rtnetlink/v2@v2.2.1-0.20260317095713-310581b9c6ac
//	go mod tidy && go test -tags talos114 ./...
//
// (the rtnetlink pseudo-version rc.1 asks for is not served; the one v1.13.9 uses is).
package talos

import (
	"slices"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/validation"
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
func TestPatchKubeDocuments(t *testing.T) {
	for _, c := range cases("1.14") {
		t.Run(c.String(), func(t *testing.T) {
			out := runPatch(t, c)

			patch, err := configpatcher.LoadPatch(out)
			if err != nil {
				t.Fatalf("configpatcher.LoadPatch: %v\n%s", err, out)
			}

			baseCfg := baseConfig(t, "v1.14.0", c.controlPlane)
			if _, err := baseCfg.Validate(metal{}, validation.WithStrict()); err != nil {
				t.Fatalf("the generated base config is invalid by itself: %v", err)
			}

			res, err := configpatcher.Apply(configpatcher.WithConfig(baseCfg), []configpatcher.Patch{patch})
			if err != nil {
				t.Fatalf("configpatcher.Apply: %v", err)
			}

			cfg, err := res.Config()
			if err != nil {
				t.Fatal(err)
			}

			if warnings, err := cfg.Validate(metal{}, validation.WithStrict()); err != nil {
				t.Fatalf("patched config is invalid for a metal node: %v (warnings %v)", err, warnings)
			}

			checkPatched(t, c, cfg)

			// From 1.14 the inline manifest is a named document, merged by name: a second
			// application stays valid.
			again, err := configpatcher.Apply(configpatcher.WithConfig(cfg), []configpatcher.Patch{patch})
			if err != nil {
				t.Fatalf("configpatcher.Apply (second time): %v", err)
			}

			cfg2, err := again.Config()
			if err != nil {
				t.Fatal(err)
			}

			if warnings, err := cfg2.Validate(metal{}, validation.WithStrict()); err != nil {
				t.Fatalf("patched twice: %v (warnings %v)", err, warnings)
			}
		})
	}
}
