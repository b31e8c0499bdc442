//! Liveness and readiness, shared by the daemon's loops and read by `/healthz`, `/readyz`
//! and `tsbridge_ready`.
//!
//! - Liveness: every long-running loop holds a [`LoopGuard`]; when the loop's task ends
//!   (returns or is dropped) the guard marks it dead. With a single-threaded runtime, a loop
//!   that blocks the runtime also stops the server from answering, which a prober sees as a
//!   timeout. No heartbeat timers: an idle daemon stays idle.
//! - Readiness: a pure function ([`readiness`]) over a snapshot of what the parts report.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::status::{BackendState, TailscaleStatus};

/// The verdict of one readiness part, as its owner last reported it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Check {
    /// Not decided yet (at start, or after a change that needs a new check).
    #[default]
    Pending,
    /// Passes; the text says what was seen (for example the route a pod packet takes).
    Ok(String),
    /// Fails; the text says why, in one line.
    Fail(String),
    /// Nothing to verify yet, and nothing wrong seen: counts as ready, but is never shown
    /// as `ok` (the pod path on a node without pods).
    Unverified(String),
}

#[derive(Debug, Default)]
struct Inner {
    /// Invalid configuration: the problems, one line each. Non-empty means degraded.
    config_problems: Vec<String>,
    reconciled: Check,
    pod_path: Check,
    /// Whether readiness needs the pod path (false when the node runs without SNAT, where
    /// tsbridge does not promise a pod path).
    pod_path_required: bool,
    loops: Vec<(&'static str, Alive)>,
}

#[derive(Debug)]
enum Alive {
    /// A [`LoopGuard`] sets it false when dropped.
    Flag(bool),
    /// A task spawned elsewhere: alive until it finishes.
    Task(tokio::task::AbortHandle),
}

impl Alive {
    fn alive(&self) -> bool {
        match self {
            Alive::Flag(b) => *b,
            Alive::Task(h) => !h.is_finished(),
        }
    }
}

/// Shared health state; cheap to clone through an `Arc`.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            inner: Mutex::new(Inner {
                pod_path_required: true,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration is invalid: tsbridge runs degraded, never ready.
    pub fn set_config_problems(&self, problems: Vec<String>) {
        self.lock().config_problems = problems;
    }

    pub fn set_reconciled(&self, c: Check) {
        self.lock().reconciled = c;
    }

    pub fn set_pod_path(&self, c: Check) {
        self.lock().pod_path = c;
    }

    pub fn set_pod_path_required(&self, required: bool) {
        self.lock().pod_path_required = required;
    }

    /// Registers a loop; keep the guard inside the loop's task.
    pub fn register_loop(self: &Arc<Self>, name: &'static str) -> LoopGuard {
        let mut g = self.lock();
        let index = g.loops.len();
        g.loops.push((name, Alive::Flag(true)));
        LoopGuard {
            health: Arc::clone(self),
            index,
        }
    }

    /// Registers a task spawned elsewhere; it counts as alive until it finishes.
    pub fn register_task(&self, name: &'static str, task: tokio::task::AbortHandle) {
        self.lock().loops.push((name, Alive::Task(task)));
    }

    /// Liveness: `Ok(names of live loops)` or `Err(names of dead loops)`.
    pub fn liveness(&self) -> Result<Vec<&'static str>, Vec<&'static str>> {
        let g = self.lock();
        let dead: Vec<_> = g
            .loops
            .iter()
            .filter(|l| !l.1.alive())
            .map(|l| l.0)
            .collect();
        if dead.is_empty() {
            Ok(g.loops.iter().map(|l| l.0).collect())
        } else {
            Err(dead)
        }
    }

    pub fn snapshot(&self, status: &TailscaleStatus) -> Snapshot {
        let g = self.lock();
        Snapshot {
            config_problems: g.config_problems.clone(),
            backend: status.backend,
            tailnet_addrs: status.addrs.len(),
            tailscaled_problem: status.problem.clone(),
            state_store: status.state_store.clone(),
            reconciled: g.reconciled.clone(),
            pod_path: g.pod_path.clone(),
            pod_path_required: g.pod_path_required,
        }
    }
}

