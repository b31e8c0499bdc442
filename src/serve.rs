//! The health and metrics listener: `/healthz`, `/readyz`, `/metrics`.
//!
//! A deliberately tiny HTTP/1.1 server on a tokio `TcpListener` (no HTTP crate: the binary
//! must stay small, and three GET endpoints need little). One request per connection
//! (`Connection: close`). Hostile clients are bounded: the request head must arrive
//! complete within a deadline and a size limit, writes have a deadline, and connections
//! beyond a cap are answered 503 and closed at once. Nothing runs while no one connects
//! (no timers when idle).
//!
//! Which endpoints are served (`TS_ENABLE_HEALTH_CHECK`, `TS_ENABLE_METRICS`) and where
//! (`TSBRIDGE_LISTEN`, `TS_LOCAL_ADDR_PORT`) is decided by [`Settings::from_switches`];
//! the README documents it. Where the socket is bound follows the node's addresses
//! ([`target`], [`spawn`]): `lab:PORT` moves with the node's lab-subnet address, and a bind
//! that failed is tried again when the addresses change, both driven by the egress
//! reconciler's netlink address events (no timer).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::Listen;
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::net::Cidr;
use crate::status::TailscaleStatus;

/// Which endpoints exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// `/healthz` and `/readyz`.
    pub health: bool,
    pub metrics: bool,
}

/// Where to listen and what to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub listen: Listen,
    /// `TSBRIDGE_LAB_SUBNETS`, for [`Listen::Lab`].
    pub lab_subnets: Vec<Cidr>,
    pub endpoints: Endpoints,
}

impl Settings {
    /// How the variables combine:
    /// - the address is `TSBRIDGE_LISTEN`, else `TS_LOCAL_ADDR_PORT`, else 127.0.0.1:9002
    ///   (config.rs); `TSBRIDGE_LISTEN=off` means no listener at all;
    /// - `TS_ENABLE_HEALTH_CHECK` / `TS_ENABLE_METRICS` keep containerboot's meaning of
    ///   "serve this endpoint": `true` serves it, `false` does not. Unset differs from
    ///   containerboot (which serves nothing by default): tsbridge serves both, on loopback
    ///   unless told otherwise;
    /// - both switched off: no listener, as with containerboot.
    pub fn from_switches(
        listen: Option<Listen>,
        lab_subnets: &[Cidr],
        enable_health_check: Option<bool>,
        enable_metrics: Option<bool>,
    ) -> Option<Settings> {
        let endpoints = Endpoints {
            health: enable_health_check.unwrap_or(true),
            metrics: enable_metrics.unwrap_or(true),
        };
        match listen {
            Some(listen) if endpoints.health || endpoints.metrics => Some(Settings {
                listen,
                lab_subnets: lab_subnets.to_vec(),
                endpoints,
            }),
            _ => None,
        }
    }
}

/// Where the socket belongs given the node's addresses; `None`: nowhere yet (`lab:PORT`
/// while the node has no address in the lab subnets).
pub fn target(listen: Listen, lab_subnets: &[Cidr], addrs: &[IpAddr]) -> Option<SocketAddr> {
    match listen {
        Listen::Addr(a) => Some(a),
        Listen::Lab(port) => crate::egress::guard::lab_address(addrs, lab_subnets)
            .map(|ip| SocketAddr::new(ip, port)),
    }
}

/// Bounds on what one client may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole request head must arrive within this.
    pub head_timeout: Duration,
    pub write_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_head: usize,
    /// Connections handled at once; more are answered 503 and closed.
    pub max_conns: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_head: 8 * 1024,
            max_conns: 32,
        }
    }
}

/// What the handlers read.
pub struct Shared {
    pub metrics: &'static Metrics,
    pub health: Arc<Health>,
    pub status: watch::Receiver<TailscaleStatus>,
    pub endpoints: Endpoints,
}

/// Binds `addr` and serves in a spawned task. Binding errors are returned so the caller
/// can say which variable to change; the daemon keeps running without the listener.
pub async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(listener, shared, limits))))
}

/// Runs the listener when `settings` asks for one, as a task that binds where [`target`]
/// says and re-binds whenever `addrs` (the egress reconciler's view of the node) moves the
/// target or a failed bind might now work. Logs where it listens, or why it cannot (the
/// daemon goes on without it: health is not worth a crash loop).
pub fn spawn(
    settings: Option<Settings>,
    shared: Arc<Shared>,
    addrs: watch::Receiver<crate::egress::EgressHealth>,
) -> Option<JoinHandle<()>> {
    let Some(settings) = settings else {
        info!("health and metrics listener off");
        return None;
    };
    let alive = shared.health.register_loop("http");
    Some(tokio::spawn(async move {
        let _alive = alive;
        follow(settings, shared, addrs, Limits::default()).await
    }))
}

