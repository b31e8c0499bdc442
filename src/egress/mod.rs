//! Pod egress to the tailnet and the guards that keep the node's identity on the lab
//! subnet: planning ([`plan`]), kernel adapters ([`kernel`], [`nft`], [`nl`]), the
//! event-driven reconciler ([`run`]), and the verdicts ([`guard`]).
//!
//! Start it with [`Egress::new`] and [`Egress::run`]; read its verdicts from the
//! `watch::Receiver<EgressHealth>` that `new` returns.

pub mod bpf;
pub mod datapath;
pub mod events;
pub mod filter;
pub mod guard;
pub mod kernel;
pub mod nft;
pub mod nl;
pub mod plan;
pub mod reconcile;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::status::TailscaleStatus;
use events::{Dirty, Event};
use guard::{Identity, PodPath};
use kernel::{Kernel, Netlink};
use plan::{Desired, EgressConfig};

/// After a pass failed twice in a row (once more at once: most failures are a race with
/// another writer between our dump and our write), try again after this long, doubling
/// up to [`RETRY_MAX`] while it keeps failing.
pub const RETRY: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the plan and the verdicts read from the kernel, for the notification filters:
/// every route of the main table (pod, lab and default routes), the MagicDNS routes the
/// pod-path probe asks about in any table (tailscale's per-peer routes in table 52 are
/// not read), the table `inet tsbridge`; and the writer sockets whose echoes to ignore.
pub fn watch(own_ports: &[u32]) -> filter::Watch {
    let probes = [(guard::PROBE_V4, 32), (guard::PROBE_V6, 128)];
    filter::Watch {
        route_tables: vec![plan::TABLE_MAIN as u8],
        route_prefixes: probes
            .into_iter()
            .filter_map(|(ip, len)| crate::net::Cidr::new_truncating(ip, len).ok())
            .collect(),
        nft_tables: vec![(filter::NFPROTO_INET, plan::NFT_TABLE.to_owned())],
        own_ports: own_ports.to_vec(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "cannot open netlink sockets (tsbridge needs CAP_NET_ADMIN in the host network namespace): {0}"
    )]
    Netlink(#[from] nl::NlError),
    #[error("cannot subscribe to kernel notifications: {0}")]
    Events(#[from] std::io::Error),
}

/// What the egress side knows, for health and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressHealth {
    pub identity: Identity,
    pub pod_path: PodPath,
    /// The kernel matched the plan at the end of the last pass.
    pub in_sync: bool,
    pub last_error: Option<String>,
    /// Passes that had to change something (first install included).
    pub repairs: u64,
    pub tailscaled_generation: u64,
    /// The node's addresses (host network namespace), in the kernel's order: what the
    /// health listener binds to follows them.
    pub node_addrs: Vec<std::net::IpAddr>,
}

impl Default for EgressHealth {
    fn default() -> Self {
        EgressHealth {
            identity: Identity::Unguarded,
            pod_path: PodPath::Unknown("not checked yet".into()),
            in_sync: false,
            last_error: None,
            repairs: 0,
            tailscaled_generation: 0,
            node_addrs: Vec::new(),
        }
    }
}

pub struct Egress {
    cfg: EgressConfig,
    desired: Desired,
    health: watch::Sender<EgressHealth>,
}

impl Egress {
    pub fn new(cfg: &crate::config::Config) -> (Self, watch::Receiver<EgressHealth>) {
        Self::with_config(EgressConfig::from_config(cfg))
    }

    pub fn with_config(cfg: EgressConfig) -> (Self, watch::Receiver<EgressHealth>) {
        let (tx, rx) = watch::channel(EgressHealth::default());
        let desired = plan::desired(&cfg);
        (
            Egress {
                cfg,
                desired,
                health: tx,
            },
            rx,
        )
    }

    /// Reconciles until `shutdown`, then removes what it owns. Returns an error only when
    /// it cannot talk to the kernel at all.
    ///
    /// No timer: a pass runs as soon as a notification that matters was drained, then
    /// whatever arrived during the pass is drained and handled the same way, until
    /// nothing is left. Only a pass that failed twice waits (backoff).
    pub async fn run(
        self,
        mut status: watch::Receiver<TailscaleStatus>,
        shutdown: CancellationToken,
    ) -> Result<(), EgressError> {
        let mut k = Netlink::new()?;
        // Subscribe before the first dump: a change between the first dump and the
        // subscription would otherwise go unnoticed.
        let events = events::Events::with(watch(&k.port_ids()), 4 << 20)?;
        info!(
            rules = self.desired.rules.len(),
            nft_table = self.desired.chains.is_some(),
            snat = self.cfg.snat,
            mss_clamp = self.cfg.mss_clamp,
            tun = %self.cfg.tun,
            kernel_filter = events.kernel_filtered(),
            "egress reconciler starting"
        );
        let mut dirty = Dirty::ALL;
        let mut status_open = true;
        let mut generation = status.borrow().tailscaled_generation;
        let mut failed = false;
        let mut retry = RETRY;
        let mut retry_at: Option<Instant> = None;
        loop {
            while !dirty.is_empty() && retry_at.is_none() {
                let d = std::mem::take(&mut dirty);
                if self.pass(&mut k, generation, d) {
                    failed = false;
                    retry = RETRY;
                } else {
                    dirty |= d;
                    if failed {
                        retry_at = Some(Instant::now() + retry);
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                    failed = true;
                }
                // Coalesce: what arrived during the pass (our own echoes are ignored).
                match events.try_drain() {
                    Ok(ev) => dirty |= ev.map_or(Dirty::NONE, noted),
                    Err(e) => {
                        error!(error = %e, "reading kernel notifications failed");
                        dirty = Dirty::ALL;
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.next() => match ev {
                    Ok(ev) => dirty |= noted(ev),
                    Err(e) => {
                        error!(error = %e, "reading kernel notifications failed; retrying");
                        dirty = Dirty::ALL;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                // The plan does not depend on tailscaled's state, only on its restarts
                // (which flush tailscale's own rules and can race with ours).
                r = status.changed(), if status_open => {
                    if r.is_err() {
                        status_open = false;
                    } else {
                        let g = status.borrow_and_update().tailscaled_generation;
                        if g != generation {
                            info!(generation = g, "tailscaled restarted; checking everything");
                            generation = g;
                            dirty = Dirty::ALL;
                        }
                    }
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    crate::metrics::global().woke(crate::metrics::Wake::Timer);
                    retry_at = None;
                }
            }
        }
        match reconcile::teardown(&mut k) {
            Ok(ch) => info!(
                rules_removed = ch.del_rules.len(),
                nft_table_removed = !ch.nft.is_empty(),
                "egress state removed"
            ),
            Err(e) => error!(error = %e, "removing egress state failed"),
        }
        Ok(())
    }

    /// One pass over what is dirty: the rules, the nft table, the verdicts (which read
    /// rules, routes, links and addresses). False when it must be retried.
    fn pass(&self, k: &mut dyn Kernel, generation: u64, dirty: Dirty) -> bool {
        let began = std::time::Instant::now();
        let parts = reconcile::Parts {
            rules: dirty.any(Dirty::RULES),
            nft: dirty.any(Dirty::NFT),
        };
        let metrics = crate::metrics::global();
        let res = (!parts.is_empty()).then(|| {
            let r = reconcile::reconcile_parts(k, &self.desired, parts);
            metrics.reconciled(r.is_ok(), began.elapsed());
            r
        });
        let verdicts = dirty.any(Dirty::RULES | Dirty::ROUTES | Dirty::LINKS | Dirty::ADDRS);
        let prev = self.health.borrow().clone();
        let (identity, pod_path) = if verdicts {
            (guard::identity(k, &self.cfg), guard::pod_path(k, &self.cfg))
        } else {
            (prev.identity.clone(), prev.pod_path.clone())
        };
        let mut h = prev.clone();
        let ok = res.as_ref().is_none_or(Result::is_ok);
        match &res {
            None => {}
            Some(Ok(ch)) if !ch.is_empty() => {
                info!(
                    rules_added = ch.add_rules.len(),
                    rules_removed = ch.del_rules.len(),
                    nft_ops = ch.nft.len(),
                    "egress state reconciled"
                );
                // The first pass installs; later changes repair drift.
                if prev.in_sync || prev.repairs > 0 {
                    count_repairs(metrics, ch);
                }
                h.repairs += 1;
            }
            Some(Ok(_)) => debug!("egress state in sync"),
            Some(Err(e)) => error!(error = %e, "egress reconcile failed; retrying"),
        }
        if let Some(r) = res {
            h.in_sync = r.is_ok();
            h.last_error = r.err().map(|e| e.to_string());
        }
        h.tailscaled_generation = generation;
        if identity != prev.identity {
            match &identity {
                Identity::Ok { addr, ifname } => {
                    info!(addr = %addr, ifname = %ifname, "node identity on the lab subnet")
                }
                Identity::Problem(p) => warn!(problem = %p, "node identity is at risk"),
                Identity::Unguarded => {}
            }
        }
        if pod_path != prev.pod_path {
            match &pod_path {
                PodPath::Ok { via } => info!(via = %via, "pod path to the tailnet ok"),
                PodPath::Problem(p) | PodPath::Unconfigured(p) => {
                    warn!(problem = %p, "pod path to the tailnet broken")
                }
                PodPath::NoPods(why) => {
                    info!(why = %why, "pod path unverified: no pods on this node yet")
                }
                PodPath::Unknown(why) => debug!(why = %why, "pod path not checked"),
                PodPath::BpfDatapath { why, check } => {
                    warn!(why = %why, check = %check, "pod path unverified: BPF datapath")
                }
            }
        }
        h.identity = identity;
        h.pod_path = pod_path;
        // Addresses only change with an address notification (a full pass included).
        if dirty.any(Dirty::ADDRS)
            && let Ok(a) = k.addrs()
        {
            h.node_addrs = guard::addrs_of(&a);
        }
        debug!(
            rules = parts.rules,
            nft = parts.nft,
            verdicts,
            took_us = began.elapsed().as_micros() as u64,
            "egress pass"
        );
        self.health.send_if_modified(|cur| {
            if *cur != h {
                *cur = h;
                true
            } else {
                false
            }
        });
        ok
    }
}

/// A read-only look at this node (for `tsbridge check`): what a reconcile pass would
/// change, and the two verdicts. Changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Empty when tsbridge's objects are all in place.
    pub pending: plan::Changes,
    pub identity: Identity,
    pub pod_path: PodPath,
}

pub fn snapshot(cfg: &EgressConfig) -> Result<Snapshot, nl::NlError> {
    let mut k = Netlink::new()?;
    snapshot_with(&mut k, cfg)
}

pub fn snapshot_with(k: &mut dyn Kernel, cfg: &EgressConfig) -> Result<Snapshot, nl::NlError> {
    let rules = k.dump_rules()?;
    let nft = k.dump_nft()?;
    Ok(Snapshot {
        pending: plan::diff(&plan::desired(cfg), &rules, &nft),
        identity: guard::identity(k, cfg),
        pod_path: guard::pod_path(k, cfg),
    })
}

/// Starts the reconciler as a task (the one line `run.rs` needs). The returned health
/// receiver is for the health server; the pair is for [`stopped`].
pub fn start(
    cfg: &crate::config::Config,
    status: watch::Receiver<TailscaleStatus>,
    shutdown: CancellationToken,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<EgressHealth>) {
    let (egress, health) = Egress::new(cfg);
    let task = tokio::spawn(async move {
        if let Err(e) = egress.run(status, shutdown).await {
            error!(error = %e, "egress reconciler stopped: pods cannot reach the tailnet");
        }
    });
    (task, health)
}

/// Waits until the reconciler has removed its state after shutdown was requested.
pub async fn stopped(started: (tokio::task::JoinHandle<()>, watch::Receiver<EgressHealth>)) {
    if let Err(e) = started.0.await {
        error!(error = %e, "egress reconciler task failed");
    }
}

/// Counts a repair pass's changes per object kind for `/metrics`.
fn count_repairs(m: &crate::metrics::Metrics, ch: &plan::Changes) {
    use crate::metrics::ObjectKind;
    m.drift_repaired(ObjectKind::Rule, ch.add_rules.len() as u64);
    for op in &ch.nft {
        let kind = match op {
            plan::NftOp::AddTable => ObjectKind::NftTable,
            plan::NftOp::AddChain { .. } => ObjectKind::NftChain,
            plan::NftOp::AddRule { .. } => ObjectKind::NftRule,
            // Removing a stray or duplicate is part of the repair it comes with.
            plan::NftOp::DelTable | plan::NftOp::DelRule { .. } => continue,
        };
        m.drift_repaired(kind, 1);
    }
}

/// The kinds a notification marks dirty; an overrun is logged and counted.
fn noted(ev: Event) -> Dirty {
    if ev == Event::Overrun {
        warn!("netlink notifications overran; full resync");
        crate::metrics::global().netlink_resynced();
    }
    ev.dirty()
}

async fn sleep_until(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
