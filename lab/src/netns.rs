//! Network namespaces: creating commands in them, running code in them, and removing them
//! (also those left by dead runs).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, LAB_ROOT, NS_PREFIX, Result, err};

/// A namespace of the lab (a host on the lab network, a pod, or the switch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns(pub String);

impl Ns {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Runs `f` on a thread inside `ns`'s network namespace and returns its result.
pub fn in_ns<T: Send + 'static>(ns: &Ns, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(ns, f).join().expect("namespace thread panicked")
}

/// Starts `f` on a thread inside `ns`'s network namespace (a thread, because `setns`
/// changes only the calling thread).
pub fn spawn_in<T: Send + 'static>(
    ns: &Ns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Kills whatever still runs in a namespace and deletes it with its /etc/netns entry.
pub fn remove_ns(name: &str) {
    for _ in 0..3 {
        let pids = ns_pids(name);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

pub(crate) fn ns_pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of earlier lab runs whose owning process is dead: namespaces named
/// `tsl-<pid>-...` (and what runs in them), their /etc/netns entries, and lab directories
/// `<LAB_ROOT>/<pid>-...`. Never touches anything of a live process. Returns what it
/// removed.
pub fn sweep() -> Result<Vec<String>> {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let owner = |name: &str| -> Option<u32> { name.split('-').next()?.parse().ok() };
    let mut removed = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for dir in ["/run/netns", "/etc/netns"] {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(NS_PREFIX) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    for n in names {
        match owner(&n[NS_PREFIX.len()..]) {
            Some(pid) if !alive(pid) => {
                remove_ns(&n);
                removed.push(n);
            }
            _ => {}
        }
    }
    if let Ok(rd) = fs::read_dir(LAB_ROOT) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner(&n)
                && !alive(pid)
            {
                let _ = fs::remove_dir_all(e.path());
                removed.push(e.path().display().to_string());
            }
        }
    }
    Ok(removed)
}

pub(crate) fn netns_command(ns: &Ns, argv: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).args(argv);
    cmd.env_clear();
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `ip -n NS WORDS...` (`words` split on whitespace; names and addresses never
/// contain spaces).
pub fn ipn(ns: &Ns, words: &str) -> Result<()> {
    let mut args = vec!["-n", ns.name()];
    args.extend(words.split_whitespace());
    ip(&args)
}

/// Runs `ip ARGS` in the current namespace; an error carries ip's stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
