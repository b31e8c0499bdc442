//! The egress adapters against the real kernel, in network namespaces this test creates:
//! no tailscale needed. A veth named `tailscale0` leads from the "node" namespace to a
//! "peer" namespace holding tailnet addresses; a "pod" namespace hangs off the node by
//! another veth. Needs root and `ip`/`nft` (nft only inspects; tsbridge never runs it).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tsbridge::egress::kernel::{Kernel, Netlink};
use tsbridge::egress::plan::{self, EgressConfig};
use tsbridge::egress::{Egress, guard, reconcile};
use tsbridge::status::TailscaleStatus;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn require_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the egress kernel tests need root (network namespaces); run them as root (CI: make test)"
    );
    for t in ["ip", "nft"] {
        let ok = Command::new(t).arg("-V").output().is_ok();
        assert!(
            ok,
            "`{t}` is missing: install iproute2 and nftables (scripts/setup.sh does)"
        );
    }
}

/// A named network namespace, deleted on drop (also on panic).
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_dead_runs);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tsbeg-{}-{}-{}", std::process::id(), n, role);
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.sh("ip link set lo up");
        ns
    }

    fn sh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-ec", cmd])
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "in {}: `{cmd}` failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn try_sh(&self, cmd: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-ec", cmd])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread that lives in this namespace (sockets it opens are here).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        tsbridge_lab::spawn_in(&tsbridge_lab::Ns(self.0.clone()), f)
    }
}

