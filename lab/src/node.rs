//! tsbridge nodes: `tsbridge run` on a lab host, its environment, and what it owns in
//! the node's kernel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{
    Control, Error, Host, LAN_CIDR, Lab, Ns, POD_CIDR_V4, POD_CIDR_V6, Proc, Result, in_ns,
    wait_until,
};

/// `GET path` from inside `ns` to tsbridge's health listener at `addr`: (status, body), or
/// `None` while nothing answers.
pub fn http_get(ns: &Ns, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.get(9..12)?.parse().ok()?;
        Some((code, out.split_once("\r\n\r\n")?.1.to_owned()))
    })
}

impl Lab {
    /// The environment `tsbridge run` gets on a lab node: state and socket in the host's
    /// directory, the lab's tools, the control server as login server, the lab subnet.
    /// Tests add or override entries (`TS_AUTHKEY`, `TS_EXTRA_ARGS`, ...); a later entry
    /// with the same name wins, as in Talos.
    pub fn node_env(&self, control: &Control, host: &Host) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "TS_STATE_DIR".into(),
                host.state_dir().display().to_string(),
            ),
            ("TS_SOCKET".into(), host.socket().display().to_string()),
            ("TS_HOSTNAME".into(), host.role.clone()),
            (
                "TS_EXTRA_ARGS".into(),
                format!("--login-server={}", control.url),
            ),
            (
                "TS_TAILSCALED_EXTRA_ARGS".into(),
                "--no-logs-no-support".into(),
            ),
            (
                "TSBRIDGE_TAILSCALED".into(),
                self.tools.tailscaled.display().to_string(),
            ),
            (
                "TSBRIDGE_TAILSCALE".into(),
                self.tools.tailscale.display().to_string(),
            ),
            ("TSBRIDGE_LAB_SUBNETS".into(), LAN_CIDR.into()),
            (
                "TSBRIDGE_POD_CIDRS".into(),
                format!("{POD_CIDR_V4},{POD_CIDR_V6}"),
            ),
            ("TSBRIDGE_LISTEN".into(), "off".into()),
        ];
        for (k, v) in Self::tailscaled_env() {
            env.push((k.into(), v.into()));
        }
        env
    }

    /// Starts `tsbridge run` on `host` with `env` (see [`Lab::node_env`]); the log is
    /// `<lab>/<role>-tsbridge.log`.
    pub fn start_tsbridge(&self, host: &Host, env: &[(String, String)]) -> Result<Proc> {
        let bin = self.tools.tsbridge.to_string_lossy().into_owned();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.spawn(
            &host.ns,
            &format!("{}-tsbridge", host.role),
            &[&bin, "run"],
            &env,
        )
    }

    /// Like [`Lab::start_tsbridge`], but tsbridge is PID 1 of a new PID namespace (as in
    /// its Talos container): orphans are re-parented to it. The returned process is
    /// `unshare`'s; tsbridge is its only child (`--kill-child` ends it with `unshare`).
    pub fn start_tsbridge_as_pid1(&self, host: &Host, env: &[(String, String)]) -> Result<Proc> {
        let bin = self.tools.tsbridge.to_string_lossy().into_owned();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.spawn(
            &host.ns,
            &format!("{}-tsbridge", host.role),
            &["unshare", "--pid", "--fork", "--kill-child", &bin, "run"],
            &env,
        )
    }

    /// [`Lab::node_env`] with a fresh pre-auth key of [`crate::LAB_USER`] as `TS_AUTHKEY`.
    pub fn node_env_with_key(
        &self,
        control: &Control,
        host: &Host,
    ) -> Result<Vec<(String, String)>> {
        let key = self.preauth_key(control, control.user_id, "10m", false, &[])?;
        let mut env = self.node_env(control, host);
        env.push(("TS_AUTHKEY".into(), key.key));
        Ok(env)
    }

    /// `tsbridge check ARGS` on `host` with the service's environment `env` (the key left
    /// out: check never needs it): (exit status, stdout).
    pub fn tsbridge_check(
        &self,
        host: &Host,
        env: &[(String, String)],
        args: &[&str],
    ) -> Result<(i32, String)> {
        let bin = self.tools.tsbridge.to_string_lossy().into_owned();
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(
            env.iter()
                .filter(|(k, _)| k != "TS_AUTHKEY")
                .map(|(k, v)| format!("{k}={v}")),
        );
        argv.extend([bin, "check".to_owned()]);
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.exec(&host.ns, &argv)?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// The pids of the processes in `ns` whose command name is `comm`.
    pub fn pids_named(&self, ns: &Ns, comm: &str) -> Vec<u32> {
        self.ns_pids(ns)
            .into_iter()
            .filter(|p| crate::procfs::comm(*p).is_some_and(|c| c == comm))
            .collect()
    }

    /// What tsbridge owns in `ns`'s kernel: (policy rules with protocol 116, nftables rules
    /// tagged `tsbridge/`).
    pub fn owned_state(&self, ns: &Ns) -> (usize, usize) {
        let sh = |cmd: &str| {
            self.exec(ns, &["sh", "-c", cmd])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let rules = sh("ip rule; ip -6 rule").matches("proto 116").count();
        let nft = sh("nft list table inet tsbridge 2>/dev/null")
            .matches("comment \"tsbridge/")
            .count();
        (rules, nft)
    }

    /// Waits until [`Lab::owned_state`] is `want`; how long that took.
    pub fn wait_owned(&self, ns: &Ns, want: (usize, usize), limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        wait_until(limit, "tsbridge's kernel state", || {
            Ok((self.owned_state(ns) == want).then_some(()))
        })
        .map_err(|e| {
            Error(format!(
                "{e}: have {:?}, want {want:?}",
                self.owned_state(ns)
            ))
        })?;
        Ok(start.elapsed())
    }
}
