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
    /// The node's tailnet addresses (100.x and fd7a:115c:a1e0::), empty until known; the
    /// last known ones while tailscaled restarts (`backend` says whether they are live).
    pub addrs: Vec<IpAddr>,
    /// MagicDNS suffix, like `tail1234.ts.net` (no leading or trailing dot).
    pub magic_dns_suffix: Option<String>,
    /// Interface index of `tailscale0`, when it exists.
    pub tun_index: Option<u32>,
    /// Increases every time tailscaled is (re)started, so observers can tell a restart
    /// (which flushes tailscale's own rules) from a steady state.
    pub tailscaled_generation: u64,
    /// What keeps the node off the tailnet, in one line naming the cause (no key, key
    /// rejected or expired, machine not authorized, tailscaled exited); `None` when fine.
    pub problem: Option<String>,
}

impl BackendState {
    /// Every state, in `ipn.State` order after [`BackendState::Down`].
    pub const ALL: [BackendState; 8] = [
        BackendState::Down,
        BackendState::NoState,
        BackendState::InUseOtherUser,
        BackendState::NeedsLogin,
        BackendState::NeedsMachineAuth,
        BackendState::Stopped,
        BackendState::Starting,
        BackendState::Running,
    ];

    /// From the integer `State` of a watch-ipn-bus `Notify` (`ipn.State`).
    pub fn from_ipn(n: i64) -> BackendState {
        match n {
            0 => BackendState::NoState,
            1 => BackendState::InUseOtherUser,
            2 => BackendState::NeedsLogin,
            3 => BackendState::NeedsMachineAuth,
            4 => BackendState::Stopped,
            5 => BackendState::Starting,
            6 => BackendState::Running,
            _ => BackendState::NoState,
        }
    }

    /// From the string `BackendState` of `/localapi/v0/status`.
    pub fn from_name(s: &str) -> BackendState {
        match s {
            "InUseOtherUser" => BackendState::InUseOtherUser,
            "NeedsLogin" => BackendState::NeedsLogin,
            "NeedsMachineAuth" => BackendState::NeedsMachineAuth,
            "Stopped" => BackendState::Stopped,
            "Starting" => BackendState::Starting,
            "Running" => BackendState::Running,
            _ => BackendState::NoState,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendState::Down => "Down",
            BackendState::NoState => "NoState",
            BackendState::InUseOtherUser => "InUseOtherUser",
            BackendState::NeedsLogin => "NeedsLogin",
            BackendState::NeedsMachineAuth => "NeedsMachineAuth",
            BackendState::Stopped => "Stopped",
            BackendState::Starting => "Starting",
            BackendState::Running => "Running",
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_and_names_agree() {
        for n in 0..=6 {
            let s = BackendState::from_ipn(n);
            assert_eq!(BackendState::from_name(s.name()), s);
        }
        assert_eq!(BackendState::from_ipn(6), BackendState::Running);
        assert_eq!(BackendState::from_ipn(2), BackendState::NeedsLogin);
        assert_eq!(BackendState::from_ipn(99), BackendState::NoState);
    }
}
