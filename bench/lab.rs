//! Benchmarks (not tests): tsbridge against containerboot (what the official Talos
//! extension runs), side by side in the same network-namespace lab with the real
//! tailscaled and headscale. `make bench` runs it; it prints a table and writes JSON to
//! `bench/out/results.json`.
//!
//! Environment: `TSBRIDGE_BENCH_BIN` (the release tsbridge, default the musl release
//! build), `TSBRIDGE_BENCH_TRIALS` (drift repair trials, default 200),
//! `TSBRIDGE_BENCH_IDLE_SECS` (idle window for wakeups, default 30).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tsbridge_lab::procfs::{cpu_ms, rss_kib, status_kib};
use tsbridge_lab::{Control, Host, Lab, Ns, Peer, Proc, Tools, in_ns, wait_until};

const LISTEN: &str = "127.0.0.1:9002";

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
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
    let trials: usize = env_num("TSBRIDGE_BENCH_TRIALS", 200);
    let idle = Duration::from_secs(env_num("TSBRIDGE_BENCH_IDLE_SECS", 30) as u64);

    let mut results = serde_json::Map::new();
    results.insert("machine".into(), machine());
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

    eprintln!("== tsbridge");
    results.insert(
        "tsbridge".into(),
        run_tsbridge(&lab, &control, &peer, trials, idle),
    );
    eprintln!("== containerboot");
    results.insert(
        "containerboot".into(),
        run_containerboot(&lab, &control, &containerboot, idle),
    );

    let v = Value::Object(results);
    let out = root.join("bench/out");
    std::fs::create_dir_all(&out).expect("bench/out");
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&v).unwrap() + "\n",
    )
    .expect("write results.json");
    let t = table(&v);
    print!("{t}");
    let m = &v["machine"];
    let md = format!(
        "# Benchmark results\n\nWritten by `make bench` (bench/lab.rs); raw numbers in `bench/out/results.json` of the run.\n\n\
         - machine: {} ({} cores), kernel {}\n- tailscale/tailscaled/containerboot {}, headscale {}\n- tsbridge commit {}\n- date: {}\n\n{t}\n\
         Both daemons run in the same lab (network namespaces, headscale, one peer), one after the other,\n\
         containerboot configured like the official extension (kernel mode, TS_STATE_DIR, TS_SOCKET).\n\
         Drift repair times include the shell polling loop (about a millisecond per `nft`/`ip` call).\n\
         Wake-ups are context switches of the daemon's process (all threads) while idle.\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["kernel"].as_str().unwrap_or(""),
        m["tailscale"].as_str().unwrap_or(""),
        m["headscale"].as_str().unwrap_or(""),
        m["tsbridge_commit"].as_str().unwrap_or(""),
        date(),
    );
    std::fs::write(out.join("RESULTS.md"), md).expect("write RESULTS.md");
    eprintln!("JSON: {}", out.join("results.json").display());
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

fn machine() -> Value {
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

fn readyz(ns: &Ns) -> Option<u16> {
    in_ns(ns, || {
        let addr: SocketAddr = LISTEN.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.get(9..12)?.parse().ok()
    })
}

/// Context switches (voluntary + involuntary) over all threads: each is a wake-up.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let f = |k: &str| -> u64 {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            f("voluntary_ctxt_switches:") + f("nonvoluntary_ctxt_switches:")
        })
        .sum()
}

fn wakeups_per_min(pid: u32, idle: Duration) -> f64 {
    let a = switches(pid);
    std::thread::sleep(idle);
    let b = switches(pid);
    (b.saturating_sub(a)) as f64 * 60.0 / idle.as_secs_f64()
}

fn tailscaled_pid(lab: &Lab, ns: &Ns) -> Option<u32> {
    lab.pids_named(ns, "tailscaled").first().copied()
}

fn key(lab: &Lab, control: &Control) -> String {
    lab.preauth_key(control, control.user_id, "10m", false, &[])
        .expect("pre-auth key")
        .key
}

