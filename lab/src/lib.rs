//! The tsbridge lab: network namespaces on one machine that stand in for a cluster's lab
//! network, a control server (headscale), tailnet peers (plain tailscaled), nodes (running
//! `tsbridge run`, which runs tailscaled) and pods attached to nodes.
//!
//! Topology of one [`Lab`]:
//!
//! ```text
//!   switch namespace (bridge br0, no addresses)
//!     ├── veth ── control host 192.168.77.1   headscale (HTTP :8080, DERP, STUN :3478)
//!     ├── veth ── node/peer    192.168.77.N   tailscaled (+ tsbridge on nodes)
//!     └── ...                                 each with its own state directory
//!   node ── veth ── pod namespace 10.244.K.2/24, fd00:10:244:K::2/64, default via the node
//! ```
//!
//! Nothing here has a route to the machine's real network: every namespace is new and only
//! linked to the lab's own bridge or to its node. Everything is named
//! `tsl-<pid>-<n>-<role>` and torn down when the [`Lab`] is dropped, also on panic; a
//! sweeper ([`sweep`]) removes leftovers whose owning process is dead (never those of
//! concurrent runs). Labs can run concurrently: each has its own switch namespace, so
//! they can all use the same addresses.
//!
//! A typical test:
//!
//! ```no_run
//! use std::time::Duration;
//! use tsbridge_lab::{Lab, Tools};
//!
//! let lab = Lab::new(Tools::find("target/debug/tsbridge")?)?;
//! let control = lab.control()?;                    // headscale on 192.168.77.1
//! let peer = lab.peer(&control, "peer")?;           // plain tailscaled, Running
//! let node = lab.host("node1")?;                    // a node namespace
//! let pod = lab.pod(&node)?;                        // 10.244.1.2 behind the node
//! let key = lab.preauth_key(&control, control.user_id, "10m", false, &[])?;
//! let mut env = lab.node_env(&control, &node);      // TS_STATE_DIR, TS_SOCKET, ...
//! env.push(("TS_AUTHKEY".into(), key.key.clone()));
//! let ts = lab.start_tsbridge(&node, &env)?;        // `tsbridge run` in the node
//! let (addr, _) = lab.wait_running(&node, Duration::from_secs(45))?;
//! lab.ping_until(&peer.host.ns, addr.into(), Duration::from_secs(20))?;
//! lab.exec_ok(&pod.ns, &["ip", "route"])?;          // anything inside a namespace
//! println!("{}", lab.log(&ts));                     // tsbridge's log
//! # Ok::<(), tsbridge_lab::Error>(())
//! ```
//! (everything is torn down when `lab` goes out of scope)
//!
//! Processes are started with an explicit, cleared environment through `ip netns exec`
//! (which execs the program, so the pid is the program's), with stdout and stderr in a log
//! file under the lab directory ([`Lab::log`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where labs keep their files (tmpfs; not under /tmp, so tests can scan /tmp for leaks
/// of secrets without finding the control server's database).
pub const LAB_ROOT: &str = "/run/tsbridge-lab";
/// Prefix of every namespace a lab creates.
pub const NS_PREFIX: &str = "tsl-";
/// The lab network (v4 /24); the control host is `.1`.
pub const LAN_PREFIX: [u8; 3] = [192, 168, 77];
pub const LAN_CIDR: &str = "192.168.77.0/24";
/// headscale's HTTP port on the control host.
pub const CONTROL_PORT: u16 = 8080;
/// MagicDNS base domain of the lab tailnet.
pub const BASE_DOMAIN: &str = "tailnet.lab";
/// The headscale user every lab creates at start; the policy lets it own [`LAB_TAGS`].
pub const LAB_USER: &str = "lab";
/// Tags the lab policy allows [`LAB_USER`]'s nodes to advertise.
pub const LAB_TAGS: &[&str] = &["tag:lab", "tag:lab2", "tag:k8s"];
/// Pod CIDRs used by [`Lab::pod`] (pod K gets 10.244.K.0/24 and fd00:10:244:K::/64).
pub const POD_CIDR_V4: &str = "10.244.0.0/16";
pub const POD_CIDR_V6: &str = "fd00:10:244::/48";

