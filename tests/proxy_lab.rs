//! A node behind an HTTP proxy: Talos passes `machine.env` (`HTTPS_PROXY`, ...) into the
//! service, tsbridge passes it on to tailscaled and `tailscale`, and the node joins with
//! the control server reachable only through a real proxy (Debian's tinyproxy, with
//! Basic authentication). Needs root, `make tools` and scripts/setup.sh's packages.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tsbridge_lab::{CONTROL_PORT, Lab, Tools, in_ns, tail, wait_until};

const PROXY_USER: &str = "labuser";
const PROXY_SECRET: &str = "lab-proxy-secret";

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_node_behind_a_proxy_joins_through_it_and_its_credentials_never_show() {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let lab = Lab::new(tools).expect("lab");
    // HTTPS, as real control servers are: a plain HTTP proxy passes it with CONNECT.
    let control = lab.control_https().expect("headscale over HTTPS");
    let peer = lab.peer(&control, "peer").expect("peer");
    let proxy = lab
        .http_proxy("proxy", Some((PROXY_USER, PROXY_SECRET)))
        .expect("tinyproxy");
    let node = lab.host("node1").unwrap();
    let pod = lab.pod(&node).unwrap();
    // The node reaches the control host (headscale and its DERP) only through the proxy.
    let ctl = SocketAddr::from((control.host.lan_addr, CONTROL_PORT));
    lab.exec_ok(
        &node.ns,
        &[
            "ip",
            "route",
            "add",
            "prohibit",
            &format!("{}/32", ctl.ip()),
        ],
    )
    .unwrap();
    assert!(
        in_ns(&node.ns, move || TcpStream::connect_timeout(
            &ctl,
            Duration::from_secs(2)
        )
        .is_err()),
        "the node must not reach the control server directly"
    );

    let key = lab
        .preauth_key(&control, control.user_id, "10m", false, &[])
        .unwrap();
    let mut c = lab.tsbridge_container(&control, &node).unwrap();
    // Talos puts the machine's environment (machine.env) first; the lower-case spelling
    // works as well as the upper-case one.
    let mut env = vec![
        ("https_proxy".to_owned(), proxy.url.clone()),
        ("NO_PROXY".to_owned(), "localhost,127.0.0.1".to_owned()),
    ];
    env.append(&mut c.env);
    env.push(("TS_AUTHKEY".into(), key.key.clone()));
    c.env = env;
    let ts = lab.start_container(&node, &c).expect("tsbridge");
    let (addr, _) = lab
        .wait_running(&node, Duration::from_secs(90))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n--- proxy\n{}",
                tail(&lab.log(&ts), 40),
                tail(&lab.log(&proxy.proc), 20)
            )
        });
    assert_eq!(addr.octets()[0], 100);
    // The proxy carried the connection to the control server.
    let plog = lab.log(&proxy.proc);
    assert!(
        plog.contains(&format!("CONNECT {ctl} HTTP")),
        "{}",
        tail(&plog, 30)
    );
    // The tailnet works as usual: the pod reaches the peer (directly, over the lab).
    lab.ping_until(&pod.ns, peer.ip4.into(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("pod -> peer: {e}\n{}", tail(&lab.log(&ts), 30)));

    // tsbridge says a proxy is in use, and nothing shows its credentials: neither its own
    // line nor tailscaled's (which logs the proxy URL and the start of its
    // Proxy-Authorization header).
    wait_until(Duration::from_secs(10), "tailscaled's proxy lines", || {
        let log = lab.log(&ts);
        Ok(
            (log.contains("tshttpproxy: using proxy") && log.contains("CONNECT response"))
                .then_some(()),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&lab.log(&ts), 40)));
    let log = lab.log(&ts);
    let line = log
        .lines()
        .find(|l| l.contains("use the HTTP proxy"))
        .unwrap_or_else(|| panic!("no proxy line:\n{}", tail(&log, 40)));
    let shown = format!("http://[redacted]@{}", proxy.host.lan_addr);
    assert!(line.contains(&format!("https_proxy={shown}")), "{line}");
    let basic = base64(format!("{PROXY_USER}:{PROXY_SECRET}").as_bytes());
    for secret in [PROXY_SECRET, &basic[..12], &format!("{PROXY_USER}:")] {
        assert!(
            !log.contains(secret),
            "{secret:?} in tsbridge's log:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for l in log.lines().filter(|l| l.contains("tshttpproxy")) {
        eprintln!("{l}");
    }
}
