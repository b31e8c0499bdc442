//! The kernel as the reconciler sees it: a trait with a real adapter (rtnetlink and
//! nftables over netlink) and, in tests, a fake.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NetlinkMessage};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::datapath::LinkProgs;
use super::nft;
use super::nl::{Answer, NlError, NlSocket};
use super::plan::{self, NftOp, ObservedNft, ObservedRule, PolicyRule, RT_PROTO};
use crate::net::Cidr;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
}

/// The interface index of `name`, if such an interface exists.
pub fn link_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name; if_nametoindex only reads it.
    let i = unsafe { nix::libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// An address on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A route in the main table (only what the checks need).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub oif: Option<u32>,
    /// Reached through a gateway (not directly connected).
    pub via_gateway: bool,
}

/// The kernel's answer to "where would this packet go" (RTM_GETROUTE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAnswer {
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub table: u32,
    /// RTN_UNICAST (1) is a normal route; others are blackhole, unreachable, ...
    pub kind: u8,
}

/// A route query: `ip route get DST [from SRC iif IIF]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteQuery {
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    pub iif: Option<u32>,
}

pub trait Kernel {
    fn dump_rules(&mut self) -> Result<Vec<ObservedRule>, NlError>;
    fn add_rule(&mut self, r: &PolicyRule) -> Result<(), NlError>;
    fn del_rule(&mut self, r: &PolicyRule) -> Result<(), NlError>;
    fn dump_nft(&mut self) -> Result<ObservedNft, NlError>;
    /// Applies all ops in one atomic batch.
    fn apply_nft(&mut self, ops: &[NftOp]) -> Result<(), NlError>;
    fn links(&mut self) -> Result<Vec<Link>, NlError>;
    fn addrs(&mut self) -> Result<Vec<Addr>, NlError>;
    fn main_routes(&mut self) -> Result<Vec<Route>, NlError>;
    fn route_get(&mut self, q: &RouteQuery) -> Result<RouteAnswer, NlError>;
    /// Every interface with its kind and the BPF programs attached to it (tc `bpf`
    /// filters, tcx, netkit): is there a BPF datapath that could bypass netfilter?
    fn datapath(&mut self) -> Result<Vec<LinkProgs>, NlError>;
}

/// The real kernel of the current network namespace.
pub struct Netlink {
    route: NlSocket,
    nft: NlSocket,
}

impl Netlink {
    pub fn new() -> Result<Self, NlError> {
        let route = NlSocket::new(netlink_sys::constants::NETLINK_ROUTE)?;
        // Without strict checking (before Linux 4.20) a route dump holds every table;
        // the table is checked here as well.
        route.set_strict();
        Ok(Netlink {
            route,
            nft: NlSocket::new(netlink_sys::constants::NETLINK_NETFILTER)?,
        })
    }

    /// The netlink port ids of the sockets that write: the kernel's notifications of
    /// those writes carry them.
    pub fn port_ids(&self) -> [u32; 2] {
        [self.route.port(), self.nft.port()]
    }

    fn rt_dump(
        &mut self,
        what: &str,
        m: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let answers = self.route.request(what, NetlinkMessage::from(m), true)?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                Answer::Msg(m) => Some(m),
                Answer::Undecodable(d) => {
                    tracing::debug!(what, detail = %d, "skipping an undecodable netlink message");
                    None
                }
            })
            .collect())
    }

    fn rt_do(&mut self, what: &str, m: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        let mut msg = NetlinkMessage::from(m);
        msg.header.flags |= flags;
        self.route.request(what, msg, false).map(|_| ())
    }
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The rule message tsbridge adds and deletes: always with an explicit action (a rule
/// without one breaks every lookup), and our protocol.
fn rule_message(r: &PolicyRule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family_of(&r.dst.addr());
    m.header.dst_len = r.dst.prefix_len();
    if r.dst.prefix_len() > 0 {
        m.attributes.push(RuleAttribute::Destination(r.dst.addr()));
    }
    m.attributes.push(RuleAttribute::Priority(r.priority));
    match r.action {
        plan::RuleAction::Lookup(t) => {
            m.header.action = RuleAction::ToTable;
            m.header.table = if t < 256 { t as u8 } else { 0 };
            m.attributes.push(RuleAttribute::Table(t));
        }
        plan::RuleAction::Goto(target) => {
            m.header.action = RuleAction::Goto;
            m.attributes.push(RuleAttribute::Goto(target));
        }
        plan::RuleAction::Nop => m.header.action = RuleAction::Nop,
        plan::RuleAction::Other(a) => m.header.action = RuleAction::from(a),
    }
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(RT_PROTO)));
    m
}

