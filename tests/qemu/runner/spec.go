package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	extservices "github.com/siderolabs/talos/pkg/machinery/extensions/services"
	"go.yaml.in/yaml/v4"
)

// loadSpec decodes a service spec the way Talos's ExtensionServiceController does
// (non-strict yaml/v4 decoder into extservices.Spec). It also reports the keys Talos
// silently ignores: a misspelt key in a spec is a bug Talos never tells anyone about.
func loadSpec(path string) (extservices.Spec, []string, error) {
	var spec extservices.Spec

	data, err := os.ReadFile(path)
	if err != nil {
		return spec, nil, err
	}

	if err = yaml.NewDecoder(bytes.NewReader(data)).Decode(&spec); err != nil {
		return spec, nil, fmt.Errorf("error unmarshalling extension service config: %w", err)
	}

	var strict extservices.Spec

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	var ignored []string
	if err := dec.Decode(&strict); err != nil {
		ignored = append(ignored, err.Error())
	}

	return spec, ignored, nil
}

// machineConfig is the part of a machine configuration the runner needs.
type machineConfig struct {
	services map[string]config.ExtensionServiceConfig
}

type validationMode struct{}

func (validationMode) String() string        { return "metal" }
func (validationMode) RequiresInstall() bool { return false }
func (validationMode) InContainer() bool     { return false }

// loadMachineConfig loads machine-config documents with Talos's own loader and validates
// them as Talos would on apply; an invalid document is an error (Talos rejects the apply).
func loadMachineConfig(path string) (*machineConfig, error) {
	mc := &machineConfig{services: map[string]config.ExtensionServiceConfig{}}

	if path == "" {
		return mc, nil
	}

	provider, err := configloader.NewFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("machine config %s: %w", path, err)
	}

	if _, err := provider.Validate(validationMode{}); err != nil {
		return nil, fmt.Errorf("machine config %s is invalid: %w", path, err)
	}

	for _, esc := range provider.ExtensionServiceConfigs() {
		if _, dup := mc.services[esc.Name()]; dup {
			return nil, fmt.Errorf("machine config %s: two ExtensionServiceConfig documents named %q", path, esc.Name())
		}

		mc.services[esc.Name()] = esc
	}

	return mc, nil
}

// defaultEnv is containerd's default process environment (oci.populateDefaultUnixSpec).
var defaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// withEnv applies one containerd oci.WithEnv: a key already in the base is replaced in
// place (a bare KEY removes it); every other entry is appended, so duplicates among the
// overrides are all kept, in order.
func withEnv(base, overrides []string) []string {
	if len(overrides) == 0 {
		return base
	}

	index := map[string]int{}
	out := make([]string, 0, len(base)+len(overrides))

	for i, e := range base {
		k, _, _ := strings.Cut(e, "=")
		out = append(out, e)
		index[k] = i
	}

	for _, e := range overrides {
		k, _, hasValue := strings.Cut(e, "=")
		i, inBase := index[k]

		switch {
		case !hasValue && inBase:
			out[i] = ""
		case !hasValue:
		case inBase:
			out[i] = e
		default:
			out = append(out, e)
		}
	}

	res := out[:0]

	for _, e := range out {
		if e != "" {
			res = append(res, e)
		}
	}

	return res
}

// serviceEnv is the container environment Talos builds: containerd's default, then
// (environmentFile, spec environment, ExtensionServiceConfig environment) in one WithEnv.
func serviceEnv(spec *extservices.Spec, esc config.ExtensionServiceConfig) ([]string, error) {
	var env []string

	if f := spec.Container.EnvironmentFile; f != "" {
		vars, err := parseEnvFile(f)
		if err != nil {
			return nil, err
		}

		env = append(env, vars...)
	}

	env = append(env, spec.Container.Environment...)

	if esc != nil {
		env = append(env, esc.Environment()...)
	}

	return withEnv(append([]string(nil), defaultEnv...), env), nil
}

