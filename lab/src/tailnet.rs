//! Plain tailscaled in the lab: peers, the tailscale CLI, and waiting for Running.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{Control, Error, Host, Lab, Ns, Proc, Result, err, tail, wait_until};

/// A tailnet peer: plain tailscaled on a lab host, logged in and Running.
#[derive(Clone, Debug)]
pub struct Peer {
    pub host: Host,
    pub tailscaled: Proc,
    pub ip4: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
}

impl Lab {
    /// The environment every tailscaled in the lab gets: DERP over plain HTTP (the lab's
    /// embedded DERP has no TLS), nftables firewall mode.
    pub fn tailscaled_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TS_DEBUG_USE_DERP_HTTP", "1"),
            ("TS_DEBUG_FIREWALL_MODE", "nftables"),
        ]
    }

    /// Starts plain tailscaled on `host` (state, socket and logs directory in the host's
    /// directory: without `TS_LOGS_DIR` tailscaled would write the machine's
    /// /var/lib/tailscale).
    pub fn start_tailscaled(&self, host: &Host) -> Result<Proc> {
        let env: Vec<(String, String)> = Self::tailscaled_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.start_tailscaled_env(host, &env)
    }

    /// [`Lab::start_tailscaled`] with `env` (see [`Control::client_env`]).
    pub fn start_tailscaled_env(&self, host: &Host, env: &[(String, String)]) -> Result<Proc> {
        let d = self.tools.tailscaled.to_string_lossy().into_owned();
        let state = format!("--statedir={}", host.state_dir().display());
        let sock = format!("--socket={}", host.socket().display());
        let logs = host.logs_dir()?;
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("TS_LOGS_DIR", &logs));
        self.spawn(
            &host.ns,
            &format!("{}-tailscaled", host.role),
            &[
                &d,
                &state,
                &sock,
                "--tun=tailscale0",
                "--no-logs-no-support",
            ],
            &env,
        )
    }

    /// Runs the tailscale CLI against the tailscaled of `host`; returns the raw output.
    pub fn tailscale(&self, host: &Host, args: &[&str]) -> Result<Output> {
        let sock = format!("--socket={}", host.socket().display());
        Command::new(&self.tools.tailscale)
            .arg(&sock)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("tailscale {args:?}: {e}")))
    }

    /// `tailscale status --json` of `host`'s tailscaled.
    pub fn status(&self, host: &Host) -> Result<serde_json::Value> {
        let out = self.tailscale(host, &["status", "--json", "--peers=true"])?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error(format!(
                "tailscale status on {}: {e}: {}",
                host.role,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
    }

    /// Waits until `host`'s tailscaled is Running with a 100.x address; returns its
    /// addresses.
    pub fn wait_running(
        &self,
        host: &Host,
        limit: Duration,
    ) -> Result<(Ipv4Addr, Option<Ipv6Addr>)> {
        let mut last = String::new();
        wait_until(limit, &format!("{} to be Running", host.role), || {
            let Ok(st) = self.status(host) else {
                return Ok(None);
            };
            last = st["BackendState"].as_str().unwrap_or("").to_owned();
            Ok(tailnet_addrs(&st).filter(|_| last == "Running"))
        })
        .map_err(|e| Error(format!("{e} (last state {last:?})")))
    }

    /// A plain tailscaled peer on a new host, logged in with a fresh key of [`LAB_USER`]
    /// and Running.
    pub fn peer(&self, control: &Control, role: &str) -> Result<Peer> {
        let host = self.host(role)?;
        let tailscaled = self.start_tailscaled_env(&host, &control.client_env())?;
        let key = self.preauth_key(control, control.user_id, "10m", false, &[])?;
        let login = format!("--login-server={}", control.url);
        let hostname = format!("--hostname={role}");
        // A test peer: its key on the command line is acceptable (tsbridge's node key is
        // what the tests check never reaches a command line).
        let keyarg = format!("--auth-key={}", key.key);
        wait_until(
            Duration::from_secs(10),
            "the peer's LocalAPI socket",
            || Ok(host.socket().exists().then_some(())),
        )?;
        let out = self.tailscale(
            &host,
            &[
                "up",
                &login,
                &keyarg,
                &hostname,
                "--accept-dns=false",
                "--timeout=60s",
            ],
        )?;
        if !out.status.success() {
            return err(format!(
                "tailscale up on {role} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&self.log(&tailscaled), 30)
            ));
        }
        let (ip4, ip6) = self.wait_running(&host, Duration::from_secs(30))?;
        Ok(Peer {
            host,
            tailscaled,
            ip4,
            ip6,
        })
    }

    /// `ping -c N -W 1` from inside a namespace; Ok when at least one reply came back.
    pub fn ping(&self, ns: &Ns, target: IpAddr, count: u32) -> Result<String> {
        let c = count.to_string();
        let t = target.to_string();
        self.exec_ok(ns, &["ping", "-n", "-c", &c, "-W", "1", "-i", "0.2", &t])
    }

    /// Pings until one succeeds (a fresh tailnet path needs a moment), at most `limit`.
    pub fn ping_until(&self, ns: &Ns, target: IpAddr, limit: Duration) -> Result<()> {
        let mut last = String::new();
        wait_until(limit, &format!("{target} to answer pings"), || {
            match self.ping(ns, target, 1) {
                Ok(_) => Ok(Some(())),
                Err(e) => {
                    last = e.0;
                    Ok(None)
                }
            }
        })
        .map_err(|e| Error(format!("{e}; last: {last}")))
    }
}

/// The 100.x (and fd7a:) addresses in a `tailscale status --json` document.
pub fn tailnet_addrs(status: &serde_json::Value) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
    let ips = status.get("TailscaleIPs")?.as_array()?;
    let mut v4 = None;
    let mut v6 = None;
    for ip in ips
        .iter()
        .filter_map(|i| i.as_str()?.parse::<IpAddr>().ok())
    {
        match ip {
            IpAddr::V4(a) => v4 = v4.or(Some(a)),
            IpAddr::V6(a) => v6 = v6.or(Some(a)),
        }
    }
    v4.map(|a| (a, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tailnet_addrs_reads_status() {
        let st = serde_json::json!({"TailscaleIPs": ["fd7a:115c:a1e0::1", "100.64.0.1"]});
        let (v4, v6) = tailnet_addrs(&st).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(v6, Some("fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(tailnet_addrs(&serde_json::json!({"TailscaleIPs": []})).is_none());
    }
}
