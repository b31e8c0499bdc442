//! What the join side knows about tailscaled, shared with the egress side and health.
//!
//! The supervisor/LocalAPI side owns the sender of a `tokio::sync::watch` channel of
//! [`TailscaleStatus`]; the reconciler, the health server and the logs read it.

use std::net::IpAddr;

/// tailscaled's backend state (`ipn.State`); the integer values are those of the
/// watch-ipn-bus `State` field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendState {
    /// tailscaled is not running or its LocalAPI is not reachable.
    #[default]
    Down,
    NoState,
    InUseOtherUser,
    NeedsLogin,
    NeedsMachineAuth,
    Stopped,
    Starting,
    Running,
}

/// A snapshot of the node's tailnet side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailscaleStatus {
    pub backend: BackendState,
    /// The node's tailnet addresses (100.x and fd7a:115c:a1e0::), empty until known.
    pub addrs: Vec<IpAddr>,
    /// MagicDNS suffix, like `tail1234.ts.net` (no leading or trailing dot).
    pub magic_dns_suffix: Option<String>,
    /// Interface index of `tailscale0`, when it exists.
    pub tun_index: Option<u32>,
    /// Increases every time tailscaled is (re)started, so observers can tell a restart
    /// (which flushes tailscale's own rules) from a steady state.
    pub tailscaled_generation: u64,
}
