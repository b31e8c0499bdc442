//! The tsbridge lab: network namespaces on one machine that stand in for a cluster's lab
//! network, a control server (headscale), tailnet peers (plain tailscaled), nodes (running
//! `tsbridge run`, which runs tailscaled) and pods attached to nodes.
//!
//! Topology of one [`Lab`]:
//!
//! ```text
//!   switch namespace (bridge br0, no addresses)
//!     ├── veth ── control host 192.168.77.1   headscale (HTTP :8080, DERP, STUN :3478)
//!     ├── veth ── node/peer    192.168.77.N   tailscaled (+ tsbridge on nodes)
//!     └── ...                                 each with its own state directory
//!   node ── veth ── pod namespace 10.244.K.2/24, fd00:10:244:K::2/64, default via the node
//! ```
//!
//! Nothing here has a route to the machine's real network: every namespace is new and only
//! linked to the lab's own bridge or to its node. Everything is named
//! `tsl-<pid>-<n>-<role>` and torn down when the [`Lab`] is dropped, also on panic; a
//! sweeper ([`sweep`]) removes leftovers whose owning process is dead (never those of
//! concurrent runs). Labs can run concurrently: each has its own switch namespace, so
//! they can all use the same addresses.
//!
//! A typical test:
//!
//! ```no_run
//! use std::time::Duration;
//! use tsbridge_lab::{Lab, Tools};
//!
//! let lab = Lab::new(Tools::find("target/debug/tsbridge")?)?;
//! let control = lab.control()?;                    // headscale on 192.168.77.1
//! let peer = lab.peer(&control, "peer")?;           // plain tailscaled, Running
//! let node = lab.host("node1")?;                    // a node namespace
//! let pod = lab.pod(&node)?;                        // 10.244.1.2 behind the node
//! let key = lab.preauth_key(&control, control.user_id, "10m", false, &[])?;
//! let mut env = lab.node_env(&control, &node);      // TS_STATE_DIR, TS_SOCKET, ...
//! env.push(("TS_AUTHKEY".into(), key.key.clone()));
//! let ts = lab.start_tsbridge(&node, &env)?;        // `tsbridge run` in the node
//! let (addr, _) = lab.wait_running(&node, Duration::from_secs(45))?;
//! lab.ping_until(&peer.host.ns, addr.into(), Duration::from_secs(20))?;
//! lab.exec_ok(&pod.ns, &["ip", "route"])?;          // anything inside a namespace
//! println!("{}", lab.log(&ts));                     // tsbridge's log
//! # Ok::<(), tsbridge_lab::Error>(())
//! ```
//! (everything is torn down when `lab` goes out of scope)
//!
//! Processes are started with an explicit, cleared environment through `ip netns exec`
//! (which execs the program, so the pid is the program's), with stdout and stderr in a log
//! file under the lab directory ([`Lab::log`]).

mod capture;
mod cni;
mod container;
mod control;
mod dns;
pub mod kubespan;
mod lab;
mod netns;
mod node;
pub mod procfs;
mod proxy;
mod tailnet;
mod tools;

use std::fmt;
use std::time::{Duration, Instant};

pub use capture::{Capture, Captured};
pub use cni::{CniPod, FLANNEL_MTU};
pub use container::{Container, OFFICIAL_ENV};
pub use control::{AuthKey, Control};
pub use dns::dns_answers;
pub use lab::{Host, Lab, Pod, Proc};
pub use netns::{Ns, in_ns, ip, ipn, remove_ns, spawn_in, sweep};
pub use node::http_get;
pub use proxy::{PROXY_PORT, Proxy};
pub use tailnet::{Peer, tailnet_addrs};
pub use tools::{Tools, preflight};

/// Where labs keep their files (tmpfs; not under /tmp, so tests can scan /tmp for leaks
/// of secrets without finding the control server's database).
pub const LAB_ROOT: &str = "/run/tsbridge-lab";
/// Prefix of every namespace a lab creates.
pub const NS_PREFIX: &str = "tsl-";
/// The lab network (v4 /24); the control host is `.1`.
pub const LAN_PREFIX: [u8; 3] = [192, 168, 77];
pub const LAN_CIDR: &str = "192.168.77.0/24";
/// headscale's HTTP port on the control host.
pub const CONTROL_PORT: u16 = 8080;
/// MagicDNS base domain of the lab tailnet.
pub const BASE_DOMAIN: &str = "tailnet.lab";
/// The headscale user every lab creates at start; the policy lets it own [`LAB_TAGS`].
pub const LAB_USER: &str = "lab";
/// Tags the lab policy allows [`LAB_USER`]'s nodes to advertise.
pub const LAB_TAGS: &[&str] = &["tag:lab", "tag:lab2", "tag:k8s"];
/// Pod CIDRs used by [`Lab::pod`] (pod K gets 10.244.K.0/24 and fd00:10:244:K::/64).
pub const POD_CIDR_V4: &str = "10.244.0.0/16";
pub const POD_CIDR_V6: &str = "fd00:10:244::/48";

/// A lab error: one line saying what failed and, when known, why.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Polls `f` every 100 ms until it returns `Ok(Some(_))`, an error, or `limit` passes
/// (then: "timed out after Ns waiting for <what>").
pub fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return err(format!("timed out after {:.0?} waiting for {what}", limit));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
