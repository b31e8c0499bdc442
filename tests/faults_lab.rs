//! Fault suites (issues 7, 10) on a lab node with the real tailscaled and headscale: the
//! regression tests of bugs already fixed. The default run (`make test`) does one iteration
//! of each; the long mode (`make test-long`: TSBRIDGE_FAULT_LONG=1, `--include-ignored`)
//! repeats them (the tailscaled restart backoff alone is minutes there) and adds the route
//! storm. Counts can also be set one by one: TSBRIDGE_FAULT_KILLS (long: 50),
//! TSBRIDGE_FAULT_RESTARTS (20), TSBRIDGE_FAULT_SIGTERMS (20), TSBRIDGE_FAULT_ROUTES (10000).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tsbridge_lab::procfs::{cpu_ms, status_kib};
use tsbridge_lab::{Control, Host, Lab, Pod, Proc, Tools, wait_until};

/// 4 policy rules (lab subnet, two pod CIDRs, service CIDR) and 4 nft rules.
const OWNED: (usize, usize) = (6, 4);

/// How many times to repeat a fault: `var` if set, else `long` in the long mode, else once.
fn count(var: &str, long: usize) -> usize {
    let default = match std::env::var("TSBRIDGE_FAULT_LONG").as_deref() {
        Ok("1") => long,
        _ => 1,
    };
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The log lines of a finished reconcile pass (an unchanged pass is a debug event: the
/// nodes here run with TSBRIDGE_LOG_LEVEL=debug).
const PASS_LINES: [&str; 3] = [
    "egress state in sync",
    "egress state reconciled",
    "egress reconcile failed",
];

struct World {
    lab: Lab,
    control: Control,
    node: Host,
    _pod: Pod,
}

impl World {
    fn new() -> World {
        let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
        let lab = Lab::new(tools).expect("lab");
        let control = lab.control().expect("headscale");
        let node = lab.host("node1").expect("node");
        let pod = lab.pod(&node).expect("pod");
        World {
            lab,
            control,
            node,
            _pod: pod,
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self
            .lab
            .node_env_with_key(&self.control, &self.node)
            .expect("node environment");
        env.push(("TSBRIDGE_LOG_LEVEL".into(), "debug".into()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn sh(&self, cmd: &str) -> String {
        self.lab
            .exec(&self.node.ns, &["sh", "-c", cmd])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn owned(&self) -> (usize, usize) {
        self.lab.owned_state(&self.node.ns)
    }

    fn wait_owned(&self, want: (usize, usize), p: &Proc, limit: Duration) {
        if let Err(e) = self.lab.wait_owned(&self.node.ns, want, limit) {
            panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40));
        }
    }

    /// The first line of `p`'s log after byte `from` that contains `needle`, and the
    /// offset just past it. The log is appended across restarts: `from` is a length read
    /// before the event.
    fn wait_log(&self, p: &Proc, from: usize, needle: &str, limit: Duration) -> (String, usize) {
        self.wait_log_any(p, from, &[needle], limit)
    }

    fn wait_log_any(
        &self,
        p: &Proc,
        from: usize,
        needles: &[&str],
        limit: Duration,
    ) -> (String, usize) {
        let found = wait_until(limit, &format!("{needles:?} in the log"), || {
            let log = self.lab.log(p);
            let Some(rest) = log.get(from..) else {
                return Ok(None);
            };
            let mut at = from;
            for line in rest.split_inclusive('\n') {
                at += line.len();
                if needles.iter().any(|n| line.contains(n)) {
                    return Ok(Some((line.trim_end().to_owned(), at)));
                }
            }
            Ok(None)
        });
        found.unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40)))
    }

    fn running(&self, p: &Proc, limit: Duration) {
        if let Err(e) = self.lab.wait_running(&self.node, limit) {
            panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40));
        }
    }

    fn tailscaled_pids(&self) -> Vec<u32> {
        self.lab.pids_named(&self.node.ns, "tailscaled")
    }

    /// Table 52 holds tailscale's routes again (MagicDNS at least).
    fn routes_back(&self, limit: Duration) -> bool {
        wait_until(limit, "table 52", || {
            Ok(self
                .sh("ip route show table 52")
                .contains("100.100.100.100")
                .then_some(()))
        })
        .is_ok()
    }
}

