//! Benchmarks (not tests): tsbridge against containerboot (what the official Talos
//! extension runs), side by side in the same network-namespace lab with the real
//! tailscaled and headscale. `make bench` runs it; it prints a table and writes
//! `bench/out/results.json` and `bench/out/RESULTS.md`.
//!
//! What makes the ratios trustworthy:
//! - both daemons get the same node: a lab host with a pod (a veth with IPv4 and IPv6
//!   addresses, forwarding on) attached before the daemon starts;
//! - joins alternate (tsbridge, containerboot, then containerboot, tsbridge, ...) for
//!   `TSBRIDGE_BENCH_ROUNDS` rounds (default 7, at least 5) on fresh nodes, each removed from
//!   headscale afterwards so every round sees the same tailnet; ratios are per pair;
//! - Running is the instant tailscaled announces it on its IPN bus, seen by the same
//!   watcher for both (connected as soon as the socket accepts);
//! - drift repair is timed from the kernel's deletion notification to the kernel's
//!   notification of the re-creation (netlink listeners; nothing forked or polled in the
//!   timed path), with random gaps of 50-150 ms;
//! - wake-ups are voluntary context switches only, of both daemons at the same time,
//!   over `TSBRIDGE_BENCH_IDLE_SECS` (default 120) starting `TSBRIDGE_BENCH_SETTLE_SECS`
//!   (default 60) after Running; tsbridge's own counters say what woke it;
//! - CPU time is the scheduler's, in nanoseconds (`/proc/PID/task/*/schedstat`);
//! - throughput is `TSBRIDGE_BENCH_IPERF_RUNS` (default 5) alternating pod and node
//!   iperf3 runs of 10 s (`-O 2`), the ratio per pair.
//!
//! Environment: `TSBRIDGE_BENCH_BIN` (the release tsbridge, default the musl release
//! build), `TSBRIDGE_BENCH_TRIALS` (drift repair trials per object, default 200),
//! `TSBRIDGE_BENCH_STORMS` (route counts, default 1000,10000,100000), and the above.

#[path = "drift.rs"]
mod drift;
#[path = "observe.rs"]
mod observe;
#[path = "stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use stats::{median, num, ratios, spread};
use tsbridge_lab::procfs::{cpu_ns, rss_kib, status_kib, voluntary_switches};
use tsbridge_lab::{Control, Host, Lab, Ns, Peer, Proc, Tools, spawn_in};

/// The goals of issue 13, checked on every run.
const GOAL_READY_MS: f64 = 5.0;
const GOAL_DRIFT_P99_MS: f64 = 5.0;
const GOAL_STORM_CPU_MS: f64 = 20.0;
const GOAL_POD_OVER_NODE: f64 = 0.95;

