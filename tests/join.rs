//! The daemon in the lab: `tsbridge run` on a node supervises the real tailscaled and
//! joins the real control server (headscale). Needs root and `make tools`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tsbridge_lab::{AuthKey, Control, Host, Lab, Proc, Tools, wait_until};

struct World {
    lab: Lab,
    control: Control,
}

fn world() -> World {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let lab = Lab::new(tools).expect("lab");
    let control = lab.control().expect("headscale");
    World { lab, control }
}

impl World {
    fn key(&self, expiration: &str) -> AuthKey {
        self.lab
            .preauth_key(&self.control, self.control.user_id, expiration, false, &[])
            .expect("pre-auth key")
    }

    fn expired_key(&self) -> AuthKey {
        let k = self.key("10m");
        self.lab.expire_key(&self.control, &k).expect("expire key");
        k
    }

    /// The node environment with `extra` appended (later entries win).
    fn env(
        &self,
        host: &Host,
        key: Option<&AuthKey>,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env = self.lab.node_env(&self.control, host);
        if let Some(k) = key {
            env.push(("TS_AUTHKEY".into(), k.key.clone()));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Starts tsbridge and waits for its first log line, so log checks see this start.
    fn start(&self, host: &Host, env: &[(String, String)]) -> Proc {
        let log = self.lab.dir.join(format!("{}-tsbridge.log", host.role));
        let starts = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("tsbridge starting")
                .count()
        };
        let before = starts();
        let p = self.lab.start_tsbridge(host, env).expect("start tsbridge");
        assert_eq!(p.log, log);
        wait_until(Duration::from_secs(5), "tsbridge's first log line", || {
            Ok((starts() > before).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.lab.log(&p)));
        p
    }

    fn running(&self, host: &Host, tsbridge: &Proc) -> std::net::Ipv4Addr {
        match self.lab.wait_running(host, Duration::from_secs(45)) {
            Ok((v4, _)) => v4,
            Err(e) => panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(tsbridge), 40)),
        }
    }

    /// The log of the latest start of tsbridge (the log file is appended across starts).
    fn current_log(&self, p: &Proc) -> String {
        let log = self.lab.log(p);
        match log.rfind("tsbridge starting") {
            Some(i) => log[i..].to_owned(),
            None => log,
        }
    }

    /// Waits for a line containing `needle` in the latest start's log.
    fn wait_log(&self, p: &Proc, needle: &str, limit: Duration) {
        let r = wait_until(limit, &format!("log line {needle:?}"), || {
            Ok(self.current_log(p).contains(needle).then_some(()))
        });
        if let Err(e) = r {
            panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40));
        }
    }

    /// Waits until `needle` occurs at least `n` times in the latest start's log.
    fn wait_log_count(&self, p: &Proc, needle: &str, n: usize, limit: Duration) {
        let r = wait_until(limit, &format!("{n} log lines {needle:?}"), || {
            Ok((self.current_log(p).matches(needle).count() >= n).then_some(()))
        });
        if let Err(e) = r {
            panic!("{e}\n{}", tsbridge_lab::tail(&self.lab.log(p), 40));
        }
    }

    /// tailscaled processes in the node's namespace.
    fn tailscaled_pids(&self, host: &Host) -> Vec<u32> {
        self.lab.pids_named(&host.ns, "tailscaled")
    }
}

fn zombies_in(lab: &Lab, host: &Host) -> Vec<u32> {
    lab.ns_pids(&host.ns)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false)
        })
        .collect()
}

/// Test 1: a fresh node with a 10-minute key reaches Running with a 100.x address and a
/// peer pings it.
#[test]
fn fresh_node_joins_and_a_peer_pings_it() {
    let w = world();
    let peer = w.lab.peer(&w.control, "peer").expect("peer");
    let node = w.lab.host("node1").unwrap();
    let key = w.key("10m");
    let ts = w.start(&node, &w.env(&node, Some(&key), &[]));
    let addr = w.running(&node, &ts);
    assert_eq!(addr.octets()[0], 100, "{addr}");
    w.lab
        .ping_until(&peer.host.ns, IpAddr::V4(addr), Duration::from_secs(20))
        .expect("the peer pings the node over the tailnet");
    w.wait_log(&ts, "tailnet status", Duration::from_secs(10));
    let log = w.lab.log(&ts);
    assert!(
        log.contains("source=\"tailscaled\"") || log.contains("source=tailscaled"),
        "tailscaled output is forwarded"
    );
    assert!(
        log.contains(&addr.to_string()),
        "the log shows the tailnet address"
    );
    assert_eq!(w.lab.try_wait(&ts), None, "tsbridge keeps running");
}