/// tailscaled `kill -9`, N times: restarted each time with a capped backoff (never a
/// tight loop), tailscale's routes and tsbridge's state back each time.
#[test]
fn tailscaled_killed_repeatedly_comes_back_with_capped_backoff() {
    let n = count("TSBRIDGE_FAULT_KILLS", 50);
    let w = World::new();
    let ts = w.lab.start_tsbridge(&w.node, &w.env(&[])).expect("start");
    w.running(&ts, Duration::from_secs(60));
    w.wait_owned(OWNED, &ts, Duration::from_secs(10));
    let mut gaps = Vec::new();
    for i in 0..n {
        let pids = w.tailscaled_pids();
        assert_eq!(pids.len(), 1, "kill {i}: tailscaled processes {pids:?}");
        let mark = w.lab.log(&ts).len();
        kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        let new = wait_until(Duration::from_secs(45), "a new tailscaled", || {
            Ok(w.tailscaled_pids()
                .into_iter()
                .find(|p| *p != pids[0])
                .map(Some)
                .unwrap_or(None))
        })
        .unwrap_or_else(|e| panic!("kill {i}: {e}\n{}", tsbridge_lab::tail(&w.lab.log(&ts), 30)));
        let gap = killed.elapsed();
        gaps.push(gap);
        // The cap is 30 s (plus jitter); a tight loop would restart in milliseconds.
        assert!(
            gap < Duration::from_secs(40),
            "kill {i}: restart took {gap:?}"
        );
        assert!(new != pids[0]);
        w.running(&ts, Duration::from_secs(60));
        assert!(
            w.routes_back(Duration::from_secs(20)),
            "kill {i}: table 52 not back"
        );
        // The state was complete before the kill: look at it only after tsbridge has
        // checked it again for the new tailscaled (else a duplicate would go unseen).
        let (_, at) = w.wait_log(
            &ts,
            mark,
            "tailscaled restarted; checking everything",
            Duration::from_secs(30),
        );
        let (pass, _) = w.wait_log_any(&ts, at, &PASS_LINES, Duration::from_secs(10));
        assert_eq!(w.owned(), OWNED, "kill {i}: after the pass `{pass}`");
    }
    // Backoff grows while tailscaled keeps dying young: the last restarts wait longer
    // than the first ones.
    if n >= 4 {
        assert!(
            gaps[n - 1] > gaps[0] + Duration::from_millis(500),
            "no backoff: {gaps:?}"
        );
    }
    let log = w.lab.log(&ts);
    assert_eq!(
        log.matches("tailscaled started").count(),
        n + 1,
        "one start per kill"
    );
    eprintln!("{n} kills, restart gaps: {gaps:?}");
}

