//! tailscaled's supervision: start it, forward its output as log events, restart it with
//! backoff when it exits, and stop it within Talos's 10 s.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, random_u64};
use crate::config::Config;
use crate::reaper::{Exit, Reaper, Spawned, terminate};
use crate::secret::redact;
use crate::shutdown::until_shutdown;
use crate::status::{BackendState, TailscaleStatus};
use crate::tailscaled;

/// Forwards a child's output, line by line, as log events tagged with the source,
/// redacted. Reads until the pipe closes: stopping early would make the child's next
/// write fail (a Go program dies of SIGPIPE writing to a closed stderr).
pub async fn forward_output(source: &'static str, stream: &'static str, fd: OwnedFd) {
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            warn!(source, error = %e, "cannot read the child's output");
            return;
        }
    };
    let mut reader = BufReader::new(rx);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                crate::metrics::global().woke(crate::metrics::Wake::TailscaledOutput);
                let text = String::from_utf8_lossy(&buf);
                let line = strip_go_timestamp(text.trim_end());
                if !line.trim().is_empty() {
                    info!(source, stream, line = %redact(line));
                }
            }
            Err(e) => {
                debug!(source, error = %e, "output stream failed");
                return;
            }
        }
    }
}

/// Go's `log` prefix (`2026/11/27 19:00:00 `) repeats what the log line already has.
pub fn strip_go_timestamp(line: &str) -> &str {
    let b = line.as_bytes();
    let is_ts = b.len() >= 20
        && b[4] == b'/'
        && b[7] == b'/'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b' '
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit());
    if is_ts { &line[20..] } else { line }
}

/// How long tailscaled gets between SIGTERM and SIGKILL (Talos kills everything at 10 s).
pub const TAILSCALED_GRACE: Duration = Duration::from_secs(8);

/// After tailscaled exits as a process does when asked to stop (status 0, or SIGTERM), how
/// long to wait for tsbridge's own stop before taking the exit for a crash: Talos stops the
/// service by signalling every process of its container at once, so tailscaled's exit can
/// reach tsbridge before its own SIGTERM does.
pub const STOP_SETTLE: Duration = Duration::from_secs(2);

/// A stop in two steps, as `tsbridge run` takes them: `draining` first (supervision is
/// over: tailscaled is never restarted again), then `terminate` once tsbridge's own kernel
/// state is removed (tailscaled gets SIGTERM, SIGKILL after [`TAILSCALED_GRACE`]).
pub struct Stop {
    pub draining: watch::Receiver<bool>,
    pub terminate: watch::Receiver<bool>,
}

/// Runs tailscaled until the stop: start, forward its output, restart it with backoff
/// when it exits (unless the service is stopping), and stop it when told.
pub async fn supervise_tailscaled(
    cfg: Arc<Config>,
    reaper: Reaper,
    status: Arc<watch::Sender<TailscaleStatus>>,
    mut stop: Stop,
) {
    let mut backoff = Backoff::default();
    loop {
        if *stop.draining.borrow() {
            return;
        }
        stop_stale_tailscaled(&cfg).await;
        let started = Instant::now();
        let ran_for = match start_tailscaled(&cfg, &reaper) {
            Ok(mut child) => {
                status.send_modify(|s| {
                    s.tailscaled_generation += 1;
                    s.backend = BackendState::Down;
                    s.problem = None;
                });
                info!(pid = child.pid, binary = %cfg.tailscaled.display(), "tailscaled started");
                crate::metrics::global().tailscaled_started();
                let exit = tokio::select! {
                    exit = &mut child.exit => exit.ok(),
                    _ = until_shutdown(&mut stop.draining) => {
                        stop_tailscaled(&mut child, &mut stop.terminate).await;
                        status.send_modify(|s| s.backend = BackendState::Down);
                        return;
                    }
                };
                let ran = started.elapsed();
                if let Some(e) = exit {
                    crate::metrics::global().tailscaled_exited(e);
                }
                let why = exit.map_or_else(|| "exit status lost".to_owned(), |e| e.to_string());
                status.send_modify(|s| s.backend = BackendState::Down);
                if exit.is_some_and(Exit::is_clean_stop) {
                    let stopping = tokio::select! {
                        _ = until_shutdown(&mut stop.draining) => true,
                        _ = tokio::time::sleep(STOP_SETTLE) => false,
                    };
                    if stopping {
                        info!(pid = child.pid, exit = %why, "tailscaled exited as the service stops");
                        return;
                    }
                }
                error!(pid = child.pid, exit = %why, ran_s = ran.as_secs(), "tailscaled exited; restarting it");
                status.send_modify(|s| {
                    s.problem = Some(format!("tailscaled exited ({why}); restarting"));
                });
                ran
            }
            Err(e) => {
                error!(binary = %cfg.tailscaled.display(), error = %e, "cannot start tailscaled; check TSBRIDGE_TAILSCALED and TS_STATE_DIR");
                status.send_modify(|s| {
                    s.backend = BackendState::Down;
                    s.problem = Some(format!("cannot start tailscaled: {e}"));
                });
                Duration::ZERO
            }
        };
        let delay = backoff.next_delay(ran_for, random_u64());
        info!(
            delay_ms = delay.as_millis() as u64,
            "waiting before restarting tailscaled"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => crate::metrics::global().woke(crate::metrics::Wake::Timer),
            _ = until_shutdown(&mut stop.draining) => return,
        }
    }
}