/// A lab error: one line saying what failed and, when known, why.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Paths of the real binaries the lab runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub tailscale: PathBuf,
    pub tailscaled: PathBuf,
    pub headscale: PathBuf,
    /// The tsbridge binary under test (tests pass `env!("CARGO_BIN_EXE_tsbridge")`).
    pub tsbridge: PathBuf,
}

impl Tools {
    /// The pinned tools from `$TSBRIDGE_TOOLS_BIN` or the workspace's `.tools/bin`
    /// (`make tools`), and the given tsbridge binary. A missing tool is an error naming the
    /// command that provides it: tests must not silently skip.
    pub fn find(tsbridge: impl Into<PathBuf>) -> Result<Tools> {
        let bin = std::env::var_os("TSBRIDGE_TOOLS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin"));
        let bin = bin.canonicalize().unwrap_or(bin);
        let tool = |name: &str| -> Result<PathBuf> {
            let p = bin.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                err(format!(
                    "{} is missing: run `make tools` (or scripts/setup.sh) first",
                    p.display()
                ))
            }
        };
        let tsbridge = tsbridge.into();
        if !tsbridge.is_file() {
            return err(format!("tsbridge binary {} is missing", tsbridge.display()));
        }
        for cmd in ["ip", "ping"] {
            if which(cmd).is_none() {
                return err(format!(
                    "`{cmd}` is not installed: run scripts/setup.sh (packages iproute2, iputils-ping)"
                ));
            }
        }
        Ok(Tools {
            tailscale: tool("tailscale")?,
            tailscaled: tool("tailscaled")?,
            headscale: tool("headscale")?,
            tsbridge,
        })
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Checks the lab can run here: root, and the tools present.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return err("the lab needs root (network namespaces, veth, TUN): run the tests as root");
    }
    if !Path::new("/dev/net/tun").exists() {
        return err("/dev/net/tun is missing: tailscaled needs the TUN driver");
    }
    Ok(())
}

static NEXT_LAB: AtomicU64 = AtomicU64::new(1);
static NEXT_NS: AtomicU64 = AtomicU64::new(1);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// A namespace of the lab (a host on the lab network, a pod, or the switch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns(pub String);

impl Ns {
    pub fn name(&self) -> &str {
        &self.0
    }
}

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

/// The control server: headscale on its own host.
#[derive(Clone, Debug)]
pub struct Control {
    pub host: Host,
    /// `http://192.168.77.1:8080`, the `--login-server` for clients.
    pub url: String,
    pub config: PathBuf,
    pub proc: Proc,
    /// The id of [`LAB_USER`].
    pub user_id: u64,
}

/// A pre-auth key minted by headscale. The key is a test secret: it is given to tsbridge
/// through its environment, as a user would.
#[derive(Clone)]
pub struct AuthKey {
    pub id: u64,
    pub key: String,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey {{ id: {}, key: [redacted] }}", self.id)
    }
}

/// A tailnet peer: plain tailscaled on a lab host, logged in and Running.
#[derive(Clone, Debug)]
pub struct Peer {
    pub host: Host,
    pub tailscaled: Proc,
    pub ip4: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
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

    // ---- control server ----------------------------------------------------------------