/// The binding loop behind [`spawn`].
async fn follow(
    settings: Settings,
    shared: Arc<Shared>,
    mut addrs: watch::Receiver<crate::egress::EgressHealth>,
    limits: Limits,
) {
    let mut bound: Option<(SocketAddr, JoinHandle<()>)> = None;
    let mut failed: Option<SocketAddr> = None;
    let mut waiting = false;
    loop {
        let want = {
            let h = addrs.borrow_and_update();
            target(settings.listen, &settings.lab_subnets, &h.node_addrs)
        };
        if bound.as_ref().map(|b| b.0) != want {
            if let Some((old, task)) = bound.take() {
                task.abort();
                info!(addr = %old, "health and metrics listener closed");
            }
            if let Some(addr) = want {
                match start(addr, Arc::clone(&shared), limits).await {
                    Ok((local, task)) => {
                        info!(
                            addr = %local,
                            listen = %settings.listen,
                            healthz = settings.endpoints.health,
                            metrics = settings.endpoints.metrics,
                            "health and metrics listener up"
                        );
                        bound = Some((addr, task));
                        failed = None;
                    }
                    Err(e) => {
                        if failed != Some(addr) {
                            error!(
                                %addr,
                                error = %e,
                                "cannot listen for health and metrics (tried again when the node's addresses change); set TSBRIDGE_LISTEN to a free ADDRESS:PORT, lab:PORT, or `off`"
                            );
                        }
                        failed = Some(addr);
                    }
                }
            }
        }
        if want.is_none() && !waiting {
            warn!(
                listen = %settings.listen,
                "no address in TSBRIDGE_LAB_SUBNETS on this node yet: health and metrics listener waits for one"
            );
        }
        waiting = want.is_none();
        if addrs.changed().await.is_err() {
            // The reconciler is gone (shutdown, or a degraded start without one): keep
            // what is bound.
            std::future::pending::<()>().await;
        }
    }
}

/// The accept loop; runs until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_conns));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => {
                crate::metrics::global().woke(crate::metrics::Wake::Http);
                c
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(error = %e, "health listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "health listener: too many connections");
            // Best effort, never waits: the socket buffer of a fresh connection has room.
            let _ = stream.try_write(&response(503, "text/plain", b"busy\n", false));
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            handle(stream, &shared, limits).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared, limits: Limits) {
    let head =
        tokio::time::timeout(limits.head_timeout, read_head(&mut stream, limits.max_head)).await;
    let reply = match head {
        Err(_) => response(408, "text/plain", b"request timeout\n", false),
        Ok(Err(HeadError::Io)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            response(431, "text/plain", b"request head too large\n", false)
        }
        Ok(Ok(buf)) => match parse_request(&buf) {
            Ok(req) => route(&req, shared),
            Err(RequestError::Version) => response(505, "text/plain", b"HTTP/1.x only\n", false),
            Err(RequestError::Malformed) => response(400, "text/plain", b"bad request\n", false),
        },
    };
    let write = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(limits.write_timeout, write).await;
}

enum HeadError {
    Io,
    TooLarge,
}

/// Reads until the blank line that ends the head. Bytes after it (a body) are ignored:
/// none of the endpoints takes one.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[scan_from..]) {
            buf.truncate(scan_from + end);
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The offset just past the `\r\n\r\n` (or bare `\n\n`) that ends a head.
fn head_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    Malformed,
    Version,
}

/// Parses the request line of a head. Headers are not needed by any endpoint.
pub fn parse_request(head: &[u8]) -> Result<Request<'_>, RequestError> {
    let line_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(RequestError::Malformed)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| RequestError::Malformed)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut it = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(RequestError::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed);
    }
    if !version.starts_with("HTTP/") {
        return Err(RequestError::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Version);
    }
    // Origin form only (the absolute form is for proxies), visible ASCII only (found by
    // fuzz/http_request: a tab or other control character inside the target).
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request { method, path })
}