fn wait_running_from(lab: &Lab, host: &Host, p: &Proc, start: Instant) -> Duration {
    if let Err(e) = lab.wait_running(host, Duration::from_secs(90)) {
        panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(p), 40));
    }
    start.elapsed()
}

fn sigterm_exit(lab: &Lab, p: &Proc) -> Option<f64> {
    let t = Instant::now();
    lab.signal_and_wait(p, Signal::SIGTERM, Duration::from_secs(15))
        .map(|_| t.elapsed().as_secs_f64() * 1000.0)
}

fn run_tsbridge(lab: &Lab, control: &Control, peer: &Peer, trials: usize, idle: Duration) -> Value {
    let node = lab.host("tsb").expect("node");
    let pod = lab.pod(&node).expect("pod");
    let mut env = lab.node_env(control, &node);
    env.push(("TS_AUTHKEY".into(), key(lab, control)));
    env.push((
        "TSBRIDGE_POD_CIDRS".into(),
        format!(
            "{},{}",
            tsbridge_lab::POD_CIDR_V4,
            tsbridge_lab::POD_CIDR_V6
        ),
    ));
    env.push(("TSBRIDGE_LISTEN".into(), LISTEN.into()));
    let start = Instant::now();
    let p = lab.start_tsbridge(&node, &env).expect("start tsbridge");
    let running = wait_running_from(lab, &node, &p, start);
    // Running -> /readyz (tailscaled Running, reconciled, pod path verified by the kernel).
    let t0 = Instant::now();
    wait_until(Duration::from_secs(30), "/readyz", || {
        Ok((readyz(&node.ns) == Some(200)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&p), 40)));
    let ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("running after {running:?}, ready {ready_ms:.0} ms later");

    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(p.pid);
    let ts_rss = tailscaled_pid(lab, &node.ns).map_or(0, rss_kib);
    eprintln!("idle for {idle:?} (wakeups)");
    let wakeups = wakeups_per_min(p.pid, idle);

    // Drift repair: delete, then poll (in one shell inside the node) until it is back.
    let nft = drift(
        lab,
        &node.ns,
        trials,
        "nft delete table inet tsbridge",
        "nft list table inet tsbridge",
    );
    let rule = drift(
        lab,
        &node.ns,
        trials,
        "ip rule del priority 5100",
        "ip rule show priority 5100 | grep -q lookup",
    );
    let storm = route_storm(lab, &node.ns, p.pid, 10_000);
    let throughput = iperf(lab, &node.ns, &pod.ns, peer);
    let cpu = cpu_ms(p.pid);
    let stop = sigterm_exit(lab, &p);
    json!({
        "start_to_running_ms": running.as_secs_f64() * 1000.0,
        "running_to_pod_path_ready_ms": ready_ms,
        "route_storm": storm,
        "throughput": throughput,
        "rss_kib": rss,
        "tailscaled_rss_kib": ts_rss,
        "idle_wakeups_per_min": wakeups,
        "drift_repair_nft_table_ms": nft,
        "drift_repair_guard_rule_ms": rule,
        "cpu_ms_total": cpu,
        "sigterm_to_exit_ms": stop,
    })
}

