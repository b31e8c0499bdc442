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
    /// tailscaled could not open its state store and runs on in-memory state (see
    /// [`state_store_problem`]); `None` when it did not say so.
    pub state_store: Option<String>,
}

/// The code of tailscaled's health warning for a state store it could not open
/// (`ipn.StateStoreHealth`, tailscale v1.102.3 `ipn/store.go`). tailscaled then runs on an
/// in-memory store, stays in NoState and refuses logins.
pub const STATE_STORE_WARNING: &str = "state-store-health";

/// One line for a state store tailscaled could not open, from its warning text (which ends
/// in `Error: <the cause>`): the directory, the cause, the consequence, the fix.
pub fn state_store_problem(warning_text: &str, state_dir: &std::path::Path) -> String {
    let cause = warning_text
        .rsplit_once("Error: ")
        .map_or(warning_text, |(_, c)| c)
        .trim();
    format!(
        "tailscaled cannot write its state directory {} ({cause}) and runs on in-memory state: it cannot join, and a node on in-memory state loses its identity at the next restart; make TS_STATE_DIR writable (not read-only, not full)",
        state_dir.display()
    )
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
    fn state_store_problem_names_directory_and_cause() {
        let text = "State store failed to initialize, Tailscale will not work until this is resolved. See https://tailscale.com/s/state-store-init-error. Error: open /var/lib/tailscale/tailscaled.state.tmp: read-only file system";
        let p = state_store_problem(text, std::path::Path::new("/var/lib/tailscale"));
        assert!(p.starts_with("tailscaled cannot write its state directory /var/lib/tailscale (open /var/lib/tailscale/tailscaled.state.tmp: read-only file system)"), "{p}");
        assert!(p.contains("in-memory") && p.contains("TS_STATE_DIR"), "{p}");
        // Another wording: the whole text is the cause.
        let p = state_store_problem("disk full", std::path::Path::new("/s"));
        assert!(p.contains("/s (disk full)"), "{p}");
    }

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