impl Drop for Netns {
    /// Also on panic: a daemon still running inside would outlive `ip netns del` (and the
    /// test run), so whatever runs in the namespace goes first; then the files named
    /// after it (daemon state and logs under the temp dir).
    fn drop(&mut self) {
        tsbridge_lab::remove_ns(&self.0);
        if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
            let prefix = format!("{}-", self.0);
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Removes namespaces `tsbeg-<pid>-...` (and temp files so named) of runs whose process
/// is dead (a run killed by a CI timeout never reaches its Drop guards); never those of a
/// live (concurrent) run.
fn sweep_dead_runs() {
    let dead_owner = |name: &str| {
        name.strip_prefix("tsbeg-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if dead_owner(&name) {
            tsbridge_lab::remove_ns(&name);
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if dead_owner(&e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cfg(snat: bool, mss: bool) -> EgressConfig {
    EgressConfig {
        lab_subnets: vec!["192.168.77.0/24".parse().unwrap()],
        pod_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        snat,
        mss_clamp: mss,
        tun: "tailscale0".into(),
    }
}

/// node <-> peer through a veth called tailscale0 (MTU 1280 on the node side, 1500 on
/// the peer side so only a clamp can lower the peer's MSS), node <-> pod through a veth,
/// a lab interface with an address in the lab subnet, tailscale-like rules and table 52.
struct Lab {
    node: Netns,
    pod: Netns,
    peer: Netns,
}

fn lab() -> Lab {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let peer = Netns::new("peer");
    let (n, p, q) = (&node.0, &pod.0, &peer.0);
    node.sh(&format!(
        "ip link add tailscale0 mtu 1280 type veth peer name ts-peer netns {q} mtu 1500
         ip link add veth-pod type veth peer name eth0 netns {p}
         ip link add lab0 type veth peer name lab0-end
         ip link set lab0-end up
         ip addr add 192.168.77.10/24 dev lab0; ip link set lab0 up
         ip route add default via 192.168.77.1 dev lab0
         ip addr add 100.64.0.1/32 dev tailscale0
         ip -6 addr add fd7a:115c:a1e0::1/128 dev tailscale0 nodad
         ip link set tailscale0 up
         ip addr add 10.244.1.1/24 dev veth-pod
         ip -6 addr add fd00:10:244:1::1/64 dev veth-pod nodad
         ip link set veth-pod up
         sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
         ip route add 100.64.0.2/32 dev tailscale0 table 52
         ip route add 100.100.100.100/32 dev tailscale0 table 52
         ip -6 route add fd7a:115c:a1e0::2/128 dev tailscale0 table 52
         ip -6 route add fd7a:115c:a1e0::53/128 dev tailscale0 table 52
         ip rule add pref 5270 lookup 52
         ip -6 rule add pref 5270 lookup 52"
    ));
    pod.sh("ip addr add 10.244.1.2/24 dev eth0
         ip -6 addr add fd00:10:244:1::2/64 dev eth0 nodad
         ip link set eth0 up
         ip route add default via 10.244.1.1
         ip -6 route add default via fd00:10:244:1::1");
    peer.sh("ip addr add 100.64.0.2/32 dev ts-peer
         ip -6 addr add fd7a:115c:a1e0::2/128 dev ts-peer nodad
         ip link set ts-peer up
         ip route add 100.64.0.1/32 dev ts-peer
         ip -6 route add fd7a:115c:a1e0::1/128 dev ts-peer");
    let _ = n;
    Lab { node, pod, peer }
}

/// The peer accepts one connection, echoes what it reads, and reports the source address
/// it saw and its TCP_MAXSEG.
fn serve_once(peer: &Netns, bind: &str) -> std::thread::JoinHandle<Option<(IpAddr, u32)>> {
    let bind: SocketAddr = bind.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = peer.spawn(move || {
        let l = TcpListener::bind(bind).expect("bind in peer");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let start = Instant::now();
        let (mut s, from) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(_) if start.elapsed() < Duration::from_secs(4) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return None,
            }
        };
        s.set_nonblocking(false).unwrap();
        let mss = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::TcpMaxSeg).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        Some((from.ip(), mss))
    });
    rx.recv().unwrap();
    h
}

/// From the pod: connect, send, read the echo. Err when the connection fails (in time).
fn pod_connect(pod: &Netns, to: &str) -> Result<(), String> {
    let to: SocketAddr = to.parse().unwrap();
    pod.run(move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"hello").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"hello");
        Ok(())
    })
}

fn ns_rules(ns: &Netns) -> String {
    ns.sh("ip rule; ip -6 rule")
}

fn reconcile_in(ns: &Netns, c: EgressConfig) -> plan::Changes {
    ns.run(move || {
        let mut k = Netlink::new().expect("netlink");
        reconcile::reconcile(&mut k, &plan::desired(&c)).expect("reconcile")
    })
}

#[test]
fn installs_rules_and_table_idempotently_and_tears_down_only_its_own() {
    require_tools();
    let l = lab();
    let ch = reconcile_in(&l.node, cfg(true, true));
    assert_eq!(ch.add_rules.len(), 6);
    let rules = l.node.sh("ip rule; ip -6 rule");
    for want in [
        "5100:\tfrom all to 192.168.77.0/24 goto 5300 proto 116",
        "5110:\tfrom all to 10.244.0.0/16 goto 5300 proto 116",
        "5120:\tfrom all to 10.96.0.0/12 goto 5300 proto 116",
        "5300:\tfrom all nop proto 116",
        "5110:\tfrom all to fd00:10:244::/56 goto 5300 proto 116",
        "5270:\tfrom all lookup 52",
    ] {
        assert!(rules.contains(want), "missing {want:?} in\n{rules}");
    }
    let t = l.node.sh("nft list table inet tsbridge");
    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "oifname \"tailscale0\" ip saddr 10.244.0.0/16 masquerade comment \"tsbridge/v1 masq 10.244.0.0/16 oif tailscale0\"",
        "oifname \"tailscale0\" ip6 saddr fd00:10:244::/56 masquerade",
        "type filter hook forward priority mangle; policy accept;",
        "oifname \"tailscale0\" tcp flags syn tcp option maxseg size set rt mtu",
        "iifname \"tailscale0\" tcp flags syn tcp option maxseg size set rt mtu",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    // `tsbridge check`'s view: nothing pending.
    let snap = l
        .node
        .run(|| tsbridge::egress::snapshot(&cfg(true, true)).unwrap());
    assert!(snap.pending.is_empty(), "{snap:?}");
    assert!(
        matches!(snap.pod_path, guard::PodPath::Ok { .. }),
        "{snap:?}"
    );
    // A batch whose last op fails is refused as a whole, and the error is reported.
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        assert!(k.dump_nft().unwrap().is_some());
        let r = k.apply_nft(&[
            plan::NftOp::AddRule {
                chain: plan::CHAIN_FORWARD.into(),
                rule: plan::NftRule::MssClamp {
                    dir: plan::Direction::Out,
                    ifname: "extra0".into(),
                },
            },
            plan::NftOp::DelRule {
                chain: plan::CHAIN_FORWARD.into(),
                handle: 999_999,
            },
        ]);
        assert!(r.is_err(), "a failed batch reported success");
    });
    assert_eq!(
        l.node
            .sh("nft list table inet tsbridge | grep -c comment")
            .trim(),
        "4",
        "the batch's first op must not land"
    );
    // A second instance (a restart) adopts: nothing to do, nothing duplicated.
    let ch = reconcile_in(&l.node, cfg(true, true));
    assert!(ch.is_empty(), "{ch:?}");
    assert_eq!(l.node.sh("ip rule | grep -c 'proto 116'").trim(), "4");
    assert!(!l.node.sh("ip rule; ip -6 rule").contains("unresolved"));
    assert_eq!(
        l.node
            .sh("nft -a list table inet tsbridge | grep -c comment")
            .trim(),
        "4"
    );
    // A config change swaps one rule, in place.
    let mut c = cfg(true, true);
    c.pod_cidrs[1] = "fd00:10:245::/56".parse().unwrap();
    let ch = reconcile_in(&l.node, c);
    assert_eq!(ch.nft.len(), 2, "{:?}", ch.nft);
    assert_eq!(ch.add_rules.len(), 1);
    assert_eq!(ch.del_rules.len(), 1);
    // Teardown: ours gone, tailscale-like rule and table 52 untouched.
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        reconcile::teardown(&mut k).unwrap();
        assert_eq!(k.dump_nft().unwrap(), None);
    });
    let rules = l.node.sh("ip rule; ip -6 rule");
    assert!(!rules.contains("proto 116"), "{rules}");
    assert!(rules.contains("5270:\tfrom all lookup 52"), "{rules}");
    assert!(l.node.sh("ip route show table 52").contains("100.64.0.2"));
    assert!(l.node.try_sh("nft list table inet tsbridge").is_none());
}

#[test]
fn pod_traffic_is_masqueraded_to_the_tailnet_address_and_clamped() {
    require_tools();
    let l = lab();
    // Without tsbridge: the peer sees the pod's address and cannot answer.
    let srv = serve_once(&l.peer, "100.64.0.2:7001");
    assert!(
        pod_connect(&l.pod, "100.64.0.2:7001").is_err(),
        "reached the peer without SNAT?"
    );
    assert!(
        srv.join().unwrap().is_none(),
        "the peer accepted a connection without SNAT?"
    );

    // SNAT only: works, and the peer sees the node's tailnet address; no clamp: MSS 1448.
    reconcile_in(&l.node, cfg(true, false));
    let srv = serve_once(&l.peer, "100.64.0.2:7002");
    pod_connect(&l.pod, "100.64.0.2:7002").unwrap();
    let (from, mss_unclamped) = srv.join().unwrap().expect("peer got no connection");
    assert_eq!(from, "100.64.0.1".parse::<IpAddr>().unwrap());
    assert!(mss_unclamped > 1240, "unclamped MSS {mss_unclamped}");

    // With the clamp: the SYN's MSS fits tailscale0's MTU (1280 - 40).
    reconcile_in(&l.node, cfg(true, true));
    let srv = serve_once(&l.peer, "100.64.0.2:7003");
    pod_connect(&l.pod, "100.64.0.2:7003").unwrap();
    let (_, mss) = srv.join().unwrap().expect("peer got no connection");
    assert!(
        mss <= 1240,
        "clamped MSS {mss} (unclamped was {mss_unclamped})"
    );

    // IPv6: the pod's fd00:10:244:1::2 leaves as the node's fd7a:115c:a1e0::1.
    let srv = serve_once(&l.peer, "[fd7a:115c:a1e0::2]:7004");
    pod_connect(&l.pod, "[fd7a:115c:a1e0::2]:7004").unwrap();
    let (from, _) = srv.join().unwrap().expect("peer got no connection");
    assert_eq!(from, "fd7a:115c:a1e0::1".parse::<IpAddr>().unwrap());
}

