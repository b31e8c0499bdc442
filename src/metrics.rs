//! The metrics registry: a fixed set of counters, gauges and one histogram, kept in atomics
//! so every loop can update them without locks or allocation, and rendered by hand in the
//! Prometheus text exposition format (version 0.0.4) by `/metrics`.
//!
//! A hand-written registry instead of a metrics crate: the set is small and fixed, and the
//! release binary must stay small.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::reaper::Exit;
use crate::status::BackendState;

/// Kinds of kernel objects tsbridge owns; drift repairs are counted per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    NftTable,
    NftChain,
    NftRule,
    /// A policy-routing rule (the guards).
    Rule,
    Route,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::NftTable,
        ObjectKind::NftChain,
        ObjectKind::NftRule,
        ObjectKind::Rule,
        ObjectKind::Route,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::NftTable => "nft_table",
            ObjectKind::NftChain => "nft_chain",
            ObjectKind::NftRule => "nft_rule",
            ObjectKind::Rule => "rule",
            ObjectKind::Route => "route",
        }
    }
}

/// What woke one of tsbridge's loops. Each handled event counts once, so the wake-ups of
/// an idle daemon can be told apart by source (there is no periodic timer: a `timer`
/// wake-up is a retry or a backoff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A line of tailscaled's output (logged as a `source="tailscaled"` event).
    TailscaledOutput,
    /// A message on tailscaled's IPN bus (`watch-ipn-bus`).
    IpnBus,
    /// Kernel notifications that passed the socket filters.
    Netlink,
    /// SIGCHLD: a child exited.
    Child,
    /// A connection to the health and metrics listener.
    Http,
    /// A retry or backoff delay ran out.
    Timer,
}

impl Wake {
    pub const ALL: [Wake; 6] = [
        Wake::TailscaledOutput,
        Wake::IpnBus,
        Wake::Netlink,
        Wake::Child,
        Wake::Http,
        Wake::Timer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Wake::TailscaledOutput => "tailscaled_output",
            Wake::IpnBus => "ipn_bus",
            Wake::Netlink => "netlink",
            Wake::Child => "child",
            Wake::Http => "http",
            Wake::Timer => "timer",
        }
    }
}

/// Upper bounds (seconds) of the reconcile duration histogram. A reconcile is a netlink
/// dump, a diff and maybe one batch: normally well under a millisecond to a few ms.
pub const RECONCILE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

const NO_EXIT: i64 = i64::MIN;

static GLOBAL: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// The process's registry: any part of the daemon updates it without plumbing. Tests that
/// assert values make their own [`Metrics`].
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

