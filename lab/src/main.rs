//! `tsbridge-lab`: the README's main job (`make lab`) and lab housekeeping.
//!
//!     tsbridge-lab demo --tsbridge PATH   build a lab, show a node joining, tear down
//!     tsbridge-lab sweep                  remove leftovers of dead lab runs

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tsbridge_lab::{Lab, Result, Tools, tail, wait_until};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("demo") => {
            let tsbridge = match args.get(1).map(String::as_str) {
                Some("--tsbridge") => args.get(2).cloned(),
                _ => None,
            };
            match tsbridge {
                Some(p) => demo(&p),
                None => {
                    eprintln!("usage: tsbridge-lab demo --tsbridge PATH");
                    return ExitCode::from(2);
                }
            }
        }
        Some("sweep") => tsbridge_lab::sweep().map(|removed| {
            for r in removed {
                println!("removed {r}");
            }
        }),
        _ => {
            eprintln!("usage: tsbridge-lab demo --tsbridge PATH | tsbridge-lab sweep");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn step(t0: Instant, msg: impl AsRef<str>) {
    println!("[{:>5.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

/// tsbridge's own events (not the forwarded tailscaled lines) from `from` on.
fn own_events(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| !l.contains("source=\"tailscaled\""))
        .collect()
}

fn demo(tsbridge: &str) -> Result<()> {
    let t0 = Instant::now();
    let tools = Tools::find(tsbridge)?;
    let lab = Lab::new(tools)?;
    step(
        t0,
        format!(
            "lab {} created: bridge namespace, lab network {}",
            lab.id,
            tsbridge_lab::LAN_CIDR
        ),
    );
    let control = lab.control()?;
    step(
        t0,
        format!(
            "control server: headscale at {} in namespace {} (embedded DERP + STUN, MagicDNS {})",
            control.url,
            control.host.ns.name(),
            tsbridge_lab::BASE_DOMAIN
        ),
    );
    let peer = lab.peer(&control, "peer")?;
    step(
        t0,
        format!(
            "peer: plain tailscaled on {} joined: {} {}",
            peer.host.lan_addr,
            peer.ip4,
            peer.ip6.map(|a| a.to_string()).unwrap_or_default()
        ),
    );
    let node = lab.host("node1")?;
    let key = lab.preauth_key(&control, control.user_id, "10m", false, &[])?;
    step(
        t0,
        format!(
            "node: namespace {} at {}; minted a 10-minute pre-auth key (id {}), given to tsbridge as TS_AUTHKEY",
            node.ns.name(),
            node.lan_addr,
            key.id
        ),
    );
    let mut env = lab.node_env(&control, &node);
    env.push(("TS_AUTHKEY".into(), key.key.clone()));
    let shown: Vec<String> = env
        .iter()
        .map(|(k, v)| {
            if k == "TS_AUTHKEY" {
                format!("{k}=[redacted]")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    step(
        t0,
        format!(
            "starting `tsbridge run` on the node with:\n    {}",
            shown.join("\n    ")
        ),
    );
    let ts = lab.start_tsbridge(&node, &env)?;

    // Follow the node's state as tailscaled reports it.
    let mut last = String::new();
    let addrs = wait_until(Duration::from_secs(60), "the node to be Running", || {
        if let Some(st) = lab.try_wait(&ts) {
            return Err(tsbridge_lab::Error(format!(
                "tsbridge exited ({st}):\n{}",
                tail(&lab.log(&ts), 30)
            )));
        }
        let Ok(st) = lab.status(&node) else {
            return Ok(None);
        };
        let state = st["BackendState"].as_str().unwrap_or("").to_owned();
        if state != last {
            step(t0, format!("node state: {state}"));
            last = state.clone();
        }
        Ok(tsbridge_lab::tailnet_addrs(&st)
            .filter(|_| state == "Running")
            .map(|a| (a, st["Self"]["DNSName"].as_str().unwrap_or("").to_owned())))
    })?;
    let ((v4, v6), dns) = addrs;
    step(
        t0,
        format!(
            "node Running: tailnet addresses {v4} {}, MagicDNS name {dns}",
            v6.map(|a| a.to_string()).unwrap_or_default()
        ),
    );
    lab.ping_until(&peer.host.ns, IpAddr::V4(v4), Duration::from_secs(20))?;
    step(
        t0,
        format!("peer pings the node over the tailnet: {v4} answers"),
    );
    lab.ping_until(&node.ns, IpAddr::V4(peer.ip4), Duration::from_secs(20))?;
    step(
        t0,
        format!("node pings the peer over the tailnet: {} answers", peer.ip4),
    );

    let pod = lab.pod(&node)?;
    step(
        t0,
        format!(
            "pod: namespace {} at {} / {}, default route via the node",
            pod.ns.name(),
            pod.addr_v4,
            pod.addr_v6
        ),
    );
    match lab.ping(&pod.ns, IpAddr::V4(peer.ip4), 2) {
        Ok(_) => step(t0, format!("pod reaches the peer {} by address", peer.ip4)),
        Err(_) => step(
            t0,
            format!(
                "pod does not reach the peer {} yet (pod egress: SNAT + MSS clamp, issue 4)",
                peer.ip4
            ),
        ),
    }

    step(
        t0,
        "tsbridge's own log events (tailscaled's lines omitted):",
    );
    for l in own_events(&lab.log(&ts)) {
        println!("    {l}");
    }
    let stopped = Instant::now();
    let st = lab.stop(&ts);
    step(
        t0,
        format!(
            "SIGTERM to tsbridge: {} after {:.1?}",
            st.map(|s| s.to_string())
                .unwrap_or_else(|| "did not exit".into()),
            stopped.elapsed()
        ),
    );
    drop(lab);
    step(t0, "lab torn down (namespaces, processes, files)");
    Ok(())
}
