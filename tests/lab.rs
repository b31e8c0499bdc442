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
    let ida = lab.node_id(&control, "peera").expect("node id");
    assert_ne!(ida, lab.node_id(&control, "peerb").unwrap());
    // Route approval works (the egress tests advertise pod subnets).
    let adv = lab
        .tailscale(&a.host, &["set", "--advertise-routes=10.99.0.0/24"])
        .unwrap();
    assert!(
        adv.status.success(),
        "{}",
        String::from_utf8_lossy(&adv.stderr)
    );
    tsbridge_lab::wait_until(
        Duration::from_secs(10),
        "the advertised route in headscale",
        || {
            Ok(lab
                .approve_routes(&control, "peera", &["10.99.0.0/24"])
                .is_ok()
                .then_some(()))
        },
    )
    .expect("approve routes");
    let approved = lab.nodes(&control).unwrap();
    let a_node = approved
        .iter()
        .find(|n| n["given_name"] == "peera")
        .unwrap();
    assert_eq!(
        a_node["approved_routes"],
        serde_json::json!(["10.99.0.0/24"]),
        "{a_node}"
    );
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
    lab.ping(&pod.ns, IpAddr::V6(pod.gateway_v6), 1)
        .expect("pod reaches its node over IPv6");
    let routes = lab
        .exec_ok(&pod.ns, &["ip", "-6", "route", "show", "default"])
        .unwrap();
    assert!(routes.contains(&pod.gateway_v6.to_string()), "{routes}");
    let fwd = lab
        .exec_ok(
            &host.ns,
            &[
                "sysctl",
                "-n",
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding",
            ],
        )
        .unwrap();
    assert_eq!(
        fwd.split_whitespace().collect::<Vec<_>>(),
        ["1", "1"],
        "the node forwards"
    );
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

/// Records the LocalAPI fixtures of tests/fixtures/ from the real tailscaled (run with
/// `cargo test --test lab record_localapi_fixtures -- --ignored`; see the README there).
#[test]
#[ignore = "records fixtures; run by hand when tailscale's version changes"]
fn record_localapi_fixtures() {
    use std::process::{Command, Stdio};
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::create_dir_all(&out_dir).unwrap();
    let lab = lab();
    let control = lab.control().expect("headscale");
    let host = lab.host("rec").unwrap();
    let _d = lab.start_tailscaled(&host).unwrap();
    tsbridge_lab::wait_until(Duration::from_secs(10), "socket", || {
        Ok(host.socket().exists().then_some(()))
    })
    .unwrap();
    let sock = host.socket().display().to_string();
    let get = |path: &str| -> Vec<u8> {
        let o = Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--unix-socket",
                &sock,
                &format!("http://local-tailscaled.sock{path}"),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    std::fs::write(
        out_dir.join("status-needslogin.json"),
        get("/localapi/v0/status?peers=false"),
    )
    .unwrap();
    // The watch stream during a join, as tsbridge subscribes to it (mask 146).
    let watch_file = std::fs::File::create(out_dir.join("watch-ipn-bus-join.ndjson")).unwrap();
    let mut watch = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--unix-socket",
            &sock,
            "http://local-tailscaled.sock/localapi/v0/watch-ipn-bus?mask=146",
        ])
        .stdout(watch_file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // First an expired key (the stream then carries the login error), then a good one.
    let expired = lab
        .preauth_key(&control, control.user_id, "10m", false, &[])
        .unwrap();
    lab.expire_key(&control, &expired).unwrap();
    let login = format!("--login-server={}", control.url);
    let bad = lab
        .tailscale(
            &host,
            &[
                "up",
                &login,
                &format!("--auth-key={}", expired.key),
                "--hostname=rec",
                "--accept-dns=false",
                "--timeout=15s",
            ],
        )
        .unwrap();
    assert!(!bad.status.success());
    std::fs::write(out_dir.join("up-expired-key.stderr"), &bad.stderr).unwrap();
    let key = lab
        .preauth_key(&control, control.user_id, "10m", false, &[])
        .unwrap();
    let up = lab
        .tailscale(
            &host,
            &[
                "up",
                &format!("--login-server={}", control.url),
                &format!("--auth-key={}", key.key),
                "--hostname=rec",
                "--accept-dns=false",
            ],
        )
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    lab.wait_running(&host, Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(
        out_dir.join("status-running.json"),
        get("/localapi/v0/status?peers=false"),
    )
    .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let recorded = std::fs::read_to_string(out_dir.join("watch-ipn-bus-join.ndjson")).unwrap();
    assert!(
        !recorded.contains(&key.key) && !recorded.contains(&expired.key),
        "the fixture must not hold a key"
    );
    let version = String::from_utf8_lossy(&lab.tailscale(&host, &["version"]).unwrap().stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    eprintln!("recorded with tailscale {version}");
}
