//! Pods reach the tailnet (issue 4's lab tests): a node running `tsbridge run` (with the
//! real tailscaled) joined to headscale, a pod namespace behind the node, and a plain
//! tailscaled peer with a small TCP service. Needs root and `make tools`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tsbridge_lab::{Control, Host, Lab, Ns, Peer, Pod, Proc, Tools, in_ns, spawn_in, wait_until};

const PORT: u16 = 7400;
const MB: u64 = 1 << 20;

/// The peer's TCP service: `e` echo 5 bytes; `u` + u64 n: receive n bytes, answer `k`;
/// `d` + u64 n: send n bytes. Records each client's source address.
struct Service {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<IpAddr>>>,
}

impl Service {
    fn start(ns: &Ns) -> Service {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, se) = (stop.clone(), seen.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_in(ns, move || {
            let l = TcpListener::bind(("::", PORT)).expect("bind the peer's service");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, from)) => {
                        se.lock().unwrap().push(from.ip().to_canonical());
                        std::thread::spawn(move || serve(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().unwrap();
        Service { stop, seen }
    }

    fn last_source(&self) -> Option<IpAddr> {
        self.seen.lock().unwrap().last().copied()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut cmd = [0u8; 1];
    if s.read_exact(&mut cmd).is_err() {
        return;
    }
    match cmd[0] {
        b'e' => {
            let mut b = [0u8; 5];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
        b'u' => {
            let mut n = [0u8; 8];
            if s.read_exact(&mut n).is_err() {
                return;
            }
            let n = u64::from_be_bytes(n);
            let got = std::io::copy(&mut (&mut s).take(n), &mut std::io::sink()).unwrap_or(0);
            if got == n {
                let _ = s.write_all(b"k");
            }
        }
        b'd' => {
            let mut n = [0u8; 8];
            if s.read_exact(&mut n).is_err() {
                return;
            }
            let n = u64::from_be_bytes(n);
            let _ = std::io::copy(&mut std::io::repeat(0x5a).take(n), &mut s);
        }
        _ => {}
    }
}

fn connect(to: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    Ok(s)
}

/// From the pod: echo through the peer's service.
fn pod_echo(pod: &Ns, to: IpAddr) -> Result<(), String> {
    in_ns(pod, move || {
        let mut s = connect(SocketAddr::new(to, PORT))?;
        s.write_all(b"ehello").map_err(|e| e.to_string())?;
        let mut b = [0u8; 5];
        s.read_exact(&mut b)
            .map_err(|e| format!("read echo: {e}"))?;
        (&b == b"hello")
            .then_some(())
            .ok_or_else(|| "wrong echo".to_string())
    })
}

fn pod_echo_until(pod: &Ns, to: IpAddr, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        match pod_echo(pod, to) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// From the pod: `n` bytes up, then `n` bytes down.
fn pod_transfer(pod: &Ns, to: IpAddr, n: u64) -> Result<(), String> {
    in_ns(pod, move || {
        let mut s = connect(SocketAddr::new(to, PORT))?;
        s.write_all(b"u").map_err(|e| e.to_string())?;
        s.write_all(&n.to_be_bytes()).map_err(|e| e.to_string())?;
        std::io::copy(&mut std::io::repeat(0xa5).take(n), &mut s)
            .map_err(|e| format!("upload: {e}"))?;
        let mut k = [0u8; 1];
        s.read_exact(&mut k)
            .map_err(|e| format!("upload ack: {e}"))?;
        let mut s = connect(SocketAddr::new(to, PORT))?;
        s.write_all(b"d").map_err(|e| e.to_string())?;
        s.write_all(&n.to_be_bytes()).map_err(|e| e.to_string())?;
        let got =
            std::io::copy(&mut s, &mut std::io::sink()).map_err(|e| format!("download: {e}"))?;
        (got == n)
            .then_some(())
            .ok_or_else(|| format!("downloaded {got} of {n} bytes"))
    })
}

/// A DNS A query from inside `ns` (no resolver tools needed).
fn resolve_a(ns: &Ns, server: IpAddr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let name = name.to_owned();
    in_ns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let q = tsbridge::dns::encode_query(0x1234, &name).map_err(|e| e.to_string())?;
        sock.send_to(&q, (server, 53)).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("no DNS answer: {e}"))?;
        let out = tsbridge::dns::decode_a(0x1234, &q, &buf[..n]).map_err(|e| e.to_string())?;
        if out.is_empty() {
            return Err("no A record".into());
        }
        Ok(out)
    })
}

struct World {
    lab: Lab,
    control: Control,
    peer: Peer,
    node: Host,
    pod: Pod,
}

fn world() -> World {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let lab = Lab::new(tools).expect("lab");
    let control = lab.control().expect("headscale");
    let peer = lab.peer(&control, "peer").expect("peer");
    let node = lab.host("node1").expect("node");
    let pod = lab.pod(&node).expect("pod");
    World {
        lab,
        control,
        peer,
        node,
        pod,
    }
}

impl World {
    /// Counts, in the peer, the SYNs arriving over its tailscale0 for the test service by
    /// MSS: over 1240 (tailscale0's MTU 1280 - 40, "big") or not ("fits").
    fn install_mss_probe(&self) {
        let probe = format!(
            "nft add table inet probe
             nft add chain inet probe in '{{ type filter hook input priority -300; }}'
             nft add rule inet probe in iifname tailscale0 tcp dport {PORT} tcp flags syn tcp option maxseg size gt 1240 counter comment big
             nft add rule inet probe in iifname tailscale0 tcp dport {PORT} tcp flags syn tcp option maxseg size le 1240 counter comment fits"
        );
        self.lab
            .exec_ok(&self.peer.host.ns, &["sh", "-ec", &probe])
            .expect("probe table in the peer");
    }

    /// The probe's counters: (big, fits) SYNs so far.
    fn mss_probe_counts(&self) -> (u64, u64) {
        let counters = self
            .lab
            .exec_ok(
                &self.peer.host.ns,
                &["nft", "list", "table", "inet", "probe"],
            )
            .expect("the peer's probe table");
        let packets = |tag: &str| -> u64 {
            counters
                .lines()
                .find(|l| l.contains(&format!("comment \"{tag}\"")))
                .and_then(|l| l.split("packets ").nth(1))
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no counter {tag} in {counters}"))
        };
        (packets("big"), packets("fits"))
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self
            .lab
            .node_env_with_key(&self.control, &self.node)
            .expect("node environment");
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn start(&self, env: &[(String, String)]) -> Proc {
        let p = self
            .lab
            .start_tsbridge(&self.node, env)
            .expect("start tsbridge");
        if let Err(e) = self.lab.wait_running(&self.node, Duration::from_secs(45)) {
            panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(&p), 40));
        }
        p
    }

    fn node_sh(&self, cmd: &str) -> Option<String> {
        let out = self.lab.exec(&self.node.ns, &["sh", "-c", cmd]).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (tsbridge's policy rules, tsbridge's nft rules) in the node.
    fn owned(&self) -> (usize, usize) {
        self.lab.owned_state(&self.node.ns)
    }

    fn wait_owned(&self, want: (usize, usize), p: &Proc) -> Duration {
        self.lab
            .wait_owned(&self.node.ns, want, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40)))
    }

    fn tailscaled_pids(&self) -> Vec<u32> {
        self.lab.pids_named(&self.node.ns, "tailscaled")
    }

    /// The pod echoes through `svc` at the peer's `to` (retrying while the tailnet settles);
    /// the source address the peer saw. Panics with tsbridge's last log lines.
    fn pod_echo_seen(&self, svc: &Service, to: IpAddr, limit: Duration, ts: &Proc) -> IpAddr {
        pod_echo_until(&self.pod.ns, to, limit).unwrap_or_else(|e| {
            panic!(
                "pod -> peer {to}: {e}\n{}",
                tsbridge_lab::tail(&self.lab.log(ts), 30)
            )
        });
        svc.last_source().expect("the peer saw the connection")
    }

    fn node_tailnet_v4(&self) -> Ipv4Addr {
        self.lab
            .wait_running(&self.node, Duration::from_secs(5))
            .expect("node running")
            .0
    }
}

/// A kernel event stream (`ip monitor`, `nft monitor`) in the node, subscribed before
/// [`Monitor::start`] returns: it makes a marker change and waits to see it.
struct Monitor {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    fn start(w: &World, argv: &[&str], marker_cmd: &str, marker: &str) -> Monitor {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", w.node.ns.name()])
            .args(argv)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a monitor");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let m = Monitor { child, lines };
        wait_until(Duration::from_secs(10), "the monitor to subscribe", || {
            w.node_sh(marker_cmd);
            std::thread::sleep(Duration::from_millis(50));
            Ok(m.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(marker))
                .then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", m.lines.lock().unwrap()));
        m
    }

    /// The events so far (after a moment for the last ones to arrive).
    fn finish(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 6 policy rules (guards for the lab subnet, two pod CIDRs and the service CIDR, an
/// anchor per family) and 4 nft rules (two masquerades, two clamps).
const OWNED: (usize, usize) = (6, 4);

/// Tests 1-4: by address (v4, v6), bulk both ways with the MSS clamp, by MagicDNS name.
#[test]
fn pod_reaches_peer_by_address_and_by_name() {
    let w = world();
    let svc = Service::start(&w.peer.host.ns);
    w.install_mss_probe();
    let ts = w.start(&w.env(&[]));
    w.wait_owned(OWNED, &ts);
    let node_v4 = w.node_tailnet_v4();

    // 1. By 100.x address; the peer sees the node's tailnet address.
    let seen = w.pod_echo_seen(&svc, IpAddr::V4(w.peer.ip4), Duration::from_secs(20), &ts);
    assert_eq!(seen, IpAddr::V4(node_v4));
    eprintln!(
        "pod {} -> peer {}:{PORT}: ok; the peer saw the node's tailnet address {node_v4}",
        w.pod.addr_v4, w.peer.ip4
    );

    // 2. By fd7a:115c:a1e0:: address from the pod's IPv6 address.
    let peer_v6 = w.peer.ip6.expect("the peer has an IPv6 tailnet address");
    let src6 = w.pod_echo_seen(&svc, IpAddr::V6(peer_v6), Duration::from_secs(10), &ts);
    assert!(
        matches!(src6, IpAddr::V6(a) if a.segments()[..3] == [0xfd7a, 0x115c, 0xa1e0]),
        "the peer saw {src6}, not the node's tailnet IPv6 address"
    );
    eprintln!(
        "pod {} -> peer [{peer_v6}]:{PORT}: ok; the peer saw {src6}",
        w.pod.addr_v6
    );

    // 3. 20 MB each way; every SYN's MSS fit tailscale0's MTU (1280 - 40).
    let t = Instant::now();
    pod_transfer(&w.pod.ns, IpAddr::V4(w.peer.ip4), 20 * MB).expect("20 MB each way");
    eprintln!("20 MB up + 20 MB down pod <-> peer: {:?}", t.elapsed());
    let (big, fits) = w.mss_probe_counts();
    assert_eq!(big, 0, "SYNs with an MSS over 1240 reached the peer");
    assert!(fits >= 4, "only {fits} SYNs counted at the peer");
    eprintln!("every SYN reaching the peer had MSS <= 1240 ({fits} SYNs)");

    // 4. The pod asks 100.100.100.100 (through the node) for the peer's MagicDNS name.
    let name = format!("peer.{}", tsbridge_lab::BASE_DOMAIN);
    let addrs = wait_until(Duration::from_secs(10), "MagicDNS answer", || {
        Ok(resolve_a(&w.pod.ns, "100.100.100.100".parse().unwrap(), &name).ok())
    })
    .expect("the pod resolves the peer's name");
    assert!(addrs.contains(&w.peer.ip4), "{name} -> {addrs:?}");
    pod_echo(&w.pod.ns, IpAddr::V4(addrs[0])).expect("pod -> peer by name");
    eprintln!(
        "pod asked 100.100.100.100 for {name}: {addrs:?}; connected to {}:{PORT}: ok",
        addrs[0]
    );
}

/// Tests 5 and 6: deletions are repaired (timed), and a tailscaled crash is survived.
#[test]
fn repairs_deletions_and_survives_a_tailscaled_crash() {
    let w = world();
    let _svc = Service::start(&w.peer.host.ns);
    let ts = w.start(&w.env(&[]));
    w.wait_owned(OWNED, &ts);
    pod_echo_until(&w.pod.ns, IpAddr::V4(w.peer.ip4), Duration::from_secs(20))
        .expect("pod -> peer");

    // 5. Delete the table, then one nft rule, then one policy rule.
    w.node_sh("nft delete table inet tsbridge")
        .expect("delete table");
    let t_table = w.wait_owned(OWNED, &ts);
    let h = w
        .node_sh("nft -a list chain inet tsbridge postrouting | grep 'masq 10.244' | sed 's/.*# handle //'")
        .unwrap();
    w.node_sh(&format!(
        "nft delete rule inet tsbridge postrouting handle {}",
        h.trim()
    ))
    .expect("delete nft rule");
    let t_nft_rule = w.wait_owned(OWNED, &ts);
    w.node_sh("ip rule del pref 5110 to 10.244.0.0/16 goto 5300")
        .expect("delete rule");
    let t_rule = w.wait_owned(OWNED, &ts);
    eprintln!(
        "lab repair times (incl. polling with ip/nft): table {t_table:?}, nft rule {t_nft_rule:?}, policy rule {t_rule:?}"
    );
    pod_echo(&w.pod.ns, IpAddr::V4(w.peer.ip4)).expect("pod -> peer after repairs");

    // 6. kill -9 tailscaled: tsbridge restarts it; the pod reaches the peer again with no
    // action from anyone.
    let pids = w.tailscaled_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    let t = Instant::now();
    wait_until(Duration::from_secs(30), "a new tailscaled", || {
        Ok(w.tailscaled_pids()
            .iter()
            .any(|p| *p != pids[0])
            .then_some(()))
    })
    .expect("tailscaled restarted");
    let back = pod_echo_until(&w.pod.ns, IpAddr::V4(w.peer.ip4), Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "pod -> peer after tailscaled crash: {e}\n{}",
                tsbridge_lab::tail(&w.lab.log(&ts), 40)
            )
        });
    eprintln!(
        "pod reaches the peer {:?} after the tailscaled kill ({back:?} after the first try)",
        t.elapsed()
    );
    assert_eq!(
        w.owned(),
        OWNED,
        "no duplicates after the tailscaled restart"
    );
}

/// Test 7: an accepted route covering the lab subnet does not capture node-to-lab traffic.
#[test]
fn accepted_route_over_the_lab_subnet_does_not_capture_it() {
    let w = world();
    w.lab
        .tailscale(
            &w.peer.host,
            &[
                "set",
                &format!("--advertise-routes={}", tsbridge_lab::LAN_CIDR),
            ],
        )
        .map(|o| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)))
        .unwrap();
    approve(&w, "peer", tsbridge_lab::LAN_CIDR);
    let ts = w.start(&w.env(&[(
        "TS_EXTRA_ARGS",
        &format!("--login-server={} --accept-routes=true", w.control.url),
    )]));
    w.wait_owned(OWNED, &ts);
    // The route is in table 52 (so the guard is what keeps lab traffic out of it)...
    wait_until(
        Duration::from_secs(30),
        "the accepted route in table 52",
        || {
            Ok(w.node_sh("ip route show table 52")
                .filter(|t| t.contains(tsbridge_lab::LAN_CIDR))
                .map(|_| ()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", w.node_sh("ip route show table 52")));
    // ...and node-to-lab traffic still leaves by the lab interface.
    let ctl = w.control.host.lan_addr.to_string();
    let r = w.node_sh(&format!("ip route get {ctl}")).unwrap();
    assert!(!r.contains("tailscale0"), "{r}");
    w.lab
        .ping(&w.node.ns, IpAddr::V4(w.control.host.lan_addr), 1)
        .expect("node reaches the lab");
    // Without the guard it would be captured: tailscale's `from all lookup 52` comes
    // before main, and table 52 holds the lab route (checked above); the guard jumps
    // over it.
    let rules = w.node_sh("ip rule").unwrap();
    assert!(rules.contains("5270:\tfrom all lookup 52"), "{rules}");
    assert!(
        rules.contains("5100:\tfrom all to 192.168.77.0/24 goto 5300 proto 116"),
        "{rules}"
    );
    assert!(rules.contains("5300:\tfrom all nop proto 116"), "{rules}");
}

fn approve(w: &World, hostname: &str, routes: &str) {
    let nodes = w.lab.nodes(&w.control).unwrap();
    let id = nodes
        .iter()
        .find(|n| {
            n["given_name"].as_str() == Some(hostname) || n["name"].as_str() == Some(hostname)
        })
        .and_then(|n| {
            n["id"]
                .as_u64()
                .or_else(|| n["id"].as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or_else(|| panic!("no node {hostname} in {nodes:?}"));
    w.lab
        .headscale(
            &w.control,
            &[
                "nodes",
                "approve-routes",
                "--identifier",
                &id.to_string(),
                "--routes",
                routes,
            ],
        )
        .expect("approve routes");
}

/// Tests 8 and 9: SIGTERM removes exactly ours; kill -9 and a new start adopts.
#[test]
fn sigterm_cleans_up_and_a_killed_instance_is_adopted() {
    let w = world();
    let env = w.env(&[]);
    let ts = w.start(&env);
    w.wait_owned(OWNED, &ts);
    let rules = w.node_sh("ip rule").unwrap();
    assert!(
        rules.contains("5270:\tfrom all lookup 52"),
        "tailscale's rules: {rules}"
    );

    // 9. kill -9 (as a crash of the container: tsbridge and its tailscaled), start again.
    let tsd = w.tailscaled_pids();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(ts.pid as i32), Signal::SIGKILL).unwrap();
    for p in tsd {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    w.lab
        .wait_exit(&ts, Duration::from_secs(5))
        .expect("tsbridge gone");
    assert_eq!(w.owned(), OWNED, "kill -9 leaves the state in place");
    let ts = w.start(&env);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        w.owned(),
        OWNED,
        "the restart adopted instead of duplicating"
    );
    let table = w.node_sh("nft list ruleset").unwrap();
    assert_eq!(table.matches("table inet tsbridge").count(), 1, "{table}");

    // 8. SIGTERM: ours go first, while tailscaled still runs and its rules and nft
    // chains are still there; then tsbridge exits. The order is read from the kernel's
    // own event streams (rules, nftables), each ordered, rather than from snapshots:
    // tailscaled cleans up milliseconds after us, faster than a loaded machine can
    // poll (a polling snapshot flaked here).
    let tailscale_state = w.node_sh("ip rule; nft list tables").unwrap();
    assert!(tailscale_state.contains("lookup 52"), "{tailscale_state}");
    let rules_mon = Monitor::start(
        &w,
        &["ip", "monitor", "rule"],
        "ip rule add pref 991 to 10.99.1.0/24 lookup main; ip rule del pref 991",
        "991:",
    );
    let nft_mon = Monitor::start(
        &w,
        &["nft", "monitor"],
        "nft add table ip tsbridge-sync; nft delete table ip tsbridge-sync",
        "tsbridge-sync",
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(ts.pid as i32), Signal::SIGTERM).unwrap();
    let st = w.lab.wait_exit(&ts, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit after SIGTERM: {st:?}"
    );
    assert_eq!(w.owned(), (0, 0));
    let rules = rules_mon.finish();
    let last_ours = rules
        .iter()
        .rposition(|l| l.starts_with("Deleted") && l.contains("proto 116"));
    let first_tailscale = rules
        .iter()
        .position(|l| l.starts_with("Deleted") && l.contains("lookup 52"));
    assert!(
        last_ours.is_some(),
        "our rules were not deleted: {rules:#?}"
    );
    assert!(
        first_tailscale.is_none_or(|t| Some(t) > last_ours),
        "tailscale's rules went before ours: {rules:#?}"
    );
    let nft = nft_mon.finish();
    let ours = nft
        .iter()
        .position(|l| l.contains("delete table inet tsbridge"));
    let first_tailscale = nft
        .iter()
        .position(|l| l.starts_with("delete") && l.contains("ts-"));
    assert!(ours.is_some(), "our nft table was not deleted: {nft:#?}");
    assert!(
        first_tailscale.is_none_or(|t| Some(t) > ours),
        "tailscale's nftables went before ours: {nft:#?}"
    );
    let log = w.lab.log(&ts);
    assert!(
        log.contains("egress state removed"),
        "{}",
        tsbridge_lab::tail(&log, 20)
    );
    assert!(
        log.contains("rules_removed=6"),
        "{}",
        tsbridge_lab::tail(&log, 20)
    );
    eprintln!(
        "after SIGTERM, events in order:\n{}\n{}",
        rules.join("\n"),
        nft.join("\n")
    );
}

/// Test 10: without tsbridge's SNAT the pod cannot reach the peer.
#[test]
fn without_snat_the_pod_cannot_reach_the_peer() {
    let w = world();
    let svc = Service::start(&w.peer.host.ns);
    let ts = w.start(&w.env(&[("TSBRIDGE_SNAT", "false")]));
    w.wait_owned((6, 2), &ts);
    // The node itself reaches the peer: the tailnet works, only the pod path lacks SNAT.
    w.lab
        .ping_until(&w.node.ns, IpAddr::V4(w.peer.ip4), Duration::from_secs(20))
        .expect("node -> peer");
    let r = pod_echo(&w.pod.ns, IpAddr::V4(w.peer.ip4));
    assert!(r.is_err(), "the pod reached the peer without SNAT");
    assert_eq!(svc.last_source(), None);
}

/// Test 11: inbound subnet routing into the pod CIDR still works with the guards.
#[test]
fn inbound_subnet_route_to_the_pod_still_works() {
    let w = world();
    let svc_pod = Service::start(&w.pod.ns);
    let ts = w.start(&w.env(&[("TS_ROUTES", &w.pod.cidr_v4)]));
    w.wait_owned(OWNED, &ts);
    approve(&w, "node1", &w.pod.cidr_v4);
    w.lab
        .tailscale(&w.peer.host, &["set", "--accept-routes=true"])
        .map(|o| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)))
        .unwrap();
    let pod_addr = IpAddr::V4(w.pod.addr_v4);
    let start = Instant::now();
    let r = loop {
        let r = in_ns(&w.peer.host.ns, move || -> Result<(), String> {
            let mut s = connect(SocketAddr::new(pod_addr, PORT))?;
            s.write_all(b"ehello").map_err(|e| e.to_string())?;
            let mut b = [0u8; 5];
            s.read_exact(&mut b).map_err(|e| e.to_string())?;
            Ok(())
        });
        if r.is_ok() || start.elapsed() > Duration::from_secs(30) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    r.unwrap_or_else(|e| {
        panic!(
            "peer -> pod through the node: {e}\npeer table 52: {:?}\n{}",
            w.lab
                .exec_ok(&w.peer.host.ns, &["ip", "route", "show", "table", "52"]),
            tsbridge_lab::tail(&w.lab.log(&ts), 30)
        )
    });
    assert!(svc_pod.last_source().is_some());
}

/// From `ns`: uploads `marker` to the service at `to` and waits for its acknowledgement.
fn send_marker(ns: &Ns, to: SocketAddr, marker: &'static [u8]) -> Result<(), String> {
    in_ns(ns, move || {
        let mut s = connect(to)?;
        s.write_all(b"u").map_err(|e| e.to_string())?;
        s.write_all(&(marker.len() as u64).to_be_bytes())
            .map_err(|e| e.to_string())?;
        s.write_all(marker).map_err(|e| e.to_string())?;
        let mut k = [0u8; 1];
        s.read_exact(&mut k).map_err(|e| format!("ack: {e}"))
    })
}

/// Test 12 (issue 11): next to KubeSpan (Talos's WireGuard mesh, reproduced with real
/// userspace WireGuard, see tsbridge_lab::kubespan), node-to-node and pod-to-remote-pod
/// traffic goes through the WireGuard link, also with a tailnet route over the lab subnet
/// and the pod CIDR in table 52, and pods still reach the tailnet peer by address and
/// name. Before that, the guards an older tsbridge left (`to <CIDR> lookup main`) are shown
/// to send the same traffic around WireGuard in plaintext, and are replaced.
#[test]
fn kubespan_traffic_stays_in_wireguard_and_pods_still_reach_the_tailnet() {
    const OLD_MARKER: &[u8] = b"tsbridge-kubespan-marker-old-guards-plaintext";
    const NODE_MARKER: &[u8] = b"tsbridge-kubespan-marker-node-to-node";
    const POD_MARKER: &[u8] = b"tsbridge-kubespan-marker-pod-to-remote-pod";
    let w = world();
    let node2 = w.lab.host("node2").expect("node2");
    let pod2 = w.lab.pod(&node2).expect("pod on node2");
    let ks = w
        .lab
        .kubespan(&[
            tsbridge_lab::kubespan::Member {
                host: &w.node,
                pod_cidrs: vec![w.pod.cidr_v4.clone()],
            },
            tsbridge_lab::kubespan::Member {
                host: &node2,
                pod_cidrs: vec![pod2.cidr_v4.clone()],
            },
        ])
        .expect("KubeSpan between node1 and node2");
    // The CNI's routes to the other node's pods (host-gw style, in `main`).
    w.node_sh(&format!(
        "ip route add {} via {}",
        pod2.cidr_v4, node2.lan_addr
    ))
    .expect("route to pod2");
    w.lab
        .exec_ok(
            &node2.ns,
            &[
                "ip",
                "route",
                "add",
                &w.pod.cidr_v4,
                "via",
                &w.node.lan_addr.to_string(),
            ],
        )
        .expect("route to pod1");
    let svc_node2 = Service::start(&node2.ns);
    let svc_pod2 = Service::start(&pod2.ns);
    let node2_svc = SocketAddr::new(IpAddr::V4(node2.lan_addr), PORT);
    let pod2_svc = SocketAddr::new(IpAddr::V4(pod2.addr_v4), PORT);

    // What an older tsbridge left: `lookup main` guards, which take the lab and pod
    // destinations to `main` before KubeSpan's rule 32500 is reached.
    w.node_sh(
        "ip rule add pref 5100 to 192.168.77.0/24 lookup main proto 116
         ip rule add pref 5110 to 10.244.0.0/16 lookup main proto 116",
    )
    .expect("old guards");
    let cap = w
        .lab
        .capture(&w.node.ns, "lan0", "lan0-old")
        .expect("capture");
    send_marker(&w.node.ns, node2_svc, OLD_MARKER).expect("node1 -> node2 with old guards");
    let seen = w.lab.stop_capture(cap).expect("capture");
    assert!(
        seen.contains(OLD_MARKER),
        "with `lookup main` guards the payload crosses the lab link in plaintext (else this capture proves nothing)"
    );

    // A tailnet route over the lab subnet and the pod CIDR, accepted by node1.
    w.lab
        .tailscale(
            &w.peer.host,
            &[
                "set",
                &format!(
                    "--advertise-routes={},{}",
                    tsbridge_lab::LAN_CIDR,
                    tsbridge_lab::POD_CIDR_V4
                ),
            ],
        )
        .map(|o| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)))
        .unwrap();
    approve(
        &w,
        "peer",
        &format!("{},{}", tsbridge_lab::LAN_CIDR, tsbridge_lab::POD_CIDR_V4),
    );
    let svc_peer = Service::start(&w.peer.host.ns);
    let ts = w.start(&w.env(&[(
        "TS_EXTRA_ARGS",
        &format!("--login-server={} --accept-routes=true", w.control.url),
    )]));
    w.wait_owned(OWNED, &ts);
    let rules = w.node_sh("ip rule").unwrap();
    assert!(
        !rules.contains("lookup main proto 116"),
        "old guards left: {rules}"
    );
    wait_until(
        Duration::from_secs(30),
        "the accepted routes in table 52",
        || {
            Ok(w.node_sh("ip route show table 52").filter(|t| {
                t.contains(tsbridge_lab::LAN_CIDR) && t.contains(tsbridge_lab::POD_CIDR_V4)
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", w.node_sh("ip route show table 52")));

    // The kernel's view: unmarked lab traffic leaves by the lab link with the lab source,
    // KubeSpan-marked traffic by the WireGuard link; neither by tailscale0.
    let plain = w
        .node_sh(&format!("ip route get {}", node2.lan_addr))
        .unwrap();
    assert!(
        plain.contains("dev lan0") && plain.contains("src 192.168.77."),
        "{plain}"
    );
    let marked = w
        .node_sh(&format!("ip route get {} mark 0x40", pod2.addr_v4))
        .unwrap();
    assert!(marked.contains("dev kubespan table 180"), "{marked}");

    let before = ks.transfer(&w.node).expect("wg transfer");
    let cap = w
        .lab
        .capture(&w.node.ns, "lan0", "lan0-new")
        .expect("capture");
    send_marker(&w.node.ns, node2_svc, NODE_MARKER).expect("node1 -> node2");
    send_marker(&w.pod.ns, pod2_svc, POD_MARKER).expect("pod1 -> pod2");
    let seen = w.lab.stop_capture(cap).expect("capture");
    let after = ks.transfer(&w.node).expect("wg transfer");
    assert!(
        after.0 > before.0 && after.1 > before.1 + (NODE_MARKER.len() + POD_MARKER.len()) as u64,
        "WireGuard transfer did not grow: {before:?} -> {after:?}"
    );
    for m in [NODE_MARKER, POD_MARKER] {
        assert!(
            !seen.contains(m),
            "{} crossed the lab link in plaintext",
            String::from_utf8_lossy(m)
        );
    }
    let between = format!(
        "ip and host {} and host {}",
        w.node.lan_addr, node2.lan_addr
    );
    let wireguard = seen
        .packets(&format!(
            "{between} and udp port {}",
            tsbridge_lab::kubespan::PORT
        ))
        .unwrap();
    let other = seen
        .packets(&format!(
            "(({between}) or net {}) and not udp port {}",
            tsbridge_lab::POD_CIDR_V4,
            tsbridge_lab::kubespan::PORT
        ))
        .unwrap();
    assert!(
        !wireguard.is_empty(),
        "no WireGuard packets on the lab link"
    );
    assert!(other.is_empty(), "traffic around WireGuard: {other:#?}");
    // Sources as the other side saw them: lab and pod addresses, never a tailnet one.
    assert_eq!(svc_node2.last_source(), Some(IpAddr::V4(w.node.lan_addr)));
    assert_eq!(svc_pod2.last_source(), Some(IpAddr::V4(w.pod.addr_v4)));
    eprintln!(
        "KubeSpan: {} WireGuard packets on lan0, transfer {before:?} -> {after:?}",
        wireguard.len()
    );

    // Pods still reach the tailnet peer, by address and by MagicDNS name.
    let seen = w.pod_echo_seen(
        &svc_peer,
        IpAddr::V4(w.peer.ip4),
        Duration::from_secs(20),
        &ts,
    );
    assert_eq!(seen, IpAddr::V4(w.node_tailnet_v4()));
    let name = format!("peer.{}", tsbridge_lab::BASE_DOMAIN);
    let got = resolve_a(&w.pod.ns, "100.100.100.100".parse().unwrap(), &name)
        .unwrap_or_else(|e| panic!("pod resolves {name}: {e}"));
    assert_eq!(got, [w.peer.ip4]);
    pod_echo(&w.pod.ns, IpAddr::V4(got[0])).expect("pod -> peer by name");
}

/// The ExtensionServiceConfig environment of a `tsbridge patch` output, in order.
fn patch_environment(patch: &str) -> Vec<(String, String)> {
    let doc = patch
        .split("\n---\n")
        .find(|d| d.contains("kind: ExtensionServiceConfig"))
        .expect("an ExtensionServiceConfig document");
    doc.lines()
        .filter_map(|l| l.strip_prefix("  - \"")?.strip_suffix('"'))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Test 13 (issue 11): dual-stack pods reach the tailnet over both families with the
/// configuration `tsbridge patch` generates from the cluster's own machine configuration
/// (podSubnets and serviceSubnets of both families). Only what must differ in the lab
/// (state directory, socket, binaries) is not the patch's.
#[test]
fn dual_stack_pods_reach_the_tailnet_with_a_patch_generated_configuration() {
    let w = world();
    let svc = Service::start(&w.peer.host.ns);
    let mc = w.lab.dir.join("controlplane.yaml");
    std::fs::write(
        &mc,
        format!(
            "version: v1alpha1\ncluster:\n    network:\n        podSubnets:\n            - {}\n            - {}\n        serviceSubnets:\n            - 10.96.0.0/12\n            - fd00:10:96::/112\n",
            tsbridge_lab::POD_CIDR_V4,
            tsbridge_lab::POD_CIDR_V6
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsbridge"))
        .args(["patch", "--talos-version", "1.14", "--lab-subnet"])
        .arg(tsbridge_lab::LAN_CIDR)
        .arg("--login-server")
        .arg(&w.control.url)
        .arg("--machine-config")
        .arg(&mc)
        .env_clear()
        .output()
        .expect("tsbridge patch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let patched = patch_environment(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| {
        patched
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        get("TSBRIDGE_POD_CIDRS"),
        Some(
            format!(
                "{},{}",
                tsbridge_lab::POD_CIDR_V4,
                tsbridge_lab::POD_CIDR_V6
            )
            .as_str()
        )
    );
    // The lab's own entries first, the patch's after them (the last value wins), except
    // where the node must differ from a real one.
    let lab_only = ["TS_STATE_DIR"];
    let mut env = w.env(&[("TSBRIDGE_POD_CIDRS", tsbridge_lab::POD_CIDR_V4)]);
    env.extend(
        patched
            .iter()
            .filter(|(k, _)| !lab_only.contains(&k.as_str()))
            .cloned(),
    );
    let ts = w.start(&env);
    // One guard more than the lab's own configuration: the IPv6 service CIDR.
    w.wait_owned((OWNED.0 + 1, OWNED.1), &ts);
    let (node_v4, node_v6) = w
        .lab
        .wait_running(&w.node, Duration::from_secs(5))
        .expect("node running");
    let seen = w.pod_echo_seen(&svc, IpAddr::V4(w.peer.ip4), Duration::from_secs(20), &ts);
    assert_eq!(seen, IpAddr::V4(node_v4));
    let peer_v6 = w.peer.ip6.expect("the peer has an IPv6 tailnet address");
    let seen = w.pod_echo_seen(&svc, IpAddr::V6(peer_v6), Duration::from_secs(10), &ts);
    assert_eq!(
        Some(seen),
        node_v6.map(IpAddr::V6),
        "the peer sees the node's tailnet IPv6 address"
    );
}

/// flannel's `--ip-masq` rules for this node's lease `pod` in the cluster CIDR `cluster`,
/// written as flannel v0.28.9 installs them (versions.env FLANNEL_VERSION), with the
/// iptables-nft binary (`pkg/trafficmngr/iptables/iptables.go`: `masqRules`,
/// `forwardRules`; `--random-fully` since the kernel has it).
fn flannel_iptables_rules(pod: &str, cluster: &str) -> String {
    let m = "-m comment --comment 'flanneld masq'";
    let f = "-m comment --comment 'flanneld forward'";
    format!(
        "iptables-nft -t nat -N FLANNEL-POSTRTG
         iptables-nft -t nat -A POSTROUTING {m} -j FLANNEL-POSTRTG
         iptables-nft -t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN
         iptables-nft -t nat -A FLANNEL-POSTRTG -s {pod} -d {cluster} {m} -j RETURN
         iptables-nft -t nat -A FLANNEL-POSTRTG -s {cluster} -d {pod} {m} -j RETURN
         iptables-nft -t nat -A FLANNEL-POSTRTG ! -s {cluster} -d {pod} {m} -j RETURN
         iptables-nft -t nat -A FLANNEL-POSTRTG -s {cluster} ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully
         iptables-nft -t nat -A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {m} -j MASQUERADE --random-fully
         iptables-nft -t filter -N FLANNEL-FWD
         iptables-nft -t filter -A FORWARD {f} -j FLANNEL-FWD
         iptables-nft -t filter -A FLANNEL-FWD -s {cluster} {f} -j ACCEPT
         iptables-nft -t filter -A FLANNEL-FWD -d {cluster} {f} -j ACCEPT"
    )
}

/// The same rules in flannel's nftables mode (`"EnableNFTables": true`, which Talos's
/// template sets): `pkg/trafficmngr/nftables/nftables.go` (`initTable`,
/// `SetupAndEnsureForwardRules`, `addMasqRules`), table `ip flannel-ipv4`.
fn flannel_nftables_rules(pod: &str, cluster: &str) -> String {
    format!(
        "table ip flannel-ipv4 {{
           comment \"rules for flannel-ipv4\"
           chain postrtg {{
             comment \"chain to manage traffic masquerading by flannel\"
             type nat hook postrouting priority srcnat;
             meta mark 0x4000 return
             ip saddr {pod} ip daddr {cluster} return
             ip saddr {cluster} ip daddr {pod} return
             ip saddr != {pod} ip daddr {cluster} return
             ip saddr {cluster} ip daddr != 224.0.0.0/4 masquerade fully-random
             ip saddr != {cluster} ip daddr {cluster} masquerade fully-random
           }}
           chain forward {{
             comment \"chain to accept flannel traffic\"
             type filter hook forward priority filter;
             ip saddr {cluster} accept
             ip daddr {cluster} accept
           }}
         }}"
    )
}

/// One connection from the pod to the peer's echo service; the pod's source port.
fn pod_echo_port(pod: &Ns, to: IpAddr) -> Result<u16, String> {
    in_ns(pod, move || {
        let mut s = connect(SocketAddr::new(to, PORT))?;
        let port = s.local_addr().map_err(|e| e.to_string())?.port();
        s.write_all(b"ehello").map_err(|e| e.to_string())?;
        let mut b = [0u8; 5];
        s.read_exact(&mut b)
            .map_err(|e| format!("read echo: {e}"))?;
        (&b == b"hello")
            .then_some(port)
            .ok_or_else(|| "wrong echo".to_string())
    })
}

/// The node's conntrack entries of the pod's connection from `src:sport`: the reply
/// direction's destination address and port of each (where the NAT binding maps it).
fn nat_bindings(w: &World, src: Ipv4Addr, sport: u16) -> Vec<(String, String)> {
    let out = w
        .lab
        .exec_ok(
            &w.node.ns,
            &[
                "conntrack",
                "-L",
                "-p",
                "tcp",
                "--orig-src",
                &src.to_string(),
                "--sport",
                &sport.to_string(),
            ],
        )
        .expect("conntrack -L");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let field = |key: &str| {
                l.split_whitespace()
                    .filter_map(|t| t.strip_prefix(key))
                    .nth(1)
                    .unwrap_or_else(|| panic!("no reply {key} in {l}"))
                    .to_owned()
            };
            (field("dst="), field("dport="))
        })
        .collect()
}

/// flannel (Talos's default CNI) with tsbridge: pods attached by the real CNI reference
/// plugins (`bridge` on `cni0`, `host-local`) through the CNI protocol (`cnitool`), with
/// flannel's `--ip-masq` rules as its source installs them, first in iptables-nft mode,
/// then in nftables mode. Each time: the pod reaches the peer by address and MagicDNS
/// name, its connection has one NAT binding, to the node's tailnet address (the peer sees
/// that address), every SYN's MSS is clamped to fit tailscale0, and tsbridge's SIGTERM
/// teardown leaves flannel's rules exactly as they were.
#[test]
fn flannel_pods_reach_the_tailnet_with_one_nat_binding() {
    let w = world();
    let svc = Service::start(&w.peer.host.ns);
    w.install_mss_probe();
    // This node's flannel lease and the cluster CIDR (flannel's Network).
    let (lease, cluster) = ("10.244.2.0/24", tsbridge_lab::POD_CIDR_V4);
    let pod = w.lab.cni_pod(&w.node, lease, cluster).expect("cnitool add");
    let cni0 = w.node_sh("ip -4 -o addr show dev cni0").expect("cni0");
    assert!(cni0.contains("10.244.2.1/24"), "cni0: {cni0}");
    let route = w
        .lab
        .exec_ok(&pod.ns, &["ip", "-o", "route", "show", "default"])
        .unwrap();
    assert!(
        route.contains("via 10.244.2.1"),
        "pod's default route: {route}"
    );
    let mtu = w
        .lab
        .exec_ok(&pod.ns, &["cat", "/sys/class/net/eth0/mtu"])
        .unwrap();
    assert_eq!(mtu.trim(), tsbridge_lab::FLANNEL_MTU.to_string());
    eprintln!(
        "cnitool add: bridge + host-local attached pod {} on cni0 (MTU {})",
        pod.addr,
        mtu.trim()
    );
    let name = format!("peer.{}", tsbridge_lab::BASE_DOMAIN);
    let magicdns: IpAddr = "100.100.100.100".parse().unwrap();

    let snapshot_iptables = |w: &World| {
        [
            "iptables-nft -t nat -S POSTROUTING",
            "iptables-nft -t nat -S FLANNEL-POSTRTG",
            "iptables-nft -t filter -S FORWARD",
            "iptables-nft -t filter -S FLANNEL-FWD",
        ]
        .map(|c| w.node_sh(c).unwrap_or_else(|| panic!("{c} failed")))
        .join("")
        .lines()
        // flannel's rules only: tailscaled removes its own `ts-*` jumps when it stops.
        .filter(|l| l.contains("FLANNEL") || l.contains("flanneld"))
        .collect::<Vec<_>>()
        .join("\n")
    };
    let snapshot_nft = |w: &World| {
        w.node_sh("nft list table ip flannel-ipv4")
            .expect("flannel's nft table")
    };

    for mode in ["iptables", "nftables"] {
        let ts = w.start(&w.env(&[]));
        w.wait_owned(OWNED, &ts);
        // flanneld starts after the node's services (tailscaled included).
        let (install, snapshot): (String, &dyn Fn(&World) -> String) = if mode == "iptables" {
            (flannel_iptables_rules(lease, cluster), &snapshot_iptables)
        } else {
            (
                format!(
                    "nft -f - <<'EOF'\n{}\nEOF",
                    flannel_nftables_rules(lease, cluster)
                ),
                &snapshot_nft,
            )
        };
        w.lab
            .exec_ok(&w.node.ns, &["sh", "-ec", &install])
            .unwrap_or_else(|e| panic!("flannel's {mode} rules: {e}"));
        let flannel = snapshot(&w);
        let node_v4 = w.node_tailnet_v4();

        // By address: one NAT binding, to the node's tailnet address.
        pod_echo_until(&pod.ns, IpAddr::V4(w.peer.ip4), Duration::from_secs(20)).unwrap_or_else(
            |e| {
                panic!(
                    "{mode}: pod -> peer: {e}\n{}",
                    tsbridge_lab::tail(&w.lab.log(&ts), 30)
                )
            },
        );
        let sport = pod_echo_port(&pod.ns, IpAddr::V4(w.peer.ip4)).expect("pod -> peer");
        assert_eq!(svc.last_source(), Some(IpAddr::V4(node_v4)), "{mode}");
        let bindings = nat_bindings(&w, pod.addr, sport);
        assert_eq!(bindings.len(), 1, "{mode}: {bindings:?}");
        assert_eq!(bindings[0].0, node_v4.to_string(), "{mode}: {bindings:?}");
        eprintln!(
            "{mode}: pod {}:{sport} -> peer {}:{PORT}: one NAT binding, to {}:{}; the peer saw {node_v4}",
            pod.addr, w.peer.ip4, bindings[0].0, bindings[0].1
        );

        // By MagicDNS name.
        let addrs = wait_until(Duration::from_secs(10), "MagicDNS answer", || {
            Ok(resolve_a(&pod.ns, magicdns, &name).ok())
        })
        .expect("the pod resolves the peer's name");
        assert!(addrs.contains(&w.peer.ip4), "{name} -> {addrs:?}");
        pod_echo(&pod.ns, IpAddr::V4(addrs[0])).expect("pod -> peer by name");
        eprintln!("{mode}: pod resolved {name} -> {addrs:?} at {magicdns} and connected");

        // Bulk both ways; every SYN's MSS fits tailscale0 (the pod's own would be 1410).
        pod_transfer(&pod.ns, IpAddr::V4(w.peer.ip4), 4 * MB).expect("4 MB each way");
        let (big, fits) = w.mss_probe_counts();
        assert_eq!(
            big, 0,
            "{mode}: SYNs with an MSS over 1240 reached the peer"
        );
        assert!(fits > 0, "{mode}: no SYN counted at the peer");

        // SIGTERM: tsbridge removes its own state, flannel's rules stay as they were.
        w.lab.stop(&ts).expect("tsbridge exits on SIGTERM");
        assert_eq!(w.owned(), (0, 0), "{mode}: tsbridge's state is gone");
        assert_eq!(
            snapshot(&w),
            flannel,
            "{mode}: flannel's rules after tsbridge's teardown"
        );
        eprintln!("{mode}: tsbridge's teardown left flannel's rules untouched");
        // flannel's CleanUp when it changes modes.
        let cleanup = if mode == "iptables" {
            "iptables-nft -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG
             iptables-nft -t nat -F FLANNEL-POSTRTG; iptables-nft -t nat -X FLANNEL-POSTRTG
             iptables-nft -t filter -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD
             iptables-nft -t filter -F FLANNEL-FWD; iptables-nft -t filter -X FLANNEL-FWD"
        } else {
            "nft delete table ip flannel-ipv4"
        };
        w.lab
            .exec_ok(&w.node.ns, &["sh", "-ec", cleanup])
            .unwrap_or_else(|e| panic!("flannel's clean-up: {e}"));
    }
}
