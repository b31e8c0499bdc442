//! Shutdown as Talos does it: on `talosctl service ext-tailscale stop`, an upgrade or a
//! reboot, Talos signals **every** process of the service's container at once (containerd's
//! `task.Kill(..., WithKillAll)`), SIGKILL after 10 s. tailscaled then exits while tsbridge
//! is still tearing down: it must not be taken for a crash, never restarted, and tsbridge
//! removes exactly its own kernel state and exits within 2 s. Needs root and `make tools`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tsbridge_lab::{Host, Lab, Proc, Tools, wait_until};

/// 4 policy rules (lab subnet, two pod CIDRs, service CIDR) and 4 nft rules.
const OWNED: (usize, usize) = (4, 4);
/// How long a stop may take, both ways.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

struct World {
    lab: Lab,
    node: Host,
    /// `unshare`, whose only child is tsbridge as PID 1 of its own PID namespace.
    unshare: Proc,
}

/// A node running tsbridge as PID 1 (as in its Talos container), Running, its kernel
/// state in place, plus a policy rule and an nft table that are not tsbridge's.
fn world() -> World {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let lab = Lab::new(tools).expect("lab");
    let control = lab.control().expect("headscale");
    lab.peer(&control, "peer").expect("peer");
    let node = lab.host("node1").unwrap();
    lab.exec_ok(
        &node.ns,
        &[
            "sh",
            "-ec",
            "ip rule add pref 990 to 10.98.0.0/24 lookup main
             nft add table inet foreign
             nft add chain inet foreign out '{ type filter hook output priority 0; }'
             nft add rule inet foreign out ip daddr 10.98.0.1 counter",
        ],
    )
    .expect("foreign state");
    let env = lab.node_env_with_key(&control, &node).unwrap();
    let unshare = lab.start_tsbridge_as_pid1(&node, &env).expect("tsbridge");
    if let Err(e) = lab.wait_running(&node, Duration::from_secs(45)) {
        panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&unshare), 40));
    }
    lab.wait_owned(&node.ns, OWNED, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&unshare), 40)));
    World { lab, node, unshare }
}

impl World {
    /// The processes of the "container": everything in the node's namespace but `unshare`.
    fn container_pids(&self) -> Vec<u32> {
        self.lab
            .ns_pids(&self.node.ns)
            .into_iter()
            .filter(|p| *p != self.unshare.pid)
            .collect()
    }