struct Env {
    rounds: usize,
    trials: usize,
    idle: Duration,
    settle: Duration,
    iperf_runs: usize,
    storms: Vec<usize>,
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var("TSBRIDGE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/x86_64-unknown-linux-musl/release/tsbridge"));
    let containerboot = root.join(".tools/bin/containerboot");
    for p in [&bin, &containerboot] {
        assert!(
            p.exists(),
            "{} is missing: run `make build` and bench/tools.sh (make bench does both)",
            p.display()
        );
    }
    let env = Env {
        rounds: env_num("TSBRIDGE_BENCH_ROUNDS", 7).max(5),
        trials: env_num("TSBRIDGE_BENCH_TRIALS", 200),
        idle: Duration::from_secs(env_num("TSBRIDGE_BENCH_IDLE_SECS", 120) as u64),
        settle: Duration::from_secs(env_num("TSBRIDGE_BENCH_SETTLE_SECS", 60) as u64),
        iperf_runs: env_num("TSBRIDGE_BENCH_IPERF_RUNS", 5).max(1),
        storms: std::env::var("TSBRIDGE_BENCH_STORMS")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1000, 10_000, 100_000]),
    };

    let mut results = serde_json::Map::new();
    let load_before = loadavg();
    results.insert(
        "binary_size_bytes".into(),
        json!({
            "tsbridge": size(&bin),
            "containerboot": size(&containerboot),
            "tsbridge_static": is_static(&bin),
            "containerboot_static": is_static(&containerboot),
        }),
    );

    let tools = Tools::find(&bin).expect("lab tools (make tools)");
    let lab = Lab::new(tools).expect("lab");
    let control = lab.control().expect("headscale");
    let peer = lab.peer(&control, "peer").expect("peer");
    let b = Bench {
        lab: &lab,
        control: &control,
        containerboot: &containerboot,
    };

    eprintln!("== joins: {} alternating rounds", env.rounds);
    let (mut ts, mut cb) = (Vec::new(), Vec::new());
    for r in 0..env.rounds {
        // A, B then B, A: neither daemon always goes first.
        for daemon in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
            if daemon == 0 {
                ts.push(b.join(Daemon::Tsbridge, &format!("tsb{r}")));
            } else {
                cb.push(b.join(Daemon::Containerboot, &format!("cb{r}")));
            }
        }
        eprintln!(
            "round {r}: start -> Running tsbridge {:.0} ms (ready +{:.1} ms), containerboot {:.0} ms",
            ts[r].times.running_ms, ts[r].times.ready_ms, cb[r].times.running_ms
        );
    }

    eprintln!("== both daemons side by side (idle wake-ups, then tsbridge's work)");
    let (tsl, tsl_node) = b.start_long(Daemon::Tsbridge, "tsb-long");
    let (cbl, _cbl_node) = b.start_long(Daemon::Containerboot, "cb-long");
    let settled = tsl.running.max(cbl.running) + env.settle;
    std::thread::sleep(settled.saturating_duration_since(Instant::now()));
    let idle = b.idle(&tsl, &cbl, &tsl_node.ns, env.idle);
    let cb_cpu = cpu_ns(cbl.proc.pid);
    let cb_stop = b.stop(&cbl.proc, &cbl.host);

    let mut drift_results = serde_json::Map::new();
    eprintln!("== drift repair: {} trials per object", env.trials);
    for (k, v) in in_ns_result(&tsl_node.ns, env.trials) {
        drift_results.insert(format!("drift_repair_{}_ms", k.key()), v);
    }
    let routes52 = 10_000;
    eprintln!("== drift repair with {routes52} routes in table 52");
    b.table52(&tsl_node.ns, routes52, true);
    let mut with_routes = serde_json::Map::new();
    with_routes.insert("routes_in_table_52".into(), json!(routes52));
    for (k, v) in in_ns_result(&tsl_node.ns, env.trials) {
        with_routes.insert(format!("{}_ms", k.key()), v);
    }
    b.table52(&tsl_node.ns, routes52, false);

    eprintln!("== route storms {:?}", env.storms);
    let storms: Vec<Value> = env
        .storms
        .iter()
        .map(|n| b.storm(&tsl_node.ns, tsl.proc.pid, *n))
        .collect();

    eprintln!("== iperf3: {} alternating pod/node pairs", env.iperf_runs);
    let throughput = b.iperf(&tsl_node.ns, &tsl.pod, &peer, env.iperf_runs);
    let ts_cpu_total = cpu_ns(tsl.proc.pid);
    let ts_stop = b.stop(&tsl.proc, &tsl.host);

    let f = |v: &[Sample], g: fn(&Sample) -> f64| v.iter().map(g).collect::<Vec<f64>>();
    let ts_run = f(&ts, |s| s.times.running_ms);
    let cb_run = f(&cb, |s| s.times.running_ms);
    let ts_ready = f(&ts, |s| s.times.ready_ms);
    let steps = |v: &[Sample]| {
        json!({
            "tailscaled_answers": spread(&f(v, |s| s.times.answered_ms)),
            "up_reaches_tailscaled": spread(&f(v, |s| s.times.up_ms)),
            "up_reaches_tailscaled_after_answer": spread(&f(v, |s| s.times.up_ms - s.times.answered_ms)),
            "running": spread(&f(v, |s| s.times.running_ms)),
        })
    };
    let ts_rss = f(&ts, |s| s.rss_kib);
    let cb_rss = f(&cb, |s| s.rss_kib);
    let ts_tsd_rss = f(&ts, |s| s.tailscaled_rss_kib);
    let cb_tsd_rss = f(&cb, |s| s.tailscaled_rss_kib);
    let ts_term = f(&ts, |s| s.sigterm_ms);
    let cb_term = f(&cb, |s| s.sigterm_ms);
    let storm10k = storms
        .iter()
        .find(|s| s["routes"] == json!(10_000))
        .or(storms.first())
        .cloned()
        .unwrap_or(Value::Null);

    let mut t = serde_json::Map::new();
    t.insert("start_to_running_ms".into(), num(median(&ts_run)));
    t.insert("start_to_running_ms_spread".into(), spread(&ts_run));
    t.insert("join_steps_ms".into(), steps(&ts));
    t.insert(
        "running_to_pod_path_ready_ms".into(),
        num(median(&ts_ready)),
    );
    t.insert(
        "running_to_pod_path_ready_ms_spread".into(),
        spread(&ts_ready),
    );
    t.insert("route_storm".into(), storm10k);
    t.insert("route_storms".into(), json!(storms));
    t.insert("throughput".into(), throughput);
    t.insert("rss_kib".into(), num(median(&ts_rss)));
    t.insert("rss_kib_spread".into(), spread(&ts_rss));
    t.insert("tailscaled_rss_kib".into(), num(median(&ts_tsd_rss)));
    t.insert(
        "idle_wakeups_per_min".into(),
        idle["tsbridge"]["per_min"].clone(),
    );
    t.insert(
        "idle_wakeups_spread".into(),
        idle["tsbridge"]["per_min_spread"].clone(),
    );
    t.insert(
        "idle_wakeups_by_source".into(),
        idle["tsbridge_by_source"].clone(),
    );
    t.insert("idle_cpu_ns".into(), idle["tsbridge"]["cpu_ns"].clone());
    for (k, v) in drift_results {
        t.insert(k, v);
    }
    t.insert(
        "drift_repair_with_table_52_routes".into(),
        Value::Object(with_routes),
    );
    t.insert("cpu_ms_total".into(), num(ts_cpu_total as f64 / 1e6));
    t.insert("cpu_ns_total".into(), json!(ts_cpu_total));
    t.insert("sigterm_to_exit_ms".into(), num(median(&ts_term)));
    t.insert("sigterm_to_exit_ms_spread".into(), spread(&ts_term));
    t.insert("sigterm_to_exit_ms_long_run".into(), json!(ts_stop));
    t.insert(
        "samples".into(),
        json!(ts.iter().map(Sample::json).collect::<Vec<_>>()),
    );

    let c = json!({
        "start_to_running_ms": num(median(&cb_run)),
        "start_to_running_ms_spread": spread(&cb_run),
        "join_steps_ms": steps(&cb),
        "running_to_pod_path_ready_ms": null,
        "note": "containerboot has no pod path (no SNAT, no MSS clamp) and no state to repair",
        "rss_kib": num(median(&cb_rss)),
        "rss_kib_spread": spread(&cb_rss),
        "tailscaled_rss_kib": num(median(&cb_tsd_rss)),
        "idle_wakeups_per_min": idle["containerboot"]["per_min"],
        "idle_wakeups_spread": idle["containerboot"]["per_min_spread"],
        "idle_cpu_ns": idle["containerboot"]["cpu_ns"],
        "cpu_ms_total": num(cb_cpu as f64 / 1e6),
        "cpu_ns_total": cb_cpu,
        "sigterm_to_exit_ms": num(median(&cb_term)),
        "sigterm_to_exit_ms_spread": spread(&cb_term),
        "sigterm_to_exit_ms_long_run": cb_stop,
        "samples": cb.iter().map(Sample::json).collect::<Vec<_>>(),
    });
    results.insert("tsbridge".into(), Value::Object(t));
    results.insert("containerboot".into(), c);
    results.insert(
        "ratios_tsbridge_over_containerboot".into(),
        json!({
            "start_to_running": spread(&ratios(&ts_run, &cb_run)),
            "rss": spread(&ratios(&ts_rss, &cb_rss)),
            "sigterm_to_exit": spread(&ratios(&ts_term, &cb_term)),
        }),
    );
    results.insert("idle_window".into(), idle["window"].clone());
    results.insert("machine".into(), machine(&load_before, &loadavg(), &env));

    let v = Value::Object(results);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/out");
    std::fs::create_dir_all(&out).expect("bench/out");
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
    )
    .expect("write results.json");
    let table = table(&v);
    let goals = goals(&v);
    print!("{table}\n{goals}");
    std::fs::write(out.join("RESULTS.md"), results_md(&v, &table, &goals)).expect("RESULTS.md");
    eprintln!("JSON: {}", out.join("results.json").display());
}

