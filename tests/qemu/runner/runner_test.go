package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	extservices "github.com/siderolabs/talos/pkg/machinery/extensions/services"
	"golang.org/x/sys/unix"
)

func TestWithEnvKeepsDuplicatesOfOverridesInOrder(t *testing.T) {
	got := withEnv([]string{"PATH=/bin"}, []string{"TS_X=spec", "A=1", "TS_X=user", "PATH=/usr/bin", "GONE"})
	want := []string{"PATH=/usr/bin", "TS_X=spec", "A=1", "TS_X=user"}

	if !reflect.DeepEqual(got, want) {
		t.Fatalf("withEnv = %q, want %q", got, want)
	}
}

func TestWithEnvBareKeyRemovesADefault(t *testing.T) {
	got := withEnv([]string{"PATH=/bin", "HOME=/"}, []string{"PATH"})
	if !reflect.DeepEqual(got, []string{"HOME=/"}) {
		t.Fatalf("withEnv = %q", got)
	}
}

func writeSpec(t *testing.T, body string) string {
	t.Helper()

	p := filepath.Join(t.TempDir(), "svc.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	return p
}

const goodSpec = `name: svc
container:
  entrypoint: /bin/svc
  environment: [TS_X=spec]
  mounts:
    - source: %s
      destination: /var/lib/svc
      type: bind
      options: [bind, rw]
depends:
  - configuration: true
restart: always
`

func TestLoadSpecReportsKeysTalosIgnores(t *testing.T) {
	p := writeSpec(t, "name: svc\ncontainer:\n  entrypoint: /bin/svc\n  enviroment: [A=1]\nrestart: always\n")

	spec, ignored, err := loadSpec(p)
	if err != nil {
		t.Fatal(err)
	}

	if err := spec.Validate(); err != nil {
		t.Fatalf("Talos accepts the spec, the runner must too: %v", err)
	}

	if len(ignored) != 1 || !strings.Contains(ignored[0], "enviroment") {
		t.Fatalf("ignored = %q, want the misspelt key", ignored)
	}
}

func TestSpecValidationIsTalos(t *testing.T) {
	for _, body := range []string{
		"name: Svc\ncontainer: {entrypoint: /x}\nrestart: always\n",                         // upper case name
		"name: svc\ncontainer: {entrypoint: /x}\nrestart: sometimes\n",                      // restart kind
		"name: svc\ncontainer: {}\nrestart: always\n",                                       // no entrypoint
		"name: svc\ncontainer: {entrypoint: /x}\ndepends: [{path: rel}]\nrestart: always\n", // relative path
		"name: svc\ncontainer: {entrypoint: /x}\ndepends: [{service: a, time: true}]\nrestart: always\n",
	} {
		spec, _, err := loadSpec(writeSpec(t, body))
		if err == nil {
			err = spec.Validate()
		}

		if err == nil {
			t.Errorf("spec accepted, Talos rejects it:\n%s", body)
		}
	}
}

func TestBuildContainerEnvMountsAndSecurity(t *testing.T) {
	src := filepath.Join(t.TempDir(), "missing", "state")
	p := writeSpec(t, strings.Replace(goodSpec, "%s", src, 1))

	spec, _, err := loadSpec(p)
	if err != nil {
		t.Fatal(err)
	}

	cc, err := buildContainer(&spec, "/rootfs", nil)
	if err != nil {
		t.Fatal(err)
	}

	st, err := os.Stat(src)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("missing mount source not created as a 0700 directory: %v %v", st, err)
	}

	if !reflect.DeepEqual(cc.Env, []string{defaultEnv[0], "TS_X=spec"}) {
		t.Fatalf("env = %q", cc.Env)
	}

	if !cc.ReadonlyRootfs {
		t.Fatal("the rootfs must be read-only by default")
	}

	if !reflect.DeepEqual(cc.ReadonlyPaths, defaultReadonlyPaths) {
		t.Fatalf("readonly paths = %q", cc.ReadonlyPaths)
	}

	last := cc.Mounts[len(cc.Mounts)-1]
	if last.Destination != "/var/lib/svc" || last.Source != src {
		t.Fatalf("the spec's mount must come after the defaults: %+v", last)
	}

	for _, m := range cc.Mounts {
		if m.Destination == "/sys" && !strings.Contains(strings.Join(m.Options, ","), "ro") {
			t.Fatal("/sys must be read-only unless writeableSysfs")
		}
	}
}

func TestEmptyReadonlyPathsReplaceTheDefaults(t *testing.T) {
	spec := extservices.Spec{Name: "svc", Restart: extservices.RestartAlways}
	spec.Container.Entrypoint = "/x"
	spec.Container.Security.ReadonlyPaths = []string{}

	cc, err := buildContainer(&spec, "/rootfs", nil)
	if err != nil {
		t.Fatal(err)
	}

	if len(cc.ReadonlyPaths) != 0 {
		t.Fatalf("readonlyPaths: [] must leave nothing read-only, got %q", cc.ReadonlyPaths)
	}
}

func TestParseOptions(t *testing.T) {
	flags, prop, data := parseOptions([]string{"rbind", "ro", "rshared", "mode=755"})
	if flags != unix.MS_BIND|unix.MS_REC|unix.MS_RDONLY || prop != unix.MS_SHARED|unix.MS_REC || data != "mode=755" {
		t.Fatalf("flags=%x prop=%x data=%q", flags, prop, data)
	}

	flags, _, _ = parseOptions([]string{"ro", "rw"})
	if flags&unix.MS_RDONLY != 0 {
		t.Fatal("a later rw must clear ro")
	}
}