// parseEnvFile reads KEY=value lines (Talos uses go-envparse and turns the result into a
// map, so the order is unspecified and the last duplicate wins; sorted here).
func parseEnvFile(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}

	vars := map[string]string{}

	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		line = strings.TrimPrefix(line, "export ")

		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("failed to parse environment file %q: line %d has no '='", path, n+1)
		}

		vars[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}

	out := make([]string, 0, len(vars))
	for k, v := range vars {
		out = append(out, k+"="+v)
	}

	sort.Strings(out)

	return out, nil
}

// configFileMounts writes the ExtensionServiceConfig's configFiles where Talos keeps them
// and returns their read-only bind mounts.
func configFileMounts(name string, esc config.ExtensionServiceConfig) ([]specs.Mount, error) {
	if esc == nil {
		return nil, nil
	}

	var mounts []specs.Mount

	for _, f := range esc.ConfigFiles() {
		src := filepath.Join(constants.ExtensionServiceUserConfigPath, name,
			strings.ReplaceAll(strings.TrimPrefix(f.MountPath(), "/"), "/", "-"))

		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			return nil, err
		}

		if err := os.WriteFile(src, []byte(f.Content()), 0o644); err != nil {
			return nil, err
		}

		mounts = append(mounts, specs.Mount{Source: src, Destination: f.MountPath(), Type: "bind", Options: []string{"ro", "bind"}})
	}

	return mounts, nil
}

// defaultMounts are containerd's default mounts for a Linux container, then the host
// /etc/hosts and /etc/resolv.conf (oci.WithHostHostsFile, oci.WithHostResolvconf).
func defaultMounts(writeableSysfs bool) []specs.Mount {
	sysOpts := []string{"nosuid", "noexec", "nodev", "ro"}
	if writeableSysfs {
		sysOpts = []string{"nosuid", "noexec", "nodev"}
	}

	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: sysOpts},
		{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/etc/hosts", Options: []string{"rbind", "ro"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: "/etc/resolv.conf", Options: []string{"rbind", "ro"}},
	}
}

// containerd's default masked and read-only paths (replaced, not extended, when the
// spec's security section sets them, as oci.WithMaskedPaths/WithReadonlyPaths do).
var (
	defaultMaskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
		"/sys/devices/virtual/powercap", "/proc/scsi",
	}
	defaultReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// containerConfig is everything the in-namespace init needs (sent as JSON over a pipe).
type containerConfig struct {
	Name           string
	Rootfs         string
	Args           []string
	Env            []string
	Mounts         []specs.Mount
	ReadonlyRootfs bool
	MaskedPaths    []string
	ReadonlyPaths  []string
	Propagation    string
}

// buildContainer turns a validated spec plus its ExtensionServiceConfig into the container
// Talos would run, creating missing mount sources as 0700 directories like Talos does.
func buildContainer(spec *extservices.Spec, rootfs string, esc config.ExtensionServiceConfig) (*containerConfig, error) {
	for _, m := range spec.Container.Mounts {
		if _, err := os.Stat(m.Source); err == nil {
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}

		if err := os.MkdirAll(m.Source, 0o700); err != nil {
			return nil, err
		}
	}

	env, err := serviceEnv(spec, esc)
	if err != nil {
		return nil, err
	}

	files, err := configFileMounts(spec.Name, esc)
	if err != nil {
		return nil, err
	}

	sec := spec.Container.Security

	cc := &containerConfig{
		Name:           spec.Name,
		Rootfs:         rootfs,
		Args:           append([]string{spec.Container.Entrypoint}, spec.Container.Args...),
		Env:            env,
		ReadonlyRootfs: !sec.WriteableRootfs,
		MaskedPaths:    defaultMaskedPaths,
		ReadonlyPaths:  defaultReadonlyPaths,
		Propagation:    sec.RootfsPropagation,
	}

	cc.Mounts = append(defaultMounts(sec.WriteableSysfs), spec.Container.Mounts...)
	cc.Mounts = append(cc.Mounts, files...)

	if sec.MaskedPaths != nil {
		cc.MaskedPaths = sec.MaskedPaths
	}

	if sec.ReadonlyPaths != nil {
		cc.ReadonlyPaths = sec.ReadonlyPaths
	}

	for _, m := range cc.Mounts {
		if !filepath.IsAbs(m.Destination) {
			return nil, fmt.Errorf("mount destination %q is not absolute", m.Destination)
		}
	}

	return cc, nil
}