    /// Starts headscale on a new host `ctl` (192.168.77.1 when created first), waits until
    /// it answers, and creates [`LAB_USER`].
    pub fn control(&self) -> Result<Control> {
        let host = self.host("ctl")?;
        let dir = &host.dir;
        let addr = host.lan_addr;
        let url = format!("http://{addr}:{CONTROL_PORT}");
        let policy = dir.join("policy.json");
        let owners: BTreeMap<&str, Vec<String>> = LAB_TAGS
            .iter()
            .map(|t| (*t, vec![format!("{LAB_USER}@")]))
            .collect();
        let policy_doc = serde_json::json!({
            "tagOwners": owners,
            "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
        });
        fs::write(&policy, policy_doc.to_string())
            .map_err(|e| Error(format!("write {}: {e}", policy.display())))?;
        let d = dir.display();
        let config = format!(
            r#"server_url: {url}
listen_addr: {addr}:{CONTROL_PORT}
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: lab
    region_name: Lab DERP
    verify_clients: true
    stun_listen_addr: {addr}:3478
    private_key_path: {d}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: {addr}
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: {policy}
dns:
  magic_dns: true
  base_domain: {BASE_DOMAIN}
  override_local_dns: false
  nameservers:
    global: []
    split: {{}}
unix_socket: {d}/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
"#,
            policy = policy.display()
        );
        let config_path = dir.join("headscale.yaml");
        fs::write(&config_path, config)
            .map_err(|e| Error(format!("write {}: {e}", config_path.display())))?;
        let hs = self.tools.headscale.to_string_lossy().into_owned();
        let cfg = config_path.to_string_lossy().into_owned();
        let proc = self.spawn(&host.ns, "headscale", &[&hs, "serve", "-c", &cfg], &[])?;
        let mut control = Control {
            host,
            url,
            config: config_path,
            proc,
            user_id: 0,
        };
        let sock = control.host.dir.join("headscale.sock");
        wait_until(Duration::from_secs(30), "headscale to listen", || {
            if let Some(st) = self.try_wait(&control.proc) {
                return Err(Error(format!(
                    "headscale exited ({st}): {}",
                    tail(&self.log(&control.proc), 20)
                )));
            }
            Ok(sock.exists().then_some(()))
        })?;
        control.user_id = self.create_user(&control, LAB_USER)?;
        Ok(control)
    }

