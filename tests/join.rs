//! The daemon in the lab: `tsbridge run` on a node supervises the real tailscaled and
//! joins the real control server (headscale). Needs root and `make tools`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tsbridge_lab::{AuthKey, Control, Host, Lab, Proc, Tools, wait_until};

struct World {
    lab: Lab,
    control: Control,
}

fn world() -> World {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let lab = Lab::new(tools).expect("lab");
    let control = lab.control().expect("headscale");
    World { lab, control }
}

impl World {
    fn key(&self, expiration: &str) -> AuthKey {
        self.lab
            .preauth_key(&self.control, self.control.user_id, expiration, false, &[])
            .expect("pre-auth key")
    }

    fn expired_key(&self) -> AuthKey {
        let k = self.key("10m");
        self.lab.expire_key(&self.control, &k).expect("expire key");
        k
    }

    /// The node environment with `extra` appended (later entries win).
    fn env(
        &self,
        host: &Host,
        key: Option<&AuthKey>,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env = self.lab.node_env(&self.control, host);
        if let Some(k) = key {
            env.push(("TS_AUTHKEY".into(), k.key.clone()));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn start(&self, host: &Host, env: &[(String, String)]) -> Proc {
        self.lab.start_tsbridge(host, env).expect("start tsbridge")
    }

    fn running(&self, host: &Host, tsbridge: &Proc) -> std::net::Ipv4Addr {
        match self.lab.wait_running(host, Duration::from_secs(45)) {
            Ok((v4, _)) => v4,
            Err(e) => panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(tsbridge), 40)),
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_log(&self, p: &Proc, needle: &str, limit: Duration) {
        let r = wait_until(limit, &format!("log line {needle:?}"), || {
            Ok(self.lab.log(p).contains(needle).then_some(()))
        });
        if let Err(e) = r {
            panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40));
        }
    }

    /// tailscaled processes in the node's namespace.
    fn tailscaled_pids(&self, host: &Host) -> Vec<u32> {
        self.lab
            .ns_pids(&host.ns)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "tailscaled")
            })
            .collect()
    }
}

fn zombies_in(lab: &Lab, host: &Host) -> Vec<u32> {
    lab.ns_pids(&host.ns)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false)
        })
        .collect()
}

/// Test 1: a fresh node with a 10-minute key reaches Running with a 100.x address and a
/// peer pings it.
#[test]
fn fresh_node_joins_and_a_peer_pings_it() {
    let w = world();
    let peer = w.lab.peer(&w.control, "peer").expect("peer");
    let node = w.lab.host("node1").unwrap();
    let key = w.key("10m");
    let ts = w.start(&node, &w.env(&node, Some(&key), &[]));
    let addr = w.running(&node, &ts);
    assert_eq!(addr.octets()[0], 100, "{addr}");
    w.lab
        .ping_until(&peer.host.ns, IpAddr::V4(addr), Duration::from_secs(20))
        .expect("the peer pings the node over the tailnet");
    w.wait_log(&ts, "tailnet status", Duration::from_secs(10));
    let log = w.lab.log(&ts);
    assert!(
        log.contains("source=\"tailscaled\"") || log.contains("source=tailscaled"),
        "tailscaled output is forwarded"
    );
    assert!(
        log.contains(&addr.to_string()),
        "the log shows the tailnet address"
    );
    assert_eq!(w.lab.try_wait(&ts), None, "tsbridge keeps running");
}