/// A dumped rule reduced to what ownership needs.
pub fn observed_rule(m: &RuleMessage) -> Option<ObservedRule> {
    let any: IpAddr = match m.header.family {
        AddressFamily::Inet => IpAddr::from([0u8; 4]),
        AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    let mut dst = any;
    let mut priority = 0;
    let mut table = m.header.table as u32;
    let mut goto = None;
    let mut protocol = 0u8;
    let mut foreign_shape =
        m.header.src_len != 0 || m.header.tos != 0 || m.header.flags.contains(RuleFlags::Invert);
    for a in &m.attributes {
        match a {
            RuleAttribute::Destination(ip) => dst = *ip,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Goto(p) => goto = Some(*p),
            RuleAttribute::Protocol(p) => protocol = u8::from(*p),
            // The kernel reports these unset as -1 on every rule.
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            _ => foreign_shape = true,
        }
    }
    let action = match (m.header.action, goto) {
        (RuleAction::ToTable, _) => plan::RuleAction::Lookup(table),
        (RuleAction::Goto, Some(target)) => plan::RuleAction::Goto(target),
        (RuleAction::Nop, _) => plan::RuleAction::Nop,
        (other, _) => {
            foreign_shape = true;
            plan::RuleAction::Other(u8::from(other))
        }
    };
    let dst = Cidr::new_truncating(dst, m.header.dst_len).ok()?;
    Some(ObservedRule {
        rule: PolicyRule {
            priority,
            dst,
            action,
        },
        protocol,
        foreign_shape,
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn ignore_errno(r: Result<(), NlError>, errno: i32) -> Result<(), NlError> {
    match r {
        Err(e) if e.errno() == Some(errno) => Ok(()),
        other => other,
    }
}

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

/// tc's clsact hooks: `TC_H_MIN_INGRESS`, `TC_H_MIN_EGRESS` under the `ffff:` major.
const TC_H_MIN_INGRESS: u16 = 0xfff2;
const TC_H_MIN_EGRESS: u16 = 0xfff3;
/// `enum bpf_attach_type` (linux/bpf.h): tcx (Linux 6.6) and netkit (6.7).
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_NETKIT_PRIMARY: u32 = 54;
const BPF_NETKIT_PEER: u32 = 55;

impl Netlink {
    /// The BPF programs of the tc `bpf` filters on one clsact hook of `index`: their names
    /// and ids (`cil_from_container id 42`), `classic` for a classic-BPF filter.
    fn tc_bpf_filters(&mut self, index: u32, minor: u16) -> Result<Vec<String>, NlError> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle {
            major: 0xffff,
            minor,
        };
        let mut out = Vec::new();
        for msg in self.rt_dump("dump tc filters", RouteNetlinkMessage::GetTrafficFilter(m))? {
            let RouteNetlinkMessage::NewTrafficFilter(f) = msg else {
                continue;
            };
            let is_bpf = f
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
            // The kernel also sends a header per filter chain without options.
            let Some(opts) = f.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            }) else {
                continue;
            };
            if !is_bpf {
                continue;
            }
            let mut name = None;
            let mut id = None;
            for o in opts {
                match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                    TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                    _ => {}
                }
            }
            out.push(match (name, id) {
                (Some(n), Some(i)) => format!("{n} id {i}"),
                (Some(n), None) => n,
                (None, Some(i)) => format!("id {i}"),
                (None, None) => "classic".to_owned(),
            });
        }
        Ok(out)
    }
}