fn run_containerboot(lab: &Lab, control: &Control, cb: &Path, idle: Duration) -> Value {
    let node = lab.host("cb").expect("node");
    let tools_bin = cb.parent().unwrap().display().to_string();
    // As the official extension's service spec configures it (FACTS.md section 3), plus the
    // lab's login server and no log uploads.
    let env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            format!("{tools_bin}:/usr/sbin:/usr/bin:/sbin:/bin"),
        ),
        ("TS_SOCKET".into(), node.socket().display().to_string()),
        (
            "TS_STATE_DIR".into(),
            node.state_dir().display().to_string(),
        ),
        ("TS_USERSPACE".into(), "false".into()),
        ("TS_AUTHKEY".into(), key(lab, control)),
        ("TS_HOSTNAME".into(), "cb".into()),
        (
            "TS_EXTRA_ARGS".into(),
            format!("--login-server={}", control.url),
        ),
        (
            "TS_TAILSCALED_EXTRA_ARGS".into(),
            "--no-logs-no-support".into(),
        ),
    ];
    let mut env = env;
    for (k, v) in Lab::tailscaled_env() {
        env.push((k.into(), v.into()));
    }
    let envr: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let start = Instant::now();
    let cbs = cb.display().to_string();
    let p = lab
        .spawn(&node.ns, "cb-containerboot", &[&cbs], &envr)
        .expect("start containerboot");
    let running = wait_running_from(lab, &node, &p, start);
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(p.pid);
    let ts_rss = tailscaled_pid(lab, &node.ns).map_or(0, rss_kib);
    eprintln!("idle for {idle:?} (wakeups)");
    let wakeups = wakeups_per_min(p.pid, idle);
    let cpu = cpu_ms(p.pid);
    let stop = sigterm_exit(lab, &p);
    json!({
        "start_to_running_ms": running.as_secs_f64() * 1000.0,
        "running_to_pod_path_ready_ms": null,
        "note": "containerboot has no pod path (no SNAT, no MSS clamp) and no state to repair",
        "rss_kib": rss,
        "tailscaled_rss_kib": ts_rss,
        "idle_wakeups_per_min": wakeups,
        "cpu_ms_total": cpu,
        "sigterm_to_exit_ms": stop,
    })
}

/// 10,000 route adds then deletes in table 52 (a large tailnet's churn): tsbridge's CPU
/// time and peak RSS, and whether its state is right afterwards.
fn route_storm(lab: &Lab, ns: &Ns, pid: u32, n: usize) -> Value {
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do echo \"route add 100.96.$((i / 250)).$((i % 250 + 1))/32 dev tailscale0 table 52\"; i=$((i+1)); done > /tmp/storm-$$.add
         sed 's/route add/route del/' /tmp/storm-$$.add > /tmp/storm-$$.del
         ip -batch /tmp/storm-$$.add && ip -batch /tmp/storm-$$.del; rc=$?; rm -f /tmp/storm-$$.*; exit $rc"
    );
    let cpu0 = cpu_ms(pid);
    let t = Instant::now();
    lab.exec_ok(ns, &["sh", "-c", &script])
        .expect("route storm");
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let state_right = readyz(ns) == Some(200)
        && lab
            .exec_ok(ns, &["sh", "-c", "ip rule; ip -6 rule"])
            .map(|r| r.matches("proto 116").count() == 4)
            .unwrap_or(false);
    json!({
        "routes": n,
        "storm_ms": took.as_secs_f64() * 1000.0,
        "cpu_ms": cpu_ms(pid) - cpu0,
        "peak_rss_kib": status_kib(pid, "VmHWM:"),
        "state_right_after": state_right,
    })
}

/// iperf3 (TCP, 5 s) to the peer's tailnet address from the pod and from the node.
fn iperf(lab: &Lab, node: &Ns, pod: &Ns, peer: &Peer) -> Value {
    let server = lab
        .spawn(
            &peer.host.ns,
            "peer-iperf3",
            &["iperf3", "-s", "-p", "5201"],
            &[],
        )
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let target = peer.ip4.to_string();
    let run = |ns: &Ns| -> Option<f64> {
        let out = lab
            .exec_ok(
                ns,
                &["iperf3", "-c", &target, "-p", "5201", "-t", "5", "-J"],
            )
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["end"]["sum_received"]["bits_per_second"].as_f64()
    };
    let node_bps = run(node);
    let pod_bps = run(pod);
    lab.stop(&server);
    json!({
        "node_to_peer_mbit": node_bps.map(|b| b / 1e6),
        "pod_to_peer_mbit": pod_bps.map(|b| b / 1e6),
        "pod_over_node": match (pod_bps, node_bps) {
            (Some(p), Some(n)) if n > 0.0 => Some(p / n),
            _ => None,
        },
    })
}