/// tsbridge `kill -9` (with its tailscaled, as a container crash) and start again, N times:
/// it adopts what it installed, never duplicates. The kernel state is already complete
/// when the new instance starts, so counting it proves nothing until the new instance has
/// reconciled: its first pass must find everything in place and change nothing.
#[test]
fn tsbridge_killed_and_restarted_adopts_without_duplicates() {
    let n = count("TSBRIDGE_FAULT_RESTARTS", 20);
    let w = World::new();
    let env = w.env(&[]);
    let mut ts = w.lab.start_tsbridge(&w.node, &env).expect("start");
    w.running(&ts, Duration::from_secs(60));
    w.wait_owned(OWNED, &ts, Duration::from_secs(10));
    for i in 0..n {
        let tsd = w.tailscaled_pids();
        kill(Pid::from_raw(ts.pid as i32), Signal::SIGKILL).unwrap();
        for p in tsd {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        w.lab.wait_exit(&ts, Duration::from_secs(5)).expect("gone");
        assert_eq!(w.owned(), OWNED, "restart {i}: kill -9 leaves the state");

        let mark = w.lab.log(&ts).len();
        ts = w.lab.start_tsbridge(&w.node, &env).expect("start");
        let (first, _) = w.wait_log_any(&ts, mark, &PASS_LINES, Duration::from_secs(30));
        assert!(
            first.contains("egress state in sync"),
            "restart {i}: the first pass of the new instance was `{first}`, not an adoption"
        );
        assert_eq!(w.owned(), OWNED, "restart {i}: after the first pass");
        w.running(&ts, Duration::from_secs(60));
        assert_eq!(w.owned(), OWNED, "restart {i}: once Running again");
        let table = w.sh("nft list ruleset");
        assert_eq!(
            table.matches("table inet tsbridge").count(),
            1,
            "restart {i}: {table}"
        );
    }
}

/// SIGTERM at random moments of start-up: exit within 2 s of tailscaled being gone and
/// nothing of tsbridge's left behind.
#[test]
fn sigterm_during_startup_exits_fast_and_leaves_nothing() {
    let n = count("TSBRIDGE_FAULT_SIGTERMS", 20);
    let w = World::new();
    let env = w.env(&[]);
    let mut seed = std::process::id() as u64;
    for i in 0..n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The first one at once: before tsbridge could have installed any handler.
        let after = if i == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis((seed >> 33) % 3000)
        };
        let ts = w.lab.start_tsbridge(&w.node, &env).expect("start");
        std::thread::sleep(after);
        let sent = Instant::now();
        let st = w
            .lab
            .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(10));
        let took = sent.elapsed();
        // Exit 0; or, when the signal came before tsbridge's first statement (still in
        // `ip netns exec` or the runtime's start-up), death by SIGTERM with nothing
        // started: the checks below prove nothing is left either way.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            st.is_some_and(|s| s.success() || s.signal() == Some(15)),
            "SIGTERM {i} after {after:?}: {st:?}\n{}",
            tsbridge_lab::tail(&w.lab.log(&ts), 30)
        );
        assert!(
            took <= Duration::from_secs(2),
            "SIGTERM {i} after {after:?}: exit took {took:?}"
        );
        assert_eq!(w.owned(), (0, 0), "SIGTERM {i} after {after:?}: state left");
        assert!(
            w.tailscaled_pids().is_empty(),
            "SIGTERM {i} after {after:?}: tailscaled left"
        );
    }
}