/// The service is stopping: tailscaled runs on until tsbridge's own state is removed
/// (`terminate`), and an exit before that is part of the stop, not a crash.
async fn stop_tailscaled(child: &mut Spawned, terminate_now: &mut watch::Receiver<bool>) {
    tokio::select! {
        exit = &mut child.exit => match exit {
            Ok(e) => info!(pid = child.pid, exit = %e, "tailscaled exited as the service stops"),
            Err(_) => info!(pid = child.pid, "tailscaled exited as the service stops"),
        },
        _ = until_shutdown(terminate_now) => {
            info!(pid = child.pid, "stopping tailscaled");
            match terminate(child.pid, &mut child.exit, TAILSCALED_GRACE).await {
                Some(e) => info!(exit = %e, "tailscaled stopped"),
                None => error!(pid = child.pid, "tailscaled did not exit after SIGKILL"),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("preparing {path}: {source}")]
    Dirs {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Spawn(std::io::Error),
}

/// The pid of a live `tailscaled` that already serves our socket: one left running by
/// an earlier tsbridge that died without stopping it (kill -9 or OOM outside a PID
/// namespace). A new tailscaled would fail on the socket ("address already in use") in
/// a loop, and each failed start's router cleanup strips the running one's addresses
/// (seen in the lab).
fn stale_tailscaled(cfg: &Config) -> Option<Pid> {
    let s = std::os::unix::net::UnixStream::connect(&cfg.socket).ok()?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    let pid = cred.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let name = cfg.tailscaled.file_name()?.to_string_lossy().into_owned();
    // comm is the executable's name cut to 15 bytes.
    let want = &name.as_bytes()[..name.len().min(15)];
    (pid > 0 && comm.trim_end().as_bytes() == want && pid as u32 != std::process::id())
        .then(|| Pid::from_raw(pid))
}

/// Stops a stale tailscaled (see [`stale_tailscaled`]): SIGTERM, then SIGKILL after
/// the usual grace. It is not our child, so it is watched through /proc.
async fn stop_stale_tailscaled(cfg: &Config) {
    let Some(pid) = stale_tailscaled(cfg) else {
        return;
    };
    warn!(pid = pid.as_raw(), socket = %cfg.socket.display(), "a tailscaled left by an earlier tsbridge serves the socket; stopping it");
    let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + TAILSCALED_GRACE;
    while !gone() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !gone() {
        let _ = kill(pid, Signal::SIGKILL);
        for _ in 0..40 {
            if gone() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(false)
}

fn start_tailscaled(cfg: &Config, reaper: &Reaper) -> Result<Spawned, StartError> {
    let logs = tailscaled::prepare_dirs(cfg).map_err(|source| StartError::Dirs {
        path: cfg.state_dir.display().to_string(),
        source,
    })?;
    let mut cmd = Command::new(&cfg.tailscaled);
    cmd.args(tailscaled::args(cfg))
        .env_clear()
        .envs(tailscaled::tailscaled_env(cfg, &logs))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = reaper.spawn(&mut cmd).map_err(StartError::Spawn)?;
    if let Some(fd) = child.stdout.take() {
        tokio::spawn(forward_output("tailscaled", "stdout", fd));
    }
    if let Some(fd) = child.stderr.take() {
        tokio::spawn(forward_output("tailscaled", "stderr", fd));
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_timestamps_are_stripped() {
        assert_eq!(
            strip_go_timestamp("2026/11/27 19:00:00 wgengine: Reconfig"),
            "wgengine: Reconfig"
        );
        assert_eq!(strip_go_timestamp("logtail started"), "logtail started");
        assert_eq!(
            strip_go_timestamp("2026/11/27 19:00:00"),
            "2026/11/27 19:00:00"
        );
    }
}