/// Deletes an object `trials` times and measures until `present` succeeds again (the
/// poll itself costs about a millisecond per round, included).
fn drift(lab: &Lab, ns: &Ns, trials: usize, delete: &str, present: &str) -> Value {
    let script = format!(
        "for i in $(seq {trials}); do
           until {present} >/dev/null 2>&1; do :; done
           t0=$(date +%s%N); {delete} >/dev/null 2>&1 || echo fail
           until {present} >/dev/null 2>&1; do :; done
           t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 ))
         done"
    );
    let out = lab.exec_ok(ns, &["sh", "-c", &script]).expect("drift loop");
    let mut us: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(
        us.len() >= trials,
        "only {} of {trials} trials: {out}",
        us.len()
    );
    us.sort_unstable();
    let pct = |p: f64| us[((us.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    json!({ "trials": us.len(), "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) })
}

fn table(v: &Value) -> String {
    let f = |x: &Value| match x {
        Value::Null => "n/a".to_owned(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.1}")
            }
        }
        other => other.to_string(),
    };
    let t = &v["tsbridge"];
    let c = &v["containerboot"];
    let s = &v["binary_size_bytes"];
    let mut o = String::new();
    o.push_str("| measure | tsbridge | containerboot |\n|---|---|---|\n");
    let mut row = |name: &str, a: String, b: String| {
        o.push_str(&format!("| {name} | {a} | {b} |\n"));
    };
    row(
        "binary size, stripped (bytes)",
        f(&s["tsbridge"]),
        f(&s["containerboot"]),
    );
    row(
        "static",
        f(&s["tsbridge_static"]),
        f(&s["containerboot_static"]),
    );
    row(
        "start -> Running (ms)",
        f(&t["start_to_running_ms"]),
        f(&c["start_to_running_ms"]),
    );
    row(
        "Running -> pod path ready (ms)",
        f(&t["running_to_pod_path_ready_ms"]),
        "never (no pod path)".into(),
    );
    row(
        "RSS after join, daemon (KiB)",
        f(&t["rss_kib"]),
        f(&c["rss_kib"]),
    );
    row(
        "RSS after join, its tailscaled (KiB)",
        f(&t["tailscaled_rss_kib"]),
        f(&c["tailscaled_rss_kib"]),
    );
    row(
        "idle wake-ups per minute, daemon",
        f(&t["idle_wakeups_per_min"]),
        f(&c["idle_wakeups_per_min"]),
    );
    for (k, name) in [
        ("drift_repair_nft_table_ms", "nft table"),
        ("drift_repair_guard_rule_ms", "guard rule"),
    ] {
        let d = &t[k];
        row(
            &format!(
                "drift repair, {name}: p50 / p99 / max (ms, {} trials)",
                f(&d["trials"])
            ),
            format!("{} / {} / {}", f(&d["p50"]), f(&d["p99"]), f(&d["max"])),
            "n/a (nothing to repair)".into(),
        );
    }
    let st = &t["route_storm"];
    row(
        &format!(
            "route storm, {} adds + deletes in table 52: CPU ms / peak RSS KiB / state right",
            f(&st["routes"])
        ),
        format!(
            "{} / {} / {}",
            f(&st["cpu_ms"]),
            f(&st["peak_rss_kib"]),
            f(&st["state_right_after"])
        ),
        "n/a".into(),
    );
    let tp = &t["throughput"];
    row(
        "iperf3 to a peer: pod / node (Mbit/s), ratio",
        format!(
            "{} / {}, {}",
            f(&tp["pod_to_peer_mbit"]),
            f(&tp["node_to_peer_mbit"]),
            f(&tp["pod_over_node"])
        ),
        "pod: no path".into(),
    );
    row(
        "CPU time of the daemon, whole run incl. repairs and storm (ms)",
        f(&t["cpu_ms_total"]),
        f(&c["cpu_ms_total"]),
    );
    row(
        "SIGTERM -> exit (ms)",
        f(&t["sigterm_to_exit_ms"]),
        f(&c["sigterm_to_exit_ms"]),
    );
    o
}
