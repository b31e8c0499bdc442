//! One lab: its namespaces, hosts, pods and processes, all torn down on drop.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{netns_command, ns_pids, remove_ns};
use crate::tools::preflight;
use crate::{Error, LAB_ROOT, LAN_PREFIX, NS_PREFIX, Ns, Result, Tools, err, ip, ipn, sweep, tail};

static NEXT_LAB: AtomicU64 = AtomicU64::new(1);
static NEXT_NS: AtomicU64 = AtomicU64::new(1);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// A host on the lab network: a namespace with an address on the lab bridge and its own
/// directory.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: Ns,
    /// Role given at creation (`ctl`, `node1`, `peer1`, ...), also the tailnet hostname.
    pub role: String,
    pub lan_addr: Ipv4Addr,
    /// This host's directory (state, sockets, logs).
    pub dir: PathBuf,
}

impl Host {
    /// tailscaled's LocalAPI socket for a tailscaled started by the lab on this host.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("tailscaled.sock")
    }
    /// tailscaled's state directory on this host.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// A logs directory for a tailscaled the lab starts itself on this host (created):
    /// its `TS_LOGS_DIR`.
    pub fn logs_dir(&self) -> Result<String> {
        let d = self.dir.join("logs");
        fs::create_dir_all(&d).map_err(|e| Error(format!("mkdir {}: {e}", d.display())))?;
        Ok(d.display().to_string())
    }
}

/// A pod namespace attached to a node by a veth pair, with default routes via the node.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: Ns,
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
    /// The node side of the pod's veth pair (`podK`), addresses `.1` / `::1`.
    pub node_if: String,
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
    /// The pod's own subnets (10.244.K.0/24, fd00:10:244:K::/64).
    pub cidr_v4: String,
    pub cidr_v6: String,
}

/// A process started by the lab.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub name: String,
    pub log: PathBuf,
}

struct Entry {
    proc: Proc,
    child: Child,
}

#[derive(Default)]
struct Inner {
    namespaces: Vec<Ns>,
    procs: Vec<Entry>,
    next_host: u8,
    next_pod: u8,
}

/// One lab: torn down completely on drop.
pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub tools: Tools,
    switch: Ns,
    inner: Mutex<Inner>,
}