fn in_ns_result(ns: &Ns, trials: usize) -> Vec<(drift::Object, Value)> {
    spawn_in(ns, move || drift::run(trials))
        .join()
        .expect("drift thread")
        .unwrap_or_else(|e| panic!("drift repair: {e}"))
}

fn env_num(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn is_static(p: &Path) -> bool {
    std::process::Command::new("file")
        .arg("-L")
        .arg(p)
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout);
            t.contains("statically linked") || t.contains("static-pie")
        })
        .unwrap_or(false)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine(load_before: &str, load_after: &str, env: &Env) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let versions = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/versions.env"))
        .unwrap_or_default();
    let pick = |k: &str| {
        versions
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    json!({
        "cpu": cpu, "cores": cores, "kernel": kernel,
        "tailscale": pick("TAILSCALE_VERSION"), "headscale": pick("HEADSCALE_VERSION"),
        "tsbridge_commit": git_commit(),
        "date": date(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rounds": env.rounds,
        "drift_trials": env.trials,
        "idle_window_s": env.idle.as_secs(),
        "idle_settle_s": env.settle.as_secs(),
        "iperf_runs": env.iperf_runs,
    })
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Tsbridge,
    Containerboot,
}

/// When a join got where, in ms from the daemon's start (the last one from Running).
#[derive(Clone, Copy)]
struct Times {
    /// tailscaled's backend answered on the IPN bus (its own start-up).
    answered_ms: f64,
    /// `tailscale up` reached tailscaled (its first preferences change).
    up_ms: f64,
    running_ms: f64,
    /// tsbridge: Running -> `/readyz` 200 (pod path verified by the kernel).
    ready_ms: f64,
}

/// One join round's figures.
struct Sample {
    times: Times,
    rss_kib: f64,
    tailscaled_rss_kib: f64,
    sigterm_ms: f64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "start_to_tailscaled_answers_ms": num(self.times.answered_ms),
            "start_to_up_reaches_tailscaled_ms": num(self.times.up_ms),
            "start_to_running_ms": num(self.times.running_ms),
            "running_to_pod_path_ready_ms": num(self.times.ready_ms),
            "rss_kib": num(self.rss_kib),
            "tailscaled_rss_kib": num(self.tailscaled_rss_kib),
            "sigterm_to_exit_ms": num(self.sigterm_ms),
        })
    }
}

/// A daemon left running after its join.
struct Running {
    proc: Proc,
    host: Host,
    pod: tsbridge_lab::Pod,
    running: Instant,
}

struct Bench<'a> {
    lab: &'a Lab,
    control: &'a Control,
    containerboot: &'a Path,
}

