//! Processes run the way Talos runs an extension service: PID 1 of their own PID
//! namespace, in their own mount namespace where the service's binaries and mounts sit at
//! their real paths (`/usr/local/bin`, `/var/lib/tailscale`, `/var/run/tailscale`,
//! `/etc/ssl/certs`), on a lab host (its network namespace is the "host network").
//!
//! The machine's own `/usr/local`, `/var` and `/etc/ssl` are hidden in that mount
//! namespace under empty tmpfs mounts that only it sees (`ip netns exec` makes the mount
//! tree a slave of the machine's, and `unshare --propagation private` cuts it off): a
//! container writes its lab directories, never the machine's paths.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Control, Error, Host, Lab, Proc, Result, err, wait_until};

/// The paths a container sees fresh (empty tmpfs); every mount target lies below one.
const HIDDEN: [&str; 3] = ["/usr/local", "/var", "/etc/ssl"];

/// What a container runs and sees.
#[derive(Clone, Debug, Default)]
pub struct Container {
    /// Log and process name (`<lab>/<name>.log`).
    pub name: String,
    /// Files put into `/usr/local/bin` under their own file names (the extension's
    /// rootfs holds its binaries there).
    pub bin: Vec<PathBuf>,
    /// Bind mounts: (directory on the machine, path inside), as the service spec's
    /// `mounts`. The targets must lie below `/usr/local`, `/var` or `/etc/ssl`.
    pub mounts: Vec<(PathBuf, String)>,
    /// The entrypoint and its arguments (`/usr/local/bin/...`).
    pub argv: Vec<String>,
    /// The environment, in order (Talos: the spec's, then the ExtensionServiceConfig's).
    pub env: Vec<(String, String)>,
}