#[test]
fn guard_rules_keep_lab_and_pod_traffic_out_of_table_52() {
    require_tools();
    let l = lab();
    // An accepted subnet route / exit node in table 52 covering the lab and pod CIDRs.
    l.node
        .sh("ip route add 192.168.77.0/24 dev tailscale0 table 52
         ip route add 10.244.0.0/16 dev tailscale0 table 52");
    let before = l.node.sh("ip route get 192.168.77.1");
    assert!(
        before.contains("dev tailscale0"),
        "setup: table 52 should capture: {before}"
    );
    reconcile_in(&l.node, cfg(true, true));
    let after = l.node.sh("ip route get 192.168.77.1");
    assert!(after.contains("dev lab0"), "{after}");
    let pod = l.node.sh("ip route get 10.244.1.2");
    assert!(pod.contains("dev veth-pod"), "{pod}");
    // The verdicts agree.
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        let c = cfg(true, true);
        match guard::identity(&mut k, &c) {
            guard::Identity::Ok { addr, ifname } => {
                assert_eq!(addr, "192.168.77.10".parse::<IpAddr>().unwrap());
                assert_eq!(ifname, "lab0");
            }
            other => panic!("identity: {other:?}"),
        }
        match guard::pod_path(&mut k, &c) {
            guard::PodPath::Ok { via } => assert!(via.starts_with("tailscale0"), "{via}"),
            other => panic!("pod path: {other:?}"),
        }
    });
    // And without the guard the identity check notices the capture.
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        reconcile::teardown(&mut k).unwrap();
        let v = guard::identity(&mut k, &cfg(true, true));
        assert!(
            matches!(&v, guard::Identity::Problem(p) if p.contains("tailscale0")),
            "{v:?}"
        );
    });
}

#[test]
fn pod_path_verdict_sees_a_broken_path() {
    require_tools();
    let l = lab();
    l.node
        .sh("ip route del 100.100.100.100/32 dev tailscale0 table 52");
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        let v = guard::pod_path(&mut k, &cfg(true, true));
        assert!(
            matches!(&v, guard::PodPath::Problem(p) if p.contains("lab0")),
            "{v:?}"
        );
    });
}

/// Real BPF programs for the datapath detection: a two-instruction `sched_cls` program
/// loaded with `bpf(2)` and attached through tcx (a BPF link), as Cilium 1.16+ attaches
/// its programs on Linux 6.6 and later.
mod bpf {
    use std::os::fd::{FromRawFd, OwnedFd};

    const BPF_PROG_LOAD: nix::libc::c_long = 5;
    const BPF_LINK_CREATE: nix::libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    pub const BPF_TCX_INGRESS: u32 = 46;

    fn sys_bpf(cmd: nix::libc::c_long, attr: &mut [u8]) -> std::io::Result<OwnedFd> {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size given.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                attr.len() as nix::libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
    }

    /// `r0 = -1 (TCX_NEXT); exit`: passes every packet on.
    pub fn load_pass_program() -> std::io::Result<OwnedFd> {
        let mut insns = Vec::new();
        insns.extend_from_slice(&[0xb7, 0x00, 0, 0]);
        insns.extend_from_slice(&(-1i32).to_le_bytes());
        insns.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..61].copy_from_slice(b"cil_from_cont");
        sys_bpf(BPF_PROG_LOAD, &mut attr)
    }

    /// Attaches `prog` to `ifindex` at `attach_type` through a BPF link (detached when
    /// the returned descriptor is closed).
    pub fn link_create(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsRawFd;
        let mut attr = [0u8; 64];
        attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
        sys_bpf(BPF_LINK_CREATE, &mut attr)
    }
}

