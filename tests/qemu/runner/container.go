package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// initArg is argv[1] of the runner re-executed as a container's first process.
const initArg = "__container_init"

// containerInit runs as PID 1 of the new PID namespace, in a new mount and UTS namespace
// (host network and IPC), reads its containerConfig from fd 3, builds the container's
// filesystem like runc does, and execs the entrypoint (which then is PID 1).
func containerInit() {
	f := os.NewFile(3, "config")

	var cc containerConfig
	if err := json.NewDecoder(f).Decode(&cc); err != nil {
		fail("reading the container config: %v", err)
	}

	_ = f.Close()

	if err := setupRootfs(&cc); err != nil {
		fail("%v", err)
	}

	if err := dropCapabilities(); err != nil {
		fail("%v", err)
	}

	argv0 := cc.Args[0]
	if !strings.Contains(argv0, "/") {
		path, err := lookPath(argv0, cc.Env)
		if err != nil {
			fail("entrypoint %q: %v", argv0, err)
		}

		argv0 = path
	}

	if err := unix.Exec(argv0, cc.Args, cc.Env); err != nil {
		fail("exec %s: %v", argv0, err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "talos-runner: container init: "+format+"\n", args...)
	os.Exit(128)
}

func lookPath(name string, env []string) (string, error) {
	path := ""

	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}

	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}

	return "", exec.ErrNotFound
}

var propagationFlags = map[string]uintptr{
	"shared": unix.MS_SHARED, "rshared": unix.MS_SHARED | unix.MS_REC,
	"slave": unix.MS_SLAVE, "rslave": unix.MS_SLAVE | unix.MS_REC,
	"private": unix.MS_PRIVATE, "rprivate": unix.MS_PRIVATE | unix.MS_REC,
	"unbindable": unix.MS_UNBINDABLE, "runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

// mount flags as runc parses OCI mount options; anything else is passed as data.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro": {false, unix.MS_RDONLY}, "rw": {true, unix.MS_RDONLY},
	"nosuid": {false, unix.MS_NOSUID}, "suid": {true, unix.MS_NOSUID},
	"nodev": {false, unix.MS_NODEV}, "dev": {true, unix.MS_NODEV},
	"noexec": {false, unix.MS_NOEXEC}, "exec": {true, unix.MS_NOEXEC},
	"sync": {false, unix.MS_SYNCHRONOUS}, "async": {true, unix.MS_SYNCHRONOUS},
	"noatime": {false, unix.MS_NOATIME}, "atime": {true, unix.MS_NOATIME},
	"relatime": {false, unix.MS_RELATIME}, "norelatime": {true, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME}, "nostrictatime": {true, unix.MS_STRICTATIME},
	"nodiratime": {false, unix.MS_NODIRATIME}, "diratime": {true, unix.MS_NODIRATIME},
	"bind": {false, unix.MS_BIND}, "rbind": {false, unix.MS_BIND | unix.MS_REC},
	"remount": {false, unix.MS_REMOUNT}, "defaults": {false, 0},
}

func parseOptions(opts []string) (flags, propagation uintptr, data string) {
	var d []string

	for _, o := range opts {
		if p, ok := propagationFlags[o]; ok {
			propagation = p

			continue
		}

		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}

			continue
		}

		d = append(d, o)
	}

	return flags, propagation, strings.Join(d, ",")
}