/// Test 2: restart with the existing state and an expired key: back to Running with the
/// same tailnet address, without using the key (auth-once).
#[test]
fn restart_with_state_and_expired_key_keeps_the_address() {
    let w = world();
    let node = w.lab.host("node2").unwrap();
    let key = w.key("10m");
    let ts = w.start(&node, &w.env(&node, Some(&key), &[]));
    let first = w.running(&node, &ts);
    assert!(w.lab.stop(&ts).is_some_and(|s| s.success()), "clean stop");
    w.lab.expire_key(&w.control, &key).expect("expire");
    let ts = w.start(&node, &w.env(&node, Some(&key), &[]));
    w.wait_log(&ts, "tailscale up succeeded", Duration::from_secs(45));
    let second = w.running(&node, &ts);
    assert_eq!(first, second, "same tailnet address after the restart");
    let log = w.lab.log(&ts);
    let second_start = &log[log.rfind("tsbridge starting").unwrap()..];
    assert!(
        second_start.contains("with_key=false"),
        "auth-once: the key is not used again\n{second_start}"
    );
    assert!(!second_start.contains("with_key=true"), "{second_start}");
}

/// Test 3: no state and an expired key: one clear error, tsbridge stays up (retrying),
/// and the node joins once a good key arrives on the next start.
#[test]
fn expired_key_without_state_is_a_clear_error_and_a_good_key_joins() {
    let w = world();
    let node = w.lab.host("node3").unwrap();
    let bad = w.expired_key();
    let ts = w.start(&node, &w.env(&node, Some(&bad), &[]));
    w.wait_log(&ts, "rejected the auth key", Duration::from_secs(30));
    // It stays up and retries with backoff; the state stays NeedsLogin.
    w.wait_log_count(&ts, "joining failed", 2, Duration::from_secs(30));
    assert_eq!(
        w.lab.try_wait(&ts),
        None,
        "tsbridge must not exit on a bad key"
    );
    let st = w.lab.status(&node).expect("status");
    assert_eq!(st["BackendState"], "NeedsLogin");
    let log = w.lab.log(&ts);
    let line = log
        .lines()
        .find(|l| l.contains("rejected the auth key"))
        .unwrap();
    assert!(
        line.contains("TS_AUTHKEY"),
        "the error says what to change: {line}"
    );
    assert!(w.lab.stop(&ts).is_some_and(|s| s.success()));

    let good = w.key("10m");
    let ts = w.start(&node, &w.env(&node, Some(&good), &[]));
    let addr = w.running(&node, &ts);
    assert_eq!(addr.octets()[0], 100);
}

/// Without any key a fresh node reports the missing key once and stays up.
#[test]
fn no_key_is_reported_once_and_tsbridge_stays_up() {
    let w = world();
    let node = w.lab.host("node3b").unwrap();
    let ts = w.start(&node, &w.env(&node, None, &[]));
    w.wait_log(&ts, "no auth key is configured", Duration::from_secs(30));
    // A restarted tailscaled makes the join side follow it and decide again, with the same
    // problem: it is not reported again.
    let old = w.tailscaled_pids(&node);
    assert_eq!(old.len(), 1, "one tailscaled: {old:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old[0] as i32), Signal::SIGKILL).unwrap();
    w.wait_log_count(
        &ts,
        "following tailscaled's LocalAPI",
        2,
        Duration::from_secs(30),
    );
    let needs_login_again = wait_until(
        Duration::from_secs(30),
        "NeedsLogin from the new tailscaled",
        || {
            Ok((w
                .current_log(&ts)
                .lines()
                .filter(|l| l.contains("tailscaled state") && l.contains("NeedsLogin"))
                .count()
                >= 2)
                .then_some(()))
        },
    );
    needs_login_again
        .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&w.lab.log(&ts), 40)));
    assert_eq!(w.lab.try_wait(&ts), None);
    assert_eq!(
        w.lab.log(&ts).matches("no auth key is configured").count(),
        1
    );
}

