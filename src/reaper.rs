//! Child processes and their exit: tsbridge is PID 1 in its container, so it reaps.
//!
//! One global reaper owns `waitpid`: on every SIGCHLD it reaps every exited child
//! (`waitpid(-1, WNOHANG)`, so orphans re-parented to PID 1 never stay zombies) and hands
//! each status to whoever spawned that pid. Children are spawned with `std::process` and
//! never waited on by `std` (tokio's process module would race the global reaper).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// How a process ends when asked to stop: status 0 (Go programs such as tailscaled
    /// catch SIGTERM and exit 0), or death by SIGTERM or SIGINT.
    pub fn is_clean_stop(self) -> bool {
        match self {
            Exit::Code(c) => c == 0,
            Exit::Signal(s) => s == Signal::SIGTERM as i32 || s == Signal::SIGINT as i32,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Who waits for which pid. Process-wide: whichever reaper task takes a status hands it
/// to the right waiter (several runtimes, as in tests, never lose one).
static WAITING: Mutex<Option<HashMap<i32, oneshot::Sender<Exit>>>> = Mutex::new(None);

/// The global reaper: a handle to spawn children and get their exit. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    _private: (),
}

/// A spawned child: its pid, its exit, and its output pipes when piped.
pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts reaping. Must run inside the runtime,
    /// before the first spawn.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
                crate::metrics::global().woke(crate::metrics::Wake::Child);
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> std::sync::MutexGuard<'static, Option<HashMap<i32, oneshot::Sender<Exit>>>> {
        WAITING.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps every exited child and dispatches statuses by pid.
    pub fn reap_all(&self) {
        // Holding the map while reaping: a child that exits right after spawn is
        // registered before its status can be taken (spawn holds the same lock).
        let mut waiting = self.lock();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            match waiting.get_or_insert_default().remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => debug!(pid = pid.as_raw(), exit = %exit, "reaped an orphan"),
            }
        }
    }

    /// Spawns `cmd` and registers it for its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Spawned> {
        let mut waiting = self.lock();
        let mut child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        let pid = child.id();
        waiting.get_or_insert_default().insert(pid as i32, tx);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // Dropping `child` neither waits nor kills: the reaper owns its status.
        drop(child);
        Ok(Spawned {
            pid,
            exit: rx,
            stdout,
            stderr,
        })
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL and waits a little more. Returns the
/// exit, or `None` if even SIGKILL did not produce one in time.
pub async fn terminate(
    pid: u32,
    exit: &mut oneshot::Receiver<Exit>,
    grace: Duration,
) -> Option<Exit> {
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    if let Ok(Ok(e)) = tokio::time::timeout(grace, &mut *exit).await {
        return Some(e);
    }
    warn!(
        pid,
        grace_s = grace.as_secs(),
        "child ignored SIGTERM; sending SIGKILL"
    );
    let _ = kill(p, Signal::SIGKILL);
    match tokio::time::timeout(Duration::from_millis(900), exit).await {
        Ok(Ok(e)) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reaper_dispatches_exit_statuses_by_pid() {
        let reaper = Reaper::start().unwrap();
        let mut a = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "exit 3"]))
            .unwrap();
        let mut b = reaper.spawn(Command::new("/bin/sleep").arg("30")).unwrap();
        assert_eq!((&mut a.exit).await.unwrap(), Exit::Code(3));
        let e = terminate(b.pid, &mut b.exit, Duration::from_secs(2)).await;
        assert_eq!(e, Some(Exit::Signal(Signal::SIGTERM as i32)));
        assert_eq!(e.unwrap().to_string(), "killed by SIGTERM");
    }

    #[test]
    fn clean_stops_are_status_zero_or_a_stop_signal() {
        assert!(Exit::Code(0).is_clean_stop());
        assert!(Exit::Signal(Signal::SIGTERM as i32).is_clean_stop());
        assert!(Exit::Signal(Signal::SIGINT as i32).is_clean_stop());
        assert!(!Exit::Code(1).is_clean_stop());
        assert!(!Exit::Signal(Signal::SIGKILL as i32).is_clean_stop());
        assert!(!Exit::Signal(Signal::SIGSEGV as i32).is_clean_stop());
    }
}