impl Bench<'_> {
    fn key(&self) -> String {
        self.lab
            .preauth_key(self.control, self.control.user_id, "10m", false, &[])
            .expect("pre-auth key")
            .key
    }

    /// A fresh node with a pod (same topology for both daemons), then the daemon, watched
    /// from before its start until Running (and, for tsbridge, until `/readyz` is 200).
    fn start(&self, d: Daemon, role: &str) -> (Running, Times) {
        let host = self.lab.host(role).expect("node");
        let pod = self.lab.pod(&host).expect("pod");
        // A settled node, as a real one is: the links' IPv6 duplicate address detection
        // done (finishing during the join would be a link change that makes tailscaled
        // redo its control connection, adding seconds of noise to either daemon).
        tsbridge_lab::wait_until(Duration::from_secs(10), "IPv6 addresses settled", || {
            let t = self
                .lab
                .exec_ok(&host.ns, &["ip", "-6", "addr", "show", "tentative"])
                .unwrap_or_default();
            Ok(t.trim().is_empty().then_some(()))
        })
        .expect("settled node");
        let watcher = observe::running_at(host.socket(), Duration::from_secs(90));
        let ready = (d == Daemon::Tsbridge)
            .then(|| observe::ReadyPoller::start(&host.ns, Duration::from_secs(30)));
        let t0 = Instant::now();
        let proc = match d {
            Daemon::Tsbridge => {
                let mut env = self.lab.node_env(self.control, &host);
                env.push(("TS_AUTHKEY".into(), self.key()));
                env.push(("TSBRIDGE_LISTEN".into(), observe::LISTEN.into()));
                self.lab
                    .start_tsbridge(&host, &env)
                    .expect("start tsbridge")
            }
            Daemon::Containerboot => self.start_containerboot(&host),
        };
        let steps = watcher.join().ok().flatten().unwrap_or_else(|| {
            panic!(
                "no Running\n{}",
                tsbridge_lab::tail(&self.lab.log(&proc), 40)
            )
        });
        let running = steps.running;
        let ready_ms = match ready {
            Some(p) => {
                let at = p.ready_at().unwrap_or_else(|| {
                    panic!(
                        "/readyz never 200\n{}",
                        tsbridge_lab::tail(&self.lab.log(&proc), 40)
                    )
                });
                at.saturating_duration_since(running).as_secs_f64() * 1000.0
            }
            None => f64::NAN,
        };
        let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        let times = Times {
            answered_ms: ms(steps.answered),
            up_ms: steps.up.map_or(f64::NAN, ms),
            running_ms: ms(running),
            ready_ms,
        };
        (
            Running {
                proc,
                host,
                pod,
                running,
            },
            times,
        )
    }

    /// As the official extension's service spec configures it (FACTS.md section 3), plus
    /// the lab's login server and no log uploads.
    fn start_containerboot(&self, host: &Host) -> Proc {
        let tools_bin = self
            .containerboot
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                format!("{tools_bin}:/usr/sbin:/usr/bin:/sbin:/bin"),
            ),
            ("TS_SOCKET".into(), host.socket().display().to_string()),
            (
                "TS_STATE_DIR".into(),
                host.state_dir().display().to_string(),
            ),
            ("TS_USERSPACE".into(), "false".into()),
            ("TS_AUTHKEY".into(), self.key()),
            ("TS_HOSTNAME".into(), host.role.clone()),
            (
                "TS_EXTRA_ARGS".into(),
                format!("--login-server={}", self.control.url),
            ),
            (
                "TS_TAILSCALED_EXTRA_ARGS".into(),
                "--no-logs-no-support".into(),
            ),
        ];
        for (k, v) in Lab::tailscaled_env() {
            env.push((k.into(), v.into()));
        }
        let envr: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cb = self.containerboot.display().to_string();
        self.lab
            .spawn(
                &host.ns,
                &format!("{}-containerboot", host.role),
                &[&cb],
                &envr,
            )
            .expect("start containerboot")
    }

    fn tailscaled_rss(&self, ns: &Ns) -> f64 {
        self.lab
            .pids_named(ns, "tailscaled")
            .first()
            .map_or(0.0, |p| rss_kib(*p) as f64)
    }

    /// One join round: start, measure, stop, and take the node off the tailnet again.
    fn join(&self, d: Daemon, role: &str) -> Sample {
        let (r, times) = self.start(d, role);
        std::thread::sleep(Duration::from_secs(3));
        let rss = rss_kib(r.proc.pid) as f64;
        let tsd_rss = self.tailscaled_rss(&r.host.ns);
        let sigterm_ms = self.stop(&r.proc, &r.host);
        if let Ok(id) = self.lab.node_id(self.control, role) {
            let _ = self.lab.headscale(
                self.control,
                &["nodes", "delete", "-i", &id.to_string(), "--force"],
            );
        }
        Sample {
            times,
            rss_kib: rss,
            tailscaled_rss_kib: tsd_rss,
            sigterm_ms: sigterm_ms.unwrap_or(f64::NAN),
        }
    }

    fn start_long(&self, d: Daemon, role: &str) -> (Running, Host) {
        let (r, t) = self.start(d, role);
        eprintln!("{role}: Running after {:.0} ms", t.running_ms);
        let host = r.host.clone();
        (r, host)
    }

    /// SIGTERM -> exit (ms); whatever the daemon left running in its node is killed.
    fn stop(&self, p: &Proc, host: &Host) -> Option<f64> {
        let t = Instant::now();
        let st = self
            .lab
            .signal_and_wait(p, Signal::SIGTERM, Duration::from_secs(15))
            .map(|_| t.elapsed().as_secs_f64() * 1000.0);
        for pid in self.lab.pids_named(&host.ns, "tailscaled") {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        self.lab.stop(p);
        // Kept for a post-mortem of the run (bench/out is not committed).
        let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/out/logs");
        if std::fs::create_dir_all(&logs).is_ok() {
            let _ = std::fs::write(logs.join(format!("{}.log", p.name)), self.lab.log(p));
        }
        st
    }

    /// Voluntary wake-ups of both daemons over the same window, in equal sub-windows for
    /// a spread, and what woke tsbridge by its own counters.
    fn idle(&self, ts: &Running, cb: &Running, ts_ns: &Ns, window: Duration) -> Value {
        let parts = 6u32;
        let step = window / parts;
        eprintln!("idle window {window:?} in {parts} parts");
        let before = observe::wakeups(ts_ns);
        std::thread::sleep(Duration::from_millis(500));
        let pids = [ts.proc.pid, cb.proc.pid];
        let mut sw: Vec<[u64; 2]> = vec![pids.map(voluntary_switches)];
        let cpu0 = pids.map(cpu_ns);
        for _ in 0..parts {
            std::thread::sleep(step);
            sw.push(pids.map(voluntary_switches));
        }
        let cpu1 = pids.map(cpu_ns);
        std::thread::sleep(Duration::from_millis(500));
        let after = observe::wakeups(ts_ns);
        let per_min = |i: usize| -> Vec<f64> {
            sw.windows(2)
                .map(|w| (w[1][i] - w[0][i]) as f64 * 60.0 / step.as_secs_f64())
                .collect()
        };
        let total =
            |i: usize| (sw[sw.len() - 1][i] - sw[0][i]) as f64 * 60.0 / window.as_secs_f64();
        let mut by_source = serde_json::Map::new();
        for (src, v) in &after {
            let b = before.iter().find(|(s, _)| s == src).map_or(0.0, |x| x.1);
            // The benchmark's own second /metrics request counts as one http wake-up.
            let own = if src == "http" { 1.0 } else { 0.0 };
            by_source.insert(src.clone(), num(v - b - own));
        }
        let side = |i: usize| {
            json!({
                "per_min": num(total(i)),
                "per_min_spread": spread(&per_min(i)),
                "voluntary_switches": sw[sw.len() - 1][i] - sw[0][i],
                "cpu_ns": cpu1[i] - cpu0[i],
            })
        };
        json!({
            "window": {"seconds": window.as_secs(), "parts": parts, "after_running_s": ts.running.max(cb.running).elapsed().as_secs()},
            "tsbridge": side(0),
            "containerboot": side(1),
            "tsbridge_by_source": by_source,
        })
    }

    /// Adds (or removes) `n` peer-like routes in table 52.
    fn table52(&self, ns: &Ns, n: usize, add: bool) {
        let verb = if add { "add" } else { "del" };
        let file =
            std::env::temp_dir().join(format!("tsbridge-bench-{}-{n}.{verb}", std::process::id()));
        let mut s = String::with_capacity(n * 48);
        for i in 0..n {
            s.push_str(&format!(
                "route {verb} 100.{}.{}.{}/32 dev tailscale0 table 52\n",
                96 + i / 62_500,
                (i / 250) % 250,
                i % 250 + 1
            ));
        }
        std::fs::write(&file, s).expect("route batch");
        let f = file.display().to_string();
        self.lab
            .exec_ok(ns, &["ip", "-batch", &f])
            .unwrap_or_else(|e| panic!("ip -batch {verb}: {e}"));
        let _ = std::fs::remove_file(&file);
    }

    /// `n` route adds then deletes in table 52 (a large tailnet's churn): tsbridge's CPU
    /// time and wake-ups meanwhile, its peak RSS, and whether its state is right after.
    fn storm(&self, ns: &Ns, pid: u32, n: usize) -> Value {
        let (cpu0, sw0) = (cpu_ns(pid), voluntary_switches(pid));
        let t = Instant::now();
        self.table52(ns, n, true);
        self.table52(ns, n, false);
        let took = t.elapsed();
        // Whatever tsbridge still has to do about it, it does now.
        std::thread::sleep(Duration::from_secs(1));
        let cpu = cpu_ns(pid) - cpu0;
        let wakeups = voluntary_switches(pid) - sw0;
        let owned = self.lab.owned_state(ns);
        let state_right = observe::readyz(ns) == Some(200) && owned.0 > 0 && owned.1 > 0;
        eprintln!(
            "storm of {n}: {:.3} ms CPU, {wakeups} wake-ups, state right {state_right}",
            cpu as f64 / 1e6
        );
        json!({
            "routes": n,
            "storm_ms": num(took.as_secs_f64() * 1000.0),
            "cpu_ms": num(cpu as f64 / 1e6),
            "cpu_ns": cpu,
            "cpu_ns_per_route": num(cpu as f64 / n as f64),
            "wakeups": wakeups,
            "peak_rss_kib": status_kib(pid, "VmHWM:"),
            "owned_state": [owned.0, owned.1],
            "state_right_after": state_right,
        })
    }

    /// iperf3 (TCP, 10 s after 2 s omitted) to the peer's tailnet address from the pod
    /// and from the node, alternating; the pod/node ratio per pair.
    fn iperf(&self, node: &Ns, pod: &tsbridge_lab::Pod, peer: &Peer, runs: usize) -> Value {
        let server = self
            .lab
            .spawn(
                &peer.host.ns,
                "peer-iperf3",
                &["iperf3", "-s", "-p", "5201"],
                &[],
            )
            .expect("iperf3 server");
        std::thread::sleep(Duration::from_millis(500));
        let target = peer.ip4.to_string();
        let run = |ns: &Ns| -> (f64, f64) {
            let Ok(out) = self.lab.exec_ok(
                ns,
                &[
                    "iperf3", "-c", &target, "-p", "5201", "-t", "10", "-O", "2", "-J",
                ],
            ) else {
                return (f64::NAN, f64::NAN);
            };
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            (
                v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .map_or(f64::NAN, |b| b / 1e6),
                v["end"]["sum_sent"]["retransmits"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            )
        };
        let (mut pod_m, mut node_m, mut pod_r, mut node_r) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            let (p, n) = if i % 2 == 0 {
                let p = run(&pod.ns);
                (p, run(node))
            } else {
                let n = run(node);
                (run(&pod.ns), n)
            };
            eprintln!(
                "iperf pair {i}: pod {:.0} Mbit/s ({} retr), node {:.0} Mbit/s ({} retr)",
                p.0, p.1, n.0, n.1
            );
            pod_m.push(p.0);
            pod_r.push(p.1);
            node_m.push(n.0);
            node_r.push(n.1);
        }
        self.lab.stop(&server);
        let r = ratios(&pod_m, &node_m);
        json!({
            "runs": runs,
            "seconds": 10,
            "omit_seconds": 2,
            "node_to_peer_mbit": num(median(&node_m)),
            "pod_to_peer_mbit": num(median(&pod_m)),
            "pod_over_node": num(median(&r)),
            "pod_over_node_spread": spread(&r),
            "pod_mbit_spread": spread(&pod_m),
            "node_mbit_spread": spread(&node_m),
            "pod_retransmits": spread(&pod_r),
            "node_retransmits": spread(&node_r),
        })
    }
}