/// Keeps `health`'s reconciled and pod-path parts in step with the egress reconciler's
/// verdicts, until the reconciler is gone. Event-driven: wakes only on a change.
pub async fn follow_egress(
    health: Arc<Health>,
    mut egress: tokio::sync::watch::Receiver<crate::egress::EgressHealth>,
) {
    loop {
        {
            let e = egress.borrow_and_update();
            let (reconciled, pod_path) = egress_checks(&e);
            health.set_reconciled(reconciled);
            health.set_pod_path(pod_path);
        }
        if egress.changed().await.is_err() {
            health.set_reconciled(Check::Fail("the egress reconciler stopped".into()));
            return;
        }
    }
}

/// The readiness parts the egress verdicts stand for.
pub fn egress_checks(e: &crate::egress::EgressHealth) -> (Check, Check) {
    use crate::egress::guard::PodPath;
    let reconciled = match (&e.last_error, e.in_sync) {
        (Some(err), _) => Check::Fail(format!("reconcile failed: {err}")),
        (None, true) => Check::Ok("kernel state matches the plan".into()),
        (None, false) => Check::Pending,
    };
    let pod_path = match &e.pod_path {
        PodPath::Ok { via } => Check::Ok(format!("pod packets to the tailnet leave via {via}")),
        PodPath::Problem(p) | PodPath::Unconfigured(p) => Check::Fail(p.clone()),
        PodPath::NoPods(why) => Check::Unverified(format!("no pods yet, unverified: {why}")),
        PodPath::Unknown(why) => Check::Fail(format!("not verified: {why}")),
        PodPath::BpfDatapath { why, check } => Check::Unverified(format!("{why}; check: {check}")),
    };
    (reconciled, pod_path)
}

/// Marks its loop dead when dropped.
#[derive(Debug)]
pub struct LoopGuard {
    health: Arc<Health>,
    index: usize,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let mut g = self.health.lock();
        if let Some(l) = g.loops.get_mut(self.index) {
            l.1 = Alive::Flag(false);
        }
    }
}

/// Everything readiness depends on, copied out so the verdict is a pure function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub config_problems: Vec<String>,
    pub backend: BackendState,
    pub tailnet_addrs: usize,
    /// Why the node is off the tailnet, when the join side or the supervisor knows.
    pub tailscaled_problem: Option<String>,
    /// tailscaled runs on in-memory state: why (see `status::state_store_problem`).
    pub state_store: Option<String>,
    pub reconciled: Check,
    pub pod_path: Check,
    pub pod_path_required: bool,
}

/// One line of the readiness report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub name: &'static str,
    /// Does not stand in the way of readiness.
    pub ok: bool,
    /// Passes only for want of anything to check ([`Check::Unverified`]).
    pub unverified: bool,
    pub detail: String,
}

/// Ready only when every part passes. The parts are listed in dependency order, so the
/// first failing one is usually the cause of the others.
pub fn readiness(s: &Snapshot) -> (bool, Vec<Part>) {
    if !s.config_problems.is_empty() {
        let mut detail = format!(
            "degraded: invalid configuration ({} problems)",
            s.config_problems.len()
        );
        for p in &s.config_problems {
            detail.push_str("; ");
            detail.push_str(p);
        }
        return (
            false,
            vec![Part {
                name: "config",
                ok: false,
                unverified: false,
                detail,
            }],
        );
    }
    let mut parts = vec![Part {
        name: "config",
        ok: true,
        unverified: false,
        detail: "valid".into(),
    }];
    let running = s.backend == BackendState::Running && s.tailnet_addrs > 0;
    let mut detail = match (s.backend, s.tailnet_addrs) {
        (BackendState::Running, 0) => "Running, but no tailnet address yet".into(),
        (BackendState::Running, n) => format!("Running with {n} tailnet addresses"),
        (BackendState::Down, _) => "not running or LocalAPI unreachable".to_owned(),
        (b, _) => format!("backend state {} (want Running)", b.name()),
    };
    if let (false, Some(p)) = (running, &s.tailscaled_problem) {
        detail.push_str(": ");
        detail.push_str(p);
    }
    parts.push(Part {
        name: "tailscaled",
        ok: running,
        unverified: false,
        detail,
    });
    if let Some(p) = &s.state_store {
        parts.push(Part {
            name: "state",
            ok: false,
            unverified: false,
            detail: p.clone(),
        });
    }
    parts.push(check_part(
        "reconciled",
        &s.reconciled,
        "kernel state not reconciled yet",
    ));
    if s.pod_path_required {
        parts.push(check_part(
            "pod_path",
            &s.pod_path,
            "pod path to the tailnet not verified yet",
        ));
    }
    (parts.iter().all(|p| p.ok), parts)
}

