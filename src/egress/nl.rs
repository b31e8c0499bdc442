//! A small synchronous netlink request helper over `netlink-sys`, shared by the rtnetlink
//! and the nftables adapters.
//!
//! Why not `rtnetlink`/`netlink-proto`: an nftables batch must reach the kernel in one
//! `sendmsg` (BATCH_BEGIN .. BATCH_END), which netlink-proto cannot send; one helper for
//! both families keeps the code and the dependency tree small. Kernel requests complete
//! in microseconds, so they run inline on the reconciler's task; a receive timeout guards
//! against a kernel that never answers.

use std::fmt::Debug;
use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("kernel refused {what}: {err}")]
    Kernel { what: String, err: io::Error },
    #[error("no answer from the kernel to {0} within the timeout")]
    Timeout(String),
    #[error("undecodable netlink answer to {what}: {detail}")]
    Decode { what: String, detail: String },
}

impl NlError {
    /// The errno of a kernel refusal (positive, like `libc::ENOENT`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }
}

/// One answer of a dump; a message that cannot be decoded is kept as such so the caller
/// can decide (a dump of our own table with an undecodable rule means "replace it").
#[derive(Debug)]
pub enum Answer<T> {
    Msg(T),
    Undecodable(String),
}

pub struct NlSocket {
    sock: Socket,
    seq: u32,
    port: u32,
    /// One receive buffer for the socket's life.
    buf: Vec<u8>,
}

/// Larger than any datagram the kernel sends on a request socket (dumps come in pieces
/// of at most 32 KiB); a bigger one is read again into a grown buffer.
const RECV_BUF: usize = 64 * 1024;

impl NlSocket {
    pub fn new(protocol: isize) -> Result<Self, NlError> {
        let mut sock = Socket::new(protocol)?;
        let port = sock.bind_auto()?.port_number();
        sock.set_ext_ack(true).ok();
        // A netlink socket must hold a whole dump datagram; 1 MiB is plenty.
        sock.set_rx_buf_sz(1 << 20).ok();
        let tv = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(io::Error::from)?;
        Ok(NlSocket {
            sock,
            seq: 1,
            port,
            buf: vec![0u8; RECV_BUF],
        })
    }