fn f(x: &Value) -> String {
    match x {
        Value::Null => "n/a".to_owned(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 {
                format!("{f:.0}")
            } else if f.abs() < 10.0 {
                format!("{f:.2}")
            } else {
                format!("{f:.1}")
            }
        }
        other => other.to_string(),
    }
}

/// `median [min–max]` of a spread.
fn sp(s: &Value) -> String {
    format!("{} [{}–{}]", f(&s["median"]), f(&s["min"]), f(&s["max"]))
}

fn lat(d: &Value) -> String {
    format!(
        "{} / {} / {} ({} trials{})",
        f(&d["p50"]),
        f(&d["p99"]),
        f(&d["max"]),
        f(&d["trials"]),
        if d["missed"].as_u64().unwrap_or(0) > 0 {
            format!(", {} missed", d["missed"])
        } else {
            String::new()
        }
    )
}

fn table(v: &Value) -> String {
    let t = &v["tsbridge"];
    let c = &v["containerboot"];
    let s = &v["binary_size_bytes"];
    let r = &v["ratios_tsbridge_over_containerboot"];
    let rounds = f(&v["machine"]["rounds"]);
    let mut o = String::new();
    o.push_str("| measure | tsbridge | containerboot | tsbridge / containerboot, per pair |\n|---|---|---|---|\n");
    let mut row = |name: &str, a: String, b: String, ratio: String| {
        o.push_str(&format!("| {name} | {a} | {b} | {ratio} |\n"));
    };
    row(
        "binary size, stripped (bytes)",
        f(&s["tsbridge"]),
        f(&s["containerboot"]),
        String::new(),
    );
    row(
        "static",
        f(&s["tsbridge_static"]),
        f(&s["containerboot_static"]),
        String::new(),
    );
    row(
        &format!("start -> Running (ms), median [min–max] of {rounds} rounds"),
        sp(&t["start_to_running_ms_spread"]),
        sp(&c["start_to_running_ms_spread"]),
        sp(&r["start_to_running"]),
    );
    let js = |d: &Value| {
        format!(
            "{} / {} / {}",
            f(&d["join_steps_ms"]["tailscaled_answers"]["median"]),
            f(&d["join_steps_ms"]["up_reaches_tailscaled"]["median"]),
            f(&d["join_steps_ms"]["running"]["median"])
        )
    };
    row(
        "join steps from start (medians, ms): tailscaled answers / `tailscale up` reaches it / Running",
        js(t),
        js(c),
        String::new(),
    );
    row(
        "`tailscale up` reaches tailscaled, after it answers (ms): the daemon's own share",
        sp(&t["join_steps_ms"]["up_reaches_tailscaled_after_answer"]),
        sp(&c["join_steps_ms"]["up_reaches_tailscaled_after_answer"]),
        String::new(),
    );
    row(
        "Running -> pod path ready (ms)",
        sp(&t["running_to_pod_path_ready_ms_spread"]),
        "never (no pod path)".into(),
        String::new(),
    );
    row(
        "RSS after join, daemon (KiB)",
        sp(&t["rss_kib_spread"]),
        sp(&c["rss_kib_spread"]),
        sp(&r["rss"]),
    );
    row(
        "RSS after join, its tailscaled (KiB)",
        f(&t["tailscaled_rss_kib"]),
        f(&c["tailscaled_rss_kib"]),
        String::new(),
    );
    let w = &v["idle_window"];
    row(
        &format!(
            "idle wake-ups per minute (voluntary, both at once, {} s from {} s after Running; [min–max] of {} parts)",
            f(&w["seconds"]),
            f(&w["after_running_s"]),
            f(&w["parts"])
        ),
        format!(
            "{} [{}–{}]",
            f(&t["idle_wakeups_per_min"]),
            f(&t["idle_wakeups_spread"]["min"]),
            f(&t["idle_wakeups_spread"]["max"])
        ),
        format!(
            "{} [{}–{}]",
            f(&c["idle_wakeups_per_min"]),
            f(&c["idle_wakeups_spread"]["min"]),
            f(&c["idle_wakeups_spread"]["max"])
        ),
        String::new(),
    );
    let by: Vec<String> = t["idle_wakeups_by_source"]
        .as_object()
        .map(|m| m.iter().map(|(k, x)| format!("{k} {}", f(x))).collect())
        .unwrap_or_default();
    row(
        "what woke tsbridge in that window (its counters)",
        by.join(", "),
        "n/a".into(),
        String::new(),
    );
    row(
        "CPU in the idle window (ms)",
        f(&num(t["idle_cpu_ns"].as_f64().unwrap_or(f64::NAN) / 1e6)),
        f(&num(c["idle_cpu_ns"].as_f64().unwrap_or(f64::NAN) / 1e6)),
        String::new(),
    );
    for o in drift::Object::ALL {
        row(
            &format!(
                "drift repair, {}: p50 / p99 / max (ms)",
                o.key().replace('_', " ")
            ),
            lat(&t[format!("drift_repair_{}_ms", o.key())]),
            "n/a (nothing to repair)".into(),
            String::new(),
        );
    }
    let wr = &t["drift_repair_with_table_52_routes"];
    for o in drift::Object::ALL {
        row(
            &format!(
                "  same, {} routes in table 52: {}",
                f(&wr["routes_in_table_52"]),
                o.key().replace('_', " ")
            ),
            lat(&wr[format!("{}_ms", o.key())]),
            String::new(),
            String::new(),
        );
    }
    for st in t["route_storms"].as_array().into_iter().flatten() {
        row(
            &format!(
                "route storm, {} adds + deletes in table 52: CPU ms / wake-ups / peak RSS KiB / state right",
                f(&st["routes"])
            ),
            format!(
                "{} / {} / {} / {}",
                f(&st["cpu_ms"]),
                f(&st["wakeups"]),
                f(&st["peak_rss_kib"]),
                f(&st["state_right_after"])
            ),
            "n/a".into(),
            String::new(),
        );
    }
    let tp = &t["throughput"];
    row(
        &format!(
            "iperf3 to a peer, {} pairs of 10 s: pod / node (Mbit/s), ratio median [min–max]",
            f(&tp["runs"])
        ),
        format!(
            "{} / {}, {}",
            f(&tp["pod_to_peer_mbit"]),
            f(&tp["node_to_peer_mbit"]),
            sp(&tp["pod_over_node_spread"])
        ),
        "pod: no path".into(),
        String::new(),
    );
    row(
        "iperf3 retransmits, pod / node (median)",
        format!(
            "{} / {}",
            f(&tp["pod_retransmits"]["median"]),
            f(&tp["node_retransmits"]["median"])
        ),
        String::new(),
        String::new(),
    );
    row(
        "CPU time of the long-running daemon (ms; tsbridge incl. repairs, storms, iperf)",
        f(&t["cpu_ms_total"]),
        f(&c["cpu_ms_total"]),
        String::new(),
    );
    row(
        "SIGTERM -> exit (ms)",
        sp(&t["sigterm_to_exit_ms_spread"]),
        sp(&c["sigterm_to_exit_ms_spread"]),
        sp(&r["sigterm_to_exit"]),
    );
    o
}