func setupRootfs(cc *containerConfig) error {
	rootProp := uintptr(unix.MS_SLAVE | unix.MS_REC) // runc's default root propagation
	if p, ok := propagationFlags[cc.Propagation]; ok {
		rootProp = p
	} else if cc.Propagation != "" {
		return fmt.Errorf("rootfsPropagation %q is not a propagation mode", cc.Propagation)
	}

	if err := unix.Mount("", "/", "", rootProp, ""); err != nil {
		return fmt.Errorf("making / %s: %w", cc.Propagation, err)
	}

	if err := unix.Mount(cc.Rootfs, cc.Rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting the rootfs %s: %w", cc.Rootfs, err)
	}

	for _, m := range cc.Mounts {
		if err := mountInto(cc.Rootfs, m); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.Source, m.Destination, err)
		}

		if m.Destination == "/dev" {
			if err := populateDev(cc.Rootfs); err != nil {
				return err
			}
		}
	}

	if err := enterRoot(cc.Rootfs); err != nil {
		return err
	}

	for _, p := range cc.MaskedPaths {
		if err := maskPath(p); err != nil {
			return fmt.Errorf("masking %s: %w", p, err)
		}
	}

	for _, p := range cc.ReadonlyPaths {
		if err := readonlyPath(p); err != nil {
			return fmt.Errorf("making %s read-only: %w", p, err)
		}
	}

	if cc.ReadonlyRootfs {
		if err := unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making the rootfs read-only: %w", err)
		}
	}

	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}

	return unix.Chdir("/")
}

func mountInto(rootfs string, m specs.Mount) error {
	dest, err := securejoin.SecureJoin(rootfs, m.Destination)
	if err != nil {
		return err
	}

	flags, propagation, data := parseOptions(m.Options)
	bind := m.Type == "bind" || flags&unix.MS_BIND != 0

	if bind {
		st, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("bind source: %w", err)
		}

		if err := createTarget(dest, st.IsDir()); err != nil {
			return err
		}

		if err := unix.Mount(m.Source, dest, "", unix.MS_BIND|(flags&unix.MS_REC), ""); err != nil {
			return err
		}

		// runc applies the other flags with a bind remount
		if rest := flags &^ (unix.MS_BIND | unix.MS_REC); rest != 0 {
			if err := unix.Mount("", dest, "", unix.MS_BIND|unix.MS_REMOUNT|rest, ""); err != nil {
				return fmt.Errorf("remount: %w", err)
			}
		}
	} else {
		if err := createTarget(dest, true); err != nil {
			return err
		}

		if err := unix.Mount(m.Source, dest, m.Type, flags, data); err != nil {
			return err
		}
	}

	if propagation != 0 {
		if err := unix.Mount("", dest, "", propagation, ""); err != nil {
			return fmt.Errorf("propagation: %w", err)
		}
	}

	return nil
}

func createTarget(path string, dir bool) error {
	if dir {
		return os.MkdirAll(path, 0o755)
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}

	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return err
	}

	return f.Close()
}

// populateDev creates runc's default device nodes and links in the container's /dev tmpfs.
func populateDev(rootfs string) error {
	devs := []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}}

	old := unix.Umask(0)
	defer unix.Umask(old)

	for _, d := range devs {
		p := filepath.Join(rootfs, "dev", d.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
	}

	links := [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}, {"pts/ptmx", "ptmx"}}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(rootfs, "dev", l[1])); err != nil {
			return err
		}
	}

	return nil
}

// enterRoot makes rootfs the root: pivot_root like runc, or, where the current root is
// the initramfs (pivot_root refuses it), runc's no-pivot way: move the mount and chroot.
func enterRoot(rootfs string) error {
	if err := unix.Chdir(rootfs); err != nil {
		return err
	}

	err := unix.PivotRoot(".", ".")
	if err == nil {
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detaching the old root: %w", err)
		}

		return unix.Chdir("/")
	}

	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("pivot_root: %w", err)
	}

	if err := unix.Mount(rootfs, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the rootfs to /: %w", err)
	}

	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}

	return unix.Chdir("/")
}

func maskPath(p string) error {
	st, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}

	if st.IsDir() {
		return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY, "")
	}

	return unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
}

func readonlyPath(p string) error {
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}

	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}

	return unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_REC, "")
}

// dropCapabilities removes CAP_SYS_BOOT and CAP_SYS_MODULE from the bounding set: Talos
// grants every other capability (capability.AllGrantableCapabilities). After exec, root's
// permitted and effective sets are the bounding set.
func dropCapabilities() error {
	for _, c := range []uintptr{unix.CAP_SYS_BOOT, unix.CAP_SYS_MODULE} {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}

	return nil
}