/// Test 4: `kill -9` tailscaled: restarted, Running again, no zombie.
#[test]
fn killed_tailscaled_is_restarted_and_reaped() {
    let w = world();
    let node = w.lab.host("node4").unwrap();
    let key = w.key("10m");
    let ts = w.start(&node, &w.env(&node, Some(&key), &[]));
    let addr = w.running(&node, &ts);
    let old = w.tailscaled_pids(&node);
    assert_eq!(old.len(), 1, "one tailscaled: {old:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old[0] as i32), Signal::SIGKILL).unwrap();
    let t0 = Instant::now();
    let new = wait_until(Duration::from_secs(20), "a new tailscaled", || {
        let p = w.tailscaled_pids(&node);
        Ok((p.len() == 1 && p[0] != old[0]).then(|| p[0]))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&w.lab.log(&ts), 30)));
    // Wait for the old process to be gone (not a zombie) before checking Running: the
    // state file is shared.
    let again = w.running(&node, &ts);
    assert_eq!(addr, again);
    eprintln!(
        "tailscaled restarted as {new} and Running after {:?}",
        t0.elapsed()
    );
    // A child that just exited (the `tailscale up` run for the new tailscaled) is a
    // zombie until the reaper's next wake-up: none may stay.
    wait_until(Duration::from_secs(2), "no zombies", || {
        Ok(zombies_in(&w.lab, &node).is_empty().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", zombies_in(&w.lab, &node)));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", old[0])).exists(),
        "the killed tailscaled was reaped"
    );
    let log = w.lab.log(&ts);
    assert!(
        log.contains("tailscaled exited") && log.contains("killed by SIGKILL"),
        "the log says why"
    );
    // The new tailscaled can be Running (from its cached netmap) a moment before
    // tsbridge's next reconnect attempt: wait for it rather than assume it happened.
    wait_until(
        Duration::from_secs(10),
        "the LocalAPI watch to reconnect to the new tailscaled",
        || {
            Ok((w
                .lab
                .log(&ts)
                .matches("following tailscaled's LocalAPI")
                .count()
                >= 2)
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&w.lab.log(&ts), 60)));
}

/// Test 5: SIGTERM to tsbridge: tailscaled gone, exit 0 within 10 s.
#[test]
fn sigterm_stops_tailscaled_and_exits_zero_within_ten_seconds() {
    let w = world();
    let node = w.lab.host("node5").unwrap();
    let key = w.key("10m");
    let ts = w.start(&node, &w.env(&node, Some(&key), &[]));
    w.running(&node, &ts);
    assert_eq!(w.tailscaled_pids(&node).len(), 1);
    let t0 = Instant::now();
    let st = w
        .lab
        .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(10))
        .expect("tsbridge exits within 10 s of SIGTERM");
    assert!(st.success(), "exit status {st}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(w.tailscaled_pids(&node).is_empty(), "tailscaled is gone");
    assert!(
        w.lab.ns_pids(&node.ns).is_empty(),
        "nothing left in the node namespace"
    );
}

/// SIGTERM while tailscaled ignores it: SIGKILL after 8 s, still exit 0 within 10 s.
#[test]
fn sigterm_with_a_stuck_tailscaled_still_exits_within_ten_seconds() {
    let w = world();
    let node = w.lab.host("node5b").unwrap();
    // A "tailscaled" that ignores SIGTERM.
    let fake = node.dir.join("stuck-tailscaled");
    std::fs::write(
        &fake,
        "#!/bin/sh\ntrap '' TERM\necho stuck-tailscaled-ignores-TERM\nwhile :; do sleep 0.1; done\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&fake).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ts = w.start(
        &node,
        &w.env(
            &node,
            None,
            &[("TSBRIDGE_TAILSCALED", fake.to_str().unwrap())],
        ),
    );
    // The script says so once its trap is set: SIGTERM before that would kill it.
    w.wait_log(
        &ts,
        "stuck-tailscaled-ignores-TERM",
        Duration::from_secs(10),
    );
    let t0 = Instant::now();
    let st = w
        .lab
        .signal_and_wait(&ts, Signal::SIGTERM, Duration::from_secs(10))
        .expect("tsbridge exits within 10 s of SIGTERM");
    assert!(st.success(), "exit status {st}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(7),
        "it gave tailscaled its grace period ({took:?})"
    );
    assert!(w.lab.log(&ts).contains("sending SIGKILL"));
}

/// Every regular file under `dir` (recursively) modified since `since` whose content
/// contains `needle`.
fn files_containing(
    dir: &std::path::Path,
    needle: &[u8],
    since: std::time::SystemTime,
) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && e.metadata()
                    .is_ok_and(|m| m.len() < 64 << 20 && m.modified().is_ok_and(|t| t >= since))
                && std::fs::read(e.path())
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(e.path().display().to_string());
            }
        }
    }
    hits
}