/// The goals, each met or not, with the figure it rests on.
fn goals(v: &Value) -> String {
    let t = &v["tsbridge"];
    let c = &v["containerboot"];
    let n = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let mut o = String::from("| goal | measured | met |\n|---|---|---|\n");
    let mut row = |goal: &str, measured: String, met: bool| {
        o.push_str(&format!(
            "| {goal} | {measured} | {} |\n",
            if met { "yes" } else { "**no**" }
        ));
    };
    let (tr, cr) = (n(&t["start_to_running_ms"]), n(&c["start_to_running_ms"]));
    row(
        "start -> Running no slower than containerboot's median (same run)",
        format!("{tr:.0} ms vs {cr:.0} ms (medians)"),
        tr <= cr,
    );
    let ready = n(&t["running_to_pod_path_ready_ms_spread"]["max"]);
    row(
        "Running -> pod path ready <= 5 ms",
        format!(
            "median {:.2} ms, max {ready:.2} ms",
            n(&t["running_to_pod_path_ready_ms"])
        ),
        ready <= GOAL_READY_MS,
    );
    let mut worst = 0.0f64;
    let mut parts = Vec::new();
    for o in drift::Object::ALL {
        let a = n(&t[format!("drift_repair_{}_ms", o.key())]["p99"]);
        let b = n(&t["drift_repair_with_table_52_routes"][format!("{}_ms", o.key())]["p99"]);
        worst = worst.max(a).max(b);
        if a.is_nan() || b.is_nan() {
            worst = f64::INFINITY;
        }
        parts.push(format!("{} {a:.2}/{b:.2}", o.key().replace('_', " ")));
    }
    row(
        "drift repair p99 <= 5 ms for the nft table, a chain, a rule, a guard rule (without / with 10,000 routes in table 52)",
        parts.join(", ") + " ms",
        worst <= GOAL_DRIFT_P99_MS,
    );
    let st = &t["route_storm"];
    let storms: Vec<String> = t["route_storms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{}: {} ms", f(&s["routes"]), f(&s["cpu_ms"])))
        .collect();
    let all_right = t["route_storms"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|s| s["state_right_after"] == json!(true));
    row(
        "10,000 route adds + deletes in table 52 cost <= 20 ms CPU, state right, at most linear growth",
        format!("{} (state right: {all_right})", storms.join(", ")),
        n(&st["cpu_ms"]) <= GOAL_STORM_CPU_MS && all_right && linear(t),
    );
    let timer = n(&t["idle_wakeups_by_source"]["timer"]);
    row(
        "0 timer wake-ups idle; every remaining wake-up a real event, reported by source",
        format!(
            "timer {timer:.0}; all wake-ups {:.1}/min",
            n(&t["idle_wakeups_per_min"])
        ),
        timer == 0.0,
    );
    let tp = &t["throughput"];
    row(
        "pod / node throughput >= 0.95, stable across runs",
        format!(
            "median {:.3} [{:.3}–{:.3}]",
            n(&tp["pod_over_node"]),
            n(&tp["pod_over_node_spread"]["min"]),
            n(&tp["pod_over_node_spread"]["max"])
        ),
        n(&tp["pod_over_node"]) >= GOAL_POD_OVER_NODE,
    );
    o
}