#[test]
fn bpf_programs_on_pod_interfaces_make_the_pod_path_unverified() {
    require_tools();
    let l = lab();
    // Plain (flannel-like) node: the route verdict stands, and it is ok.
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        let links = k.datapath().unwrap();
        assert!(links.iter().all(|l| l.programs.is_empty()), "{links:?}");
        let v = guard::pod_path(&mut k, &cfg(true, true));
        assert!(matches!(&v, guard::PodPath::Ok { .. }), "{v:?}");
    });
    // A tc bpf filter (classic BPF, cls_bpf) on the pod's interface.
    l.node.sh("tc qdisc add dev veth-pod clsact
         tc filter add dev veth-pod ingress bpf bytecode '1,6 0 0 4294967295,'");
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        let links = k.datapath().unwrap();
        let pod = links.iter().find(|l| l.name == "veth-pod").unwrap();
        assert_eq!(pod.kind.as_deref(), Some("veth"));
        assert_eq!(pod.programs, ["tc ingress bpf classic"], "{links:?}");
        let v = guard::pod_path(&mut k, &cfg(true, true));
        let guard::PodPath::BpfDatapath { why, check } = &v else {
            panic!("{v:?}")
        };
        assert!(
            why.starts_with(
                "a BPF datapath on this node (BPF programs on veth-pod (tc ingress bpf classic))"
            ) && why.contains("the route lookup sends pod packets into tailscale0"),
            "{why}"
        );
        assert!(check.contains("tailscale0"), "{check}");
    });
    l.node.sh("tc qdisc del dev veth-pod clsact");
    // Cilium: its host devices, and an eBPF program on a pod's lxc interface through tcx.
    l.node
        .sh("ip link add cilium_host type veth peer name cilium_net
         ip link add lxc1a2b type veth peer name lxc1a2b-peer");
    l.node.run(|| {
        let prog = bpf::load_pass_program().expect("load a sched_cls program");
        let ifindex = tsbridge::egress::kernel::link_index("lxc1a2b").unwrap();
        let _link = bpf::link_create(&prog, ifindex, bpf::BPF_TCX_INGRESS)
            .expect("attach through tcx (Linux 6.6+)");
        let mut k = Netlink::new().unwrap();
        let links = k.datapath().unwrap();
        let lxc = links.iter().find(|l| l.name == "lxc1a2b").unwrap();
        assert_eq!(lxc.programs, ["tcx ingress (1 program)"], "{links:?}");
        let v = guard::pod_path(&mut k, &cfg(true, true));
        let guard::PodPath::BpfDatapath { why, check } = &v else {
            panic!("{v:?}")
        };
        assert!(
            why.starts_with("Cilium on this node (Cilium's devices (cilium_host, cilium_net); BPF programs on lxc1a2b (tcx ingress (1 program)))"),
            "{why}"
        );
        assert!(check.contains("bpf.hostLegacyRouting=true"), "{check}");
        drop(_link);
        // Detached with its link: no program left on lxc1a2b (Cilium's devices remain).
        let links = k.datapath().unwrap();
        let lxc = links.iter().find(|l| l.name == "lxc1a2b").unwrap();
        assert!(lxc.programs.is_empty(), "{links:?}");
    });
}

/// Polls `check` every millisecond until it holds; returns how long that took.
fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "not repaired within {limit:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

#[test]
fn event_driven_repair_and_teardown_on_shutdown() {
    require_tools();
    let l = lab();
    let (status_tx, status_rx) = tokio::sync::watch::channel(TailscaleStatus::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let (egress, health) = Egress::with_config(cfg(true, true));
    let daemon = l.node.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(egress.run(status_rx, shutdown))
    });
    let quiet = |what: &str| {
        // No flapping: once in sync, nothing more happens by itself. The repair counter
        // is published after the kernel already shows the repair (the verdicts run
        // first), so one late increment is allowed; changes that keep coming are not.
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        let mut r = health.borrow().repairs;
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = health.borrow().repairs;
            if now == r {
                break;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "kept changing things after {what}: {r} -> {now} repairs"
            );
            r = now;
        }
    };
    let has_table = |ns: &Netns| {
        ns.try_sh("nft list table inet tsbridge")
            .is_some_and(|t| t.matches("comment").count() == 4)
    };
    time_until(Duration::from_secs(5), || has_table(&l.node));
    time_until(Duration::from_secs(5), || health.borrow().in_sync);
    quiet("the first install");

    // Someone deletes the whole table.
    l.node.sh("nft delete table inet tsbridge");
    let t_table = time_until(Duration::from_secs(5), || has_table(&l.node));
    // Someone deletes one nft rule.
    let handle = l.node.sh(
        "nft -a list chain inet tsbridge postrouting | grep 'masq 10.244' | sed 's/.*# handle //'",
    );
    l.node.sh(&format!(
        "nft delete rule inet tsbridge postrouting handle {}",
        handle.trim()
    ));
    let t_nft_rule = time_until(Duration::from_secs(5), || has_table(&l.node));
    // Someone deletes one policy rule.
    l.node
        .sh("ip rule del pref 5110 to 10.244.0.0/16 goto 5300");
    let has_rule = |ns: &Netns| {
        ns.sh("ip rule")
            .contains("5110:\tfrom all to 10.244.0.0/16 goto 5300 proto 116")
    };
    let t_rule = time_until(Duration::from_secs(5), || has_rule(&l.node));
    // Someone deletes the anchor: the guards are unresolved (skipped) until it is back.
    l.node.sh("ip rule del pref 5300 nop");
    let t_anchor = time_until(Duration::from_secs(5), || {
        let r = ns_rules(&l.node);
        r.contains("5300:\tfrom all nop proto 116") && !r.contains("unresolved")
    });
    quiet("the repairs");
    eprintln!(
        "repair times: nft table {:?}, nft rule {:?}, policy rule {:?}, anchor {:?}",
        t_table, t_nft_rule, t_rule, t_anchor
    );
    // A tailscaled restart (new generation) flushes tailscale's rules, never ours.
    status_tx.send_modify(|s| s.tailscaled_generation += 1);
    l.node
        .sh("ip rule del pref 5270 lookup 52; ip rule add pref 5270 lookup 52");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        l.node.sh("ip rule | grep -c 'proto 116'").trim(),
        "4",
        "no duplicates"
    );
    assert_eq!(
        l.node
            .sh("nft list table inet tsbridge | grep -c comment")
            .trim(),
        "4"
    );
    let h = health.borrow().clone();
    assert!(h.repairs >= 5, "{h:?}");
    assert_eq!(h.tailscaled_generation, 1);

    stop.cancel();
    daemon.join().unwrap().unwrap();
    let rules = l.node.sh("ip rule; ip -6 rule");
    assert!(!rules.contains("proto 116"), "{rules}");
    assert!(rules.contains("5270:\tfrom all lookup 52"));
    assert!(l.node.try_sh("nft list table inet tsbridge").is_none());
}

