//! Watching a daemon from outside, the same way for both: the instant tailscaled says
//! Running on its IPN bus, tsbridge's `/readyz` and `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tsbridge::localapi::LocalApi;
use tsbridge::status::BackendState;
use tsbridge_lab::{Ns, spawn_in};

pub const LISTEN: &str = "127.0.0.1:9002";

/// Real-time priority for the calling thread (the IPN-bus watcher, the `/readyz` poller,
/// the drift listeners and the deleter): the harness's own scheduling must not enter the
/// figures. Netlink
/// sockets carry no kernel receive timestamps, so a notification is timed when the
/// listener reads it: at this priority it is woken at once, whatever else the machine
/// runs. The deleter holds the kernel's nftables commit lock (or the RTNL) until its
/// request returns, a little after the deletion was announced: preempted there by other
/// load, it would delay tsbridge's write and count as tsbridge's time. tsbridge itself
/// runs at normal priority, as in production.
pub fn realtime() -> bool {
    let p = nix::libc::sched_param { sched_priority: 50 };
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_FIFO, &p) == 0 }
}

/// When tailscaled's IPN bus said what, from its first answer to Running.
#[derive(Clone, Copy, Debug)]
pub struct Steps {
    /// The first message (the initial state): tailscaled's backend answers.
    pub answered: Instant,
    /// The first preferences change after it: `tailscale up` reached tailscaled.
    pub up: Option<Instant>,
    pub running: Instant,
}

/// Follows tailscaled's IPN bus at `socket` (connecting as soon as the socket accepts)
/// until it announces Running. Started before the daemon.
pub fn running_at(socket: PathBuf, limit: Duration) -> std::thread::JoinHandle<Option<Steps>> {
    std::thread::spawn(move || {
        // Seen late, Running would make the time to readiness look shorter than it is.
        realtime();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + limit;
            let api = LocalApi::new(&socket);
            let (mut answered, mut up) = (None, None);
            while tokio::time::Instant::now() < deadline {
                // Initial state (2), no private keys (16).
                let Ok(mut w) = api.watch(2 | 16).await else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                loop {
                    match tokio::time::timeout_at(deadline, w.next()).await {
                        Ok(Ok(Some(n))) => {
                            let now = Instant::now();
                            if answered.is_none() {
                                answered = Some(now);
                            } else if up.is_none() && n.prefs.is_some() {
                                up = Some(now);
                            }
                            if n.backend() == Some(BackendState::Running) {
                                return Some(Steps {
                                    answered: answered.unwrap_or(now),
                                    up,
                                    running: now,
                                });
                            }
                        }
                        Ok(_) => break,
                        Err(_) => return None,
                    }
                }
            }
            None
        })
    })
}

/// One plain HTTP GET to the daemon's listener inside the namespace (the caller's thread
/// must be in it): status and body.
fn get(path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = LISTEN.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((status, body))
}

/// `/readyz`'s status code, from inside `ns`.
pub fn readyz(ns: &Ns) -> Option<u16> {
    tsbridge_lab::in_ns(ns, || get("/readyz").map(|(s, _)| s))
}

/// tsbridge's `tsbridge_wakeups_total` counters by source, from inside `ns`.
pub fn wakeups(ns: &Ns) -> Vec<(String, f64)> {
    let body = tsbridge_lab::in_ns(ns, || get("/metrics").map(|(_, b)| b)).unwrap_or_default();
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("tsbridge_wakeups_total{source=\"")?;
            let (source, v) = rest.split_once("\"} ")?;
            Some((source.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A poller inside `ns` that, once told Running was seen, asks `/readyz` back to back
/// until it answers 200 and returns that instant.
pub struct ReadyPoller {
    go: mpsc::Sender<()>,
    done: std::thread::JoinHandle<Option<Instant>>,
}

impl ReadyPoller {
    pub fn start(ns: &Ns, limit: Duration) -> ReadyPoller {
        let (go, rx) = mpsc::channel::<()>();
        let done = spawn_in(ns, move || {
            // Its own scheduling delays must not count as tsbridge's.
            realtime();
            rx.recv().ok()?;
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if get("/readyz").is_some_and(|(s, _)| s == 200) {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            None
        });
        ReadyPoller { go, done }
    }

    pub fn ready_at(self) -> Option<Instant> {
        self.go.send(()).ok()?;
        self.done.join().ok().flatten()
    }
}
