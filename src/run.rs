//! `tsbridge run`: the daemon.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::health::Health;
use crate::logging;
use crate::metrics::Metrics;
use crate::serve;
use crate::status::TailscaleStatus;

pub fn main() -> ExitCode {
    let loaded = config::from_process_env();
    logging::init(loaded.log_format, loaded.log_level);
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
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    metrics.set_config(
        loaded.config.as_ref().err().map_or(0, |e| e.0.len()),
        loaded.warnings.len(),
    );
    if let Err(e) = &loaded.config {
        health.set_config_problems(e.0.iter().map(ToString::to_string).collect());
    }
    if let Ok(cfg) = &loaded.config {
        // Without SNAT tsbridge makes no promise about the pod path.
        health.set_pod_path_required(cfg.snat);
    }
    // The join side replaces this channel's sender with the supervisor's.
    let (status_tx, status_rx) = tokio::sync::watch::channel(TailscaleStatus::default());
    let listener = serve::Settings::from_switches(
        loaded.listen,
        loaded.enable_health_check,
        loaded.enable_metrics,
    );
    let shared = Arc::new(serve::Shared {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        status: status_rx,
        endpoints: listener.map_or(
            serve::Endpoints {
                health: false,
                metrics: false,
            },
            |s| s.endpoints,
        ),
    });
    rt.block_on(async move {
        let _listener = serve::spawn(listener, shared).await;
        let _status_tx = status_tx;
        match loaded.config {
            Ok(cfg) => daemon(cfg).await,
            Err(errors) => degraded(errors).await,
        }
    })
}

/// Waits for SIGTERM or SIGINT. As PID 1 in its container, tsbridge gets no default
/// signal handling from the kernel, so it must install its own.
async fn shutdown_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// An invalid configuration: report every problem once, then wait. Exiting would make
/// Talos restart the service every 5 s forever, repeating the same errors.
async fn degraded(errors: config::ConfigErrors) -> ExitCode {
    for p in &errors.0 {
        error!(var = %p.var, value = p.value.as_deref().unwrap_or(""), problem = %p.message, "invalid configuration");
    }
    error!(
        problems = errors.0.len(),
        "tsbridge is degraded: fix the ExtensionServiceConfig (name: tailscale) and apply it; the service restarts with the new configuration"
    );
    wait_for_shutdown().await
}

async fn daemon(cfg: Config) -> ExitCode {
    info!(
        state_dir = %cfg.state_dir.display(),
        socket = %cfg.socket.display(),
        auth_once = cfg.auth_once,
        has_auth_key = cfg.auth_key.is_some(),
        "tsbridge starting"
    );
    if cfg.lab_subnets.is_empty() {
        warn!("TSBRIDGE_LAB_SUBNETS is not set: the node's Kubernetes identity is unguarded");
    }
    wait_for_shutdown().await
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