/// Quotes a word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sh` script that builds the container's mount tree, then execs the entrypoint
/// (given as the script's arguments).
fn setup_script(c: &Container) -> Result<String> {
    // The container's PATH may not find the tools that build it (the official one's is
    // /sbin:/usr/local/bin): they run with the lab's, the entrypoint with its own.
    let mut script =
        String::from("set -e\nCPATH=${PATH-}\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
    for dir in HIDDEN {
        script.push_str(&format!("mount -t tmpfs -o mode=0755 tsl-hidden {dir}\n"));
    }
    script.push_str("mkdir -p /usr/local/bin\n");
    for b in &c.bin {
        let name = b
            .file_name()
            .ok_or_else(|| Error(format!("{} has no file name", b.display())))?
            .to_string_lossy()
            .into_owned();
        let dst = sh_quote(&format!("/usr/local/bin/{name}"));
        script.push_str(&format!(
            ": > {dst}\nmount --bind {} {dst}\n",
            sh_quote(&b.display().to_string())
        ));
    }
    for (src, dst) in &c.mounts {
        if !HIDDEN
            .iter()
            .any(|h| Path::new(dst).starts_with(h) && Path::new(dst) != Path::new(h))
        {
            return err(format!(
                "container mount target {dst} is not below {HIDDEN:?}"
            ));
        }
        let d = sh_quote(dst);
        script.push_str(&format!(
            "mkdir -p {d}\nmount --bind {} {d}\n",
            sh_quote(&src.display().to_string())
        ));
    }
    script.push_str("if [ -n \"$CPATH\" ]; then PATH=$CPATH; else unset PATH; fi\nexec \"$@\"\n");
    Ok(script)
}

/// The PATH containerd gives every container; the service spec's environment comes after
/// it, the user's after that.
const CONTAINERD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The official extension's service spec (siderolabs/extensions,
/// `network/tailscale/tailscale.yaml`, read at commit 26822f5): its `environment`
/// (before the user's) and the mounts the lab reproduces (`/dev/net/tun` is the machine's
/// own; `/etc/ssl/certs` is not needed by an HTTP control server).
pub const OFFICIAL_ENV: [(&str, &str); 4] = [
    ("PATH", "/sbin:/usr/local/bin"),
    ("TS_SOCKET", "/var/run/tailscale/tailscaled.sock"),
    ("TS_STATE_DIR", "/var/lib/tailscale"),
    ("TS_USERSPACE", "false"),
];
/// Where both extensions keep tailscaled's state and socket (the spec mounts these
/// directories of the node).
pub const STATE_MOUNT: &str = "/var/lib/tailscale";
pub const SOCKET_MOUNT: &str = "/var/run/tailscale";

impl Lab {
    /// The mounts both extensions' specs have, on `host`: its state directory as
    /// `/var/lib/tailscale`, its directory as `/var/run/tailscale` (so the socket is
    /// [`Host::socket`] from outside), plus `/etc/ssl/certs` for an HTTPS control server.
    fn service_mounts(&self, control: &Control, host: &Host) -> Result<Vec<(PathBuf, String)>> {
        let state = host.state_dir();
        std::fs::create_dir_all(&state)
            .map_err(|e| Error(format!("mkdir {}: {e}", state.display())))?;
        let mut mounts = vec![
            (state, STATE_MOUNT.to_owned()),
            (host.dir.clone(), SOCKET_MOUNT.to_owned()),
        ];
        if let Some(certs) = &control.certs_dir {
            mounts.push((certs.clone(), "/etc/ssl/certs".to_owned()));
        }
        Ok(mounts)
    }

    /// The user's part of the environment on a lab node, as an ExtensionServiceConfig
    /// for either extension would carry it: hostname, the lab's control server, no log
    /// uploads, and what a tailscaled needs to use the lab's control server.
    fn user_env(&self, control: &Control, host: &Host) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("TS_HOSTNAME".into(), host.role.clone()),
            (
                "TS_EXTRA_ARGS".into(),
                format!("--login-server={}", control.url),
            ),
            (
                "TS_TAILSCALED_EXTRA_ARGS".into(),
                "--no-logs-no-support".into(),
            ),
        ];
        env.extend(
            control
                .client_env()
                .into_iter()
                .filter(|(k, _)| k.starts_with("TS_")),
        );
        env
    }

    /// tsbridge as the tailscale-bridge extension runs it on `host`: the binaries in
    /// `/usr/local/bin`, the spec's mounts, no `environment` in the spec, and the user's
    /// variables (state directory and socket left at tsbridge's defaults). Add
    /// `TS_AUTHKEY` and more to `env` as needed.
    pub fn tsbridge_container(&self, control: &Control, host: &Host) -> Result<Container> {
        let mut env = vec![("PATH".to_owned(), CONTAINERD_PATH.to_owned())];
        env.extend(self.user_env(control, host));
        env.extend([
            ("TSBRIDGE_LAB_SUBNETS".into(), crate::LAN_CIDR.into()),
            (
                "TSBRIDGE_POD_CIDRS".into(),
                format!("{},{}", crate::POD_CIDR_V4, crate::POD_CIDR_V6),
            ),
            ("TSBRIDGE_LISTEN".into(), "off".into()),
        ]);
        Ok(Container {
            name: format!("{}-tsbridge", host.role),
            bin: vec![
                self.tools.tsbridge.clone(),
                self.tools.tailscaled.clone(),
                self.tools.tailscale.clone(),
            ],
            mounts: self.service_mounts(control, host)?,
            argv: vec!["/usr/local/bin/tsbridge".into(), "run".into()],
            env,
        })
    }

    /// containerboot as the official extension (siderolabs/tailscale) runs it on `host`:
    /// [`OFFICIAL_ENV`] first, then the user's variables. Add `TS_AUTHKEY` to `env`.
    pub fn containerboot_container(&self, control: &Control, host: &Host) -> Result<Container> {
        let mut env = vec![("PATH".to_owned(), CONTAINERD_PATH.to_owned())];
        env.extend(
            OFFICIAL_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env.extend(self.user_env(control, host));
        Ok(Container {
            name: format!("{}-containerboot", host.role),
            bin: vec![
                self.tools.containerboot()?,
                self.tools.tailscaled.clone(),
                self.tools.tailscale.clone(),
            ],
            mounts: self.service_mounts(control, host)?,
            argv: vec!["/usr/local/bin/containerboot".into()],
            env,
        })
    }

    /// Starts `c` on `host`. The returned process is `unshare`'s; the container's init
    /// (the entrypoint, PID 1 inside) is its only child and dies with it.
    pub fn start_container(&self, host: &Host, c: &Container) -> Result<Proc> {
        let script = setup_script(c)?;
        let unshare = crate::tools::which("unshare")
            .ok_or_else(|| Error("`unshare` is not installed (package util-linux)".into()))?;
        let unshare = unshare.to_string_lossy();
        let mut argv: Vec<&str> = vec![
            &unshare,
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "/bin/sh",
            "-c",
            &script,
            "sh",
        ];
        argv.extend(c.argv.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let p = self.spawn(&host.ns, &c.name, &argv, &env)?;
        let entry = c
            .argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().chars().take(15).collect::<String>())
            .unwrap_or_default();
        wait_until(
            Duration::from_secs(10),
            &format!("{} to exec {entry}", c.name),
            || {
                if let Some(st) = self.try_wait(&p) {
                    return err(format!(
                        "container {} exited at start ({st}): {}",
                        c.name,
                        crate::tail(&self.log(&p), 20)
                    ));
                }
                Ok(self
                    .container_init(&p)
                    .filter(|i| crate::procfs::comm(*i).is_some_and(|n| n == entry))
                    .map(|_| ()))
            },
        )?;
        Ok(p)
    }

    /// The container's init (PID 1 inside), as a pid of the machine.
    pub fn container_init(&self, container: &Proc) -> Option<u32> {
        children(container.pid).into_iter().next()
    }

    /// Every process of the container (its PID namespace), init included.
    pub fn container_pids(&self, container: &Proc) -> Vec<u32> {
        let Some(init) = self.container_init(container) else {
            return Vec::new();
        };
        let Some(ns) = pid_ns(init) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|p| pid_ns(*p).as_ref() == Some(&ns))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Stops a container as Talos stops an extension service: `sig` to every process of
    /// it at once (the init last), then waits up to `limit`. Returns the exit status of
    /// the init (as `unshare` passes it on) and how long the stop took.
    pub fn kill_container(
        &self,
        container: &Proc,
        sig: Signal,
        limit: Duration,
    ) -> Result<(ExitStatus, Duration)> {
        let mut pids = self.container_pids(container);
        if pids.is_empty() {
            return err(format!("container {} has no processes", container.name));
        }
        let init = self.container_init(container);
        pids.sort_unstable_by_key(|p| Some(*p) == init);
        let t0 = Instant::now();
        for p in &pids {
            let _ = kill(Pid::from_raw(*p as i32), sig);
        }
        match self.wait_exit(container, limit) {
            Some(st) => Ok((st, t0.elapsed())),
            None => err(format!(
                "container {} did not exit within {limit:?} of {sig}",
                container.name
            )),
        }
    }
}

/// The children of `pid` (from `/proc/PID/task/*/children`).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn pid_ns(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_script_hides_the_machines_paths_and_quotes_words() {
        let c = Container {
            name: "c".into(),
            bin: vec!["/x/it's/tsbridge".into()],
            mounts: vec![("/run/l/state".into(), "/var/lib/tailscale".into())],
            argv: vec!["/usr/local/bin/tsbridge".into()],
            env: vec![],
        };
        let s = setup_script(&c).unwrap();
        let tmpfs = s
            .find("mount -t tmpfs -o mode=0755 tsl-hidden /var\n")
            .unwrap();
        assert!(
            tmpfs < s.find("mount --bind '/run/l/state'").unwrap(),
            "{s}"
        );
        assert!(s.contains(r"mount --bind '/x/it'\''s/tsbridge' '/usr/local/bin/tsbridge'"));
        assert!(s.ends_with("unset PATH; fi\nexec \"$@\"\n"), "{s}");
        let bad = Container {
            mounts: vec![("/x".into(), "/etc/passwd".into())],
            ..c
        };
        assert!(setup_script(&bad).is_err());
    }
}
