//! Health, metrics and `tsbridge check` on a lab node (issue 7): a node running
//! `tsbridge run` (with the real tailscaled) joined to headscale, with a pod behind it.
//! The listener binds the node's lab address (`TSBRIDGE_LISTEN=lab:9002`) and is read from
//! another host on the lab network, as a Prometheus in the cluster would scrape it.
//! Needs root and `make tools`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tsbridge_lab::{Control, Host, Lab, Ns, Peer, Pod, Proc, Tools, wait_until};

const PORT: u16 = 9002;

/// GET `http://ADDR:9002/PATH` from inside `ns`: (status, body), or None while nothing
/// listens.
fn get_from(ns: &Ns, addr: IpAddr, path: &str) -> Option<(u16, String)> {
    tsbridge_lab::http_get(ns, SocketAddr::new(addr, PORT), path)
}

/// A metric's value from an exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

struct World {
    lab: Lab,
    control: Control,
    _peer: Peer,
    node: Host,
    _pod: Pod,
}

impl World {
    fn new() -> World {
        let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
        let lab = Lab::new(tools).expect("lab");
        let control = lab.control().expect("headscale");
        let peer = lab.peer(&control, "peer").expect("peer");
        let node = lab.host("node1").expect("node");
        let pod = lab.pod(&node).expect("pod");
        World {
            lab,
            control,
            _peer: peer,
            node,
            _pod: pod,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self
            .lab
            .node_env_with_key(&self.control, &self.node)
            .expect("node environment");
        env.push(("TSBRIDGE_LISTEN".into(), format!("lab:{PORT}")));
        env
    }

    /// GET from the control host: another machine on the lab network.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        get_from(&self.control.host.ns, IpAddr::V4(self.node.lan_addr), path)
    }

    /// `tsbridge check [--json]` in the node, without the cluster-DNS check (this lab has
    /// no cluster DNS; tests/dns_lab.rs has one).
    fn check(&self, env: &[(String, String)], json: bool) -> (i32, String) {
        let mut args = vec!["--cluster-dns", "off"];
        if json {
            args.push("--json");
        }
        self.lab
            .tsbridge_check(&self.node, env, &args)
            .expect("run tsbridge check")
    }

    fn wait_ready(&self, p: &Proc, limit: Duration) -> Duration {
        let start = Instant::now();
        let mut last = String::new();
        let r = wait_until(limit, "/readyz to pass", || {
            Ok(match self.get("/readyz") {
                Some((200, _)) => Some(()),
                Some((_, body)) => {
                    last = body;
                    None
                }
                None => None,
            })
        });
        if let Err(e) = r {
            panic!(
                "{e}; last /readyz:\n{last}\n{}",
                tsbridge_lab::tail(&self.lab.log(p), 40)
            );
        }
        start.elapsed()
    }

    fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics").expect("metrics listener");
        assert_eq!(code, 200);
        body
    }

    fn tailscaled_pids(&self) -> Vec<u32> {
        self.lab.pids_named(&self.node.ns, "tailscaled")
    }
}

#[test]
fn health_metrics_and_check_on_a_lab_node() {
    let w = World::new();
    let env = w.env();
    let ts = w.lab.start_tsbridge(&w.node, &env).expect("start tsbridge");

    // While it starts, /readyz names what is missing; then it passes.
    let took = w.wait_ready(&ts, Duration::from_secs(60));
    eprintln!("tsbridge ready {took:?} after start");
    let (code, body) = w.get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    for part in [
        "ok   tailscaled: Running",
        "ok   reconciled",
        "ok   pod_path",
    ] {
        assert!(body.contains(part), "{part} missing in:\n{body}");
    }
    let (code, body) = w.get("/healthz").unwrap();
    assert!(
        get_from(&w.node.ns, "127.0.0.1".parse().unwrap(), "/healthz").is_none(),
        "lab:9002 binds the lab address only, not loopback"
    );
    assert_eq!(code, 200, "{body}");
    for lp in ["http", "supervisor", "join", "egress"] {
        assert!(body.contains(lp), "loop {lp} not listed: {body}");
    }
    let m = w.metrics();
    assert_eq!(metric(&m, "tsbridge_ready"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "tsbridge_tailscaled_backend_state{state=\"Running\"}"),
        Some(1.0)
    );
    assert!(metric(&m, "tsbridge_reconciliations_total{result=\"ok\"}").unwrap() >= 1.0);

    // `tsbridge check`: everything passes, in text and JSON.
    let (code, text) = w.check(&env, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    let (code, json) = w.check(&env, true);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("check --json is JSON");
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config",
            "tailscaled",
            "guard-rules",
            "nft-table",
            "pod-path",
            "node-identity",
            "magicdns"
        ]
    );
    eprintln!("tsbridge check:\n{text}");

    // Drift: delete the nft table; it comes back and the repair is counted by kind.
    w.lab
        .exec_ok(&w.node.ns, &["nft", "delete", "table", "inet", "tsbridge"])
        .expect("delete tsbridge's table");
    wait_until(
        Duration::from_secs(10),
        "the nft_table repair metric",
        || {
            Ok((metric(
                &w.metrics(),
                "tsbridge_drift_repairs_total{kind=\"nft_table\"}",
            ) >= Some(1.0))
            .then_some(()))
        },
    )
    .expect("repair counted");
    w.wait_ready(&ts, Duration::from_secs(10));

    // kill -9 tailscaled: a restart and its cause are counted; ready again after.
    let pids = w.tailscaled_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    wait_until(Duration::from_secs(10), "the restart metric", || {
        let m = w.metrics();
        Ok(
            (metric(&m, "tsbridge_tailscaled_restarts_total") == Some(1.0)
                && metric(&m, "tsbridge_tailscaled_last_exit{kind=\"signal\"}") == Some(9.0))
            .then_some(()),
        )
    })
    .expect("restart counted");
    let took = w.wait_ready(&ts, Duration::from_secs(60));
    eprintln!("ready again {took:?} after kill -9 tailscaled");
    // What a scraper gets, with restarts, repairs and durations recorded, passes
    // Prometheus's own text parser and linter (`promtool check metrics`).
    let m = w.metrics();
    w.lab
        .tools
        .check_metrics(&m)
        .unwrap_or_else(|e| panic!("{e}\n{m}"));

    // After tsbridge stops, check fails and says why.
    assert!(
        w.lab
            .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let (code, text) = w.check(&env, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL tailscaled"), "{text}");
    assert!(text.contains("FAIL guard-rules"), "{text}");
    assert!(text.contains("fix: "), "{text}");
}
