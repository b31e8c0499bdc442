// talos-runner runs Talos extension services from their spec YAML alone, the way Talos's
// machined does (services.Extension + the containerd runner + the restart runner), for the
// QEMU test of the tsbridge extension. See the README, section "QEMU test".
//
//	talos-runner [-config MACHINE_CONFIG.yaml]   run every service in /usr/local/etc/containers
//	talos-runner validate SPEC.yaml...           load and validate specs, print the result
//
// Events are printed one per line ("talos-runner: ext-NAME STATE: message"); the state of
// each service is also written to $state/ext-NAME ("STATE PID"). SIGTERM or SIGINT stops
// every service (SIGTERM to all its processes, SIGKILL after 10 s) and exits.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	extservices "github.com/siderolabs/talos/pkg/machinery/extensions/services"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"golang.org/x/sys/unix"
)

const (
	gracefulStop    = 10 * time.Second // runner.DefaultOptions GracefulShutdownTimeout
	restartInterval = 5 * time.Second  // restart.DefaultOptions RestartInterval
)

var (
	stateDir = "/run/talos-runner"
	logDir   = "/var/log"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == initArg {
		containerInit()

		return
	}

	if len(os.Args) > 1 && os.Args[1] == "validate" {
		os.Exit(validate(os.Args[2:]))
	}

	configPath := flag.String("config", "", "machine configuration documents (ExtensionServiceConfig)")
	specDir := flag.String("specs", constants.ExtensionServiceConfigPath, "service spec directory")
	rootfsDir := flag.String("rootfs", constants.ExtensionServiceRootfsPath, "service rootfs directory")
	flag.StringVar(&stateDir, "state", stateDir, "state directory")
	flag.StringVar(&logDir, "logs", logDir, "service log directory")
	flag.Parse()

	os.Exit(serve(*configPath, *specDir, *rootfsDir))
}

func logf(format string, args ...any) {
	fmt.Printf("talos-runner: "+format+"\n", args...)
}

func validate(paths []string) int {
	rc := 0

	for _, p := range paths {
		spec, ignored, err := loadSpec(p)
		if err == nil {
			err = spec.Validate()
		}

		for _, i := range ignored {
			fmt.Printf("%s: warning: Talos ignores: %s\n", p, i)
		}

		if err != nil {
			fmt.Printf("%s: invalid: %v\n", p, err)

			rc = 1

			continue
		}

		fmt.Printf("%s: valid service %q\n", p, spec.Name)
	}

	return rc
}

func serve(configPath, specDir, rootfsDir string) int {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		logf("error: %v", err)

		return 1
	}

	mc, err := loadMachineConfig(configPath)
	if err != nil {
		logf("error: %v", err)

		return 1
	}

	files, err := os.ReadDir(specDir)
	if err != nil {
		logf("error: service directory: %v", err)

		return 1
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	var (
		wg    sync.WaitGroup
		names = map[string]bool{}
	)

	for _, f := range files {
		if filepath.Ext(f.Name()) != ".yaml" {
			logf("skipping config file %s", f.Name())

			continue
		}

		path := filepath.Join(specDir, f.Name())

		spec, ignored, err := loadSpec(path)
		for _, i := range ignored {
			logf("warning: %s: key ignored by Talos: %s", f.Name(), i)
		}

		if err != nil {
			logf("error loading extension service spec %s: %v", f.Name(), err)

			continue
		}

		if err = spec.Validate(); err != nil {
			logf("error validating extension service spec %s: %v", f.Name(), err)

			continue
		}

		// Talos 1.14 also runs specs as host processes; only the container mode is reproduced.
		if spec.RunnerMode != extservices.RunnerModeContainer {
			logf("error: %s: runnerMode %s is not reproduced by this runner", f.Name(), spec.RunnerMode)

			continue
		}

		if names[spec.Name] {
			logf("duplicate service spec %s: %s", f.Name(), spec.Name)

			continue
		}

		names[spec.Name] = true
		svc := &service{spec: spec, rootfs: filepath.Join(rootfsDir, spec.Name), esc: mc.services[spec.Name]}

		wg.Add(1)

		go func() {
			defer wg.Done()
			svc.run(ctx)
		}()
	}

	<-ctx.Done()
	logf("shutting down: stopping services")
	wg.Wait()
	logf("all services stopped")

	return 0
}

type service struct {
	spec   extservices.Spec
	rootfs string
	esc    config.ExtensionServiceConfig
}

func (s *service) id() string { return "ext-" + s.spec.Name }

func (s *service) event(state, format string, args ...any) {
	logf("%s %s: %s", s.id(), state, fmt.Sprintf(format, args...))
}