/// A storm of route adds and deletes in table 52 (what a large tailnet does): tsbridge
/// stays up and its state is right afterwards. Then a storm of main-table routes (the
/// kernel's filter drops table 52's, so those can no longer overrun anything) while
/// tsbridge is stopped (SIGSTOP) with one of its rules deleted: its netlink socket
/// overruns, and on SIGCONT it must notice (ENOBUFS), resync fully and repair the rule.
#[test]
#[ignore = "long mode: make test-long"]
fn route_storm_in_table_52_and_forced_overrun_resync() {
    let n = count("TSBRIDGE_FAULT_ROUTES", 10_000);
    let w = World::new();
    let ts = w.lab.start_tsbridge(&w.node, &w.env(&[])).expect("start");
    w.running(&ts, Duration::from_secs(60));
    w.wait_owned(OWNED, &ts, Duration::from_secs(10));
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do echo \"route add 100.96.$((i / 250)).$((i % 250 + 1))/32 dev tailscale0 table 52\"; i=$((i+1)); done > /tmp/storm-$$.add
         sed 's/route add/route del/' /tmp/storm-$$.add > /tmp/storm-$$.del
         ip -batch /tmp/storm-$$.add && ip -batch /tmp/storm-$$.del; rc=$?; rm -f /tmp/storm-$$.*; exit $rc"
    );
    let cpu0 = cpu_ms(ts.pid);
    let started = Instant::now();
    w.lab
        .exec_ok(&w.node.ns, &["sh", "-c", &script])
        .expect("route storm");
    let took = started.elapsed();
    assert!(w.lab.try_wait(&ts).is_none(), "tsbridge died in the storm");
    w.wait_owned(OWNED, &ts, Duration::from_secs(10));
    eprintln!(
        "{n} route adds + deletes in {took:?}: tsbridge CPU {:.0} ms, peak RSS {} KiB",
        cpu_ms(ts.pid) - cpu0,
        status_kib(ts.pid, "VmHWM:")
    );

    // Forced overrun.
    let resyncs = |log: &str| log.matches("overran; full resync").count();
    let before = resyncs(&w.lab.log(&ts));
    kill(Pid::from_raw(ts.pid as i32), Signal::SIGSTOP).unwrap();
    w.sh("ip rule del priority 5100");
    let main_table = format!(
        "i=0; while [ $i -lt {n} ]; do echo \"route add 198.18.$((i / 250)).$((i % 250 + 1))/32 dev lo\"; i=$((i+1)); done > /tmp/storm-$$.add
         sed 's/route add/route del/' /tmp/storm-$$.add > /tmp/storm-$$.del
         ip -batch /tmp/storm-$$.add && ip -batch /tmp/storm-$$.del; rc=$?; rm -f /tmp/storm-$$.*; exit $rc"
    );
    let r = w.lab.exec_ok(&w.node.ns, &["sh", "-c", &main_table]);
    kill(Pid::from_raw(ts.pid as i32), Signal::SIGCONT).unwrap();
    r.expect("route storm while stopped");
    w.wait_owned(OWNED, &ts, Duration::from_secs(10));
    let after = resyncs(&w.lab.log(&ts));
    assert!(
        after > before,
        "no overrun resync after a stopped storm of {n} routes\n{}",
        tsbridge_lab::tail(&w.lab.log(&ts), 20)
    );
    eprintln!(
        "forced overrun: {} resync(s), deleted guard rule repaired",
        after - before
    );
}

/// A small tmpfs for a faulty state directory, unmounted on drop (also on panic).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tsbridge-fault"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs ({opts}) on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn remount_read_only(&self) {
        let st = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {} read-only", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// tsbridge's health listener on a lab node (the lab's default environment has none).
const LISTEN: &str = "127.0.0.1:9002";

impl World {
    /// Waits for a 503 `/readyz` whose body contains `want`; the body.
    fn not_ready_because(&self, p: &Proc, want: &str) -> String {
        let mut last = String::new();
        let r = wait_until(Duration::from_secs(30), "/readyz to name the cause", || {
            Ok(
                match tsbridge_lab::http_get(&self.node.ns, LISTEN.parse().unwrap(), "/readyz") {
                    Some((503, body)) if body.contains(want) => Some(body),
                    Some((_, body)) => {
                        last = body;
                        None
                    }
                    None => None,
                },
            )
        });
        r.unwrap_or_else(|e| {
            panic!(
                "{e}; want {want:?}; last /readyz:\n{last}\n{}",
                tsbridge_lab::tail(&self.lab.log(p), 30)
            )
        })
    }

    /// Starts tsbridge on the state directory `state`, which tailscaled cannot write:
    /// waits for the WARN naming the directory and `cause`, then for `/readyz` to fail with
    /// that reason. The running tsbridge.
    fn falls_back_to_memory(&self, state: &std::path::Path, cause: &str) -> Proc {
        let state_s = state.display().to_string();
        let ts = self
            .lab
            .start_tsbridge(
                &self.node,
                &self.env(&[("TS_STATE_DIR", &state_s), ("TSBRIDGE_LISTEN", LISTEN)]),
            )
            .expect("start");
        let warn = self.log_line(&ts, &["WARN", "in-memory state", &state_s]);
        assert!(warn.contains(cause), "{warn}");
        eprintln!("reported as: {warn}");
        let body = self.not_ready_because(&ts, "FAIL state: ");
        let want = format!("tailscaled cannot write its state directory {state_s} (");
        assert!(body.contains(&want) && body.contains(cause), "{body}");
        assert!(self.lab.try_wait(&ts).is_none(), "tsbridge exited");
        ts
    }