    /// Records every tailscaled pid seen in the node from now until the returned guard is
    /// stopped, polling every 2 ms: a restart, however short-lived, shows up as a new pid.
    fn watch_tailscaled(&self) -> TailscaledWatch {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let target = netns_link(&self.node.ns).expect("the node's namespace");
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    if tsbridge_lab::procfs::comm(pid).is_some_and(|c| c == "tailscaled")
                        && std::fs::read_link(format!("/proc/{pid}/ns/net"))
                            .ok()
                            .as_ref()
                            == Some(&target)
                    {
                        s.lock().unwrap().insert(pid);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        TailscaledWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The log lines from the first "shutting down" on.
    fn shutdown_log(&self) -> String {
        let log = self.lab.log(&self.unshare);
        match log.find("shutting down") {
            Some(i) => log[log[..i].rfind('\n').map_or(0, |n| n + 1)..].to_owned(),
            None => panic!("no shutdown in the log:\n{}", tsbridge_lab::tail(&log, 40)),
        }
    }

    /// What must hold after any stop: exit 0 within the limit, nothing restarted, only
    /// tsbridge's own state removed, nothing left running.
    fn assert_clean_stop(&self, took: Duration, before: &BTreeSet<u32>, seen: BTreeSet<u32>) {
        let log = self.shutdown_log();
        assert!(took < EXIT_LIMIT, "the stop took {took:?}\n{log}");
        assert!(
            !log.contains("restarting") && !log.contains("tailscaled started"),
            "tailscaled was restarted during the shutdown:\n{log}"
        );
        assert_eq!(
            &seen, before,
            "a new tailscaled ran during the shutdown\n{log}"
        );
        assert!(log.contains("stopped"), "{log}");
        assert_eq!(self.lab.owned_state(&self.node.ns), (0, 0), "{log}");
        let left = self
            .lab
            .exec_ok(
                &self.node.ns,
                &["sh", "-c", "ip rule; nft list table inet foreign"],
            )
            .expect("the foreign rule and table are still there");
        assert!(
            left.contains("990:") && left.contains("10.98.0.1"),
            "{left}"
        );
        assert!(
            self.container_pids().is_empty(),
            "{:?}",
            self.container_pids()
        );
    }
}

fn netns_link(ns: &tsbridge_lab::Ns) -> Option<std::path::PathBuf> {
    tsbridge_lab::in_ns(ns, || std::fs::read_link("/proc/thread-self/ns/net").ok())
}

struct TailscaledWatch {
    seen: Arc<Mutex<BTreeSet<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TailscaledWatch {
    fn finish(mut self) -> BTreeSet<u32> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TailscaledWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// SIGTERM to every process of the container at once, tsbridge (its init) last, as
/// Talos's runtime does.
#[test]
fn sigterm_to_every_process_at_once_never_restarts_tailscaled() {
    let w = world();
    let watch = w.watch_tailscaled();
    let before: BTreeSet<u32> = w
        .lab
        .pids_named(&w.node.ns, "tailscaled")
        .into_iter()
        .collect();
    assert_eq!(before.len(), 1, "{before:?}");
    wait_until(
        Duration::from_secs(5),
        "the watch to see tailscaled",
        || Ok((*watch.seen.lock().unwrap() == before).then_some(())),
    )
    .unwrap();
    let mut pids = w.container_pids();
    assert!(pids.len() >= 2, "tsbridge and tailscaled: {pids:?}");
    // Children first, the init (tsbridge, the lowest pid: it started them) last.
    pids.sort_unstable_by(|a, b| b.cmp(a));
    let t0 = Instant::now();
    for p in &pids {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGTERM);
    }
    let st = w
        .lab
        .wait_exit(&w.unshare, Duration::from_secs(12))
        .expect("tsbridge exits");
    let took = t0.elapsed();
    assert!(st.success(), "exit status {st}\n{}", w.shutdown_log());
    w.assert_clean_stop(took, &before, watch.finish());
    eprintln!(
        "SIGTERM to {} processes: stopped in {took:?}\n{}",
        pids.len(),
        w.shutdown_log()
    );
}

/// The same stop when tailscaled's exit reaches tsbridge before its own SIGTERM does (a
/// loaded node, or a runtime that signals the init last after a slow walk of the
/// container's processes): the exit must still not be taken for a crash.
#[test]
fn tailscaled_gone_before_tsbridge_sees_its_sigterm_is_not_a_crash() {
    let w = world();
    let watch = w.watch_tailscaled();
    let before: BTreeSet<u32> = w
        .lab
        .pids_named(&w.node.ns, "tailscaled")
        .into_iter()
        .collect();
    assert_eq!(before.len(), 1, "{before:?}");
    let tailscaled = *before.iter().next().unwrap();
    let tsbridge = *w.container_pids().iter().min().expect("tsbridge runs");
    let t0 = Instant::now();
    kill(Pid::from_raw(tailscaled as i32), Signal::SIGTERM).unwrap();
    // Gone from /proc: tsbridge has reaped it, so its supervisor has the exit.
    wait_until(
        Duration::from_secs(10),
        "tailscaled to exit and be reaped",
        || Ok((!std::path::Path::new(&format!("/proc/{tailscaled}")).exists()).then_some(())),
    )
    .unwrap();
    kill(Pid::from_raw(tsbridge as i32), Signal::SIGTERM).unwrap();
    let st = w
        .lab
        .wait_exit(&w.unshare, Duration::from_secs(12))
        .expect("tsbridge exits");
    let took = t0.elapsed();
    assert!(st.success(), "exit status {st}\n{}", w.lab.log(&w.unshare));
    let log = w.lab.log(&w.unshare);
    let from_exit = &log[log.rfind("tsbridge starting").unwrap_or(0)..];
    assert!(
        !from_exit.contains("restarting") && from_exit.matches("tailscaled started").count() == 1,
        "tailscaled's exit was taken for a crash:\n{}",
        tsbridge_lab::tail(from_exit, 30)
    );
    w.assert_clean_stop(took, &before, watch.finish());
}

/// SIGTERM to tsbridge alone (`kill` by hand, or a runtime that signals only the init):
/// it stops tailscaled itself, after removing its own state.
#[test]
fn sigterm_to_tsbridge_alone_stops_within_two_seconds() {
    let w = world();
    let watch = w.watch_tailscaled();
    let before: BTreeSet<u32> = w
        .lab
        .pids_named(&w.node.ns, "tailscaled")
        .into_iter()
        .collect();
    wait_until(
        Duration::from_secs(5),
        "the watch to see tailscaled",
        || Ok((*watch.seen.lock().unwrap() == before).then_some(())),
    )
    .unwrap();
    let tsbridge = *w.container_pids().iter().min().expect("tsbridge runs");
    assert_eq!(
        tsbridge_lab::procfs::comm(tsbridge).as_deref(),
        Some("tsbridge")
    );
    let t0 = Instant::now();
    kill(Pid::from_raw(tsbridge as i32), Signal::SIGTERM).unwrap();
    let st = w
        .lab
        .wait_exit(&w.unshare, Duration::from_secs(12))
        .expect("tsbridge exits");
    let took = t0.elapsed();
    assert!(st.success(), "exit status {st}\n{}", w.shutdown_log());
    w.assert_clean_stop(took, &before, watch.finish());
    assert!(
        w.shutdown_log().contains("stopping tailscaled"),
        "{}",
        w.shutdown_log()
    );
    eprintln!("SIGTERM to tsbridge alone: stopped in {took:?}");
}