func (s *service) setState(state string, pid int) {
	tmp := filepath.Join(stateDir, s.id()+".tmp")
	_ = os.WriteFile(tmp, []byte(fmt.Sprintf("%s %d\n", state, pid)), 0o644)
	_ = os.Rename(tmp, filepath.Join(stateDir, s.id()))
}

func (s *service) run(ctx context.Context) {
	s.setState("Waiting", 0)

	if !s.waitConditions(ctx) {
		s.event("Finished", "stopped while waiting for its conditions")
		s.setState("Finished", 0)

		return
	}

	s.setState("Preparing", 0)

	unmount, err := s.mountOverlay()
	if err != nil {
		s.event("Failed", "preparing the rootfs overlay: %v", err)
		s.setState("Failed", 0)

		return
	}
	defer unmount()

	cc, err := buildContainer(&s.spec, s.rootfs, s.esc)
	if err != nil {
		s.event("Failed", "%v", err)
		s.setState("Failed", 0)

		return
	}

	for {
		err := s.runOnce(ctx, cc)
		if ctx.Err() != nil {
			s.event("Finished", "service stopped")
			s.setState("Finished", 0)

			return
		}

		switch s.spec.Restart {
		case extservices.RestartNever:
			s.event("Finished", "exited (restart: never): %v", errString(err))
			s.setState("Finished", 0)

			return
		case extservices.RestartUntilSuccess:
			if err == nil {
				s.event("Finished", "exited successfully (restart: untilSuccess)")
				s.setState("Finished", 0)

				return
			}

			s.event("Waiting", "error running, going to restart until it succeeds: %v", err)
		default:
			s.event("Waiting", "exited, going to restart forever: %v", errString(err))
		}

		s.setState("Waiting", 0)

		select {
		case <-ctx.Done():
			s.event("Finished", "aborting restart sequence")
			s.setState("Finished", 0)

			return
		case <-time.After(restartInterval):
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "exit code 0"
	}

	return err.Error()
}

// mountOverlay is Extension.PreFunc: the service rootfs re-mounted as an overlay with a
// writable upper layer, so mount points can be created without touching the image.
func (s *service) mountOverlay() (func(), error) {
	base := filepath.Join(stateDir, "overlay", s.spec.Name)
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")

	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.rootfs, upper, work)
	if err := unix.Mount("overlay", s.rootfs, "overlay", 0, opts); err != nil {
		return nil, err
	}

	return func() {
		if err := unix.Unmount(s.rootfs, unix.MNT_DETACH); err != nil {
			s.event("Finished", "unmounting the rootfs overlay: %v", err)
		}

		_ = os.RemoveAll(base)
	}, nil
}

// runOnce starts the container and waits until it exits or ctx is cancelled; then it
// stops it as the containerd runner does: SIGTERM to all, SIGKILL after 10 s.
func (s *service) runOnce(ctx context.Context, cc *containerConfig) error {
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return err
	}

	logW, closeLog, err := s.logWriter()
	if err != nil {
		return err
	}
	defer closeLog()

	self, err := os.Executable()
	if err != nil {
		return err
	}

	cmd := exec.Command(self, initArg)
	cmd.Stdout, cmd.Stderr = logW, logW
	cmd.ExtraFiles = []*os.File{cfgR}
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		Setsid:     true,
	}

	if err := cmd.Start(); err != nil {
		_ = cfgR.Close()
		_ = cfgW.Close()

		return fmt.Errorf("failed to start task: %w", err)
	}

	_ = cfgR.Close()

	if err := json.NewEncoder(cfgW).Encode(cc); err != nil {
		_ = cfgW.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()

		return err
	}

	_ = cfgW.Close()

	pid := cmd.Process.Pid
	pidns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))

	s.event("Running", "Started task %s (PID %d) for container %s", s.id(), pid, s.id())
	s.setState("Running", pid)

	done := make(chan error, 1)

	go func() { done <- cmd.Wait() }()

	select {
	case err := <-done:
		return exitError(err)
	case <-ctx.Done():
	}

	s.event("Stopping", "Sending SIGTERM to task %s (PID %d, container %s)", s.id(), pid, s.id())
	s.setState("Stopping", pid)

	start := time.Now()
	n := killNamespace(pidns, pid, unix.SIGTERM)

	select {
	case <-done:
		s.event("Stopping", "task exited %.2f s after SIGTERM to %d processes", time.Since(start).Seconds(), n)
	case <-time.After(gracefulStop):
		s.event("Stopping", "Sending SIGKILL to task %s (PID %d, container %s)", s.id(), pid, s.id())
		killNamespace(pidns, pid, unix.SIGKILL)
		<-done
		s.event("Stopping", "task killed %.2f s after SIGTERM", time.Since(start).Seconds())
	}

	return nil
}