impl Kernel for Netlink {
    fn dump_rules(&mut self) -> Result<Vec<ObservedRule>, NlError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RuleMessage::default();
            m.header.family = fam;
            for msg in self.rt_dump("dump policy rules", RouteNetlinkMessage::GetRule(m))? {
                if let RouteNetlinkMessage::NewRule(r) = msg {
                    out.extend(observed_rule(&r));
                }
            }
        }
        Ok(out)
    }

    fn add_rule(&mut self, r: &PolicyRule) -> Result<(), NlError> {
        let res = self.rt_do(
            "add policy rule",
            RouteNetlinkMessage::NewRule(rule_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        );
        ignore_errno(res, EEXIST)
    }

    fn del_rule(&mut self, r: &PolicyRule) -> Result<(), NlError> {
        let res = self.rt_do(
            "delete policy rule",
            RouteNetlinkMessage::DelRule(rule_message(r)),
            0,
        );
        ignore_errno(res, ENOENT)
    }

    fn dump_nft(&mut self) -> Result<ObservedNft, NlError> {
        match self
            .nft
            .request("get table inet tsbridge", nft::get_table_msg(), false)
        {
            Ok(_) => {}
            Err(e) if e.errno() == Some(ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut chains = Vec::new();
        for a in self
            .nft
            .request("dump chains of inet tsbridge", nft::get_chains_msg(), true)?
        {
            if let Answer::Msg(m) = a {
                chains.extend(nft::parse_chain(&m));
            }
        }
        let mut rules = Vec::new();
        let mut undecodable = false;
        for a in self
            .nft
            .request("dump rules of inet tsbridge", nft::get_rules_msg(), true)?
        {
            match a {
                Answer::Msg(m) => rules.extend(nft::parse_rule(&m)),
                Answer::Undecodable(_) => undecodable = true,
            }
        }
        let mut t = nft::assemble(chains, rules);
        if undecodable {
            // A rule we cannot even name cannot be deleted by handle: have the table
            // replaced as a whole.
            for c in &mut t {
                c.kind = None;
            }
        }
        Ok(Some(t))
    }

    fn apply_nft(&mut self, ops: &[NftOp]) -> Result<(), NlError> {
        if ops.is_empty() {
            return Ok(());
        }
        let n = ops.len() as u32 + 2;
        let seq = self.nft.take_seqs(n);
        let b = nft::batch(ops, seq);
        self.nft
            .send_batch("apply the nftables batch", &b.bytes, seq..seq + n, b.acks)
    }

    fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let mut out = Vec::new();
        for msg in self.rt_dump(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )? {
            if let RouteNetlinkMessage::NewLink(l) = msg {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                out.push(Link {
                    index: l.header.index,
                    name: name.unwrap_or_default(),
                    up: l.header.flags.contains(LinkFlags::Up),
                });
            }
        }
        Ok(out)
    }

    fn addrs(&mut self) -> Result<Vec<Addr>, NlError> {
        let mut out = Vec::new();
        for msg in self.rt_dump(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )? {
            if let RouteNetlinkMessage::NewAddress(a) = msg {
                // IFA_LOCAL is the interface's own address on point-to-point links;
                // IFA_ADDRESS otherwise.
                let local = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(addr) = addr {
                    out.push(Addr {
                        index: a.header.index,
                        addr,
                        prefix_len: a.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    fn main_routes(&mut self) -> Result<Vec<Route>, NlError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            // Only the main table: with strict checking the kernel dumps nothing else
            // (tailscale's table 52 can hold a route per peer).
            m.header.table = super::plan::TABLE_MAIN as u8;
            for msg in self.rt_dump("dump routes", RouteNetlinkMessage::GetRoute(m))? {
                let RouteNetlinkMessage::NewRoute(r) = msg else {
                    continue;
                };
                let mut table = r.header.table as u32;
                let mut dst = None;
                let mut oif = None;
                let mut via_gateway = false;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Destination(d) => dst = route_addr(d),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => via_gateway = true,
                        _ => {}
                    }
                }
                if table != super::plan::TABLE_MAIN || r.header.kind != RouteType::Unicast {
                    continue;
                }
                let dst = dst.unwrap_or(if fam == AddressFamily::Inet {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                });
                if let Ok(dst) = Cidr::new_truncating(dst, r.header.destination_prefix_length) {
                    out.push(Route {
                        dst,
                        oif,
                        via_gateway,
                    });
                }
            }
        }
        Ok(out)
    }

    fn route_get(&mut self, q: &RouteQuery) -> Result<RouteAnswer, NlError> {
        let mut m = RouteMessage::default();
        let full = if q.dst.is_ipv4() { 32 } else { 128 };
        m.header = RouteHeader {
            address_family: family_of(&q.dst),
            destination_prefix_length: full,
            ..RouteHeader::default()
        };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(q.dst)));
        if let Some(src) = q.src {
            m.header.source_prefix_length = full;
            m.attributes
                .push(RouteAttribute::Source(RouteAddress::from(src)));
        }
        if let Some(iif) = q.iif {
            m.attributes.push(RouteAttribute::Iif(iif));
        }
        let answers = self.route.request(
            "route get",
            NetlinkMessage::from(RouteNetlinkMessage::GetRoute(m)),
            false,
        )?;
        for a in answers {
            if let Answer::Msg(RouteNetlinkMessage::NewRoute(r)) = a {
                let mut ans = RouteAnswer {
                    oif: None,
                    prefsrc: None,
                    table: r.header.table as u32,
                    kind: u8::from(r.header.kind),
                };
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Oif(o) => ans.oif = Some(*o),
                        RouteAttribute::PrefSource(p) => ans.prefsrc = route_addr(p),
                        RouteAttribute::Table(t) => ans.table = *t,
                        _ => {}
                    }
                }
                return Ok(ans);
            }
        }
        Err(NlError::Decode {
            what: "route get".into(),
            detail: "no route message in the answer".into(),
        })
    }

    fn datapath(&mut self) -> Result<Vec<LinkProgs>, NlError> {
        let mut links = Vec::new();
        for msg in self.rt_dump(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )? {
            if let RouteNetlinkMessage::NewLink(l) = msg {
                let mut name = String::new();
                let mut kind = None;
                for a in &l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::LinkInfo(infos) => {
                            kind = infos.iter().find_map(|i| match i {
                                LinkInfo::Kind(k) => Some(k.to_string()),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
                links.push((l.header.index, name, kind));
            }
        }
        // Only an interface with a clsact (or ingress) qdisc can have tc filters.
        let mut qdiscs: Vec<(u32, bool)> = Vec::new();
        for msg in self.rt_dump(
            "dump qdiscs",
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        )? {
            if let RouteNetlinkMessage::NewQueueDiscipline(q) = msg {
                let kind = q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.as_str()),
                    _ => None,
                });
                match kind {
                    Some("clsact") => qdiscs.push((q.header.index as u32, true)),
                    Some("ingress") => qdiscs.push((q.header.index as u32, false)),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        for (index, name, kind) in links {
            let mut programs = Vec::new();
            if let Some(&(_, clsact)) = qdiscs.iter().find(|q| q.0 == index) {
                let hooks: &[(&str, u16)] = if clsact {
                    &[("ingress", TC_H_MIN_INGRESS), ("egress", TC_H_MIN_EGRESS)]
                } else {
                    &[("ingress", TC_H_MIN_INGRESS)]
                };
                for &(hook, minor) in hooks {
                    match self.tc_bpf_filters(index, minor) {
                        Ok(names) => {
                            programs.extend(names.into_iter().map(|n| format!("tc {hook} bpf {n}")))
                        }
                        // The interface went away meanwhile.
                        Err(e) if matches!(e.errno(), Some(ENODEV | EINVAL | ENOENT)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let mut hooks = vec![
                ("tcx ingress", BPF_TCX_INGRESS),
                ("tcx egress", BPF_TCX_EGRESS),
            ];
            if kind.as_deref() == Some("netkit") {
                hooks.push(("netkit primary", BPF_NETKIT_PRIMARY));
                hooks.push(("netkit peer", BPF_NETKIT_PEER));
            }
            for (hook, attach_type) in hooks {
                match super::bpf::attached_count(index, attach_type) {
                    Ok(0) => {}
                    Ok(1) => programs.push(format!("{hook} (1 program)")),
                    Ok(n) => programs.push(format!("{hook} ({n} programs)")),
                    // No tcx/netkit in this kernel (before 6.6 / 6.7), or the interface
                    // went away: nothing attached that way.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(EINVAL | ENODEV | ENOENT | EOPNOTSUPP)
                        ) => {}
                    Err(err) => {
                        return Err(NlError::Kernel {
                            what: format!("BPF_PROG_QUERY ({hook}) on {name}"),
                            err,
                        });
                    }
                }
            }
            out.push(LinkProgs {
                name,
                kind,
                programs,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumped_rules_are_recognised_by_shape() {
        let mut m = rule_message(&PolicyRule {
            priority: 5110,
            dst: "10.244.0.0/16".parse().unwrap(),
            action: plan::RuleAction::Goto(plan::PRIO_ANCHOR),
        });
        // As the kernel reports it: unset suppressors as -1.
        m.attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        let o = observed_rule(&m).unwrap();
        assert_eq!(o.protocol, RT_PROTO);
        assert!(!o.foreign_shape);
        assert_eq!(o.rule.dst.to_string(), "10.244.0.0/16");
        m.attributes.push(RuleAttribute::Iifname("eth0".into()));
        assert!(observed_rule(&m).unwrap().foreign_shape);
        let mut m = rule_message(&PolicyRule {
            priority: 5100,
            dst: "10.0.0.0/8".parse().unwrap(),
            action: plan::RuleAction::Lookup(254),
        });
        m.header.action = RuleAction::Unspec;
        assert!(
            observed_rule(&m).unwrap().foreign_shape,
            "a rule without an action"
        );
        m.header.action = RuleAction::Goto;
        assert!(
            observed_rule(&m).unwrap().foreign_shape,
            "a goto without a target"
        );
        // The kernel reports a table (0) on every rule, and flags an unresolved goto.
        for r in [
            PolicyRule {
                priority: plan::PRIO_ANCHOR,
                dst: Cidr::ANY_V6,
                action: plan::RuleAction::Nop,
            },
            PolicyRule {
                priority: 5120,
                dst: "10.96.0.0/12".parse().unwrap(),
                action: plan::RuleAction::Goto(plan::PRIO_ANCHOR),
            },
            PolicyRule {
                priority: 5120,
                dst: "10.96.0.0/12".parse().unwrap(),
                action: plan::RuleAction::Lookup(254),
            },
        ] {
            let mut m = rule_message(&r);
            m.attributes.push(RuleAttribute::Table(
                if let plan::RuleAction::Lookup(t) = r.action {
                    t
                } else {
                    0
                },
            ));
            m.header.flags |= RuleFlags::Unresolved;
            let o = observed_rule(&m).unwrap();
            assert_eq!(o.rule, r);
            assert!(!o.foreign_shape, "{r}");
            m.header.flags |= RuleFlags::Invert;
            assert!(observed_rule(&m).unwrap().foreign_shape, "not to {r}");
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory kernel: rules, an nft table with handles, and a log of calls.
    use super::*;
    use crate::egress::plan::{NftOp, ObservedChain};

    #[derive(Default)]
    pub struct FakeKernel {
        pub rules: Vec<ObservedRule>,
        pub nft: ObservedNft,
        pub next_handle: u64,
        pub calls: Vec<String>,
        pub fail_nft: bool,
        pub links: Vec<Link>,
        pub addrs: Vec<Addr>,
        pub routes: Vec<Route>,
        pub answers: Vec<(RouteQuery, RouteAnswer)>,
        pub datapath: Vec<LinkProgs>,
    }

    impl Kernel for FakeKernel {
        fn dump_rules(&mut self) -> Result<Vec<ObservedRule>, NlError> {
            Ok(self.rules.clone())
        }
        fn add_rule(&mut self, r: &PolicyRule) -> Result<(), NlError> {
            self.calls.push(format!("add rule {r}"));
            self.rules.push(ObservedRule {
                rule: r.clone(),
                protocol: RT_PROTO,
                foreign_shape: false,
            });
            Ok(())
        }
        fn del_rule(&mut self, r: &PolicyRule) -> Result<(), NlError> {
            self.calls.push(format!("del rule {r}"));
            // Like the kernel: the first rule that matches, protocol included.
            if let Some(i) = self
                .rules
                .iter()
                .position(|o| &o.rule == r && o.protocol == RT_PROTO)
            {
                self.rules.remove(i);
            }
            Ok(())
        }
        fn dump_nft(&mut self) -> Result<ObservedNft, NlError> {
            Ok(self.nft.clone())
        }
        fn apply_nft(&mut self, ops: &[NftOp]) -> Result<(), NlError> {
            self.calls.push(format!("nft batch of {}", ops.len()));
            if self.fail_nft {
                return Err(NlError::Timeout("fake".into()));
            }
            let mut t = self.nft.clone();
            for op in ops {
                match op {
                    NftOp::AddTable => {
                        t.get_or_insert_with(Vec::new);
                    }
                    NftOp::DelTable => t = None,
                    NftOp::AddChain { name, kind } => {
                        let c = t.as_mut().expect("table");
                        if !c.iter().any(|c| &c.name == name) {
                            c.push(ObservedChain {
                                name: name.clone(),
                                kind: Some(*kind),
                                rules: vec![],
                            });
                        }
                    }
                    NftOp::AddRule { chain, rule } => {
                        self.next_handle += 1;
                        let c = t
                            .as_mut()
                            .expect("table")
                            .iter_mut()
                            .find(|c| &c.name == chain)
                            .expect("chain");
                        c.rules.push((self.next_handle, Some(rule.tag())));
                    }
                    NftOp::DelRule { chain, handle } => {
                        let c = t
                            .as_mut()
                            .expect("table")
                            .iter_mut()
                            .find(|c| &c.name == chain)
                            .expect("chain");
                        c.rules.retain(|(h, _)| h != handle);
                    }
                }
            }
            // Atomic: only a complete batch lands.
            self.nft = t;
            Ok(())
        }
        fn links(&mut self) -> Result<Vec<Link>, NlError> {
            Ok(self.links.clone())
        }
        fn addrs(&mut self) -> Result<Vec<Addr>, NlError> {
            Ok(self.addrs.clone())
        }
        fn main_routes(&mut self) -> Result<Vec<Route>, NlError> {
            Ok(self.routes.clone())
        }
        fn route_get(&mut self, q: &RouteQuery) -> Result<RouteAnswer, NlError> {
            self.answers
                .iter()
                .find(|(k, _)| k == q)
                .map(|(_, a)| a.clone())
                .ok_or_else(|| NlError::Kernel {
                    what: "route get".into(),
                    err: std::io::Error::from_raw_os_error(101),
                })
        }
        fn datapath(&mut self) -> Result<Vec<LinkProgs>, NlError> {
            Ok(self.datapath.clone())
        }
    }
}