/// Cost per route does not grow with the storm's size (within 1 ms of noise).
fn linear(t: &Value) -> bool {
    let s: Vec<(f64, f64)> = t["route_storms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["routes"].as_f64()?, s["cpu_ms"].as_f64()?)))
        .collect();
    s.windows(2)
        .all(|w| w[1].1 <= w[0].1 * (w[1].0 / w[0].0) + 1.0)
}

fn results_md(v: &Value, table: &str, goals: &str) -> String {
    let m = &v["machine"];
    format!(
        "# Benchmark results\n\n\
         Written by `make bench` (bench/lab.rs); raw numbers in `bench/out/results.json` of the run.\n\n\
         - machine: {} ({} cores), kernel {}\n\
         - load average (1/5/15 min) before: {}, after: {}\n\
         - tailscale/tailscaled/containerboot {}, headscale {}\n\
         - tsbridge commit {}\n\
         - date: {}\n\n\
         ## Figures\n\n{table}\n\
         ## Goals (issue 13)\n\n{goals}\n\
         ## How it is measured\n\n\
         - Both daemons get identical nodes: a lab host with a pod attached (veth, IPv4 and IPv6\n\
           addresses, forwarding on), settled (IPv6 duplicate address detection finished) before the\n\
           daemon starts; containerboot is configured like the official extension (kernel mode,\n\
           TS_STATE_DIR, TS_SOCKET).\n\
         - Joins alternate on fresh nodes (tsbridge first in even rounds, containerboot first in odd\n\
           ones), {} rounds; each node is deleted from headscale after its round. Start -> Running ends\n\
           when tailscaled announces Running on its IPN bus, seen by one watcher used for both.\n\
           Running -> pod path ready ends at the first `/readyz` 200 (tailscaled Running with an\n\
           address, kernel state reconciled, the kernel's route lookup for a pod packet leaves via\n\
           tailscale0). Ratios are per pair; the table shows the median and [min–max].\n\
         - Drift repair: the benchmark deletes the object over netlink; listener sockets in the node\n\
           timestamp the kernel's deletion notification and the notification of tsbridge's\n\
           re-creation (no fork, no polling in the timed path); random gaps of 50-150 ms; the state\n\
           is checked whole before the next trial.\n\
         - Idle wake-ups: voluntary context switches (all threads) of both long-running daemons over\n\
           the same window, starting {} s after Running; the spread is over {} equal parts. What woke\n\
           tsbridge comes from its `tsbridge_wakeups_total{{source}}` counters (the benchmark's own\n\
           `/metrics` read is subtracted).\n\
         - CPU: `/proc/PID/task/*/schedstat` (nanoseconds). Route storms: `ip -batch` adds then\n\
           deletes N /32 routes in table 52; tsbridge's CPU and wake-ups over the storm plus 1 s.\n\
         - Throughput: iperf3 TCP to the peer's tailnet address, 10 s after 2 s omitted, pod and node\n\
           runs alternating (pod first in even pairs).\n\
         - The harness's timing threads (the IPN-bus watcher, the `/readyz` poller, the drift\n\
           listeners and deleter) run at real-time priority (SCHED_FIFO), so their own scheduling\n\
           under other load does not count as the daemons'; both daemons run at normal priority.\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["kernel"].as_str().unwrap_or(""),
        m["loadavg_before"].as_str().unwrap_or(""),
        m["loadavg_after"].as_str().unwrap_or(""),
        m["tailscale"].as_str().unwrap_or(""),
        m["headscale"].as_str().unwrap_or(""),
        m["tsbridge_commit"].as_str().unwrap_or(""),
        m["date"].as_str().unwrap_or(""),
        f(&m["rounds"]),
        f(&m["idle_settle_s"]),
        f(&v["idle_window"]["parts"]),
    )
}