func exitError(err error) error {
	if err == nil {
		return nil
	}

	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("task killed by signal %v", ws.Signal())
		}

		return fmt.Errorf("task failed: exit code %d", ee.ExitCode())
	}

	return err
}

// killNamespace signals every process in the PID namespace pidns (containerd's
// task.Kill WithKillAll), the init last; it returns how many it signalled.
func killNamespace(pidns string, initPid int, sig unix.Signal) int {
	entries, _ := os.ReadDir("/proc")

	var pids []int

	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == initPid {
			continue
		}

		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err == nil && ns == pidns {
			pids = append(pids, pid)
		}
	}

	sort.Ints(pids)
	pids = append(pids, initPid)

	for _, p := range pids {
		_ = unix.Kill(p, sig)
	}

	return len(pids)
}

// logWriter is the service log (/var/log/ext-NAME.log) and, prefixed, the runner's output.
func (s *service) logWriter() (io.Writer, func(), error) {
	f, err := os.OpenFile(filepath.Join(logDir, s.id()+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}

	pr, pw := io.Pipe()
	done := make(chan struct{})

	go func() {
		defer close(done)

		buf := make([]byte, 0, 4096)
		chunk := make([]byte, 4096)

		for {
			n, err := pr.Read(chunk)
			buf = append(buf, chunk[:n]...)

			for {
				i := strings.IndexByte(string(buf), '\n')
				if i < 0 {
					break
				}

				line := string(buf[:i+1])
				_, _ = f.WriteString(line)
				_, _ = fmt.Fprintf(os.Stdout, "[%s] %s", s.id(), line)
				buf = buf[i+1:]
			}

			if err != nil {
				if len(buf) > 0 {
					_, _ = f.Write(append(buf, '\n'))
					_, _ = fmt.Fprintf(os.Stdout, "[%s] %s\n", s.id(), buf)
				}

				return
			}
		}
	}()

	return pw, func() {
		_ = pw.Close()
		<-done
		_ = f.Close()
	}, nil
}

// waitConditions is Extension.Condition and DependsOn: it returns false when ctx ends.
func (s *service) waitConditions(ctx context.Context) bool {
	type cond struct {
		desc string
		ok   func() bool
	}

	conds := []cond{{"service containerd", serviceUp("containerd")}}

	if f := s.spec.Container.EnvironmentFile; f != "" {
		conds = append(conds, cond{"file " + f, fileExists(f)})
	}

	for _, dep := range s.spec.Depends {
		switch {
		case dep.Service != "":
			conds = append(conds, cond{"service " + dep.Service, serviceUp(dep.Service)})
		case dep.Path != "":
			conds = append(conds, cond{"path " + dep.Path, fileExists(dep.Path)})
		case len(dep.Network) > 0:
			for _, st := range dep.Network {
				conds = append(conds, cond{"network " + st.String(), networkReady(st)})
			}
		case dep.Time:
			// the VM's clock is the host's; Talos waits for timesync here
			conds = append(conds, cond{"time sync", func() bool { return true }})
		case dep.Configuration:
			conds = append(conds, cond{"ExtensionServiceConfig " + s.spec.Name, func() bool { return s.esc != nil }})
		}
	}

	for _, c := range conds {
		reported := false

		for !c.ok() {
			if !reported {
				s.event("Waiting", "Waiting for %s", c.desc)

				reported = true
			}

			select {
			case <-ctx.Done():
				return false
			case <-time.After(200 * time.Millisecond):
			}
		}

		s.event("Waiting", "condition met: %s", c.desc)
	}

	return true
}

// serviceUp: Talos services other than extensions do not exist in the VM; the test marks
// one as up by creating $state/services/NAME.
func serviceUp(name string) func() bool {
	return fileExists(filepath.Join(stateDir, "services", name))
}

func fileExists(p string) func() bool {
	return func() bool {
		_, err := os.Stat(p)

		return err == nil
	}
}

// networkReady approximates Talos's network status checks on the VM's root namespace.
func networkReady(st nethelpers.Status) func() bool {
	switch st {
	case nethelpers.StatusAddresses:
		return hasGlobalAddress
	case nethelpers.StatusConnectivity:
		return func() bool {
			out, _ := os.ReadFile("/proc/net/route")
			for _, l := range strings.Split(string(out), "\n")[1:] {
				if f := strings.Fields(l); len(f) > 2 && f[1] == "00000000" {
					return true
				}
			}

			return false
		}
	case nethelpers.StatusHostname:
		return func() bool {
			h, err := os.Hostname()

			return err == nil && h != "" && h != "(none)"
		}
	case nethelpers.StatusEtcFiles:
		return func() bool { return fileExists("/etc/hosts")() && fileExists("/etc/resolv.conf")() }
	default:
		return func() bool { return false }
	}
}

func hasGlobalAddress() bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}

	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() {
			return true
		}
	}

	return false
}
