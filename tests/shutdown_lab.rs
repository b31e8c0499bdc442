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

/// 6 policy rules (guards for the lab subnet, two pod CIDRs and the service CIDR, an anchor
/// per family) and 4 nft rules.
const OWNED: (usize, usize) = (6, 4);
/// How long a stop may take, both ways.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

struct World {
    lab: Lab,
    node: Host,
    /// tsbridge's container (the process is `unshare`; tsbridge is its init).
    ts: Proc,
}

/// A node running tsbridge as Talos runs it (PID 1 of its container), Running, its kernel
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
    let key = lab
        .preauth_key(&control, control.user_id, "10m", false, &[])
        .unwrap();
    let mut c = lab.tsbridge_container(&control, &node).unwrap();
    c.env.push(("TS_AUTHKEY".into(), key.key));
    let ts = lab.start_container(&node, &c).expect("tsbridge");
    if let Err(e) = lab.wait_running(&node, Duration::from_secs(45)) {
        panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&ts), 40));
    }
    lab.wait_owned(&node.ns, OWNED, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&ts), 40)));
    World { lab, node, ts }
}

impl World {
    fn tsbridge(&self) -> u32 {
        let init = self.lab.container_init(&self.ts).expect("tsbridge runs");
        assert_eq!(
            tsbridge_lab::procfs::comm(init).as_deref(),
            Some("tsbridge")
        );
        init
    }

    /// Stops the service with `signal_it` (given tailscaled's pid), and checks what must
    /// hold after any stop: exit 0 within the limit, no tailscaled restarted (a watch
    /// polls every 2 ms for a new tailscaled, however short-lived), only tsbridge's own
    /// state removed, nothing left running. Returns the log from the shutdown on.
    fn stop_and_check(&self, signal_it: impl FnOnce(u32)) -> String {
        let before: BTreeSet<u32> = self
            .lab
            .pids_named(&self.node.ns, "tailscaled")
            .into_iter()
            .collect();
        assert_eq!(before.len(), 1, "one tailscaled: {before:?}");
        let watch = TailscaledWatch::start(self);
        wait_until(
            Duration::from_secs(5),
            "the watch to see tailscaled",
            || Ok((*watch.seen.lock().unwrap() == before).then_some(())),
        )
        .unwrap();
        let t0 = Instant::now();
        signal_it(*before.iter().next().unwrap());
        let st = self
            .lab
            .wait_exit(&self.ts, Duration::from_secs(12))
            .expect("tsbridge exits");
        let took = t0.elapsed();
        let seen = watch.finish();
        let log = self.lab.log(&self.ts);
        // tsbridge's own lines (not tailscaled's, which it forwards) from the shutdown on.
        let log = match log.find("shutting down") {
            Some(i) => own_lines(&log[log[..i].rfind('\n').map_or(0, |n| n + 1)..]),
            None => panic!("no shutdown in the log:\n{}", tsbridge_lab::tail(&log, 40)),
        };
        assert!(st.success(), "exit status {st}\n{log}");
        assert!(took < EXIT_LIMIT, "the stop took {took:?}\n{log}");
        assert_eq!(
            seen, before,
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
            self.lab.ns_pids(&self.node.ns).is_empty(),
            "{:?}",
            self.lab.ns_pids(&self.node.ns)
        );
        eprintln!("stopped in {took:?}");
        log
    }
}

fn own_lines(log: &str) -> String {
    log.lines()
        .filter(|l| !l.contains("source=\"tailscaled\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every tailscaled pid seen in the node until [`TailscaledWatch::finish`].
struct TailscaledWatch {
    seen: Arc<Mutex<BTreeSet<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TailscaledWatch {
    fn start(w: &World) -> TailscaledWatch {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let target = tsbridge_lab::in_ns(&w.node.ns, || {
            std::fs::read_link("/proc/thread-self/ns/net").ok()
        })
        .expect("the node's namespace");
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

fn sigterm(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

/// SIGTERM to every process of the container at once, tsbridge (its init) last, as
/// Talos's runtime does.
#[test]
fn sigterm_to_every_process_at_once_never_restarts_tailscaled() {
    let w = world();
    let pids = w.lab.container_pids(&w.ts);
    assert!(pids.len() >= 2, "tsbridge and tailscaled: {pids:?}");
    let log = w.stop_and_check(|_| {
        let init = w.tsbridge();
        for p in pids.iter().filter(|p| **p != init).chain([&init]) {
            sigterm(*p);
        }
    });
    assert!(!log.contains("restarting"), "{log}");
}

/// The same stop when tailscaled's exit reaches tsbridge before its own SIGTERM does (a
/// loaded node, or a runtime that signals the init last after a slow walk of the
/// container's processes): the exit must still not be taken for a crash.
#[test]
fn tailscaled_gone_before_tsbridge_sees_its_sigterm_is_not_a_crash() {
    let w = world();
    let tsbridge = w.tsbridge();
    let log = w.stop_and_check(|tailscaled| {
        sigterm(tailscaled);
        // Gone from /proc: tsbridge has reaped it, so its supervisor has the exit.
        wait_until(
            Duration::from_secs(10),
            "tailscaled to exit and be reaped",
            || Ok((!std::path::Path::new(&format!("/proc/{tailscaled}")).exists()).then_some(())),
        )
        .unwrap();
        sigterm(tsbridge);
    });
    let all = own_lines(&w.lab.log(&w.ts));
    assert!(
        !all.contains("restarting") && all.matches("tailscaled started").count() == 1,
        "tailscaled's exit was taken for a crash:\n{}",
        tsbridge_lab::tail(&all, 30)
    );
    assert!(
        log.contains("tailscaled exited as the service stops"),
        "{log}"
    );
}

/// SIGTERM to tsbridge alone (`kill` by hand, or a runtime that signals only the init):
/// it stops tailscaled itself, after removing its own state.
#[test]
fn sigterm_to_tsbridge_alone_stops_within_two_seconds() {
    let w = world();
    let tsbridge = w.tsbridge();
    let log = w.stop_and_check(|_| sigterm(tsbridge));
    assert!(log.contains("stopping tailscaled"), "{log}");
    assert!(!log.contains("restarting"), "{log}");
}