fn route(req: &Request<'_>, shared: &Shared) -> Vec<u8> {
    let head_only = req.method == "HEAD";
    let known = matches!(req.path, "/healthz" | "/readyz" | "/metrics");
    if known && !head_only && req.method != "GET" {
        return response_with(
            405,
            "text/plain",
            "Allow: GET, HEAD\r\n",
            b"method not allowed\n",
            false,
        );
    }
    let e = shared.endpoints;
    match req.path {
        "/healthz" if e.health => {
            let (code, body) = match shared.health.liveness() {
                Ok(loops) => (200, format!("ok\nloops: {}\n", loops.join(", "))),
                Err(dead) => (503, format!("dead loops: {}\n", dead.join(", "))),
            };
            response(code, "text/plain", body.as_bytes(), head_only)
        }
        "/readyz" if e.health => {
            let (ready, parts) = ready(shared);
            let body = health::render_readiness(ready, &parts);
            let code = if ready { 200 } else { 503 };
            response(code, "text/plain", body.as_bytes(), head_only)
        }
        "/metrics" if e.metrics => {
            let status = shared.status.borrow().clone();
            let ready = health::readiness(&shared.health.snapshot(&status)).0;
            let body = shared.metrics.render(status.backend, ready);
            response(200, "text/plain; version=0.0.4", body.as_bytes(), head_only)
        }
        _ => response(404, "text/plain", b"not found\n", head_only),
    }
}

fn ready(shared: &Shared) -> (bool, Vec<health::Part>) {
    let status = shared.status.borrow().clone();
    health::readiness(&shared.health.snapshot(&status))
}

fn response(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    response_with(code, content_type, "", body, head_only)
}

