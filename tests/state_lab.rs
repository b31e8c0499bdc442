//! tailscaled's state directory in the lab: what tailscaled writes where.

use std::time::Duration;

use tsbridge_lab::{Lab, Tools, wait_until};

fn lab() -> Lab {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    Lab::new(tools).expect("lab")
}

/// tailscaled writes `tailscaled.log.conf` to `/var/lib/tailscale` unless `TS_LOGS_DIR`
/// names an existing directory, whatever `--statedir` says ("logpolicy: using system
/// state directory"): tsbridge's tailscaled keeps it in `<state>/logs`, and the lab's own
/// peers in their host directory, so a lab run never writes the machine's
/// /var/lib/tailscale.
#[test]
fn tailscaled_logs_stay_in_the_state_directory_never_the_machines() {
    let lab = lab();
    let control = lab.control().expect("headscale");
    let peer = lab.peer(&control, "peer").expect("peer");
    let node = lab.host("node1").unwrap();
    let env = lab.node_env_with_key(&control, &node).unwrap();
    let ts = lab.start_tsbridge(&node, &env).expect("tsbridge");
    lab.wait_running(&node, Duration::from_secs(45))
        .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&ts), 40)));
    for (who, log) in [
        ("tsbridge", lab.log(&ts)),
        ("peer", lab.log(&peer.tailscaled)),
    ] {
        assert!(
            !log.contains("logpolicy: using"),
            "{who}'s tailscaled chose its logs directory itself:\n{}",
            log.lines()
                .filter(|l| l.contains("logpolicy"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let node_conf = node.state_dir().join("logs/tailscaled.log.conf");
    let peer_conf = peer.host.dir.join("logs/tailscaled.log.conf");
    for conf in [&node_conf, &peer_conf] {
        assert!(conf.is_file(), "{} is missing", conf.display());
    }
}

/// What identifies the node on the tailnet: headscale's node id, the node key, the
/// tailnet addresses.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    node_id: u64,
    node_key: String,
    addrs: Vec<String>,
}

fn identity(lab: &Lab, control: &tsbridge_lab::Control, host: &tsbridge_lab::Host) -> Identity {
    let st = lab.status(host).expect("status");
    let mut addrs: Vec<String> = st["TailscaleIPs"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    addrs.sort();
    Identity {
        node_id: lab.node_id(control, &host.role).expect("headscale node id"),
        node_key: st["Self"]["PublicKey"]
            .as_str()
            .expect("node key")
            .to_owned(),
        addrs,
    }
}

fn prefs(lab: &Lab, host: &tsbridge_lab::Host) -> serde_json::Value {
    let out = lab
        .tailscale(host, &["debug", "prefs"])
        .expect("tailscale debug prefs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prefs: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Moving over from the official extension (siderolabs/tailscale: containerboot) and
/// back, on one node's state directory, each run as Talos runs it (its spec's
/// environment, binaries and mounts, PID 1 of its container, stopped by SIGTERM to
/// every process): containerboot joins with a key; tsbridge takes over the same state
/// without a key (same node, same addresses, pods reach the peer); containerboot takes it
/// back with the ExtensionServiceConfig it had.
#[test]
fn moving_from_the_official_extension_and_back_keeps_the_node() {
    let lab = lab();
    let control = lab.control().expect("headscale");
    let peer = lab.peer(&control, "peer").expect("peer");
    let node = lab.host("node1").unwrap();
    let pod = lab.pod(&node).unwrap();
    let key = lab
        .preauth_key(&control, control.user_id, "10m", false, &[])
        .unwrap();
    let running = |p: &tsbridge_lab::Proc| {
        lab.wait_running(&node, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(p), 40)))
    };
    let stop = |p: &tsbridge_lab::Proc| {
        let (st, took) = lab
            .kill_container(
                p,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(12),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(p), 40)));
        eprintln!("{} stopped ({st}) in {took:?}", p.name);
    };

    // The official extension, with the key.
    let mut cb = lab.containerboot_container(&control, &node).unwrap();
    cb.env.push(("TS_AUTHKEY".into(), key.key.clone()));
    let p = lab.start_container(&node, &cb).expect("containerboot");
    running(&p);
    let before = identity(&lab, &control, &node);
    // A preference set by hand, as users do with `tailscale set` on the official one.
    let set = lab.tailscale(&node, &["set", "--shields-up=true"]).unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(prefs(&lab, &node)["ShieldsUp"], true);
    stop(&p);
    let state: Vec<String> = std::fs::read_dir(node.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!("containerboot's state directory: {state:?}");
    assert!(state.contains(&"tailscaled.state".to_owned()), "{state:?}");

    // tsbridge on the same state, without a key.
    let ts = lab.tsbridge_container(&control, &node).unwrap();
    assert!(ts.env.iter().all(|(k, _)| !k.contains("AUTH")));
    let p = lab.start_container(&node, &ts).expect("tsbridge");
    running(&p);
    wait_until(Duration::from_secs(30), "tsbridge's tailscale up", || {
        Ok(lab.log(&p).contains("tailscale up succeeded").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&p), 40)));
    let log = lab.log(&p);
    assert!(log.contains("with_key=false"), "{log}");
    assert_eq!(
        identity(&lab, &control, &node),
        before,
        "same node after the move"
    );
    assert_eq!(
        lab.nodes(&control).unwrap().len(),
        2,
        "node1 and the peer, no new node"
    );
    // `tailscale up --reset`: tsbridge's configuration is the whole truth.
    assert_eq!(prefs(&lab, &node)["ShieldsUp"], false);
    lab.wait_owned(&node.ns, (6, 4), Duration::from_secs(10))
        .unwrap();
    lab.ping_until(&pod.ns, peer.ip4.into(), Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "the pod cannot reach the peer: {e}\n{}",
                tsbridge_lab::tail(&lab.log(&p), 30)
            )
        });
    stop(&p);
    assert_eq!(lab.owned_state(&node.ns), (0, 0));

    // And back: the official extension with its old configuration (the key long used).
    let p = lab
        .start_container(&node, &cb)
        .expect("containerboot again");
    running(&p);
    wait_until(
        Duration::from_secs(30),
        "containerboot's tailscale up",
        || {
            Ok(lab
                .log(&p)
                .matches("Startup complete")
                .count()
                .ge(&2)
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&p), 40)));
    assert_eq!(
        identity(&lab, &control, &node),
        before,
        "same node after the way back"
    );
    assert_eq!(lab.nodes(&control).unwrap().len(), 2);
    lab.ping_until(
        &peer.host.ns,
        before
            .addrs
            .iter()
            .find(|a| a.starts_with("100."))
            .unwrap()
            .parse()
            .unwrap(),
        Duration::from_secs(30),
    )
    .expect("the peer reaches the node");
    eprintln!(
        "containerboot's log after the way back:\n{}",
        tsbridge_lab::tail(&lab.log(&p), 25)
    );
    stop(&p);
}
