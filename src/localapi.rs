//! A small LocalAPI client: HTTP/1.1 over tailscaled's unix socket, enough for
//! `GET /localapi/v0/status` and the `watch-ipn-bus` stream.
//!
//! Hand-written instead of hyper: two GET requests, one chunked stream, and a few
//! kilobytes of binary instead of a few hundred.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::status::BackendState;

/// Watch mask: initial state (2), no private keys (16), initial health (128).
pub const WATCH_MASK: u64 = 2 | 16 | 128;

/// Largest response head or status body accepted (a status without peers is a few KiB).
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach tailscaled's LocalAPI at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("LocalAPI i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("LocalAPI answered {status} for {path}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("LocalAPI sent malformed HTTP: {0}")]
    Http(String),
    #[error("LocalAPI sent malformed HTTP: {0}")]
    Chunk(#[from] ChunkError),
    #[error("LocalAPI sent malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Without inotify on the socket's directory (it does not exist yet), the socket is
/// looked for this often.
const SOCKET_POLL: Duration = Duration::from_millis(20);

/// An inotify watch on a socket's directory for a file of the socket's name.
struct SocketWatch {
    fd: tokio::io::unix::AsyncFd<InotifyFd>,
    name: std::ffi::OsString,
}

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl SocketWatch {
    fn new(socket: &Path) -> std::io::Result<SocketWatch> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let dir = match socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = socket
            .file_name()
            .ok_or_else(|| std::io::Error::other("the socket path has no file name"))?
            .to_owned();
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
        // SAFETY: the inotify fd is owned by the AsyncFd for its whole life and is never
        // closed or duplicated behind its back.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                InotifyFd(ino),
                tokio::io::Interest::READABLE,
            )
        };
        Ok(SocketWatch {
            fd: fd.map_err(std::io::Error::from)?,
            name,
        })
    }

    /// Resolves when a file of the socket's name was created.
    async fn wait(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            match self.fd.get_ref().0.read_events() {
                Ok(evs) => {
                    if evs
                        .iter()
                        .any(|e| e.name.as_deref() == Some(self.name.as_os_str()))
                    {
                        return Ok(());
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// tailscaled's LocalAPI at a socket path.
#[derive(Clone, Debug)]
pub struct LocalApi {
    socket: PathBuf,
}

impl LocalApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LocalApi {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits for the socket to appear, without polling: returns at once when its file
    /// exists (unless `stale`: it exists but refuses connections), else when a file of
    /// its name is created in its directory (inotify), at the latest after `limit`.
    /// Before the directory exists it sleeps a short while instead.
    pub async fn wait_for_socket(&self, stale: bool, limit: Duration) {
        let created = match SocketWatch::new(&self.socket) {
            Ok(w) => w,
            Err(_) => {
                if stale || !self.socket.exists() {
                    tokio::time::sleep(limit.min(SOCKET_POLL)).await;
                }
                return;
            }
        };
        // Created between the caller's failed attempt and the watch: no event will come.
        let there = if stale {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        } else {
            self.socket.exists()
        };
        if !there {
            let _ = tokio::time::timeout(limit, created.wait()).await;
        }
    }

    async fn request(&self, path: &str) -> Result<(Head, UnixStream, Vec<u8>), ApiError> {
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        // No Origin or Referer: the LocalAPI refuses browser-like requests.
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: local-tailscaled.sock\r\nUser-Agent: tsbridge\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        loop {
            if let Some(end) = find_head_end(&buf) {
                let head = parse_head(&buf[..end])?;
                let rest = buf[end..].to_vec();
                return Ok((head, stream, rest));
            }
            if buf.len() > MAX_HEAD {
                return Err(ApiError::Http("response head too large".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ApiError::Http(
                    "connection closed before the response head".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `GET path`; the whole body of a 200 answer.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let (head, mut stream, rest) = self.request(path).await?;
        let mut body = Body::new(&head);
        let mut out = Vec::new();
        body.feed(&rest, &mut out)?;
        while !body.done() {
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                body.eof()?;
                break;
            }
            body.feed(&chunk[..n], &mut out)?;
            if out.len() > MAX_BODY {
                return Err(ApiError::Http("response body too large".into()));
            }
        }
        if head.status != 200 {
            return Err(ApiError::Status {
                path: path.to_owned(),
                status: head.status,
                body: crate::secret::redact(String::from_utf8_lossy(&out).trim()).into_owned(),
            });
        }
        Ok(out)
    }

    /// `GET /localapi/v0/status?peers=false`.
    pub async fn status(&self) -> Result<Status, ApiError> {
        let body = self.get("/localapi/v0/status?peers=false").await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Opens the `watch-ipn-bus` stream.
    pub async fn watch(&self, mask: u64) -> Result<Watch, ApiError> {
        let path = format!("/localapi/v0/watch-ipn-bus?mask={mask}");
        let (head, stream, rest) = self.request(&path).await?;
        if head.status != 200 {
            return Err(ApiError::Status {
                path,
                status: head.status,
                body: String::from_utf8_lossy(&rest).trim().to_owned(),
            });
        }
        let mut w = Watch {
            body: Body::new(&head),
            stream,
            lines: Vec::new(),
        };
        let mut out = Vec::new();
        w.body.feed(&rest, &mut out)?;
        w.lines.extend_from_slice(&out);
        Ok(w)
    }
}

/// An open `watch-ipn-bus` stream: one JSON `Notify` per line.
pub struct Watch {
    body: Body,
    stream: UnixStream,
    lines: Vec<u8>,
}

impl Watch {
    /// The next message; `None` when tailscaled closed the stream (it is going away).
    pub async fn next(&mut self) -> Result<Option<Notify>, ApiError> {
        loop {
            if let Some(pos) = self.lines.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.lines.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            if self.body.done() {
                return Ok(None);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            let mut out = Vec::new();
            self.body.feed(&chunk[..n], &mut out)?;
            self.lines.extend_from_slice(&out);
            if self.lines.len() > MAX_BODY {
                return Err(ApiError::Http("one watch message is too large".into()));
            }
        }
    }
}

/// The parts of a response head the client needs.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_head(bytes: &[u8]) -> Result<Head, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::Http("non-UTF-8 head".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ApiError::Http(format!("bad status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::Http(format!("bad status line {status_line:?}")))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ApiError::Http(format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .map_err(|_| ApiError::Http(format!("bad content-length {value:?}")))?,
            );
        }
    }
    Ok(head)
}

/// The body framing of a response: chunked, fixed length, or until the connection closes.
#[derive(Debug)]
enum Body {
    Chunked(ChunkDecoder),
    Length(usize),
    UntilEof,
}

impl Body {
    fn new(head: &Head) -> Body {
        if head.chunked {
            Body::Chunked(ChunkDecoder::default())
        } else if let Some(n) = head.content_length {
            Body::Length(n)
        } else {
            Body::UntilEof
        }
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        match self {
            Body::Chunked(d) => Ok(d.feed(input, out)?),
            Body::Length(left) => {
                let n = input.len().min(*left);
                out.extend_from_slice(&input[..n]);
                *left -= n;
                Ok(())
            }
            Body::UntilEof => {
                out.extend_from_slice(input);
                Ok(())
            }
        }
    }

    fn done(&self) -> bool {
        match self {
            Body::Chunked(d) => d.done(),
            Body::Length(left) => *left == 0,
            Body::UntilEof => false,
        }
    }

    fn eof(&self) -> Result<(), ApiError> {
        match self {
            Body::UntilEof => Ok(()),
            _ if self.done() => Ok(()),
            _ => Err(ApiError::Http("connection closed inside the body".into())),
        }
    }
}

/// Why a chunked body cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("bad chunk size {0:?}")]
    BadSize(String),
    #[error("missing CRLF after chunk")]
    MissingCrlf,
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line (with optional extensions) up to CRLF.
    #[default]
    Size,
    /// Copying `n` more data bytes.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines until an empty line.
    Trailer,
    Done,
}

impl ChunkDecoder {
    /// Decodes `input` (any split), appending data bytes to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer | ChunkState::DataEnd => {
                    let Some(pos) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 1024 {
                            return Err(ChunkError::LineTooLong);
                        }
                        return Ok(());
                    };
                    self.line.extend_from_slice(&input[..pos]);
                    input = &input[pos + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        ChunkState::Size => {
                            let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                            let hex = String::from_utf8_lossy(hex);
                            let hex = hex.trim();
                            let n = usize::from_str_radix(hex, 16)
                                .map_err(|_| ChunkError::BadSize(hex.to_owned()))?;
                            if n == 0 {
                                ChunkState::Trailer
                            } else {
                                ChunkState::Data(n)
                            }
                        }
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => return Err(ChunkError::MissingCrlf),
                        ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                        _ => ChunkState::Trailer,
                    };
                }
                ChunkState::Data(n) => {
                    let take = n.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == n {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(n - take)
                    };
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// `ipnstate.Status` (the fields tsbridge uses).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Status {
    #[serde(rename = "BackendState")]
    pub backend_state: String,
    #[serde(rename = "TailscaleIPs")]
    pub tailscale_ips: Option<Vec<IpAddr>>,
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    #[serde(rename = "Health")]
    pub health: Option<Vec<String>>,
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    #[serde(rename = "Self")]
    pub self_node: Option<SelfStatus>,
    #[serde(rename = "Version")]
    pub version: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SelfStatus {
    #[serde(rename = "HostName")]
    pub host_name: String,
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    #[serde(rename = "Online")]
    pub online: bool,
}

impl Status {
    pub fn backend(&self) -> BackendState {
        BackendState::from_name(&self.backend_state)
    }

    pub fn addrs(&self) -> Vec<IpAddr> {
        self.tailscale_ips.clone().unwrap_or_default()
    }

    /// The MagicDNS suffix without dots at either end; `None` when empty.
    pub fn suffix(&self) -> Option<String> {
        let s = self.magic_dns_suffix.trim_matches('.');
        (!s.is_empty()).then(|| s.to_owned())
    }
}

/// `ipn.Notify` (the fields tsbridge uses; big ones are skipped, not decoded).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Notify {
    #[serde(rename = "Version")]
    pub version: Option<String>,
    #[serde(rename = "ErrMessage")]
    pub err_message: Option<String>,
    #[serde(rename = "LoginFinished")]
    pub login_finished: Option<IgnoredAny>,
    /// Integer `ipn.State`.
    #[serde(rename = "State")]
    pub state: Option<i64>,
    #[serde(rename = "NetMap")]
    pub net_map: Option<IgnoredAny>,
    /// Sent when the preferences change (the first thing `tailscale up` does).
    #[serde(rename = "Prefs")]
    pub prefs: Option<IgnoredAny>,
    /// The node itself, sent on every network map: its addresses and name, so `/status`
    /// need not be read again.
    #[serde(rename = "SelfChange")]
    pub self_change: Option<SelfNode>,
    #[serde(rename = "BrowseToURL")]
    pub browse_to_url: Option<String>,
    #[serde(rename = "Health")]
    pub health: Option<Health>,
}

impl Notify {
    pub fn backend(&self) -> Option<BackendState> {
        self.state.map(BackendState::from_ipn)
    }

    /// Whether this message means the node itself changed (addresses, name).
    pub fn self_changed(&self) -> bool {
        self.net_map.is_some() || self.self_change.is_some() || self.login_finished.is_some()
    }
}

/// `tailcfg.Node` of the node itself (the fields tsbridge uses).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SelfNode {
    /// The MagicDNS name, like `node1.tail1234.ts.net.`.
    #[serde(rename = "Name")]
    pub name: String,
    /// Prefixes, like `100.64.0.1/32`.
    #[serde(rename = "Addresses")]
    pub addresses: Option<Vec<String>>,
}

impl SelfNode {
    /// The node's tailnet addresses: the single-address prefixes, which is what
    /// `/status` reports as `TailscaleIPs`.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .flatten()
            .filter_map(|p| {
                let (ip, len) = p.split_once('/')?;
                let ip: IpAddr = ip.parse().ok()?;
                let full = if ip.is_ipv4() { "32" } else { "128" };
                (len == full).then_some(ip)
            })
            .collect()
    }

    /// The MagicDNS suffix as tailscaled derives it from the name (everything after the
    /// first label, no dots at either end), which is `/status`'s `MagicDNSSuffix`.
    pub fn suffix(&self) -> Option<String> {
        let name = self.name.trim_matches('.');
        let rest = name.split_once('.').map_or(name, |(_, r)| r);
        (!rest.is_empty()).then(|| rest.to_owned())
    }
}

/// `health.State`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Health {
    #[serde(rename = "Warnings")]
    pub warnings: Option<std::collections::BTreeMap<String, Warning>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Warning {
    #[serde(rename = "Severity")]
    pub severity: String,
    #[serde(rename = "Title")]
    pub title: String,
    #[serde(rename = "Text")]
    pub text: String,
}

impl Health {
    /// `code: text` of every warning, sorted by code.
    pub fn messages(&self) -> Vec<String> {
        self.warnings
            .iter()
            .flatten()
            .map(|(code, w)| format!("{code}: {}", w.text.trim()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding_survives_any_split() {
        let wire = b"4\r\nWiki\r\n7;ext=1\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..wire.len() {
            let mut d = ChunkDecoder::default();
            let mut out = Vec::new();
            for piece in wire.chunks(split) {
                d.feed(piece, &mut out).unwrap();
            }
            assert_eq!(out, b"Wikipedia in \r\nchunks.", "split {split}");
            assert!(d.done());
        }
    }

    #[test]
    fn chunked_decoding_rejects_garbage() {
        let mut d = ChunkDecoder::default();
        assert_eq!(
            d.feed(b"zz\r\n", &mut Vec::new()),
            Err(ChunkError::BadSize("zz".into()))
        );
        let mut d = ChunkDecoder::default();
        assert_eq!(
            d.feed(b"2\r\nabXY\r\n", &mut Vec::new()),
            Err(ChunkError::MissingCrlf)
        );
    }

    #[test]
    fn head_parsing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                chunked: true,
                content_length: None
            }
        );
        let h = parse_head(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!((h.status, h.content_length), (403, Some(12)));
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
    }

    // Fixtures recorded from the real tailscaled v1.102.3: tests/fixtures/README.md.
    const STATUS_NEEDSLOGIN: &str = include_str!("../tests/fixtures/status-needslogin.json");
    const STATUS_RUNNING: &str = include_str!("../tests/fixtures/status-running.json");
    const WATCH_JOIN: &str = include_str!("../tests/fixtures/watch-ipn-bus-join.ndjson");

    #[test]
    fn status_fixtures_decode() {
        let st: Status = serde_json::from_str(STATUS_NEEDSLOGIN).unwrap();
        assert_eq!(st.backend(), BackendState::NeedsLogin);
        assert!(st.addrs().is_empty());
        assert_eq!(st.suffix(), None);
        assert!(st.version.starts_with("1.102.3"), "{}", st.version);

        let st: Status = serde_json::from_str(STATUS_RUNNING).unwrap();
        assert_eq!(st.backend(), BackendState::Running);
        assert_eq!(
            st.addrs(),
            [
                "100.64.0.1".parse::<IpAddr>().unwrap(),
                "fd7a:115c:a1e0::1".parse().unwrap()
            ]
        );
        assert_eq!(st.suffix().as_deref(), Some("tailnet.lab"));
        assert_eq!(st.self_node.unwrap().host_name, "rec");
    }

    #[test]
    fn watch_fixture_decodes_into_the_join_sequence() {
        let notes: Vec<Notify> = WATCH_JOIN
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let states: Vec<BackendState> = notes.iter().filter_map(Notify::backend).collect();
        assert_eq!(states.first(), Some(&BackendState::NeedsLogin));
        assert_eq!(states.last(), Some(&BackendState::Running));
        assert!(states.contains(&BackendState::Starting));
        let errs: Vec<&str> = notes
            .iter()
            .filter_map(|n| n.err_message.as_deref())
            .collect();
        assert!(errs.contains(&"authkey expired"), "{errs:?}");
        // v1.102 announces the self node with SelfChange (no NetMap on the bus), and it
        // carries what `/status` says once Running.
        let me = notes
            .iter()
            .rev()
            .find_map(|n| n.self_change.as_ref())
            .unwrap();
        let st: Status = serde_json::from_str(STATUS_RUNNING).unwrap();
        assert_eq!(me.addrs(), st.addrs());
        assert_eq!(me.suffix(), st.suffix());
        assert!(notes.iter().all(|n| n.net_map.is_none()));
        assert!(notes.iter().any(|n| n.login_finished.is_some()));
        let first_health = notes.iter().find_map(|n| n.health.as_ref()).unwrap();
        assert!(
            first_health
                .messages()
                .iter()
                .any(|m| m.starts_with("wantrunning-false:")),
            "{:?}",
            first_health.messages()
        );
    }

    #[test]
    fn self_node_addresses_and_suffix() {
        let n = SelfNode {
            name: "node1.tail1234.ts.net.".into(),
            addresses: Some(vec![
                "100.64.0.7/32".into(),
                "fd7a:115c:a1e0::7/128".into(),
                "10.1.0.0/24".into(),
                "garbage".into(),
            ]),
        };
        assert_eq!(
            n.addrs(),
            [
                "100.64.0.7".parse::<IpAddr>().unwrap(),
                "fd7a:115c:a1e0::7".parse().unwrap()
            ]
        );
        assert_eq!(n.suffix().as_deref(), Some("tail1234.ts.net"));
        assert_eq!(SelfNode::default().suffix(), None);
        assert!(SelfNode::default().addrs().is_empty());
    }

    #[tokio::test]
    async fn waiting_for_the_socket_wakes_on_its_creation() {
        let dir = std::env::temp_dir().join(format!("tsbridge-sockwait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let api = LocalApi::new(dir.join("s.sock"));
        let start = std::time::Instant::now();
        let d2 = dir.clone();
        let maker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(d2.join("other"), b"").unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::net::UnixListener::bind(d2.join("s.sock")).unwrap()
        });
        api.wait_for_socket(false, Duration::from_secs(20)).await;
        let took = start.elapsed();
        assert!(api.socket().exists(), "returned before the socket existed");
        assert!(
            took < Duration::from_secs(10),
            "woke by the limit, not the creation: {took:?}"
        );
        let listener = maker.await.unwrap();
        // Exists: at once. Thought stale but accepting by now: at once.
        let t = std::time::Instant::now();
        api.wait_for_socket(false, Duration::from_secs(20)).await;
        api.wait_for_socket(true, Duration::from_secs(20)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        // Stale (the file refuses connections): waits for a new creation or the limit.
        drop(listener);
        let t = std::time::Instant::now();
        api.wait_for_socket(true, Duration::from_millis(30)).await;
        assert!(t.elapsed() >= Duration::from_millis(30));
        // No directory yet: a short sleep, not an error.
        let missing = LocalApi::new(dir.join("nodir/s.sock"));
        missing
            .wait_for_socket(false, Duration::from_secs(20))
            .await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn get_and_watch_over_a_unix_socket() {
        use tokio::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("tsbridge-localapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                let req = String::from_utf8_lossy(&req[..n]).into_owned();
                assert!(req.contains("Host: local-tailscaled.sock\r\n"), "{req}");
                assert!(!req.to_ascii_lowercase().contains("origin"));
                if req.starts_with("GET /localapi/v0/status") {
                    let body = r#"{"BackendState":"Running","TailscaleIPs":["100.64.0.1"],"MagicDNSSuffix":"tailnet.lab.","Health":null}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(resp.as_bytes()).await.unwrap();
                } else {
                    let m1 = "{\"State\":2}\n";
                    let m2 = "{\"State\":6,\"SelfChange\":{\"ID\":1}}\n";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{m1}\r\n{:x}\r\n{m2}\r\n0\r\n\r\n",
                        m1.len(),
                        m2.len()
                    );
                    s.write_all(resp.as_bytes()).await.unwrap();
                }
            }
        });
        let api = LocalApi::new(&sock);
        let st = api.status().await.unwrap();
        assert_eq!(st.backend(), BackendState::Running);
        assert_eq!(st.suffix().as_deref(), Some("tailnet.lab"));
        let mut w = api.watch(WATCH_MASK).await.unwrap();
        let n1 = w.next().await.unwrap().unwrap();
        assert_eq!(n1.backend(), Some(BackendState::NeedsLogin));
        let n2 = w.next().await.unwrap().unwrap();
        assert_eq!(n2.backend(), Some(BackendState::Running));
        assert!(n2.self_changed());
        assert!(w.next().await.unwrap().is_none());
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