/// `tsbridge run` as a process in the node namespace; its log goes to `log`. No
/// tailscaled is needed: the egress side works from the configuration alone.
fn start_daemon(
    ns: &Netns,
    extra_env: &[(&str, &str)],
    log: &std::path::Path,
) -> std::process::Child {
    let dir = std::env::temp_dir().join(format!("{}-state", ns.0));
    let out = std::fs::File::create(log).expect("log file");
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &ns.0,
        env!("CARGO_BIN_EXE_tsbridge"),
        "run",
    ])
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("TSBRIDGE_LAB_SUBNETS", "192.168.77.0/24")
    .env("TSBRIDGE_POD_CIDRS", "10.244.0.0/16,fd00:10:244::/56")
    .env("TSBRIDGE_LISTEN", "off")
    .env("TS_STATE_DIR", dir.join("state"))
    .env("TS_SOCKET", dir.join("tailscaled.sock"))
    .stdout(out.try_clone().unwrap())
    .stderr(out);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.spawn().expect("start tsbridge")
}

fn log_path(ns: &Netns, n: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-tsbridge-{n}.log", ns.0))
}

fn stop(mut d: std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    while d.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn daemon_reports_the_node_identity_verdict() {
    require_tools();
    let l = lab();
    let wait_log = |path: &std::path::Path, needle: &str| {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no {needle:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let log = log_path(&l.node, 1);
    let d = start_daemon(&l.node, &[], &log);
    let text = wait_log(&log, "node identity on the lab subnet");
    assert!(
        text.contains("addr=192.168.77.10") && text.contains("ifname=lab0"),
        "{text}"
    );
    wait_log(&log, "pod path to the tailnet ok");
    stop(d);
    // A lab subnet the node has no address in: a warning naming the problem.
    let log = log_path(&l.node, 2);
    let d = start_daemon(&l.node, &[("TSBRIDGE_LAB_SUBNETS", "172.31.9.0/24")], &log);
    let text = wait_log(&log, "node identity is at risk");
    assert!(
        text.contains("no address in TSBRIDGE_LAB_SUBNETS"),
        "{text}"
    );
    stop(d);
    // No lab subnets: the identity is unguarded, and the log says so.
    let log = log_path(&l.node, 3);
    let d = start_daemon(&l.node, &[("TSBRIDGE_LAB_SUBNETS", "")], &log);
    wait_log(&log, "TSBRIDGE_LAB_SUBNETS is not set");
    stop(d);
    for n in 1..=3 {
        let _ = std::fs::remove_file(log_path(&l.node, n));
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", l.node.0)));
}

#[test]
fn daemon_adopts_after_kill_9_and_cleans_up_on_sigterm() {
    require_tools();
    let l = lab();
    let count = |ns: &Netns| {
        let rules = ns.sh("ip rule; ip -6 rule").matches("proto 116").count();
        let nft = ns
            .try_sh("nft list table inet tsbridge")
            .map_or(0, |t| t.matches("comment").count());
        (rules, nft)
    };
    let mut d = start_daemon(&l.node, &[], &log_path(&l.node, 10));
    time_until(Duration::from_secs(10), || count(&l.node) == (6, 4));
    // kill -9: no teardown, the state stays (pods keep working while it restarts).
    d.kill().unwrap();
    d.wait().unwrap();
    assert_eq!(count(&l.node), (6, 4));
    let mut d = start_daemon(&l.node, &[], &log_path(&l.node, 11));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&l.node),
        (6, 4),
        "a restart must adopt, not duplicate"
    );
    assert!(d.try_wait().unwrap().is_none(), "tsbridge exited");
    // It still repairs.
    l.node.sh("nft delete table inet tsbridge");
    time_until(Duration::from_secs(5), || count(&l.node) == (6, 4));
    // SIGTERM: ours gone, the tailscale-like rule stays.
    stop(d);
    assert_eq!(count(&l.node), (0, 0));
    assert!(l.node.sh("ip rule").contains("5270:\tfrom all lookup 52"));
    for n in [10, 11] {
        let _ = std::fs::remove_file(log_path(&l.node, n));
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", l.node.0)));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a shell command in a namespace from a thread that may be in another one.
fn sh_in(ns: &str, cmd: &str) {
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-ec", cmd])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

#[test]
fn notifications_report_changes_and_overruns() {
    require_tools();
    let ns = Netns::new("events");
    let name = ns.0.clone();
    ns.run(move || {
        runtime().block_on(async move {
            let sh = |cmd: &str| sh_in(&name, cmd);
            let ev = tsbridge::egress::events::Events::new().unwrap();
            // An nftables change and a rule change each wake the reconciler (changes of
            // other nftables tables do not: see the filter test below).
            sh("nft add table inet tsbridge");
            let e = tokio::time::timeout(Duration::from_secs(2), ev.next()).await;
            assert!(matches!(e, Ok(Ok(_))), "no nftables notification: {e:?}");
            sh("ip rule add pref 4000 to 10.9.0.0/16 lookup main");
            let e = tokio::time::timeout(Duration::from_secs(2), ev.next()).await;
            assert!(matches!(e, Ok(Ok(_))), "no rule notification: {e:?}");
            // A tiny buffer and a burst of changes: the kernel drops notifications and
            // says so (ENOBUFS), which must come out as an overrun (full resync). The
            // routes are in the main table: routes elsewhere are filtered out before
            // they are queued, so they cannot overrun anything (see the next test).
            let small = tsbridge::egress::events::Events::with_buffer(1024).unwrap();
            let mut batch = String::from("link set lo up\n");
            for i in 0..2000 {
                batch.push_str(&format!(
                    "route add 10.{}.{}.0/24 dev lo\n",
                    i / 256,
                    i % 256
                ));
            }
            let file = format!("/tmp/{name}.batch");
            std::fs::write(&file, batch).unwrap();
            sh(&format!("ip -batch {file}"));
            let _ = std::fs::remove_file(&file);
            let mut overrun = false;
            for _ in 0..100 {
                match tokio::time::timeout(Duration::from_millis(200), small.next()).await {
                    Ok(Ok(tsbridge::egress::events::Event::Overrun)) => {
                        overrun = true;
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    _ => break,
                }
            }
            assert!(
                overrun,
                "no overrun reported for 2000 unread route notifications"
            );
        });
    });
}

/// Reads notifications for `limit`; the union of what they said changed (`None`: none).
async fn events_within(
    ev: &tsbridge::egress::events::Events,
    limit: Duration,
) -> Option<tsbridge::egress::events::Dirty> {
    let mut got: Option<tsbridge::egress::events::Dirty> = None;
    let end = tokio::time::Instant::now() + limit;
    while let Ok(Ok(e)) = tokio::time::timeout_at(end, ev.next()).await {
        *got.get_or_insert_default() |= e.dirty();
    }
    got
}

/// The kernel-side filter: tailscale's route churn in table 52 and other nftables tables
/// never reach tsbridge, while every change of what the plan reads still does (deleting
/// a guard rule, the table, the MagicDNS route, a main-table route, a link), also in a
/// storm. Echoes of tsbridge's own writes are dropped, someone else's same change is not.
#[test]
fn kernel_filter_keeps_what_the_plan_reads_and_drops_the_rest() {
    use tsbridge::egress::events::{Dirty, Events};
    require_tools();
    let l = lab();
    let name = l.node.0.clone();
    let (c, d) = (cfg(true, true), plan::desired(&cfg(true, true)));
    l.node.run(move || {
        runtime().block_on(async move {
            let sh = |cmd: &str| sh_in(&name, cmd);
            let mut k = Netlink::new().unwrap();
            let ev = Events::with(tsbridge::egress::watch(&k.port_ids()), 4 << 20).unwrap();
            assert!(ev.kernel_filtered(), "the kernel refused the filter");
            // The kernel's own address events (IPv6 duplicate address detection finishing
            // on the lab's links) may come at any time: only the kinds at stake count.
            let quiet = |got: Option<Dirty>, kinds: Dirty| !got.is_some_and(|g| g.any(kinds));
            reconcile::reconcile(&mut k, &d).unwrap();
            let got = events_within(&ev, Duration::from_millis(300)).await;
            assert!(
                quiet(got, Dirty::RULES | Dirty::NFT),
                "our own install echoed back: {got:?}"
            );
            // A route storm in table 52, 2000 adds and deletes: nothing arrives.
            let mut add = String::new();
            for i in 0..2000 {
                add.push_str(&format!(
                    "route add 100.96.{}.{}/32 dev tailscale0 table 52\n",
                    i / 250,
                    i % 250 + 1
                ));
            }
            let file = format!("/tmp/{name}.storm");
            std::fs::write(
                &file,
                format!("{add}{}", add.replace("route add", "route del")),
            )
            .unwrap();
            sh(&format!("ip -batch {file}"));
            let _ = std::fs::remove_file(&file);
            sh("nft add table ip someone; nft add chain ip someone c; nft delete table ip someone");
            sh("ip -6 route add fd7a:115c:a1e0::99/128 dev tailscale0 table 52");
            let got = events_within(&ev, Duration::from_millis(300)).await;
            assert!(
                quiet(got, Dirty::ROUTES | Dirty::NFT),
                "table-52 peer routes and foreign nft tables must be filtered: {got:?}"
            );
            // What the plan reads still arrives.
            let cases = [
                (
                    "ip rule del pref 5110 to 10.244.0.0/16 goto 5300",
                    Dirty::RULES,
                ),
                ("nft delete table inet tsbridge", Dirty::NFT),
                ("ip route del 100.100.100.100/32 table 52", Dirty::ROUTES),
                (
                    "ip -6 route del fd7a:115c:a1e0::53/128 table 52",
                    Dirty::ROUTES,
                ),
                ("ip route add 10.244.9.0/24 dev veth-pod", Dirty::ROUTES),
                ("ip link set lab0-end down", Dirty::LINKS),
            ];
            for (cmd, kind) in cases {
                sh(cmd);
                let got = events_within(&ev, Duration::from_millis(200)).await;
                assert!(got.is_some_and(|g| g.any(kind)), "{cmd}: got {got:?}");
            }
            // In a storm too: the MagicDNS route comes back among 2000 peer routes.
            std::fs::write(
                &file,
                format!("{add}route add 100.100.100.100/32 dev tailscale0 table 52\n"),
            )
            .unwrap();
            sh(&format!("ip -batch {file}"));
            let _ = std::fs::remove_file(&file);
            let got = events_within(&ev, Duration::from_millis(300)).await;
            assert!(got.is_some_and(|g| g.any(Dirty::ROUTES)), "{got:?}");
            // Our repair writes are silent; the same deletion by someone else is not.
            reconcile::reconcile(&mut k, &d).unwrap();
            let got = events_within(&ev, Duration::from_millis(200)).await;
            assert!(quiet(got, Dirty::RULES | Dirty::NFT), "{got:?}");
            let guard = plan::desired(&c)
                .rules
                .into_iter()
                .find(|r| r.priority == plan::PRIO_POD)
                .unwrap();
            k.del_rule(&guard).unwrap();
            k.add_rule(&guard).unwrap();
            sh("ip rule del pref 5110 to 10.244.0.0/16 goto 5300");
            let got = events_within(&ev, Duration::from_millis(200)).await;
            assert!(
                got.is_some_and(|g| g.any(Dirty::RULES)),
                "an external deletion next to our echo: {got:?}"
            );
        });
    });
}

/// Several kinds of drift in one burst (one shell, back to back): each is repaired,
/// although the reconciler's own repair writes are ignored as echoes in between.
#[test]
fn a_burst_of_external_deletions_is_repaired_whole() {
    require_tools();
    let l = lab();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let (_status_tx, status_rx) = tokio::sync::watch::channel(TailscaleStatus::default());
    let (egress, health) = Egress::with_config(cfg(true, true));
    let daemon = l.node.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(egress.run(status_rx, shutdown))
    });
    let whole = |ns: &Netns| {
        let rules = ns.sh("ip rule; ip -6 rule").matches("proto 116").count();
        let nft = ns
            .try_sh("nft list table inet tsbridge")
            .map_or(0, |t| t.matches("comment").count());
        (rules, nft) == (6, 4)
    };
    time_until(Duration::from_secs(5), || {
        whole(&l.node) && health.borrow().in_sync
    });
    for round in 0..20 {
        l.node.sh("ip rule del pref 5110 to 10.244.0.0/16 goto 5300
             nft delete table inet tsbridge
             ip rule del pref 5100 to 192.168.77.0/24 goto 5300
             ip -6 rule del pref 5300");
        let t = time_until(Duration::from_secs(5), || whole(&l.node));
        assert!(t < Duration::from_secs(5), "round {round}");
    }
    stop.cancel();
    daemon.join().unwrap().unwrap();
}

/// The hole of `to <CIDR> lookup main` guards: when `main` has no route for a guarded
/// destination (another node's pods on a node without a default route, a service address
/// before kube-proxy), the kernel goes on to the next rule, and tailscale's 5270 sends the
/// packet into tailscale0 by whatever table 52 holds (here an exit node's default route).
/// A guarded destination must never reach table 52, whatever `main` holds.
#[test]
fn guarded_destinations_never_reach_table_52_whatever_main_holds() {
    require_tools();
    let l = lab();
    l.node.sh("ip route del default
         ip route add default dev tailscale0 table 52
         ip -6 route add default dev tailscale0 table 52");
    reconcile_in(&l.node, cfg(true, true));
    // (destination, from the node itself or forwarded from the pod)
    for (dst, forwarded) in [
        ("10.244.2.5", false),
        ("10.244.2.5", true),
        ("10.96.0.1", false),
        ("10.96.0.1", true),
        ("fd00:10:244:2::5", true),
    ] {
        let cmd = if forwarded {
            let src = if dst.contains(':') {
                "fd00:10:244:1::2"
            } else {
                "10.244.1.2"
            };
            format!("ip route get {dst} from {src} iif veth-pod")
        } else {
            format!("ip route get {dst}")
        };
        let got = l.node.try_sh(&format!("{cmd} 2>&1")).unwrap_or_default();
        assert!(
            !got.contains("tailscale0"),
            "`{cmd}` reached table 52: {got}"
        );
    }
    // Unguarded destinations still follow tailscale's rules (the exit node).
    let other = l.node.sh("ip route get 203.0.113.9");
    assert!(other.contains("dev tailscale0"), "{other}");
    // With a route in main the guarded destination takes it.
    l.node
        .sh("ip route add 10.244.2.0/24 via 192.168.77.1 dev lab0");
    let got = l.node.sh("ip route get 10.244.2.5");
    assert!(got.contains("dev lab0"), "{got}");
}

/// An upgrade: the rules an older tsbridge left (`to <CIDR> lookup main` at 5100-5120)
/// are replaced by the new shape, and the destination is guarded at every moment.
#[test]
fn upgrade_replaces_lookup_main_guards_with_the_goto_shape() {
    require_tools();
    let l = lab();
    l.node.sh(
        "ip rule add pref 5100 to 192.168.77.0/24 lookup main proto 116
         ip rule add pref 5110 to 10.244.0.0/16 lookup main proto 116
         ip rule add pref 5120 to 10.96.0.0/12 lookup main proto 116
         ip -6 rule add pref 5110 to fd00:10:244::/56 lookup main proto 116",
    );
    let ch = reconcile_in(&l.node, cfg(true, true));
    assert_eq!((ch.add_rules.len(), ch.del_rules.len()), (6, 4), "{ch:?}");
    let rules = ns_rules(&l.node);
    assert!(!rules.contains("lookup main proto 116"), "{rules}");
    assert_eq!(rules.matches("proto 116").count(), 6, "{rules}");
    assert_eq!(rules.matches("goto 5300 proto 116").count(), 4, "{rules}");
    assert!(!rules.contains("unresolved"), "{rules}");
    assert!(reconcile_in(&l.node, cfg(true, true)).is_empty());
    // The same through the daemon, which also removes everything on SIGTERM.
    l.node.run(|| {
        let mut k = Netlink::new().unwrap();
        reconcile::teardown(&mut k).unwrap();
    });
    l.node
        .sh("ip rule add pref 5110 to 10.244.0.0/16 lookup main proto 116");
    let d = start_daemon(&l.node, &[], &log_path(&l.node, 20));
    time_until(Duration::from_secs(10), || {
        let r = ns_rules(&l.node);
        !r.contains("lookup main proto 116") && r.matches("proto 116").count() == 6
    });
    stop(d);
    assert!(!ns_rules(&l.node).contains("proto 116"));
    let _ = std::fs::remove_file(log_path(&l.node, 20));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", l.node.0)));
}

fn get_in(ns: &Netns, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tsbridge_lab::http_get(&tsbridge_lab::Ns(ns.0.clone()), addr, path)
}

/// `TSBRIDGE_LISTEN=lab:9002`: the listener binds the node's address in the lab subnet
/// once it exists (not before, not loopback), moves when it changes, driven by the
/// reconciler's address notifications; its /metrics passes Prometheus's own parser and
/// linter.
#[test]
fn lab_listener_binds_the_lab_address_when_it_appears_and_follows_it() {
    require_tools();
    let tools = tsbridge_lab::Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let l = lab();
    l.node.sh("ip addr flush dev lab0");
    let log = log_path(&l.node, 30);
    let d = start_daemon(&l.node, &[("TSBRIDGE_LISTEN", "lab:9002")], &log);
    let wait_log = |needle: &str| {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(needle) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {needle:?} in:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_log("health and metrics listener waits for one");

    let first: SocketAddr = "192.168.77.10:9002".parse().unwrap();
    let second: SocketAddr = "192.168.77.20:9002".parse().unwrap();
    assert!(get_in(&l.node, first, "/healthz").is_none());
    // The address appears: the listener comes up there, and only there.
    l.node.sh("ip addr add 192.168.77.10/24 dev lab0");
    let took = time_until(Duration::from_secs(5), || {
        get_in(&l.node, first, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    eprintln!("listener up {took:?} after the lab address appeared");
    assert!(
        get_in(&l.node, "127.0.0.1:9002".parse().unwrap(), "/healthz").is_none(),
        "loopback is not served in lab mode"
    );
    // Prometheus's parser and linter accept what a scraper gets.
    let (code, metrics) = get_in(&l.node, first, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tsbridge_reconciliations_total"),
        "{metrics}"
    );
    tools
        .check_metrics(&metrics)
        .unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    // The address changes: the listener follows it.
    l.node.sh("ip addr del 192.168.77.10/24 dev lab0
         ip addr add 192.168.77.20/24 dev lab0");
    let moved = Instant::now();
    while get_in(&l.node, second, "/healthz").is_none_or(|(c, _)| c != 200) {
        assert!(
            moved.elapsed() < Duration::from_secs(5),
            "the listener did not move to {second}:\n{}\n{}",
            l.node.sh("ip -4 addr"),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(get_in(&l.node, first, "/healthz").is_none());
    stop(d);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.matches("health and metrics listener up").count(),
        2,
        "{text}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", l.node.0)));
}

/// A node without pods yet (a fresh control plane): the pod path is "no pods yet,
/// unverified", after asking the kernel about a pod-CIDR source arriving on `lo`. A CNI
/// that routes pods outside `TSBRIDGE_POD_CIDRS` (Cilium's default 10.0.0.0/8 pool, an
/// IPv6 pod network left out) is named, with the variable to set, in the verdict and in
/// the daemon's log.
#[test]
fn pod_path_without_pods_is_unverified_and_unknown_pod_routes_are_named() {
    require_tools();
    let l = lab();
    l.node.sh("ip addr flush dev veth-pod");
    reconcile_in(&l.node, cfg(true, true));
    let c = cfg(true, true);
    let v = l
        .node
        .run(move || guard::pod_path(&mut Netlink::new().unwrap(), &c));
    assert!(
        matches!(&v, guard::PodPath::NoPods(m) if m.contains("10.244.0.1->100.100.100.100") && m.contains("fd00:10:244::1->fd7a:115c:a1e0::53")),
        "{v:?}"
    );
    // Without the MagicDNS route even the lo probe fails: not ready, pods or not.
    l.node
        .sh("ip route del 100.100.100.100/32 dev tailscale0 table 52");
    let c = cfg(true, true);
    let v = l
        .node
        .run(move || guard::pod_path(&mut Netlink::new().unwrap(), &c));
    assert!(matches!(&v, guard::PodPath::Problem(_)), "{v:?}");
    l.node
        .sh("ip route add 100.100.100.100/32 dev tailscale0 table 52");
    // Cilium-style: pods of the 10.0.0.0/8 pool behind cilium_host.
    l.node
        .sh("ip link add cilium_host type veth peer name cilium_net
         ip link set cilium_host up
         ip addr add 10.0.1.1/32 dev cilium_host
         ip route add 10.0.1.0/24 via 10.0.1.1 dev cilium_host");
    let c = cfg(true, true);
    let v = l
        .node
        .run(move || guard::pod_path(&mut Netlink::new().unwrap(), &c));
    assert!(
        matches!(&v, guard::PodPath::Unconfigured(m) if m.contains("10.0.1.0/24 dev cilium_host") && m.contains("TSBRIDGE_POD_CIDRS")),
        "{v:?}"
    );
    let log = log_path(&l.node, 40);
    let d = start_daemon(&l.node, &[], &log);
    time_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| {
            t.contains("pod path to the tailnet broken")
                && t.contains("10.0.1.0/24 dev cilium_host")
                && t.contains("add the cluster's pod subnets")
        })
    });
    stop(d);
    // Configured, the same routes are pods like any other: the route lookup is right, but
    // on a node with Cilium's devices that is not a verified path (BPF host routing
    // bypasses netfilter), so it is never "ok".
    let mut c = cfg(true, true);
    c.pod_cidrs.push("10.0.0.0/8".parse().unwrap());
    reconcile_in(&l.node, c.clone());
    let v = l
        .node
        .run(move || guard::pod_path(&mut Netlink::new().unwrap(), &c));
    assert!(
        matches!(&v, guard::PodPath::BpfDatapath { why, check } if why.contains("10.0.1.2->100.100.100.100") && why.starts_with("Cilium on this node") && check.contains("bpf.hostLegacyRouting=true")),
        "{v:?}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", l.node.0)));
}
