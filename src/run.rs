//! `tsbridge run`: the daemon.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::environ;
use crate::health::Health;
use crate::join;
use crate::logging;
use crate::metrics;
use crate::reaper::Reaper;
use crate::serve;
use crate::status::TailscaleStatus;
use crate::supervisor;

pub fn main() -> ExitCode {
    hold_stop_signals();
    let loaded = config::from_process_env();
    // The config holds the key now; clear the kernel's copy before any thread or child
    // exists (a child's /proc environ is tsbridge's until its exec).
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let names = environ::names_to_clear(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    drop(env);
    let scrubbed = environ::scrub(&names);
    logging::init(loaded.log_format, loaded.log_level);
    match scrubbed {
        Ok(s) if s.vars.is_empty() => {}
        Ok(s) => {
            info!(vars = %s.vars.join(","), bytes = s.bytes, "cleared the auth key's value in tsbridge's environment")
        }
        Err(e) => {
            warn!(error = %e, "cannot clear the auth key from tsbridge's environment; /proc/<pid>/environ may still show it")
        }
    }
    for w in &loaded.warnings {
        warn!(var = %w.var, value = w.value.as_deref().unwrap_or(""), problem = %w.message, "config warning");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    let obs = Obs::new(&loaded);
    rt.block_on(async move {
        match loaded.config {
            Ok(cfg) => daemon(cfg, obs).await,
            Err(errors) => degraded(errors, obs).await,
        }
    })
}

/// Health state and the listener settings, set up before the configuration is known to
/// be valid so a degraded tsbridge serves `/readyz` too.
struct Obs {
    health: Arc<Health>,
    listener: Option<serve::Settings>,
}

impl Obs {
    fn new(loaded: &config::Loaded) -> Obs {
        let health = Arc::new(Health::new());
        let m = metrics::global();
        match &loaded.config {
            Ok(cfg) => {
                m.set_config(0, loaded.warnings.len());
                // Without SNAT tsbridge makes no promise about the pod path.
                health.set_pod_path_required(cfg.snat);
            }
            Err(e) => {
                m.set_config(e.0.len(), loaded.warnings.len());
                health.set_config_problems(e.0.iter().map(ToString::to_string).collect());
            }
        }
        let lab_subnets = loaded
            .config
            .as_ref()
            .map(|c| c.lab_subnets.clone())
            .unwrap_or_default();
        Obs {
            health,
            listener: serve::Settings::from_switches(
                loaded.listen,
                &lab_subnets,
                loaded.enable_health_check,
                loaded.enable_metrics,
            ),
        }
    }

    /// The listener follows the node's addresses as the egress reconciler sees them.
    fn serve(
        &self,
        status: watch::Receiver<TailscaleStatus>,
        addrs: watch::Receiver<crate::egress::EgressHealth>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let shared = Arc::new(serve::Shared {
            metrics: metrics::global(),
            health: Arc::clone(&self.health),
            status,
            endpoints: self.listener.as_ref().map_or(
                serve::Endpoints {
                    health: false,
                    metrics: false,
                },
                |s| s.endpoints,
            ),
        });
        serve::spawn(self.listener.clone(), shared, addrs)
    }

    /// Spawns `fut` as a loop that `/healthz` watches.
    fn spawn_loop<F>(&self, name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let alive = self.health.register_loop(name);
        tokio::spawn(async move {
            let _alive = alive;
            fut.await
        })
    }
}

/// Blocks SIGTERM and SIGINT from the first instruction until the handlers exist
/// ([`release_stop_signals`]): a stop requested during start-up then stays pending and is
/// handled, instead of killing tsbridge half-started (or, as PID 1, being ignored until
/// Talos's SIGKILL 10 s later). Found by the SIGTERM-during-start-up fault suite.
fn hold_stop_signals() {
    let _ = stop_signals().thread_block();
}

fn release_stop_signals() {
    let _ = stop_signals().thread_unblock();
}

fn stop_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set
}

/// Waits for SIGTERM or SIGINT. As PID 1 in its container, tsbridge gets no default
/// signal handling from the kernel, so it must install its own.
async fn shutdown_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    release_stop_signals();
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// An invalid configuration: report every problem once, then wait. Exiting would make
/// Talos restart the service every 5 s forever, repeating the same errors.
async fn degraded(errors: config::ConfigErrors, obs: Obs) -> ExitCode {
    for p in &errors.0 {
        error!(var = %p.var, value = p.value.as_deref().unwrap_or(""), problem = %p.message, "invalid configuration");
    }
    error!(
        problems = errors.0.len(),
        "tsbridge is degraded: fix the ExtensionServiceConfig (name: tailscale) and apply it; the service restarts with the new configuration"
    );
    let (_status_tx, status_rx) = watch::channel(TailscaleStatus::default());
    let (_addrs_tx, addrs_rx) = watch::channel(crate::egress::EgressHealth::default());
    let _http = obs.serve(status_rx, addrs_rx);
    wait_for_shutdown().await
}

async fn daemon(cfg: Config, obs: Obs) -> ExitCode {
    info!(
        state_dir = %cfg.state_dir.display(),
        socket = %cfg.socket.display(),
        auth_once = cfg.auth_once,
        has_auth_key = cfg.auth_key.is_some(),
        "tsbridge starting"
    );
    if !cfg.proxies.is_empty() {
        info!(
            http_proxy = %cfg.proxies.shown("HTTP_PROXY"),
            https_proxy = %cfg.proxies.shown("HTTPS_PROXY"),
            no_proxy = %cfg.proxies.shown("NO_PROXY"),
            "tailscaled and tailscale use the HTTP proxy from the environment"
        );
    }
    if cfg.lab_subnets.is_empty() {
        warn!("TSBRIDGE_LAB_SUBNETS is not set: the node's Kubernetes identity is unguarded");
    }
    // Signal handlers first: as PID 1 nothing else would stop us.
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    // Before any child is spawned: children must not inherit a blocked SIGTERM.
    release_stop_signals();
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot install the SIGCHLD handler");
            return ExitCode::from(1);
        }
    };
    let cfg = Arc::new(cfg);
    let (status_tx, status_rx) = watch::channel(TailscaleStatus::default());
    let status_tx = Arc::new(status_tx);
    // A stop in order: `shutdown` first (no more joining, tailscaled no longer
    // supervised), then tsbridge's kernel state, then `stop_tailscaled`.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (stop_tailscaled_tx, stop_tailscaled_rx) = watch::channel(false);

    // The guards and the egress state first (they do not depend on tailscaled), then the
    // listener, which follows the addresses the reconciler sees.
    let egress_stop = tokio_util::sync::CancellationToken::new();
    let egress = crate::egress::start(&cfg, status_rx.clone(), egress_stop.clone());
    obs.health.register_task("egress", egress.0.abort_handle());
    let _egress_health = tokio::spawn(crate::health::follow_egress(
        Arc::clone(&obs.health),
        egress.1.clone(),
    ));
    let _http = obs.serve(status_rx.clone(), egress.1.clone());

    let supervisor = obs.spawn_loop(
        "supervisor",
        supervisor::supervise_tailscaled(
            cfg.clone(),
            reaper.clone(),
            status_tx.clone(),
            supervisor::Stop {
                draining: shutdown_rx.clone(),
                terminate: stop_tailscaled_rx,
            },
        ),
    );
    let joiner = obs.spawn_loop(
        "join",
        join::run(
            cfg.clone(),
            reaper.clone(),
            status_tx.clone(),
            shutdown_rx.clone(),
        ),
    );
    // Further tasks take `status_rx.clone()` and `shutdown_rx.clone()` here.
    drop(status_rx);

    let sig = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = sig, "shutting down");
    // Supervision ends before anything is torn down: Talos signals tailscaled at the same
    // moment, and its exit from now on is part of the stop, never a reason to restart it.
    let _ = shutdown_tx.send(true);
    // tsbridge's kernel state goes next (one netlink batch), while tailscaled may still run.
    egress_stop.cancel();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        crate::egress::stopped(egress),
    )
    .await;
    let _ = stop_tailscaled_tx.send(true);
    // Talos sends SIGKILL 10 s after SIGTERM: tailscaled gets 8 s, everything is done
    // before 10 s.
    let deadline = std::time::Duration::from_millis(9500);
    if tokio::time::timeout(deadline, async {
        let _ = joiner.await;
        let _ = supervisor.await;
    })
    .await
    .is_err()
    {
        error!("shutdown did not finish in time; exiting anyway");
    }
    // Reap whatever is left (as PID 1, orphans are ours).
    reaper.reap_all();
    info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_shutdown() -> ExitCode {
    match shutdown_signal().await {
        Ok(sig) => {
            info!(signal = sig, "shutting down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            ExitCode::from(1)
        }
    }
}