/// Test 6: during the join the key appears in no `/proc/*/cmdline`, in no `/proc/*/environ`
/// (tsbridge's own included, once it has read its configuration, and so in no child's
/// between fork and exec either), in no log line, and in no file under the state directory
/// or /tmp.
#[test]
fn the_key_never_leaks_during_the_join() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let w = world();
    let node = w.lab.host("node6").unwrap();
    let key = w.key("10m");
    let needle = key.key.clone().into_bytes();
    // Proves the scan reads tsbridge's environ while it runs: this one stays there.
    let canary = format!("canary-{}-{}", std::process::id(), key.key.len());
    type Hit = (u32, &'static str, String, Instant);
    let stop = Arc::new(AtomicBool::new(false));
    let found = Arc::new(Mutex::new(Vec::<Hit>::new()));
    let canaries = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let scans = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let scanner = {
        let (stop, found, canaries, scans, needle, canary) = (
            stop.clone(),
            found.clone(),
            canaries.clone(),
            scans.clone(),
            needle.clone(),
            canary.clone().into_bytes(),
        );
        std::thread::spawn(move || {
            let me = std::process::id();
            let has = |b: &[u8], n: &[u8]| b.windows(n.len()).any(|w| w == n);
            while !stop.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    if pid == me {
                        continue;
                    }
                    for f in ["cmdline", "environ"] {
                        // Taken before the read: a hit shows the key was there at or after
                        // this instant.
                        let at = Instant::now();
                        let Ok(b) = std::fs::read(format!("/proc/{pid}/{f}")) else {
                            continue;
                        };
                        if has(&b, &needle) {
                            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                                .unwrap_or_default();
                            found
                                .lock()
                                .unwrap()
                                .push((pid, f, comm.trim().to_owned(), at));
                        }
                        if f == "environ" && has(&b, &canary) {
                            canaries.lock().unwrap().push((pid, at));
                        }
                    }
                }
                scans.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let env = w.env(&node, Some(&key), &[("TSBRIDGE_TEST_CANARY", &canary)]);
    let ts = w.start(&node, &env);
    // tsbridge has logged, so it has read its configuration and cleared the key.
    let started = Instant::now();
    let addr = w.running(&node, &ts);
    w.wait_log(&ts, "tailscale up succeeded", Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    scanner.join().unwrap();
    assert!(addr.octets()[0] == 100);
    assert!(
        scans.load(Ordering::Relaxed) > 3,
        "the scanner ran during the join"
    );
    assert!(
        canaries
            .lock()
            .unwrap()
            .iter()
            .any(|(pid, at)| *pid == ts.pid && *at > started),
        "the scan read tsbridge's environ during the join"
    );
    // tsbridge's own environment: the key's value is NULs, every other variable intact.
    let environ = std::fs::read(format!("/proc/{}/environ", ts.pid)).unwrap();
    assert!(
        !environ
            .windows(needle.len())
            .any(|w| w == needle.as_slice()),
        "the key is still in tsbridge's /proc environ"
    );
    let mut cleared = b"\0TS_AUTHKEY=".to_vec();
    cleared.extend(std::iter::repeat_n(0, needle.len() + 1));
    assert!(
        environ.windows(cleared.len()).any(|w| w == cleared),
        "TS_AUTHKEY= and NULs of the key's length: {:?}",
        String::from_utf8_lossy(&environ)
    );
    for (k, v) in env.iter().filter(|(k, _)| k != "TS_AUTHKEY") {
        let entry = format!("\0{k}={v}\0").into_bytes();
        assert!(
            environ.windows(entry.len()).any(|w| w == entry),
            "{k}={v} is not intact in {:?}",
            String::from_utf8_lossy(&environ)
        );
    }
    assert!(
        // Logged before "tsbridge starting", where current_log begins; this log has one start.
        w.lab
            .log(&ts)
            .lines()
            .any(|l| l.contains("cleared the auth key") && l.contains("vars=TS_AUTHKEY ")),
        "{}",
        w.lab.log(&ts)
    );
    // Only one place may have shown the key, and only before tsbridge logged: the process
    // `ip netns exec` became (same pid), until tsbridge read its configuration. Every
    // other process, tsbridge's children between fork and exec included, never.
    let found: Vec<_> = found
        .lock()
        .unwrap()
        .iter()
        .filter(|(pid, f, _, at)| !(*pid == ts.pid && *f == "environ" && *at < started))
        .cloned()
        .collect();
    assert!(found.is_empty(), "the key leaked into {found:?}");
    let log = w.lab.log(&ts);
    assert!(
        log.contains("--auth-key=file:/dev/fd/"),
        "the key went through a pipe"
    );
    assert!(!log.contains(&key.key), "the key is in tsbridge's log");
    let files = [
        node.state_dir(),
        std::path::PathBuf::from("/tmp"),
        node.dir.clone(),
    ]
    .iter()
    .flat_map(|d| files_containing(d, &needle, since))
    .collect::<Vec<_>>();
    assert!(files.is_empty(), "the key is in files: {files:?}");
}

/// Test 7: changing TS_EXTRA_ARGS (hostname, tags) between two starts is applied, with no
/// "requires mentioning all non-default flags" failure.
#[test]
fn changed_flags_are_applied_on_the_next_start() {
    let w = world();
    let node = w.lab.host("node7").unwrap();
    let key = w.key("10m");
    let login = format!("--login-server={}", w.control.url);
    // headscale v0.29 refuses tags requested while registering with a user's pre-auth
    // key (tagged keys carry their own), so the tags come with the second start.
    let first = [
        ("TS_HOSTNAME", "node7a"),
        ("TS_EXTRA_ARGS", &format!("{login} --shields-up")),
    ];
    let ts = w.start(&node, &w.env(&node, Some(&key), &first));
    w.running(&node, &ts);
    w.wait_log(&ts, "tailscale up succeeded", Duration::from_secs(20));
    let p = node_prefs(&w, &node);
    assert_eq!(p["Hostname"], "node7a", "{p}");
    assert_eq!(p["ShieldsUp"], true, "{p}");
    assert!(w.lab.stop(&ts).is_some_and(|s| s.success()));

    let second = [
        ("TS_HOSTNAME", "node7b"),
        (
            "TS_EXTRA_ARGS",
            &format!("{login} --advertise-tags=tag:lab"),
        ),
    ];
    let ts = w.start(&node, &w.env(&node, Some(&key), &second));
    w.wait_log(&ts, "tailscale up succeeded", Duration::from_secs(45));
    w.running(&node, &ts);
    let log = w.lab.log(&ts);
    assert!(!log.contains("non-default flags"), "{log}");
    let p = node_prefs(&w, &node);
    assert_eq!(p["Hostname"], "node7b", "{p}");
    assert_eq!(p["AdvertiseTags"], serde_json::json!(["tag:lab"]), "{p}");
    // --shields-up was dropped from the flags: --reset made the new flags the whole truth.
    assert_eq!(p["ShieldsUp"], false, "{p}");
    let hostname = wait_until(
        Duration::from_secs(20),
        "the new hostname in the status",
        || {
            let st = w.lab.status(&node)?;
            Ok((st["Self"]["HostName"] == "node7b").then_some(()))
        },
    );
    hostname.expect("the node reports its new hostname");
}

fn node_prefs(w: &World, host: &Host) -> serde_json::Value {
    let out = w
        .lab
        .tailscale(host, &["debug", "prefs"])
        .expect("tailscale debug prefs");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prefs: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn ppid_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

/// As PID 1 (its own PID namespace, as in the Talos container) tsbridge reaps orphans
/// re-parented to it, not only its own children.
#[test]
fn as_pid_one_orphans_are_reaped() {
    let w = world();
    let node = w.lab.host("node9").unwrap();
    // A "tailscaled" that leaves an orphan behind and exits (so it is restarted, leaving
    // more orphans).
    let fake = node.dir.join("orphaning-tailscaled");
    std::fs::write(&fake, "#!/bin/sh\nsleep 0.6 &\nsleep 0.2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = w.env(
        &node,
        None,
        &[("TSBRIDGE_TAILSCALED", fake.to_str().unwrap())],
    );
    let unshare = w.lab.start_tsbridge_as_pid1(&node, &env).expect("start");
    let tsbridge = wait_until(Duration::from_secs(5), "tsbridge as PID 1", || {
        Ok(w.lab.ns_pids(&node.ns).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tsbridge")
                && ppid_and_state(*p).is_some_and(|(pp, _)| pp == unshare.pid)
        }))
    })
    .expect("tsbridge runs under unshare");
    // An orphaned `sleep` gets tsbridge as its parent.
    wait_until(
        Duration::from_secs(10),
        "an orphan re-parented to tsbridge",
        || {
            Ok(w.lab.ns_pids(&node.ns).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
                    && ppid_and_state(*p).is_some_and(|(pp, _)| pp == tsbridge)
            }))
        },
    )
    .expect("the orphan's parent is tsbridge (PID 1)");
    // Several restart cycles later, no zombie lingers (a zombie may exist for an instant
    // between exit and SIGCHLD handling: a lingering one is one still there a restart
    // cycle later).
    let exits = |n: usize| {
        wait_until(Duration::from_secs(30), "tailscaled restart cycles", || {
            Ok((w.lab.log(&unshare).matches("tailscaled exited").count() >= n).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", w.lab.log(&unshare)))
    };
    exits(3);
    let first: Vec<u32> = zombies_in(&w.lab, &node);
    exits(4);
    let lingering: Vec<u32> = zombies_in(&w.lab, &node)
        .into_iter()
        .filter(|p| first.contains(p))
        .collect();
    assert!(
        lingering.is_empty(),
        "zombies: {lingering:?}\n{}",
        w.lab.log(&unshare)
    );
    let log = w.lab.log(&unshare);
    assert!(log.matches("tailscaled exited").count() >= 2, "{log}");
}

/// `TS_AUTHKEY=file:/path`: the key is read from the file on every attempt, so a key
/// replaced in the file is used on the next retry, without a restart. A file that does not
/// exist at start is a warning naming it (it may appear later, as through `configFiles`),
/// and the join waits for it.
#[test]
fn a_key_file_replaced_while_retrying_is_used_without_a_restart() {
    let w = world();
    let node = w.lab.host("node8").unwrap();
    let key_file = node.dir.join("authkey");
    let file_ref = format!("file:{}", key_file.display());
    let ts = w.start(&node, &w.env(&node, None, &[("TS_AUTHKEY", &file_ref)]));
    w.wait_log(&ts, "tsbridge starting", Duration::from_secs(10));
    let log = w.lab.log(&ts);
    let start = log.find("tsbridge starting").expect("started");
    let warning = log[..start]
        .lines()
        .find(|l| l.contains("WARN") && l.contains("var=TS_AUTHKEY"))
        .unwrap_or_else(|| panic!("no warning before the start:\n{log}"));
    assert!(
        warning.contains(&key_file.display().to_string()) && warning.contains("does not exist"),
        "{warning}"
    );
    w.wait_log(&ts, "cannot read the auth key", Duration::from_secs(30));
    assert!(
        w.current_log(&ts)
            .lines()
            .any(|l| l.contains("cannot read the auth key")
                && l.contains(&key_file.display().to_string())),
        "the join's error names the file"
    );
    std::fs::write(&key_file, format!("{}\n", w.expired_key().key)).unwrap();
    w.wait_log(&ts, "rejected the auth key", Duration::from_secs(30));
    std::fs::write(&key_file, format!("{}\n", w.key("10m").key)).unwrap();
    let addr = w.running(&node, &ts);
    assert_eq!(addr.octets()[0], 100);
    assert_eq!(
        w.current_log(&ts).matches("tsbridge starting").count(),
        1,
        "no restart"
    );
}

/// kill -9 of tsbridge alone (outside a PID namespace nothing else ends its children):
/// its tailscaled keeps running, unsupervised. The next tsbridge stops that orphan and
/// starts its own, instead of failing on the orphan's socket in a loop.
#[test]
fn a_restarted_tsbridge_takes_over_from_an_orphaned_tailscaled() {
    let w = world();
    let node = w.lab.host("node10").unwrap();
    let key = w.key("10m");
    let env = w.env(&node, Some(&key), &[]);
    let ts = w.start(&node, &env);
    let addr = w.running(&node, &ts);
    let old = w.tailscaled_pids(&node);
    assert_eq!(old.len(), 1, "{old:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(ts.pid as i32), Signal::SIGKILL).unwrap();
    w.lab
        .wait_exit(&ts, Duration::from_secs(5))
        .expect("tsbridge gone");
    assert_eq!(w.tailscaled_pids(&node), old, "the orphan still runs");
    let ts = w.start(&node, &env);
    w.wait_log(&ts, "left by an earlier tsbridge", Duration::from_secs(10));
    assert_eq!(w.running(&node, &ts), addr);
    let now = w.tailscaled_pids(&node);
    assert!(now.len() == 1 && now != old, "{old:?} -> {now:?}");
    let log = w.current_log(&ts);
    assert!(!log.contains("address already in use"), "{log}");
}