fn response_with(
    code: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Check;
    use crate::metrics::tests::value;
    use crate::status::BackendState;
    use std::time::Instant;

    struct Server {
        addr: SocketAddr,
        shared: Arc<Shared>,
        status_tx: watch::Sender<TailscaleStatus>,
        task: JoinHandle<()>,
        _alive: crate::health::LoopGuard,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn server(endpoints: Endpoints, limits: Limits) -> Server {
        let (status_tx, status) = watch::channel(TailscaleStatus::default());
        let shared = Arc::new(Shared {
            metrics: Box::leak(Box::new(Metrics::new())),
            health: Arc::new(Health::new()),
            status,
            endpoints,
        });
        let (addr, task) = start("127.0.0.1:0".parse().unwrap(), Arc::clone(&shared), limits)
            .await
            .unwrap();
        let _alive = shared.health.register_loop("http");
        Server {
            addr,
            shared,
            status_tx,
            task,
            _alive,
        }
    }

    const ALL: Endpoints = Endpoints {
        health: true,
        metrics: true,
    };

    /// Sends raw bytes, reads the whole reply until the server closes.
    async fn raw(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("server closes the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let reply = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
        .await;
        split(&reply)
    }

    fn split(reply: &str) -> (u16, String) {
        let code = reply[9..12].parse().unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len(), "Content-Length matches the body");
        (code, body.to_owned())
    }

    #[tokio::test]
    async fn healthz_reports_loops() {
        let s = server(ALL, Limits::default()).await;
        let worker = s.shared.health.register_loop("supervisor");
        let (code, body) = get(s.addr, "/healthz").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("http") && body.contains("supervisor"),
            "{body}"
        );
        drop(worker);
        let (code, body) = get(s.addr, "/healthz").await;
        assert_eq!(code, 503);
        assert_eq!(body, "dead loops: supervisor\n");
    }

    #[tokio::test]
    async fn readyz_names_the_failing_part_until_all_pass() {
        let s = server(ALL, Limits::default()).await;
        let (code, body) = get(s.addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.starts_with("not ready\n"), "{body}");
        assert!(body.contains("FAIL tailscaled: not running"), "{body}");

        s.status_tx.send_modify(|st| {
            st.backend = BackendState::Running;
            st.addrs = vec!["100.64.0.1".parse().unwrap()];
        });
        s.shared.health.set_reconciled(Check::Ok("in sync".into()));
        let (code, body) = get(s.addr, "/readyz?verbose=1").await;
        assert_eq!(code, 503);
        assert!(body.contains("ok   tailscaled: Running"), "{body}");
        assert!(body.contains("FAIL pod_path"), "{body}");

        s.shared
            .health
            .set_pod_path(Check::Ok("via tailscale0".into()));
        let (code, body) = get(s.addr, "/readyz").await;
        assert_eq!(code, 200, "{body}");
        let (_, m) = get(s.addr, "/metrics").await;
        assert_eq!(value(&m, "tsbridge_ready"), Some(1.0));
    }

    #[tokio::test]
    async fn degraded_configuration_is_visible() {
        let s = server(ALL, Limits::default()).await;
        s.shared
            .health
            .set_config_problems(vec!["TS_USERSPACE=\"true\": refused".into()]);
        s.shared.metrics.set_config(1, 0);
        let (code, body) = get(s.addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains("degraded: invalid configuration (1 problems)"),
            "{body}"
        );
        let (code, m) = get(s.addr, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(value(&m, "tsbridge_config_problems"), Some(1.0));
    }

    #[tokio::test]
    async fn metrics_exposition_parses_and_reflects_updates() {
        let s = server(ALL, Limits::default()).await;
        s.shared.metrics.tailscaled_started();
        s.shared.metrics.tailscaled_started();
        s.shared.metrics.reconciled(true, Duration::from_millis(2));
        let reply = raw(s.addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(
            reply.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{reply}"
        );
        let (code, m) = split(&reply);
        assert_eq!(code, 200);
        assert_eq!(value(&m, "tsbridge_tailscaled_restarts_total"), Some(1.0));
        assert_eq!(
            value(&m, "tsbridge_reconcile_duration_seconds_count"),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn methods_paths_and_malformed_requests() {
        let s = server(ALL, Limits::default()).await;
        assert_eq!(get(s.addr, "/nope").await.0, 404);
        let r = raw(
            s.addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        assert_eq!(split(&r).1, "method not allowed\n");
        let r = raw(s.addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body for HEAD: {r}");
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"GET /healthz\r\n\r\n",
            b"get /healthz HTTP/1.1\r\n\r\n",
            b"GET http://x/healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe /healthz HTTP/1.1\r\n\r\n",
        ] {
            let r = raw(s.addr, bad).await;
            assert!(r.starts_with("HTTP/1.1 400 "), "{bad:?}: {r}");
        }
        let r = raw(s.addr, b"GET /healthz HTTP/2.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 505 "), "{r}");
        // Bare newlines are tolerated.
        let r = raw(s.addr, b"GET /healthz HTTP/1.1\n\n").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }

    #[tokio::test]
    async fn switched_off_endpoints_are_not_found() {
        let s = server(
            Endpoints {
                health: false,
                metrics: true,
            },
            Limits::default(),
        )
        .await;
        assert_eq!(get(s.addr, "/healthz").await.0, 404);
        assert_eq!(get(s.addr, "/readyz").await.0, 404);
        assert_eq!(get(s.addr, "/metrics").await.0, 200);
        let s = server(
            Endpoints {
                health: true,
                metrics: false,
            },
            Limits::default(),
        )
        .await;
        assert_eq!(get(s.addr, "/metrics").await.0, 404);
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let limits = Limits {
            max_head: 1024,
            ..Limits::default()
        };
        let s = server(ALL, limits).await;
        let mut req = b"GET /healthz HTTP/1.1\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'a', 4096));
        let r = raw(s.addr, &req).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        // Still serving.
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn slow_clients_time_out_without_blocking_others() {
        let limits = Limits {
            head_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let s = server(ALL, limits).await;
        let start = Instant::now();
        let mut slow = TcpStream::connect(s.addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        // Others are served while the slow one dribbles.
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = slow.write_all(b"a").await;
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
            .await
            .expect("server gives up on the slow client")
            .unwrap();
        let reply = String::from_utf8(out).unwrap();
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_get_503_and_capacity_returns() {
        let limits = Limits {
            head_timeout: Duration::from_millis(500),
            max_conns: 4,
            ..Limits::default()
        };
        let s = server(ALL, limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(s.addr).await.unwrap());
        }
        // Connections are accepted in order, each taking its slot as it is accepted: when
        // the fifth is accepted, the four hold every slot (their head timeout is 500 ms).
        // Refused at once: a 503, or a reset when the request was already in the socket
        // buffer at close (the server does not spend time reading it).
        let start = Instant::now();
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let res = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .expect("refused promptly");
        match res {
            Ok(_) => assert!(out.starts_with(b"HTTP/1.1 503 "), "{out:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
        assert!(start.elapsed() < Duration::from_millis(400));
        // The idle ones time out and free their slots.
        for mut c in idle {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        }
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn client_that_disconnects_early_does_not_hurt() {
        let s = server(ALL, Limits::default()).await;
        for _ in 0..20 {
            let mut c = TcpStream::connect(s.addr).await.unwrap();
            c.write_all(b"GET /metr").await.unwrap();
            drop(c);
        }
        assert_eq!(get(s.addr, "/metrics").await.0, 200);
    }

    #[test]
    fn settings_combine_address_and_switches() {
        let a = Listen::Addr("127.0.0.1:9002".parse().unwrap());
        let s = Settings::from_switches(Some(a), &[], None, None).unwrap();
        assert_eq!(s.listen, a);
        assert_eq!(
            s.endpoints,
            Endpoints {
                health: true,
                metrics: true
            }
        );
        let s = Settings::from_switches(Some(a), &[], Some(false), Some(true)).unwrap();
        assert!(!s.endpoints.health && s.endpoints.metrics);
        assert_eq!(
            Settings::from_switches(Some(a), &[], Some(false), Some(false)),
            None
        );
        assert_eq!(
            Settings::from_switches(None, &[], Some(true), Some(true)),
            None
        );
    }

    #[test]
    fn lab_target_is_the_nodes_lab_address() {
        let lab: Vec<Cidr> = vec![
            "192.168.10.0/24".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ];
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let addrs = [
            ip("127.0.0.1"),
            ip("100.64.0.3"),
            ip("192.168.10.7"),
            ip("10.244.1.1"),
        ];
        assert_eq!(
            target(Listen::Lab(9002), &lab, &addrs),
            Some("192.168.10.7:9002".parse().unwrap())
        );
        assert_eq!(
            target(
                Listen::Lab(9002),
                &lab,
                &[ip("fd00:10::5"), ip("192.168.10.7")]
            ),
            Some("[fd00:10::5]:9002".parse().unwrap()),
            "the kernel's order, as the node identity"
        );
        assert_eq!(target(Listen::Lab(9002), &lab, &addrs[..2]), None);
        let fixed = Listen::Addr("127.0.0.1:9100".parse().unwrap());
        assert_eq!(
            target(fixed, &lab, &[]),
            Some("127.0.0.1:9100".parse().unwrap())
        );
    }

    fn node_with(addrs: &[&str]) -> crate::egress::EgressHealth {
        crate::egress::EgressHealth {
            node_addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    async fn answers(addr: SocketAddr) -> bool {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(mut s)) => {
                s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                out.starts_with(b"HTTP/1.1 200 ")
            }
            _ => false,
        }
    }

    /// Waits (on notifications, with a bound) until `addr` answers or stops answering.
    async fn until_answers(addr: SocketAddr, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while answers(addr).await != want {
            assert!(Instant::now() < deadline, "{addr} answers: not {want}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn shared() -> Arc<Shared> {
        let (_tx, status) = watch::channel(TailscaleStatus::default());
        Arc::new(Shared {
            metrics: Box::leak(Box::new(Metrics::new())),
            health: Arc::new(Health::new()),
            status,
            endpoints: ALL,
        })
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn lab_listener_follows_the_lab_address() {
        let port = free_port();
        let settings = Settings {
            listen: Listen::Lab(port),
            lab_subnets: vec!["127.0.0.2/31".parse().unwrap()],
            endpoints: ALL,
        };
        let (tx, rx) = watch::channel(node_with(&["127.0.0.1"]));
        let task = tokio::spawn(follow(settings, shared(), rx, Limits::default()));
        let at = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
        tokio::task::yield_now().await;
        assert!(!answers(at(2)).await, "no lab address yet: no listener");
        tx.send_replace(node_with(&["127.0.0.1", "127.0.0.2"]));
        until_answers(at(2), true).await;
        assert!(!answers(at(1)).await, "only the lab address is bound");
        // The address changes: the listener moves.
        tx.send_replace(node_with(&["127.0.0.1", "127.0.0.3"]));
        until_answers(at(3), true).await;
        until_answers(at(2), false).await;
        // It goes away: nothing listens.
        tx.send_replace(node_with(&["127.0.0.1"]));
        until_answers(at(3), false).await;
        task.abort();
    }

    #[tokio::test]
    async fn a_failed_bind_is_tried_again_when_the_addresses_change() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let settings = Settings {
            listen: Listen::Addr(addr),
            lab_subnets: vec![],
            endpoints: ALL,
        };
        let (tx, rx) = watch::channel(node_with(&[]));
        let task = tokio::spawn(follow(settings, shared(), rx, Limits::default()));
        tokio::task::yield_now().await;
        drop(taken);
        assert!(!answers(addr).await, "bound although the port was taken");
        tx.send_replace(node_with(&["127.0.0.1"]));
        until_answers(addr, true).await;
        task.abort();
    }

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(parse_request(b""), Err(RequestError::Malformed));
        assert_eq!(
            parse_request(b"GET  /x HTTP/1.1\r\n"),
            Err(RequestError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET /x\ty HTTP/1.1\r\n"),
            Err(RequestError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET /\xc3\xa9 HTTP/1.1\r\n"),
            Err(RequestError::Malformed)
        );
        assert_eq!(head_end(b"a\r\n\r\nrest"), Some(5));
        assert_eq!(head_end(b"a\n\nrest"), Some(3));
        assert_eq!(head_end(b"a\r\n"), None);
    }
}