impl Lab {
    /// Creates the lab's switch namespace and directory. Sweeps leftovers of dead runs
    /// first (once per process).
    pub fn new(tools: Tools) -> Result<Lab> {
        preflight()?;
        SWEEP.call_once(|| {
            if let Err(e) = sweep() {
                eprintln!("lab: sweeping leftovers failed: {e}");
            }
        });
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = Path::new(LAB_ROOT).join(&id);
        fs::create_dir_all(&dir).map_err(|e| Error(format!("mkdir {}: {e}", dir.display())))?;
        let mut lab = Lab {
            id,
            dir,
            tools,
            switch: Ns(String::new()),
            inner: Mutex::new(Inner {
                next_host: 1,
                next_pod: 1,
                ..Inner::default()
            }),
        };
        lab.switch = lab.new_ns("sw")?;
        ipn(&lab.switch, "link add br0 type bridge")?;
        ipn(&lab.switch, "link set br0 up")?;
        Ok(lab)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new empty namespace with loopback up, registered for teardown.
    pub fn new_ns(&self, role: &str) -> Result<Ns> {
        let name = format!(
            "{NS_PREFIX}{}-{}-{role}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Ns(name);
        self.inner().namespaces.push(ns.clone());
        // `ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf:
        // the lab's processes never see (or rewrite) the machine's resolver configuration.
        let etc = Path::new("/etc/netns").join(ns.name());
        fs::create_dir_all(&etc).map_err(|e| Error(format!("mkdir {}: {e}", etc.display())))?;
        fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")
            .map_err(|e| Error(format!("write {}/resolv.conf: {e}", etc.display())))?;
        ipn(&ns, "link set lo up")?;
        Ok(ns)
    }

    /// A host on the lab network: namespace, veth to the lab bridge, address 192.168.77.N.
    /// `role` is a short word (`node1`, `peer`), used in names and as tailnet hostname.
    pub fn host(&self, role: &str) -> Result<Host> {
        let n = {
            let mut i = self.inner();
            let n = i.next_host;
            if n == 254 {
                return err("the lab network is full (253 hosts)");
            }
            i.next_host += 1;
            n
        };
        let ns = self.new_ns(role)?;
        let sw_if = format!("h{n}");
        ipn(
            &self.switch,
            &format!(
                "link add {sw_if} type veth peer name lan0 netns {}",
                ns.name()
            ),
        )?;
        ipn(&self.switch, &format!("link set {sw_if} master br0 up"))?;
        let addr = Ipv4Addr::new(LAN_PREFIX[0], LAN_PREFIX[1], LAN_PREFIX[2], n);
        ipn(&ns, &format!("addr add {addr}/24 dev lan0"))?;
        ipn(&ns, "link set lan0 up")?;
        let dir = self.dir.join(role);
        fs::create_dir_all(&dir).map_err(|e| Error(format!("mkdir {}: {e}", dir.display())))?;
        Ok(Host {
            ns,
            role: role.to_owned(),
            lan_addr: addr,
            dir,
        })
    }

    /// Enables IPv4 and IPv6 forwarding in a host's namespace (as Talos does on a node).
    pub fn enable_forwarding(&self, host: &Host) -> Result<()> {
        self.exec_ok(
            &host.ns,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
        .map(|_| ())
    }

    /// A pod namespace attached to `node`: veth `podK` (node) / `eth0` (pod), pod
    /// addresses 10.244.K.2/24 and fd00:10:244:K::2/64, default routes via the node's
    /// `.1` / `::1`. Also enables forwarding on the node.
    pub fn pod(&self, node: &Host) -> Result<Pod> {
        let k = {
            let mut i = self.inner();
            let k = i.next_pod;
            if k == 255 {
                return err("too many pods in one lab");
            }
            i.next_pod += 1;
            k
        };
        let ns = self.new_ns(&format!("pod{k}"))?;
        let node_if = format!("pod{k}");
        ipn(
            &node.ns,
            &format!(
                "link add {node_if} type veth peer name eth0 netns {}",
                ns.name()
            ),
        )?;
        let gw4 = Ipv4Addr::new(10, 244, k, 1);
        let addr4 = Ipv4Addr::new(10, 244, k, 2);
        let gw6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, k.into(), 0, 0, 0, 1);
        let addr6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, k.into(), 0, 0, 0, 2);
        // nodad: the addresses are usable at once (no duplicate detection delay).
        ipn(&node.ns, &format!("addr add {gw4}/24 dev {node_if}"))?;
        ipn(&node.ns, &format!("addr add {gw6}/64 dev {node_if} nodad"))?;
        ipn(&node.ns, &format!("link set {node_if} up"))?;
        ipn(&ns, &format!("addr add {addr4}/24 dev eth0"))?;
        ipn(&ns, &format!("addr add {addr6}/64 dev eth0 nodad"))?;
        ipn(&ns, "link set eth0 up")?;
        ipn(&ns, &format!("route add default via {gw4}"))?;
        ipn(&ns, &format!("-6 route add default via {gw6}"))?;
        self.enable_forwarding(node)?;
        Ok(Pod {
            ns,
            addr_v4: addr4,
            addr_v6: addr6,
            node_if,
            gateway_v4: gw4,
            gateway_v6: gw6,
            cidr_v4: format!("10.244.{k}.0/24"),
            cidr_v6: format!("fd00:10:244:{k:x}::/64"),
        })
    }

    /// Runs a command inside a namespace and waits for it (empty environment but PATH).
    pub fn exec(&self, ns: &Ns, argv: &[&str]) -> Result<Output> {
        let mut cmd = netns_command(ns, argv, &[]);
        cmd.stdin(Stdio::null());
        cmd.output()
            .map_err(|e| Error(format!("ip netns exec {} {argv:?}: {e}", ns.name())))
    }

    /// Like [`Lab::exec`], but a non-zero exit is an error carrying stderr; returns stdout.
    pub fn exec_ok(&self, ns: &Ns, argv: &[&str]) -> Result<String> {
        let out = self.exec(ns, argv)?;
        if !out.status.success() {
            return err(format!(
                "in {}: {argv:?} failed ({}): {}",
                ns.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running process in a namespace with exactly `env` (plus PATH) as its
    /// environment; stdout and stderr go to `<lab>/<name>.log` (appended, so a restarted
    /// process keeps one log).
    pub fn spawn(&self, ns: &Ns, name: &str, argv: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error(format!("open {}: {e}", log.display())))?;
        let file2 = file
            .try_clone()
            .map_err(|e| Error(format!("dup log fd: {e}")))?;
        let mut cmd = netns_command(ns, argv, env);
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        let child = cmd
            .spawn()
            .map_err(|e| Error(format!("start {name} in {}: {e}", ns.name())))?;
        let proc = Proc {
            pid: child.id(),
            name: name.to_owned(),
            log,
        };
        self.inner().procs.push(Entry {
            proc: proc.clone(),
            child,
        });
        Ok(proc)
    }

    /// The process's log so far.
    pub fn log(&self, proc: &Proc) -> String {
        fs::read(&proc.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the process has exited (reaping it if so); `Some(status)` once it has.
    pub fn try_wait(&self, proc: &Proc) -> Option<ExitStatus> {
        let mut i = self.inner();
        let e = i.procs.iter_mut().find(|e| e.proc.pid == proc.pid)?;
        e.child.try_wait().ok().flatten()
    }

    /// Sends `sig` and waits up to `limit` for the exit. Returns the exit status, or
    /// `None` if it did not exit in time (it is still running and still owned).
    pub fn signal_and_wait(&self, proc: &Proc, sig: Signal, limit: Duration) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(proc.pid as i32), sig);
        self.wait_exit(proc, limit)
    }

    /// Waits up to `limit` for the process to exit; the status once it has.
    pub fn wait_exit(&self, proc: &Proc, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait(proc) {
                return Some(st);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops a process (SIGTERM, SIGKILL after 5 s) and forgets it.
    pub fn stop(&self, proc: &Proc) -> Option<ExitStatus> {
        let st = self
            .signal_and_wait(proc, Signal::SIGTERM, Duration::from_secs(5))
            .or_else(|| self.signal_and_wait(proc, Signal::SIGKILL, Duration::from_secs(5)));
        self.inner().procs.retain(|e| e.proc.pid != proc.pid);
        st
    }

    /// The pids of every process in a namespace (`ip netns pids`).
    pub fn ns_pids(&self, ns: &Ns) -> Vec<u32> {
        ns_pids(ns.name())
    }

    /// On panic: the last lines of every process log, so CI shows what happened.
    fn dump_logs(&self) {
        let i = self.inner();
        let mut seen = Vec::new();
        for e in &i.procs {
            if seen.contains(&e.proc.log) {
                continue;
            }
            seen.push(e.proc.log.clone());
            let log = self.log(&e.proc);
            // A failure often starts long before the last lines (a join that failed once
            // and then retried): the join's milestones from the start of the log too.
            let milestones: Vec<&str> = log
                .lines()
                .filter(|l| JOIN_MILESTONES.iter().any(|m| l.contains(m)))
                .take(40)
                .collect();
            eprintln!(
                "---- lab {}: join milestones in {} ----\n{}",
                self.id,
                e.proc.log.display(),
                milestones.join("\n")
            );
            eprintln!(
                "---- lab {}: last lines of {} ----\n{}",
                self.id,
                e.proc.log.display(),
                tail(&log, 40)
            );
        }
    }
}

/// Log lines that tell how a join went, in tsbridge's, tailscaled's and headscale's logs.
const JOIN_MILESTONES: &[&str] = &[
    "running tailscale up",
    "tailscale up succeeded",
    "joining failed",
    "tailscaled restarted",
    "RegisterReq",
    "Received error",
    "backend error",
    "Switching ipn state",
    "ERR",
    "WRN",
];

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let (procs, namespaces) = {
            let mut i = self.inner();
            (
                std::mem::take(&mut i.procs),
                std::mem::take(&mut i.namespaces),
            )
        };
        for e in &procs {
            let _ = kill(Pid::from_raw(e.proc.pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for mut e in procs {
            while Instant::now() < deadline && matches!(e.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(e.child.try_wait(), Ok(None)) {
                let _ = e.child.kill();
            }
            let _ = e.child.wait();
        }
        for ns in namespaces.iter().rev() {
            remove_ns(ns.name());
        }
        // TSBRIDGE_LAB_KEEP=1 keeps the lab's files (logs, state) for a post-mortem.
        if std::env::var_os("TSBRIDGE_LAB_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
