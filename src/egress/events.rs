//! Kernel change notifications: one rtnetlink socket (links, addresses, rules and routes,
//! IPv4 and IPv6) and one nftables socket. Each notification only says which kind of
//! object changed ([`Dirty`]): the reconciler then dumps, diffs and applies that part,
//! so a lost message (ENOBUFS) costs nothing but a full resync.
//!
//! A socket filter ([`filter`]) makes the kernel drop what cannot change the plan before
//! it is queued; what still arrives is checked again per message, so echoes of
//! tsbridge's own writes never cause a pass. Receive buffers are allocated once.

use std::io;
use std::sync::Mutex;

use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;

use super::filter::{self, Watch};

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const RTNLGRP_IPV6_RULE: u32 = 19;
const NFNLGRP_NFTABLES: u32 = 7;
const ENOBUFS: i32 = 105;
/// Larger than any notification datagram (the kernel builds them in at most 32 KiB).
const BUF: usize = 64 * 1024;

/// The kinds of kernel objects that changed: a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirty(u8);

impl Dirty {
    pub const NONE: Dirty = Dirty(0);
    /// Policy-routing rules.
    pub const RULES: Dirty = Dirty(1);
    /// nftables objects.
    pub const NFT: Dirty = Dirty(2);
    pub const ROUTES: Dirty = Dirty(4);
    pub const LINKS: Dirty = Dirty(8);
    pub const ADDRS: Dirty = Dirty(16);
    pub const ALL: Dirty = Dirty(31);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// True when `self` and `other` share a kind.
    pub fn any(self, other: Dirty) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Dirty {
    type Output = Dirty;
    fn bitor(self, o: Dirty) -> Dirty {
        Dirty(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Dirty {
    fn bitor_assign(&mut self, o: Dirty) {
        self.0 |= o.0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// These kinds of objects changed (or may have).
    Changed(Dirty),
    /// The kernel dropped notifications: resync everything.
    Overrun,
}

impl Event {
    pub fn dirty(self) -> Dirty {
        match self {
            Event::Changed(d) => d,
            Event::Overrun => Dirty::ALL,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Route,
    Nft,
}

struct Sub {
    fd: AsyncFd<Socket>,
    family: Family,
    buf: Mutex<Vec<u8>>,
    /// Whether the kernel runs the filter (else every message is checked here alone).
    filtered: bool,
}

pub struct Events {
    route: Sub,
    nft: Sub,
    watch: Watch,
}

fn subscribe(family: Family, groups: &[u32], rcvbuf: usize, watch: &Watch) -> io::Result<Sub> {
    let proto = match family {
        Family::Route => netlink_sys::constants::NETLINK_ROUTE,
        Family::Nft => netlink_sys::constants::NETLINK_NETFILTER,
    };
    let mut s = Socket::new(proto)?;
    // The filter first: nothing irrelevant is ever queued, not even before the first read.
    let prog = match family {
        Family::Route => filter::route_program(watch),
        Family::Nft => filter::nft_program(watch),
    };
    let filtered = match prog
        .map_err(io::Error::other)
        .and_then(|p| filter::attach(&s, &p))
    {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot filter kernel notifications in the kernel; filtering them here");
            false
        }
    };
    s.bind_auto()?;
    for g in groups {
        s.add_membership(*g)?;
    }
    s.set_rx_buf_sz(rcvbuf).ok();
    s.set_non_blocking(true)?;
    // SAFETY: the socket is owned by the AsyncFd for its whole life and is never closed
    // or duplicated behind its back.
    let fd = unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) };
    Ok(Sub {
        fd: fd.map_err(io::Error::from)?,
        family,
        buf: Mutex::new(vec![0u8; BUF]),
        filtered,
    })
}

impl Events {
    /// Subscribes with the reconciler's [`Watch`](super::watch); call before the first
    /// dump so no change between dump and subscription is missed.
    pub fn new() -> io::Result<Self> {
        Self::with(super::watch(&[]), 4 << 20)
    }

    /// With a given receive buffer (the kernel doubles it and has a minimum); small
    /// buffers overrun early, which tests use.
    pub fn with_buffer(rcvbuf: usize) -> io::Result<Self> {
        Self::with(super::watch(&[]), rcvbuf)
    }

    pub fn with(watch: Watch, rcvbuf: usize) -> io::Result<Self> {
        Ok(Events {
            route: subscribe(
                Family::Route,
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
                &watch,
            )?,
            nft: subscribe(Family::Nft, &[NFNLGRP_NFTABLES], rcvbuf, &watch)?,
            watch,
        })
    }

    /// Whether the kernel filters both sockets.
    pub fn kernel_filtered(&self) -> bool {
        self.route.filtered && self.nft.filtered
    }

    /// Waits until a notification that matters arrived, then drains both sockets.
    pub async fn next(&self) -> io::Result<Event> {
        loop {
            let got = tokio::select! {
                r = self.wait(&self.route) => r?,
                r = self.wait(&self.nft) => r?,
            };
            let got = merge(got, self.try_drain()?);
            if let Some(ev) = got {
                return Ok(ev);
            }
        }
    }

    /// Reads whatever is queued on both sockets without waiting (to coalesce a burst
    /// after a pass). `None`: nothing that matters.
    pub fn try_drain(&self) -> io::Result<Option<Event>> {
        Ok(merge(self.drain(&self.route)?, self.drain(&self.nft)?))
    }

    async fn wait(&self, sub: &Sub) -> io::Result<Option<Event>> {
        let mut guard = sub.fd.readable().await?;
        crate::metrics::global().woke(crate::metrics::Wake::Netlink);
        let got = self.drain(sub)?;
        // Drained until it would block; a datagram arriving since then re-arms readiness.
        guard.clear_ready();
        Ok(got)
    }

    /// Reads everything queued on one socket.
    fn drain(&self, sub: &Sub) -> io::Result<Option<Event>> {
        let mut buf = sub.buf.lock().unwrap_or_else(|p| p.into_inner());
        let mut got: Option<Event> = None;
        loop {
            let flags = nix::libc::MSG_TRUNC;
            match sub.fd.get_ref().recv(&mut &mut buf[..], flags) {
                Ok(n) if n > buf.len() => {
                    // Cut short: what it said is unknown, so everything is.
                    let len = n;
                    buf.resize(len, 0);
                    got = Some(Event::Overrun);
                }
                Ok(n) => {
                    let d = classify(&buf[..n], sub.family, &self.watch, sub.filtered);
                    if !d.is_empty() {
                        got = merge(got, Some(Event::Changed(d)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => got = Some(Event::Overrun),
                Err(e) => return Err(e),
            }
        }
    }
}

fn merge(a: Option<Event>, b: Option<Event>) -> Option<Event> {
    match (a, b) {
        (Some(Event::Overrun), _) | (_, Some(Event::Overrun)) => Some(Event::Overrun),
        (Some(Event::Changed(x)), Some(Event::Changed(y))) => Some(Event::Changed(x | y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The kinds of objects a datagram's messages changed, leaving out what cannot change
/// the plan and the echoes of tsbridge's own writes.
fn classify(data: &[u8], family: Family, w: &Watch, filtered: bool) -> Dirty {
    let mut d = Dirty::NONE;
    let mut off = 0;
    let single = data
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .is_some_and(|l| l as usize == data.len());
    while off + 16 <= data.len() {
        let Some(len) = data[off..off + 4]
            .try_into()
            .ok()
            .map(u32::from_ne_bytes)
            .map(|l| l as usize)
        else {
            break;
        };
        if len < 16 || off + len > data.len() {
            // Malformed: assume anything changed.
            return Dirty::ALL;
        }
        let msg = &data[off..off + len];
        // What passed the kernel's filter on its own was already judged by the same rule.
        let relevant = (single && filtered)
            || match family {
                Family::Route => filter::route_relevant(msg, w),
                Family::Nft => filter::nft_relevant(msg, w),
            };
        if relevant {
            d |= kind(msg, family);
        }
        off += (len + 3) & !3;
    }
    d
}

fn kind(msg: &[u8], family: Family) -> Dirty {
    if family == Family::Nft {
        return Dirty::NFT;
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    match ty {
        // RTM_NEWLINK, RTM_DELLINK
        16 | 17 => Dirty::LINKS,
        // RTM_NEWADDR, RTM_DELADDR
        20 | 21 => Dirty::ADDRS,
        // RTM_NEWROUTE, RTM_DELROUTE
        24 | 25 => Dirty::ROUTES,
        // RTM_NEWRULE, RTM_DELRULE
        32 | 33 => Dirty::RULES,
        _ => Dirty::ALL,
    }
}

#[cfg(test)]
mod tests {
    use super::super::filter::tests::{nft, route, rule, watch};
    use super::*;

    #[test]
    fn a_burst_with_our_echo_and_an_external_change_is_dirty() {
        let w = watch();
        // Our own rule echo alone: nothing to do.
        assert_eq!(
            classify(&rule(32, 4242), Family::Route, &w, false),
            Dirty::NONE
        );
        // In the same datagram as someone's deletion of a rule: the deletion counts.
        let mut burst = rule(32, 4242);
        burst.extend(rule(33, 777));
        assert_eq!(classify(&burst, Family::Route, &w, true), Dirty::RULES);
        // A kernel-made change (port 0) is never an echo.
        assert_eq!(
            classify(&rule(33, 0), Family::Route, &w, false),
            Dirty::RULES
        );
        // nftables: our batch's echo together with someone deleting our table.
        let mut burst = nft(6, 4343, filter::NFPROTO_INET, "tsbridge");
        burst.extend(nft(2, 555, filter::NFPROTO_INET, "tsbridge"));
        assert_eq!(classify(&burst, Family::Nft, &w, true), Dirty::NFT);
        let mut echo_only = nft(6, 4343, filter::NFPROTO_INET, "tsbridge");
        echo_only.extend(nft(6, 4343, filter::NFPROTO_INET, "tsbridge"));
        assert_eq!(classify(&echo_only, Family::Nft, &w, true), Dirty::NONE);
    }

    #[test]
    fn kinds_by_message_type() {
        let w = watch();
        let main = route(24, 9, 254, "10.244.1.0/24");
        assert_eq!(classify(&main, Family::Route, &w, false), Dirty::ROUTES);
        let storm = route(24, 9, 52, "100.96.1.1/32");
        assert_eq!(classify(&storm, Family::Route, &w, false), Dirty::NONE);
        let mut both = storm.clone();
        both.extend(route(25, 9, 52, "100.100.100.100/32"));
        assert_eq!(classify(&both, Family::Route, &w, true), Dirty::ROUTES);
        assert_eq!(classify(&[1, 2, 3], Family::Route, &w, false), Dirty::NONE);
        let mut bad = main.clone();
        bad[0] = 200;
        assert_eq!(classify(&bad, Family::Route, &w, false), Dirty::ALL);
    }

    #[test]
    fn dirty_sets() {
        let d = Dirty::RULES | Dirty::NFT;
        assert!(d.any(Dirty::NFT) && !d.any(Dirty::ROUTES));
        assert_eq!(Event::Overrun.dirty(), Dirty::ALL);
        assert_eq!(
            merge(
                Some(Event::Changed(Dirty::RULES)),
                Some(Event::Changed(Dirty::NFT))
            ),
            Some(Event::Changed(d))
        );
        assert_eq!(merge(Some(Event::Overrun), None), Some(Event::Overrun));
    }
}