    /// Runs the headscale CLI against the lab's control server; returns its stdout.
    pub fn headscale(&self, control: &Control, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.tools.headscale)
            .arg("-c")
            .arg(&control.config)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("headscale {args:?}: {e}")))?;
        if !out.status.success() {
            return err(format!(
                "headscale {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn headscale_json(&self, control: &Control, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.headscale(control, &a)?;
        serde_json::from_str(&text)
            .map_err(|e| Error(format!("headscale {args:?}: not JSON ({e}): {text}")))
    }

    /// Creates a headscale user; returns its id.
    pub fn create_user(&self, control: &Control, name: &str) -> Result<u64> {
        let v = self.headscale_json(control, &["users", "create", name])?;
        json_id(&v).ok_or_else(|| Error(format!("headscale users create: no id in {v}")))
    }

    /// Mints a pre-auth key for `user_id` (like the real set-up's create step: short-lived).
    /// `expiration` like `10m`; `tags` like `["tag:lab"]`.
    pub fn preauth_key(
        &self,
        control: &Control,
        user_id: u64,
        expiration: &str,
        reusable: bool,
        tags: &[&str],
    ) -> Result<AuthKey> {
        let uid = user_id.to_string();
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            &uid,
            "--expiration",
            expiration,
        ];
        if reusable {
            args.push("--reusable");
        }
        let tags_joined = tags.join(",");
        if !tags.is_empty() {
            args.extend(["--tags", &tags_joined]);
        }
        let v = self.headscale_json(control, &args)?;
        let key = v
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| Error("headscale preauthkeys create: no key in the answer".into()))?;
        let id = json_id(&v).unwrap_or(0);
        Ok(AuthKey {
            id,
            key: key.to_owned(),
        })
    }

    /// Expires a pre-auth key now (an "expired key" for tests).
    pub fn expire_key(&self, control: &Control, key: &AuthKey) -> Result<()> {
        self.headscale(
            control,
            &["preauthkeys", "expire", "--id", &key.id.to_string()],
        )
        .map(|_| ())
    }

    /// headscale's node list (JSON array).
    pub fn nodes(&self, control: &Control) -> Result<Vec<serde_json::Value>> {
        let v = self.headscale_json(control, &["nodes", "list"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// headscale's id of the node with this hostname (`given_name` or `name`).
    pub fn node_id(&self, control: &Control, hostname: &str) -> Result<u64> {
        let nodes = self.nodes(control)?;
        nodes
            .iter()
            .find(|n| n["given_name"] == hostname || n["name"] == hostname)
            .and_then(json_id)
            .ok_or_else(|| Error(format!("headscale knows no node {hostname:?}")))
    }

    /// Approves advertised subnet routes of a node (`headscale nodes approve-routes`).
    pub fn approve_routes(&self, control: &Control, hostname: &str, routes: &[&str]) -> Result<()> {
        let id = self.node_id(control, hostname)?.to_string();
        let routes = routes.join(",");
        self.headscale(
            control,
            &[
                "nodes",
                "approve-routes",
                "--identifier",
                &id,
                "--routes",
                &routes,
            ],
        )
        .map(|_| ())
    }

    // ---- tailscale ---------------------------------------------------------------------

    /// The environment every tailscaled in the lab gets: DERP over plain HTTP (the lab's
    /// embedded DERP has no TLS), nftables firewall mode.
    pub fn tailscaled_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TS_DEBUG_USE_DERP_HTTP", "1"),
            ("TS_DEBUG_FIREWALL_MODE", "nftables"),
        ]
    }

    /// Starts plain tailscaled on `host` (state and socket in the host's directory).
    pub fn start_tailscaled(&self, host: &Host) -> Result<Proc> {
        let d = self.tools.tailscaled.to_string_lossy().into_owned();
        let state = format!("--statedir={}", host.state_dir().display());
        let sock = format!("--socket={}", host.socket().display());
        self.spawn(
            &host.ns,
            &format!("{}-tailscaled", host.role),
            &[
                &d,
                &state,
                &sock,
                "--tun=tailscale0",
                "--no-logs-no-support",
            ],
            &Self::tailscaled_env(),
        )
    }

    /// Runs the tailscale CLI against the tailscaled of `host`; returns the raw output.
    pub fn tailscale(&self, host: &Host, args: &[&str]) -> Result<Output> {
        let sock = format!("--socket={}", host.socket().display());
        Command::new(&self.tools.tailscale)
            .arg(&sock)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("tailscale {args:?}: {e}")))
    }

    /// `tailscale status --json` of `host`'s tailscaled.
    pub fn status(&self, host: &Host) -> Result<serde_json::Value> {
        let out = self.tailscale(host, &["status", "--json", "--peers=true"])?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error(format!(
                "tailscale status on {}: {e}: {}",
                host.role,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
    }

    /// Waits until `host`'s tailscaled is Running with a 100.x address; returns its
    /// addresses.
    pub fn wait_running(
        &self,
        host: &Host,
        limit: Duration,
    ) -> Result<(Ipv4Addr, Option<Ipv6Addr>)> {
        let mut last = String::new();
        wait_until(limit, &format!("{} to be Running", host.role), || {
            let Ok(st) = self.status(host) else {
                return Ok(None);
            };
            last = st["BackendState"].as_str().unwrap_or("").to_owned();
            Ok(tailnet_addrs(&st).filter(|_| last == "Running"))
        })
        .map_err(|e| Error(format!("{e} (last state {last:?})")))
    }

    /// A plain tailscaled peer on a new host, logged in with a fresh key of [`LAB_USER`]
    /// and Running.
    pub fn peer(&self, control: &Control, role: &str) -> Result<Peer> {
        let host = self.host(role)?;
        let tailscaled = self.start_tailscaled(&host)?;
        let key = self.preauth_key(control, control.user_id, "10m", false, &[])?;
        let login = format!("--login-server={}", control.url);
        let hostname = format!("--hostname={role}");
        // A test peer: its key on the command line is acceptable (tsbridge's node key is
        // what the tests check never reaches a command line).
        let keyarg = format!("--auth-key={}", key.key);
        wait_until(
            Duration::from_secs(10),
            "the peer's LocalAPI socket",
            || Ok(host.socket().exists().then_some(())),
        )?;
        let out = self.tailscale(
            &host,
            &[
                "up",
                &login,
                &keyarg,
                &hostname,
                "--accept-dns=false",
                "--timeout=60s",
            ],
        )?;
        if !out.status.success() {
            return err(format!(
                "tailscale up on {role} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&self.log(&tailscaled), 30)
            ));
        }
        let (ip4, ip6) = self.wait_running(&host, Duration::from_secs(30))?;
        Ok(Peer {
            host,
            tailscaled,
            ip4,
            ip6,
        })
    }

    /// `ping -c N -W 1` from inside a namespace; Ok when at least one reply came back.
    pub fn ping(&self, ns: &Ns, target: IpAddr, count: u32) -> Result<String> {
        let c = count.to_string();
        let t = target.to_string();
        self.exec_ok(ns, &["ping", "-n", "-c", &c, "-W", "1", "-i", "0.2", &t])
    }

    /// Pings until one succeeds (a fresh tailnet path needs a moment), at most `limit`.
    pub fn ping_until(&self, ns: &Ns, target: IpAddr, limit: Duration) -> Result<()> {
        let mut last = String::new();
        wait_until(limit, &format!("{target} to answer pings"), || {
            match self.ping(ns, target, 1) {
                Ok(_) => Ok(Some(())),
                Err(e) => {
                    last = e.0;
                    Ok(None)
                }
            }
        })
        .map_err(|e| Error(format!("{e}; last: {last}")))
    }

    // ---- tsbridge ----------------------------------------------------------------------

    /// The environment `tsbridge run` gets on a lab node: state and socket in the host's
    /// directory, the lab's tools, the control server as login server, the lab subnet.
    /// Tests add or override entries (`TS_AUTHKEY`, `TS_EXTRA_ARGS`, ...); a later entry
    /// with the same name wins, as in Talos.
    pub fn node_env(&self, control: &Control, host: &Host) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "TS_STATE_DIR".into(),
                host.state_dir().display().to_string(),
            ),
            ("TS_SOCKET".into(), host.socket().display().to_string()),
            ("TS_HOSTNAME".into(), host.role.clone()),
            (
                "TS_EXTRA_ARGS".into(),
                format!("--login-server={}", control.url),
            ),
            (
                "TS_TAILSCALED_EXTRA_ARGS".into(),
                "--no-logs-no-support".into(),
            ),
            (
                "TSBRIDGE_TAILSCALED".into(),
                self.tools.tailscaled.display().to_string(),
            ),
            (
                "TSBRIDGE_TAILSCALE".into(),
                self.tools.tailscale.display().to_string(),
            ),
            ("TSBRIDGE_LAB_SUBNETS".into(), LAN_CIDR.into()),
            (
                "TSBRIDGE_POD_CIDRS".into(),
                format!("{POD_CIDR_V4},{POD_CIDR_V6}"),
            ),
            ("TSBRIDGE_LISTEN".into(), "off".into()),
        ];
        for (k, v) in Self::tailscaled_env() {
            env.push((k.into(), v.into()));
        }
        env
    }

    /// Starts `tsbridge run` on `host` with `env` (see [`Lab::node_env`]); the log is
    /// `<lab>/<role>-tsbridge.log`.
    pub fn start_tsbridge(&self, host: &Host, env: &[(String, String)]) -> Result<Proc> {
        let bin = self.tools.tsbridge.to_string_lossy().into_owned();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.spawn(
            &host.ns,
            &format!("{}-tsbridge", host.role),
            &[&bin, "run"],
            &env,
        )
    }

    /// Like [`Lab::start_tsbridge`], but tsbridge is PID 1 of a new PID namespace (as in
    /// its Talos container): orphans are re-parented to it. The returned process is
    /// `unshare`'s; tsbridge is its only child (`--kill-child` ends it with `unshare`).
    pub fn start_tsbridge_as_pid1(&self, host: &Host, env: &[(String, String)]) -> Result<Proc> {
        let bin = self.tools.tsbridge.to_string_lossy().into_owned();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.spawn(
            &host.ns,
            &format!("{}-tsbridge", host.role),
            &["unshare", "--pid", "--fork", "--kill-child", &bin, "run"],
            &env,
        )
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
            eprintln!(
                "---- lab {}: last lines of {} ----\n{}",
                self.id,
                e.proc.log.display(),
                tail(&self.log(&e.proc), 40)
            );
        }
    }
}

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

