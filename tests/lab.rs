//! The lab itself: real headscale and plain tailscaled peers in network namespaces.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tsbridge_lab::{Lab, Tools};

fn lab() -> Lab {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    Lab::new(tools).expect("lab")
}

#[test]
fn peers_join_headscale_and_ping_each_other() {
    let t0 = Instant::now();
    let lab = lab();
    let control = lab.control().expect("headscale");
    let a = lab.peer(&control, "peera").expect("peer a");
    let b = lab.peer(&control, "peerb").expect("peer b");
    assert!(a.ip4.octets()[0] == 100 && b.ip4.octets()[0] == 100);
    assert_ne!(a.ip4, b.ip4);
    lab.ping_until(&a.host.ns, IpAddr::V4(b.ip4), Duration::from_secs(20))
        .expect("a pings b over the tailnet");
    lab.ping_until(&b.host.ns, IpAddr::V4(a.ip4), Duration::from_secs(20))
        .expect("b pings a over the tailnet");
    if let Some(v6) = a.ip6 {
        lab.ping_until(&b.host.ns, IpAddr::V6(v6), Duration::from_secs(10))
            .expect("b pings a's fd7a: address");
    }
    // Both nodes are known to headscale under the lab user.
    let nodes = lab.nodes(&control).expect("nodes");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    // The lab network has no route out: the real network is unreachable from a host.
    let out = lab
        .exec(&a.host.ns, &["ip", "route", "get", "1.1.1.1"])
        .unwrap();
    assert!(
        !out.status.success(),
        "a lab host must have no route to the real network"
    );
    eprintln!("lab with two peers took {:?}", t0.elapsed());
}

#[test]
fn teardown_removes_namespaces_and_sweeper_spares_live_runs() {
    let lab = lab();
    let host = lab.host("h").expect("host");
    let pod = lab.pod(&host).expect("pod");
    lab.ping(&pod.ns, IpAddr::V4(pod.gateway_v4), 1)
        .expect("pod reaches its node");
    let names = [host.ns.0.clone(), pod.ns.0.clone()];
    // Our own namespaces belong to a live process: the sweeper leaves them alone.
    let removed = tsbridge_lab::sweep().expect("sweep");
    assert!(names.iter().all(|n| !removed.contains(n)), "{removed:?}");
    drop(lab);
    for n in names {
        assert!(
            !std::path::Path::new("/run/netns").join(&n).exists(),
            "{n} left behind"
        );
    }
}
