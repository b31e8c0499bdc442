//! Kernel change notifications: one rtnetlink socket (links, addresses, rules and routes,
//! IPv4 and IPv6) and one nfnetlink socket (nftables). Every notification only marks the
//! state dirty: the reconciler then dumps, diffs and applies, so a lost message (ENOBUFS)
//! costs nothing but a full resync.

use std::io;

use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const RTNLGRP_IPV6_RULE: u32 = 19;
const NFNLGRP_NFTABLES: u32 = 7;
const ENOBUFS: i32 = 105;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Something changed (or may have).
    Changed,
    /// The kernel dropped notifications: resync everything.
    Overrun,
}

pub struct Events {
    route: AsyncFd<Socket>,
    nft: AsyncFd<Socket>,
}

fn subscribe(proto: isize, groups: &[u32], rcvbuf: usize) -> io::Result<AsyncFd<Socket>> {
    let mut s = Socket::new(proto)?;
    s.bind_auto()?;
    for g in groups {
        s.add_membership(*g)?;
    }
    s.set_rx_buf_sz(rcvbuf).ok();
    s.set_non_blocking(true)?;
    // SAFETY: the socket is owned by the AsyncFd for its whole life and is never closed
    // or duplicated behind its back.
    let fd = unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) };
    fd.map_err(io::Error::from)
}

impl Events {
    /// Subscribes; call before the first dump so no change between dump and subscription
    /// is missed.
    pub fn new() -> io::Result<Self> {
        Self::with_buffer(4 << 20)
    }

    /// With a given receive buffer (the kernel doubles it and has a minimum); small
    /// buffers overrun early, which tests use.
    pub fn with_buffer(rcvbuf: usize) -> io::Result<Self> {
        Ok(Events {
            route: subscribe(
                netlink_sys::constants::NETLINK_ROUTE,
                &[
                    RTNLGRP_LINK,
                    RTNLGRP_IPV4_IFADDR,
                    RTNLGRP_IPV4_ROUTE,
                    RTNLGRP_IPV4_RULE,
                    RTNLGRP_IPV6_IFADDR,
                    RTNLGRP_IPV6_ROUTE,
                    RTNLGRP_IPV6_RULE,
                ],
                rcvbuf,
            )?,
            nft: subscribe(
                netlink_sys::constants::NETLINK_NETFILTER,
                &[NFNLGRP_NFTABLES],
                rcvbuf,
            )?,
        })
    }

    /// Waits for the next notification on either socket, then drains both.
    pub async fn next(&self) -> io::Result<Event> {
        tokio::select! {
            r = Self::wait(&self.route) => r,
            r = Self::wait(&self.nft) => r,
        }
    }

    async fn wait(fd: &AsyncFd<Socket>) -> io::Result<Event> {
        loop {
            let mut guard = fd.readable().await?;
            match drain(fd.get_ref()) {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => guard.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads everything queued. `None`: nothing was there.
fn drain(s: &Socket) -> io::Result<Option<Event>> {
    let mut buf = vec![0u8; 65536];
    let mut got = None;
    loop {
        match s.recv(&mut &mut buf[..], 0) {
            Ok(_) => {
                got.get_or_insert(Event::Changed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => got = Some(Event::Overrun),
            Err(e) => return Err(e),
        }
    }
}