fn check_part(name: &'static str, c: &Check, pending: &str) -> Part {
    let (ok, unverified, detail) = match c {
        Check::Pending => (false, false, pending.to_owned()),
        Check::Ok(d) => (true, false, d.clone()),
        Check::Fail(d) => (false, false, d.clone()),
        Check::Unverified(d) => (true, true, d.clone()),
    };
    Part {
        name,
        ok,
        unverified,
        detail,
    }
}

/// The `/readyz` body: a first line `ready`/`not ready`, then one line per part: `ok`,
/// `FAIL`, or `skip` for a part with nothing to verify yet.
pub fn render_readiness(ready: bool, parts: &[Part]) -> String {
    let mut out = String::from(if ready { "ready\n" } else { "not ready\n" });
    for p in parts {
        out.push_str(match (p.ok, p.unverified) {
            (true, false) => "ok   ",
            (true, true) => "skip ",
            (false, _) => "FAIL ",
        });
        out.push_str(p.name);
        out.push_str(": ");
        // One line per part, whatever the detail holds.
        out.extend(p.detail.chars().map(|c| if c == '\n' { ' ' } else { c }));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_snapshot() -> Snapshot {
        Snapshot {
            config_problems: vec![],
            backend: BackendState::Running,
            tailnet_addrs: 2,
            tailscaled_problem: None,
            state_store: None,
            reconciled: Check::Ok("in sync".into()),
            pod_path: Check::Ok("10.244.0.2 -> 100.64.0.2 via tailscale0".into()),
            pod_path_required: true,
        }
    }

    #[test]
    fn ready_when_every_part_passes() {
        let (ok, parts) = readiness(&ready_snapshot());
        assert!(ok);
        assert_eq!(
            parts.iter().map(|p| p.name).collect::<Vec<_>>(),
            ["config", "tailscaled", "reconciled", "pod_path"]
        );
        assert!(render_readiness(ok, &parts).starts_with("ready\n"));
    }

    #[test]
    fn each_failing_part_is_named() {
        let mut s = ready_snapshot();
        s.backend = BackendState::NeedsLogin;
        let (ok, parts) = readiness(&s);
        assert!(!ok);
        let body = render_readiness(ok, &parts);
        assert!(
            body.contains("FAIL tailscaled: backend state NeedsLogin"),
            "{body}"
        );
        assert!(body.contains("ok   reconciled"), "{body}");

        let mut s = ready_snapshot();
        s.tailnet_addrs = 0;
        assert!(!readiness(&s).0);

        let mut s = ready_snapshot();
        s.reconciled = Check::Pending;
        let body = render_readiness(false, &readiness(&s).1);
        assert!(body.contains("FAIL reconciled: kernel state not reconciled yet"));

        let mut s = ready_snapshot();
        s.pod_path = Check::Fail("pod packet to 100.64.0.2 leaves via eth0".into());
        let (ok, parts) = readiness(&s);
        assert!(!ok);
        assert!(render_readiness(ok, &parts).contains("FAIL pod_path: pod packet"));
        // Without SNAT the pod path is not part of readiness.
        s.pod_path_required = false;
        assert!(readiness(&s).0);
    }

    #[test]
    fn no_pods_yet_is_ready_but_never_shown_as_ok() {
        let mut s = ready_snapshot();
        s.pod_path = Check::Unverified("no pods yet, unverified: no pod route".into());
        let (ok, parts) = readiness(&s);
        assert!(ok, "a fresh node without pods must not stay unready");
        let body = render_readiness(ok, &parts);
        assert!(body.starts_with("ready\n"), "{body}");
        assert!(
            body.contains("skip pod_path: no pods yet, unverified"),
            "{body}"
        );
        assert!(!body.contains("ok   pod_path"), "{body}");
    }

    #[test]
    fn in_memory_state_fails_readiness_with_its_cause() {
        let mut s = ready_snapshot();
        s.state_store = Some("tailscaled cannot write its state directory /s (read-only file system) and runs on in-memory state".into());
        let (ok, parts) = readiness(&s);
        assert!(!ok);
        let body = render_readiness(ok, &parts);
        assert!(
            body.contains(
                "FAIL state: tailscaled cannot write its state directory /s (read-only file system)"
            ),
            "{body}"
        );
        // Why tailscaled is not running, when known, is on its line.
        let mut s = ready_snapshot();
        s.backend = BackendState::Down;
        s.tailscaled_problem = Some(
            "cannot start tailscaled: preparing /s: Read-only file system (os error 30)".into(),
        );
        let body = render_readiness(false, &readiness(&s).1);
        assert!(body.contains("FAIL tailscaled: not running or LocalAPI unreachable: cannot start tailscaled: preparing /s: Read-only"), "{body}");
        assert!(!body.contains("FAIL state"), "{body}");
    }

    #[test]
    fn invalid_configuration_says_degraded_on_one_line() {
        let mut s = ready_snapshot();
        s.config_problems = vec!["TS_USERSPACE=\"true\": no".into(), "B: x\ny".into()];
        let (ok, parts) = readiness(&s);
        assert!(!ok);
        let body = render_readiness(ok, &parts);
        assert_eq!(body.lines().count(), 2, "{body}");
        assert!(body.contains("degraded: invalid configuration (2 problems)"));
    }

    #[test]
    fn egress_verdicts_map_to_readiness_parts() {
        use crate::egress::EgressHealth;
        use crate::egress::guard::PodPath;
        let mut e = EgressHealth::default();
        let (r, p) = egress_checks(&e);
        assert_eq!(r, Check::Pending);
        assert!(matches!(p, Check::Fail(ref s) if s.contains("not verified")));
        e.in_sync = true;
        e.pod_path = PodPath::Ok {
            via: "tailscale0".into(),
        };
        let (r, p) = egress_checks(&e);
        assert!(matches!(r, Check::Ok(_)));
        assert!(matches!(p, Check::Ok(ref s) if s.contains("tailscale0")));
        e.last_error = Some("EPERM".into());
        e.pod_path = PodPath::Problem("leaves via eth0".into());
        let (r, p) = egress_checks(&e);
        assert!(matches!(r, Check::Fail(ref s) if s.contains("EPERM")));
        assert_eq!(p, Check::Fail("leaves via eth0".into()));
        e.pod_path = PodPath::NoPods("no route into TSBRIDGE_POD_CIDRS".into());
        let (_, p) = egress_checks(&e);
        assert!(matches!(p, Check::Unverified(ref s) if s.starts_with("no pods yet, unverified")));
        // A BPF datapath: unverified (ready, never ok), with what to check.
        e.pod_path = PodPath::BpfDatapath {
            why: "Cilium on this node (...); unverified".into(),
            check: "bpf.hostLegacyRouting=true".into(),
        };
        let (_, p) = egress_checks(&e);
        assert_eq!(
            p,
            Check::Unverified(
                "Cilium on this node (...); unverified; check: bpf.hostLegacyRouting=true".into()
            )
        );
    }

    #[tokio::test]
    async fn tasks_count_as_alive_until_they_finish() {
        let h = Arc::new(Health::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let t = tokio::spawn(async move {
            let _ = rx.await;
        });
        h.register_task("egress", t.abort_handle());
        assert_eq!(h.liveness(), Ok(vec!["egress"]));
        drop(tx);
        t.await.unwrap();
        assert_eq!(h.liveness(), Err(vec!["egress"]));
    }

    #[test]
    fn loop_guards_report_dead_loops() {
        let h = Arc::new(Health::new());
        let a = h.register_loop("supervisor");
        let b = h.register_loop("reconciler");
        assert_eq!(h.liveness(), Ok(vec!["supervisor", "reconciler"]));
        drop(b);
        assert_eq!(h.liveness(), Err(vec!["reconciler"]));
        drop(a);
        assert_eq!(h.liveness(), Err(vec!["supervisor", "reconciler"]));
    }
}