    /// The socket's netlink port id: notifications caused by its requests carry it.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Strict checking of dump requests (Linux 4.20+): the kernel then honours the
    /// request's filters (a route dump of one table) instead of sending everything.
    pub fn set_strict(&self) -> bool {
        self.sock.set_netlink_get_strict_chk(true).is_ok()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends one request and collects its answers: an ACK (returns no messages), a single
    /// answer, or a multipart dump up to NLMSG_DONE.
    pub fn request<T>(
        &mut self,
        what: &str,
        mut msg: NetlinkMessage<T>,
        dump: bool,
    ) -> Result<Vec<Answer<T>>, NlError>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let seq = self.next_seq();
        msg.header.sequence_number = seq;
        msg.header.flags |= NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.send(&buf)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv(what)?;
            for (hdr_seq, res) in split::<T>(&self.buf[..n]) {
                if hdr_seq != seq {
                    continue;
                }
                match res {
                    Ok(m) => match m.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => match e.code {
                            None => return Ok(out),
                            Some(code) => {
                                return Err(NlError::Kernel {
                                    what: what.to_owned(),
                                    err: io::Error::from_raw_os_error(-code.get()),
                                });
                            }
                        },
                        NetlinkPayload::InnerMessage(inner) => {
                            out.push(Answer::Msg(inner));
                            if !dump {
                                // A single answer without NLM_F_MULTIPART is the whole reply
                                // (the ACK was suppressed by the kernel for GET requests).
                                return Ok(out);
                            }
                        }
                        _ => {}
                    },
                    Err(detail) => {
                        if !dump {
                            return Err(NlError::Decode {
                                what: what.to_owned(),
                                detail,
                            });
                        }
                        out.push(Answer::Undecodable(detail));
                    }
                }
            }
        }
    }

    /// Sends pre-built messages in one datagram (an nftables batch whose sequence numbers
    /// are `seqs`) and waits for one ACK or error per message that asked for an ACK.
    /// Returns the first error. Answers with other sequence numbers (the ACK of an
    /// earlier GET) are not counted.
    pub fn send_batch(
        &mut self,
        what: &str,
        bytes: &[u8],
        seqs: std::ops::Range<u32>,
        acks: usize,
    ) -> Result<(), NlError> {
        self.send(bytes)?;
        let mut got = 0;
        let mut first_err = None;
        while got < acks {
            let n = self.recv(what)?;
            for (seq, res) in split::<netlink_packet_netfilter::NetfilterMessage>(&self.buf[..n]) {
                if !seqs.contains(&seq) {
                    continue;
                }
                if let Ok(m) = res {
                    if let NetlinkPayload::Error(e) = m.payload {
                        got += 1;
                        if let Some(code) = e.code {
                            first_err.get_or_insert(NlError::Kernel {
                                what: what.to_owned(),
                                err: io::Error::from_raw_os_error(-code.get()),
                            });
                        }
                    }
                }
            }
            // The kernel aborts a failed batch: it may not ACK the rest.
            if first_err.is_some() {
                break;
            }
        }
        self.drain();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The sequence number the next batch should start from; batch messages carry their
    /// own sequence numbers.
    pub fn take_seqs(&mut self, n: u32) -> u32 {
        if self.seq > u32::MAX / 2 {
            self.seq = 1;
        }
        let first = self.next_seq();
        self.seq = self.seq.wrapping_add(n);
        first
    }

    fn send(&self, buf: &[u8]) -> Result<(), NlError> {
        let kernel = SocketAddr::new(0, 0);
        self.sock.send_to(buf, &kernel, 0)?;
        Ok(())
    }

    /// Receives one datagram into the socket's buffer; returns its length. A datagram
    /// larger than the buffer is lost (the request fails and is retried, by then with
    /// a buffer large enough).
    fn recv(&mut self, what: &str) -> Result<usize, NlError> {
        match self.sock.recv(&mut &mut self.buf[..], nix::libc::MSG_TRUNC) {
            Ok(n) if n > self.buf.len() => {
                self.buf.resize(n, 0);
                Err(NlError::Decode {
                    what: what.to_owned(),
                    detail: format!("a {n}-byte answer did not fit the receive buffer"),
                })
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(NlError::Timeout(what.to_owned()))
            }
            Err(e) => Err(NlError::Io(e)),
        }
    }

    /// Discards late answers (ACKs of an aborted batch) so they cannot be mistaken for
    /// answers to the next request.
    fn drain(&mut self) {
        while let Ok(n) = self.sock.recv(&mut &mut self.buf[..], libc_dontwait()) {
            if n == 0 {
                break;
            }
        }
    }
}

fn libc_dontwait() -> i32 {
    nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
}

/// Splits a datagram into its netlink messages: (sequence number, decoded message).
pub fn split<T>(data: &[u8]) -> Vec<(u32, Result<NetlinkMessage<T>, String>)>
where
    T: NetlinkDeserializable + Debug,
{
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= data.len() {
        let Ok(buf) = NetlinkBuffer::new_checked(&data[off..]) else {
            break;
        };
        let len = buf.length() as usize;
        let seq = buf.sequence_number();
        if len < 16 || off + len > data.len() {
            break;
        }
        let res =
            NetlinkMessage::<T>::deserialize(&data[off..off + len]).map_err(|e| format!("{e}"));
        out.push((seq, res));
        off += (len + 3) & !3;
    }
    out
}

/// Sets a socket's receive timeout (used by tests that read events synchronously).
pub fn set_timeout(sock: &Socket, d: Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(d.as_secs() as i64, d.subsec_micros() as i64);
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(io::Error::from)
}