/// Kills whatever still runs in a namespace and deletes it with its /etc/netns entry.
fn remove_ns(name: &str) {
    for _ in 0..3 {
        let pids = ns_pids(name);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

fn ns_pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of earlier lab runs whose owning process is dead: namespaces named
/// `tsl-<pid>-...` (and what runs in them), their /etc/netns entries, and lab directories
/// `<LAB_ROOT>/<pid>-...`. Never touches anything of a live process. Returns what it
/// removed.
pub fn sweep() -> Result<Vec<String>> {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let owner = |name: &str| -> Option<u32> { name.split('-').next()?.parse().ok() };
    let mut removed = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for dir in ["/run/netns", "/etc/netns"] {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(NS_PREFIX) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    for n in names {
        match owner(&n[NS_PREFIX.len()..]) {
            Some(pid) if !alive(pid) => {
                remove_ns(&n);
                removed.push(n);
            }
            _ => {}
        }
    }
    if let Ok(rd) = fs::read_dir(LAB_ROOT) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner(&n)
                && !alive(pid)
            {
                let _ = fs::remove_dir_all(e.path());
                removed.push(e.path().display().to_string());
            }
        }
    }
    Ok(removed)
}

fn netns_command(ns: &Ns, argv: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).args(argv);
    cmd.env_clear();
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `ip -n NS WORDS...` (`words` split on whitespace; names and addresses never
/// contain spaces).
pub fn ipn(ns: &Ns, words: &str) -> Result<()> {
    let mut args = vec!["-n", ns.name()];
    args.extend(words.split_whitespace());
    ip(&args)
}

/// Runs `ip ARGS` in the current namespace; an error carries ip's stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Polls `f` every 100 ms until it returns `Ok(Some(_))`, an error, or `limit` passes
/// (then: "timed out after Ns waiting for <what>").
pub fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return err(format!("timed out after {:.0?} waiting for {what}", limit));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn json_id(v: &serde_json::Value) -> Option<u64> {
    match v.get("id")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The 100.x (and fd7a:) addresses in a `tailscale status --json` document.
pub fn tailnet_addrs(status: &serde_json::Value) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
    let ips = status.get("TailscaleIPs")?.as_array()?;
    let mut v4 = None;
    let mut v6 = None;
    for ip in ips
        .iter()
        .filter_map(|i| i.as_str()?.parse::<IpAddr>().ok())
    {
        match ip {
            IpAddr::V4(a) => v4 = v4.or(Some(a)),
            IpAddr::V6(a) => v6 = v6.or(Some(a)),
        }
    }
    v4.map(|a| (a, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tailnet_addrs_reads_status() {
        let st = serde_json::json!({"TailscaleIPs": ["fd7a:115c:a1e0::1", "100.64.0.1"]});
        let (v4, v6) = tailnet_addrs(&st).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(v6, Some("fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(tailnet_addrs(&serde_json::json!({"TailscaleIPs": []})).is_none());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