#[derive(Debug)]
pub struct Metrics {
    start_unix: f64,
    started: std::time::Instant,
    tailscaled_starts: AtomicU64,
    tailscaled_restarts: AtomicU64,
    /// `>= 0`: exit code; `< 0`: minus the signal number; [`NO_EXIT`]: none yet.
    tailscaled_last_exit: AtomicI64,
    tailscaled_last_exit_unix: AtomicU64,
    reconciliations_ok: AtomicU64,
    reconciliations_err: AtomicU64,
    drift_repairs: [AtomicU64; ObjectKind::ALL.len()],
    netlink_resyncs: AtomicU64,
    /// Non-cumulative bucket counts; the last slot is `+Inf` only.
    reconcile_buckets: [AtomicU64; RECONCILE_BUCKETS.len() + 1],
    reconcile_sum_nanos: AtomicU64,
    config_problems: AtomicU64,
    config_warnings: AtomicU64,
    join_failures: AtomicU64,
    wakeups: [AtomicU64; Wake::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            start_unix: unix_now(),
            started: std::time::Instant::now(),
            tailscaled_starts: AtomicU64::new(0),
            tailscaled_restarts: AtomicU64::new(0),
            tailscaled_last_exit: AtomicI64::new(NO_EXIT),
            tailscaled_last_exit_unix: AtomicU64::new(0),
            reconciliations_ok: AtomicU64::new(0),
            reconciliations_err: AtomicU64::new(0),
            drift_repairs: Default::default(),
            netlink_resyncs: AtomicU64::new(0),
            reconcile_buckets: Default::default(),
            reconcile_sum_nanos: AtomicU64::new(0),
            config_problems: AtomicU64::new(0),
            config_warnings: AtomicU64::new(0),
            join_failures: AtomicU64::new(0),
            wakeups: Default::default(),
        }
    }

    /// Time since the registry was made (at start-up, before anything is spawned).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// tailscaled was spawned; every spawn after the first counts as a restart.
    pub fn tailscaled_started(&self) {
        if self.tailscaled_starts.fetch_add(1, Relaxed) > 0 {
            self.tailscaled_restarts.fetch_add(1, Relaxed);
        }
    }

    pub fn tailscaled_exited(&self, exit: Exit) {
        let v = match exit {
            Exit::Code(c) => i64::from(c.max(0)),
            Exit::Signal(s) => -i64::from(s.max(1)),
        };
        self.tailscaled_last_exit.store(v, Relaxed);
        self.tailscaled_last_exit_unix
            .store(unix_now().max(0.0) as u64, Relaxed);
    }

    pub fn tailscaled_restarts(&self) -> u64 {
        self.tailscaled_restarts.load(Relaxed)
    }

    pub fn last_exit(&self) -> Option<Exit> {
        match self.tailscaled_last_exit.load(Relaxed) {
            NO_EXIT => None,
            v if v >= 0 => Some(Exit::Code(v as i32)),
            v => Some(Exit::Signal((-v) as i32)),
        }
    }

    /// One reconciliation pass finished (`ok` false: it hit an error), taking `took`.
    pub fn reconciled(&self, ok: bool, took: Duration) {
        if ok {
            self.reconciliations_ok.fetch_add(1, Relaxed);
        } else {
            self.reconciliations_err.fetch_add(1, Relaxed);
        }
        let secs = took.as_secs_f64();
        let i = RECONCILE_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(RECONCILE_BUCKETS.len());
        self.reconcile_buckets[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.reconcile_sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// The reconciler re-created or fixed `n` objects of `kind` that someone else changed.
    pub fn drift_repaired(&self, kind: ObjectKind, n: u64) {
        self.drift_repairs[kind as usize].fetch_add(n, Relaxed);
    }

    pub fn drift_repairs(&self, kind: ObjectKind) -> u64 {
        self.drift_repairs[kind as usize].load(Relaxed)
    }

    /// The netlink event stream overran (ENOBUFS) and a full resync ran.
    pub fn netlink_resynced(&self) {
        self.netlink_resyncs.fetch_add(1, Relaxed);
    }

    pub fn netlink_resyncs(&self) -> u64 {
        self.netlink_resyncs.load(Relaxed)
    }

    /// The configuration's problem and warning counts (problems > 0: degraded).
    pub fn set_config(&self, problems: usize, warnings: usize) {
        self.config_problems.store(problems as u64, Relaxed);
        self.config_warnings.store(warnings as u64, Relaxed);
    }

    /// A join attempt (`tailscale up`) failed.
    pub fn join_failed(&self) {
        self.join_failures.fetch_add(1, Relaxed);
    }

    /// The text exposition. `backend` is read by the caller from the status channel, so
    /// the join side has nothing extra to update.
    pub fn woke(&self, w: Wake) {
        self.wakeups[w as usize].fetch_add(1, Relaxed);
    }

    pub fn render(&self, backend: BackendState, ready: bool) -> String {
        let mut o = String::with_capacity(4096);
        gauge_head(&mut o, "tsbridge_build_info", "tsbridge version and build");
        let _ = writeln!(
            o,
            "tsbridge_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            escape_label(env!("TSBRIDGE_COMMIT"))
        );
        gauge_head(
            &mut o,
            "tsbridge_start_time_seconds",
            "Unix time when tsbridge started",
        );
        let _ = writeln!(o, "tsbridge_start_time_seconds {:.3}", self.start_unix);
        gauge_head(
            &mut o,
            "tsbridge_ready",
            "1 when /readyz passes: tailscaled Running, kernel state reconciled, pod path verified",
        );
        let _ = writeln!(o, "tsbridge_ready {}", u8::from(ready));
        gauge_head(
            &mut o,
            "tsbridge_config_problems",
            "problems in the configuration; above 0 tsbridge runs degraded",
        );
        let _ = writeln!(
            o,
            "tsbridge_config_problems {}",
            self.config_problems.load(Relaxed)
        );
        gauge_head(
            &mut o,
            "tsbridge_config_warnings",
            "ignored or unknown configuration variables",
        );
        let _ = writeln!(
            o,
            "tsbridge_config_warnings {}",
            self.config_warnings.load(Relaxed)
        );

        gauge_head(
            &mut o,
            "tsbridge_tailscaled_backend_state",
            "tailscaled's backend state (1 for the current one)",
        );
        for s in BackendState::ALL {
            let _ = writeln!(
                o,
                "tsbridge_tailscaled_backend_state{{state=\"{}\"}} {}",
                s.name(),
                u8::from(s == backend)
            );
        }
        counter_head(
            &mut o,
            "tsbridge_tailscaled_restarts_total",
            "times tailscaled was started again after it exited",
        );
        let _ = writeln!(
            o,
            "tsbridge_tailscaled_restarts_total {}",
            self.tailscaled_restarts.load(Relaxed)
        );
        if let Some(exit) = self.last_exit() {
            gauge_head(
                &mut o,
                "tsbridge_tailscaled_last_exit",
                "how tailscaled's last run ended: exit code, or the signal that killed it",
            );
            let (kind, v) = match exit {
                Exit::Code(c) => ("code", c),
                Exit::Signal(s) => ("signal", s),
            };
            let _ = writeln!(o, "tsbridge_tailscaled_last_exit{{kind=\"{kind}\"}} {v}");
            gauge_head(
                &mut o,
                "tsbridge_tailscaled_last_exit_time_seconds",
                "Unix time of tailscaled's last exit",
            );
            let _ = writeln!(
                o,
                "tsbridge_tailscaled_last_exit_time_seconds {}",
                self.tailscaled_last_exit_unix.load(Relaxed)
            );
        }
        counter_head(
            &mut o,
            "tsbridge_join_failures_total",
            "failed `tailscale up` attempts",
        );
        let _ = writeln!(
            o,
            "tsbridge_join_failures_total {}",
            self.join_failures.load(Relaxed)
        );

        counter_head(
            &mut o,
            "tsbridge_wakeups_total",
            "events that woke tsbridge's loops, by source",
        );
        for w in Wake::ALL {
            let _ = writeln!(
                o,
                "tsbridge_wakeups_total{{source=\"{}\"}} {}",
                w.label(),
                self.wakeups[w as usize].load(Relaxed)
            );
        }

        counter_head(
            &mut o,
            "tsbridge_reconciliations_total",
            "reconciliation passes of tsbridge's kernel state",
        );
        let _ = writeln!(
            o,
            "tsbridge_reconciliations_total{{result=\"ok\"}} {}",
            self.reconciliations_ok.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "tsbridge_reconciliations_total{{result=\"error\"}} {}",
            self.reconciliations_err.load(Relaxed)
        );
        counter_head(
            &mut o,
            "tsbridge_drift_repairs_total",
            "objects tsbridge owns that were found changed or missing and repaired",
        );
        for k in ObjectKind::ALL {
            let _ = writeln!(
                o,
                "tsbridge_drift_repairs_total{{kind=\"{}\"}} {}",
                k.label(),
                self.drift_repairs(k)
            );
        }
        counter_head(
            &mut o,
            "tsbridge_netlink_resyncs_total",
            "full resyncs after the netlink event stream overran",
        );
        let _ = writeln!(
            o,
            "tsbridge_netlink_resyncs_total {}",
            self.netlink_resyncs()
        );

        let name = "tsbridge_reconcile_duration_seconds";
        let _ = writeln!(o, "# HELP {name} duration of one reconciliation pass");
        let _ = writeln!(o, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in RECONCILE_BUCKETS.iter().enumerate() {
            cumulative += self.reconcile_buckets[i].load(Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.reconcile_buckets[RECONCILE_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.reconcile_sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(o, "{name}_sum {sum}");
        let _ = writeln!(o, "{name}_count {cumulative}");
        o
    }
}

fn gauge_head(o: &mut String, name: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn counter_head(o: &mut String, name: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The sample lines of an exposition (name with labels -> value), checking the syntax
    /// of every line on the way: this is what a Prometheus scraper must be able to parse.
    pub(crate) fn samples(text: &str) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut typed = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(typed.insert(name.to_owned()), "duplicate TYPE for {name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "{line}"
            );
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                typed.contains(name) || typed.contains(base),
                "sample before its TYPE: {line}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                }
            }
            out.push((series.to_owned(), v));
        }
        out
    }

    pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
        samples(text)
            .into_iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| v)
    }

    #[test]
    fn fresh_registry_renders_valid_exposition() {
        let m = Metrics::new();
        let t = m.render(BackendState::Down, false);
        assert_eq!(value(&t, "tsbridge_ready"), Some(0.0));
        assert_eq!(value(&t, "tsbridge_tailscaled_restarts_total"), Some(0.0));
        assert_eq!(
            value(&t, "tsbridge_tailscaled_backend_state{state=\"Down\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "tsbridge_tailscaled_backend_state{state=\"Running\"}"),
            Some(0.0)
        );
        assert!(
            !t.contains("tsbridge_tailscaled_last_exit"),
            "no exit yet: {t}"
        );
        assert!(t.contains("tsbridge_build_info{version=\""));
    }

    #[test]
    fn first_start_is_not_a_restart_and_exits_are_recorded() {
        let m = Metrics::new();
        m.tailscaled_started();
        m.tailscaled_exited(Exit::Signal(9));
        m.tailscaled_started();
        m.tailscaled_exited(Exit::Code(1));
        m.tailscaled_started();
        assert_eq!(m.tailscaled_restarts(), 2);
        assert_eq!(m.last_exit(), Some(Exit::Code(1)));
        let t = m.render(BackendState::Running, true);
        assert_eq!(value(&t, "tsbridge_tailscaled_restarts_total"), Some(2.0));
        assert_eq!(
            value(&t, "tsbridge_tailscaled_last_exit{kind=\"code\"}"),
            Some(1.0)
        );
        m.tailscaled_exited(Exit::Signal(9));
        let t = m.render(BackendState::Running, true);
        assert_eq!(
            value(&t, "tsbridge_tailscaled_last_exit{kind=\"signal\"}"),
            Some(9.0)
        );
        assert_eq!(
            value(&t, "tsbridge_tailscaled_backend_state{state=\"Running\"}"),
            Some(1.0)
        );
        assert_eq!(value(&t, "tsbridge_ready"), Some(1.0));
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::new();
        m.reconciled(true, Duration::from_micros(50)); // first bucket
        m.reconciled(true, Duration::from_micros(800)); // le 0.001
        m.reconciled(false, Duration::from_millis(20)); // le 0.025
        m.reconciled(true, Duration::from_secs(10)); // +Inf only
        let t = m.render(BackendState::Running, true);
        let b = |le: &str| {
            value(
                &t,
                &format!("tsbridge_reconcile_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.0001"), Some(1.0));
        assert_eq!(b("0.0005"), Some(1.0));
        assert_eq!(b("0.001"), Some(2.0));
        assert_eq!(b("0.025"), Some(3.0));
        assert_eq!(b("2.5"), Some(3.0));
        assert_eq!(b("+Inf"), Some(4.0));
        assert_eq!(
            value(&t, "tsbridge_reconcile_duration_seconds_count"),
            Some(4.0)
        );
        let sum = value(&t, "tsbridge_reconcile_duration_seconds_sum").unwrap();
        assert!((sum - 10.02085).abs() < 1e-6, "{sum}");
        assert_eq!(
            value(&t, "tsbridge_reconciliations_total{result=\"ok\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(&t, "tsbridge_reconciliations_total{result=\"error\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn drift_repairs_by_kind_resyncs_and_config() {
        let m = Metrics::new();
        m.drift_repaired(ObjectKind::NftTable, 1);
        m.drift_repaired(ObjectKind::Rule, 3);
        m.netlink_resynced();
        m.set_config(2, 1);
        m.join_failed();
        let t = m.render(BackendState::NeedsLogin, false);
        assert_eq!(
            value(&t, "tsbridge_drift_repairs_total{kind=\"nft_table\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "tsbridge_drift_repairs_total{kind=\"rule\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(&t, "tsbridge_drift_repairs_total{kind=\"route\"}"),
            Some(0.0)
        );
        assert_eq!(value(&t, "tsbridge_netlink_resyncs_total"), Some(1.0));
        assert_eq!(value(&t, "tsbridge_config_problems"), Some(2.0));
        assert_eq!(value(&t, "tsbridge_config_warnings"), Some(1.0));
        assert_eq!(value(&t, "tsbridge_join_failures_total"), Some(1.0));
        m.woke(Wake::IpnBus);
        m.woke(Wake::IpnBus);
        let t = m.render(BackendState::Running, true);
        assert_eq!(
            value(&t, "tsbridge_wakeups_total{source=\"ipn_bus\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&t, "tsbridge_wakeups_total{source=\"timer\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