    /// Waits for a log line of `p` holding every one of `words`; the line.
    fn log_line(&self, p: &Proc, words: &[&str]) -> String {
        wait_until(Duration::from_secs(30), "the log line", || {
            Ok(self
                .lab
                .log(p)
                .lines()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .map(str::to_owned))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: no line with {words:?}\n{}",
                tsbridge_lab::tail(&self.lab.log(p), 40)
            )
        })
    }
}

/// A read-only state directory, both ways it happens:
/// - its parent is read-only and it does not exist: tsbridge cannot create it and says so,
///   naming it, without a tight restart loop; `/readyz` carries the cause;
/// - it exists but is read-only (a node whose state mount went read-only): tailscaled
///   cannot create its state file and falls back to in-memory state. tsbridge logs a WARN
///   naming the directory and the cause, and `/readyz` fails with that reason (a node on
///   in-memory state would lose its identity at the next restart).
///
/// Either way tsbridge stays up (no crash loop of its own) and exits cleanly on SIGTERM.
#[test]
fn read_only_state_dir_is_a_clear_error_not_a_crash_loop() {
    let w = World::new();
    let dir = w.node.state_dir().with_file_name("ro-state");
    let ro = Tmpfs::mount(&dir, "ro,size=64k");
    let state_s = dir.join("state").display().to_string();
    let ts = w
        .lab
        .start_tsbridge(
            &w.node,
            &w.env(&[("TS_STATE_DIR", &state_s), ("TSBRIDGE_LISTEN", LISTEN)]),
        )
        .expect("start");
    let started = Instant::now();
    let line = w.log_line(&ts, &["cannot start tailscaled", &state_s]);
    assert!(line.to_lowercase().contains("read-only"), "{line}");
    let body = w.not_ready_because(&ts, &state_s);
    assert!(
        body.contains("FAIL tailscaled: not running") && body.to_lowercase().contains("read-only"),
        "{body}"
    );
    // Backoff, not a tight loop: a handful of attempts since the start.
    let attempts = w.lab.log(&ts).matches("cannot start tailscaled").count();
    let secs = started.elapsed().as_secs() + 1;
    assert!(attempts <= secs as usize, "{attempts} attempts in {secs} s");
    assert!(w.lab.try_wait(&ts).is_none(), "tsbridge exited");
    let st = w
        .lab
        .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(5));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    drop(ro);

    // The directory exists, read-only: tailscaled starts and falls back to memory.
    let dir = w.node.state_dir().with_file_name("ro-existing");
    let fs = Tmpfs::mount(&dir, "size=64k,mode=0700");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    fs.remount_read_only();
    let ts = w.falls_back_to_memory(&state, "read-only file system");
    let st = w
        .lab
        .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

/// A full state directory (a small tmpfs filled up before tailscaled starts): tailscaled
/// cannot create its state file and falls back to in-memory state. tsbridge logs a WARN
/// naming the directory and the cause, `/readyz` fails with that reason, there is no tight
/// restart loop, and SIGTERM exits cleanly.
#[test]
fn full_state_dir_is_a_clear_error_not_a_crash_loop() {
    let w = World::new();
    let dir = w.node.state_dir().with_file_name("full-state");
    let _u = Tmpfs::mount(&dir, "size=64k,mode=0700");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // Fill it: the write fails with ENOSPC once the tmpfs is full.
    let filler = std::fs::write(dir.join("filler"), vec![0u8; 128 * 1024]);
    assert!(filler.is_err(), "the tmpfs should be full");
    let started = Instant::now();
    let ts = w.falls_back_to_memory(&state, "no space left on device");
    // Backoff, not a tight loop: a handful of tailscaled starts since the start.
    let starts = w.lab.log(&ts).matches("tailscaled started").count();
    let secs = started.elapsed().as_secs() + 1;
    assert!(
        starts <= 1 + secs as usize / 2,
        "{starts} tailscaled starts in {secs} s"
    );
    let st = w
        .lab
        .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}
