//! tailscaled's state directory in the lab: what tailscaled writes where.

use std::time::Duration;

use tsbridge_lab::{Lab, Tools};

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
