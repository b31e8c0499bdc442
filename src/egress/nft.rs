//! nftables over netlink: the planner's [`NftOp`]s as one atomic batch, and the dump of
//! `inet tsbridge` back into [`ObservedChain`]s.
//!
//! `netlink-packet-netfilter` 0.4 carries tables, chains, rules, batches and the
//! meta/cmp/payload/bitwise expressions. The four expressions it has no type for
//! (`masq`, `rt`, `byteorder`, `exthdr`) are encoded here as raw attributes, following
//! `include/uapi/linux/netfilter/nf_tables.h`; the unit tests pin the bytes `nft
//! --debug=netlink` shows for the same rules, and the namespace tests check that `nft`
//! prints them back as the intended rules.

use std::net::IpAddr;

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, HookNumber, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator,
    Payload, Register, RuleAttribute, RuleMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::plan::{ChainKind, Direction, NFT_TABLE, NftOp, NftRule, ObservedChain};
use crate::net::Cidr;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IFNAMSIZ: usize = 16;
const PAYLOAD_BASE_NETWORK: u32 = 1;
const PAYLOAD_BASE_TRANSPORT: u32 = 2;
const TCP_FLAG_SYN: u8 = 0x02;
// nft_rt_keys: NFT_RT_TCPMSS is the route MTU minus IP and TCP headers.
const NFT_RT_TCPMSS: u32 = 3;
const NFT_BYTEORDER_HTON: u32 = 1;
const NFT_EXTHDR_OP_TCPOPT: u32 = 1;
const TCPOPT_MAXSEG: u8 = 2;

/// A batch ready to send: its bytes and how many ACKs to wait for.
pub struct Batch {
    pub bytes: Vec<u8>,
    pub acks: usize,
}

fn nfmsg(family: NetfilterProtoFamily, inner: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), inner)
}

fn ctrl(c: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        c,
    )
}

/// Encodes `ops` as BATCH_BEGIN, the ops, BATCH_END, sequence numbers from `seq`.
pub fn batch(ops: &[NftOp], seq: u32) -> Batch {
    let mut msgs: Vec<NetlinkMessage<NetfilterMessage>> = Vec::new();
    msgs.push(NetlinkMessage::from(ctrl(ControlMessage::BatchBegin)));
    for op in ops {
        let (m, flags) = op_message(op);
        let mut nl = NetlinkMessage::from(m);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        msgs.push(nl);
    }
    msgs.push(NetlinkMessage::from(ctrl(ControlMessage::BatchEnd)));
    let mut bytes = Vec::new();
    for (i, mut m) in msgs.into_iter().enumerate() {
        if m.header.flags == 0 {
            m.header.flags = NLM_F_REQUEST;
        }
        m.header.sequence_number = seq.wrapping_add(i as u32);
        m.finalize();
        let start = bytes.len();
        bytes.resize(start + m.buffer_len(), 0);
        m.serialize(&mut bytes[start..]);
    }
    Batch {
        bytes,
        acks: ops.len(),
    }
}

fn op_message(op: &NftOp) -> (NetfilterMessage, u16) {
    let inet = NetfilterProtoFamily::Inet;
    match op {
        NftOp::AddTable => (
            nfmsg(
                inet,
                NfTablesMessage::NewTable(TableMessage {
                    attributes: vec![TableAttribute::Name(NFT_TABLE.into())],
                }),
            ),
            NLM_F_CREATE,
        ),
        NftOp::DelTable => (
            nfmsg(
                inet,
                NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(NFT_TABLE.into())],
                }),
            ),
            0,
        ),
        NftOp::AddChain { name, kind } => (
            nfmsg(
                inet,
                NfTablesMessage::NewChain(ChainMessage {
                    attributes: vec![
                        ChainAttribute::Table(NFT_TABLE.into()),
                        ChainAttribute::Name(name.clone()),
                        ChainAttribute::Hook(vec![
                            Hook::Number(HookNumber::Inet(hook_number(*kind))),
                            Hook::Priority(kind.priority() as u32),
                        ]),
                        ChainAttribute::Policy(1), // NF_ACCEPT
                        ChainAttribute::Type(kind.type_name().into()),
                    ],
                }),
            ),
            NLM_F_CREATE,
        ),
        NftOp::AddRule { chain, rule } => (
            nfmsg(
                inet,
                NfTablesMessage::NewRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(NFT_TABLE.into()),
                        RuleAttribute::Chain(chain.clone()),
                        RuleAttribute::Expressions(expressions(rule)),
                        RuleAttribute::UserData(userdata(&rule.tag())),
                    ],
                }),
            ),
            NLM_F_CREATE | NLM_F_APPEND,
        ),
        NftOp::DelRule { chain, handle } => (
            nfmsg(
                inet,
                NfTablesMessage::DeleteRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(NFT_TABLE.into()),
                        RuleAttribute::Chain(chain.clone()),
                        RuleAttribute::Handle(*handle),
                    ],
                }),
            ),
            0,
        ),
    }
}

fn hook_number(k: ChainKind) -> InetHookNumber {
    match k {
        ChainKind::NatPostrouting => InetHookNumber::PostRouting,
        ChainKind::FilterForward => InetHookNumber::Forward,
    }
}

fn from_hook_number(h: &HookNumber) -> Option<u32> {
    match h {
        HookNumber::Inet(i) => Some(u32::from(*i)),
        HookNumber::Other(n) => Some(*n),
        _ => None,
    }
}

/// Rule userdata in nft's TLV format (type 0 = comment, NUL-terminated), so `nft list`
/// shows the tag as the rule's comment: `comment "tsbridge/v1 masq ..."`.
fn userdata(tag: &str) -> Vec<u8> {
    let mut v = vec![0u8, (tag.len() + 1) as u8];
    v.extend_from_slice(tag.as_bytes());
    v.push(0);
    v
}

fn tag_from_userdata(u: &[u8]) -> Option<String> {
    let mut i = 0;
    while i + 2 <= u.len() {
        let (t, l) = (u[i], u[i + 1] as usize);
        let v = u.get(i + 2..i + 2 + l)?;
        if t == 0 {
            let s = v.strip_suffix(&[0]).unwrap_or(v);
            return String::from_utf8(s.to_vec()).ok();
        }
        i += 2 + l;
    }
    None
}

fn raw_expr(name: &str, attrs: Vec<DefaultNla>) -> ListAttribute<ExpressionAttribute> {
    ListAttribute::Element(vec![
        ExpressionAttribute::Name(name.into()),
        ExpressionAttribute::Data(Expressions::Other {
            expression_type: name.into(),
            attributes: attrs,
        }),
    ])
}

fn be32(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(IFNAMSIZ, 0);
    b
}

fn meta_cmp(key: MetaKey, value: Vec<u8>) -> [ListAttribute<ExpressionAttribute>; 2] {
    [
        Expressions::Meta(vec![
            Meta::Key(key),
            Meta::DestinationRegister(Register::Reg1),
        ])
        .into(),
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(value)),
        ])
        .into(),
    ]
}

/// `ip saddr CIDR` / `ip6 saddr CIDR` as nft encodes it: load the prefix's whole bytes,
/// mask the last partial byte, compare.
fn saddr_match(src: &Cidr) -> Vec<ListAttribute<ExpressionAttribute>> {
    let (offset, octets): (u32, Vec<u8>) = match src.addr() {
        IpAddr::V4(a) => (12, a.octets().to_vec()),
        IpAddr::V6(a) => (8, a.octets().to_vec()),
    };
    let bits = src.prefix_len() as usize;
    if bits == 0 {
        return Vec::new();
    }
    let len = bits.div_ceil(8);
    let mut out: Vec<ListAttribute<ExpressionAttribute>> = vec![
        Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(PAYLOAD_BASE_NETWORK),
            Payload::Offset(offset),
            Payload::Len(len as u32),
        ])
        .into(),
    ];
    if bits % 8 != 0 {
        let mut mask = vec![0xffu8; len];
        mask[len - 1] = 0xff << (8 - bits % 8);
        out.push(
            Expressions::Bitwise(vec![
                Bitwise::SourceRegister(Register::Reg1),
                Bitwise::DestinationRegister(Register::Reg1),
                Bitwise::Length(len as u32),
                Bitwise::Mask(DataAttribute::Value(mask)),
                Bitwise::Xor(DataAttribute::Value(vec![0; len])),
            ])
            .into(),
        );
    }
    out.push(
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(octets[..len].to_vec())),
        ])
        .into(),
    );
    out
}

/// The expressions of one rule.
pub fn expressions(rule: &NftRule) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mut e = Vec::new();
    match rule {
        NftRule::Masquerade { src, oif } => {
            e.extend(meta_cmp(MetaKey::Oifname, ifname_bytes(oif)));
            let proto = if src.is_ipv4() {
                NFPROTO_IPV4
            } else {
                NFPROTO_IPV6
            };
            e.extend(meta_cmp(MetaKey::Nfproto, vec![proto]));
            e.extend(saddr_match(src));
            e.push(raw_expr("masq", Vec::new()));
        }
        NftRule::MssClamp { dir, ifname } => {
            let key = match dir {
                Direction::Out => MetaKey::Oifname,
                Direction::In => MetaKey::Iifname,
            };
            e.extend(meta_cmp(key, ifname_bytes(ifname)));
            e.extend(meta_cmp(MetaKey::L4Proto, vec![IPPROTO_TCP]));
            e.push(
                Expressions::Payload(vec![
                    Payload::DestinationRegister(Register::Reg1),
                    Payload::Base(PAYLOAD_BASE_TRANSPORT),
                    Payload::Offset(13),
                    Payload::Len(1),
                ])
                .into(),
            );
            e.push(
                Expressions::Bitwise(vec![
                    Bitwise::SourceRegister(Register::Reg1),
                    Bitwise::DestinationRegister(Register::Reg1),
                    Bitwise::Length(1),
                    Bitwise::Mask(DataAttribute::Value(vec![TCP_FLAG_SYN])),
                    Bitwise::Xor(DataAttribute::Value(vec![0])),
                ])
                .into(),
            );
            e.push(
                Expressions::Cmp(vec![
                    Cmp::SourceRegister(Register::Reg1),
                    Cmp::Op(Operator::NotEqual),
                    Cmp::Data(DataAttribute::Value(vec![0])),
                ])
                .into(),
            );
            // rt: NFTA_RT_DREG=1, NFTA_RT_KEY=2
            e.push(raw_expr("rt", vec![be32(1, 1), be32(2, NFT_RT_TCPMSS)]));
            // byteorder: SREG=1, DREG=2, OP=3, LEN=4, SIZE=5
            e.push(raw_expr(
                "byteorder",
                vec![
                    be32(1, 1),
                    be32(2, 1),
                    be32(3, NFT_BYTEORDER_HTON),
                    be32(4, 2),
                    be32(5, 2),
                ],
            ));
            // exthdr: TYPE=2 (u8), OFFSET=3, LEN=4, OP=6, SREG=7
            e.push(raw_expr(
                "exthdr",
                vec![
                    DefaultNla::new(2, vec![TCPOPT_MAXSEG]),
                    be32(3, 2),
                    be32(4, 2),
                    be32(6, NFT_EXTHDR_OP_TCPOPT),
                    be32(7, 1),
                ],
            ));
        }
    }
    e
}

pub fn get_table_msg() -> NetlinkMessage<NetfilterMessage> {
    NetlinkMessage::from(nfmsg(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(NFT_TABLE.into())],
        }),
    ))
}

pub fn get_chains_msg() -> NetlinkMessage<NetfilterMessage> {
    NetlinkMessage::from(nfmsg(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetChain(ChainMessage {
            attributes: vec![ChainAttribute::Table(NFT_TABLE.into())],
        }),
    ))
}

pub fn get_rules_msg() -> NetlinkMessage<NetfilterMessage> {
    NetlinkMessage::from(nfmsg(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(NFT_TABLE.into())],
        }),
    ))
}

/// A dumped chain of our table: (name, kind if it is exactly one of ours).
pub fn parse_chain(m: &NetfilterMessage) -> Option<(String, Option<ChainKind>)> {
    let netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewChain(c)) =
        &m.inner
    else {
        return None;
    };
    let mut table = None;
    let mut name = None;
    let mut ty = None;
    let mut hook = None;
    let mut prio = None;
    for a in &c.attributes {
        match a {
            ChainAttribute::Table(t) => table = Some(t.as_str()),
            ChainAttribute::Name(n) => name = Some(n.clone()),
            ChainAttribute::Type(t) => ty = Some(t.as_str()),
            ChainAttribute::Hook(h) => {
                for x in h {
                    match x {
                        Hook::Number(n) => hook = from_hook_number(n),
                        Hook::Priority(p) => prio = Some(*p as i32),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if table != Some(NFT_TABLE) {
        return None;
    }
    let kind = [ChainKind::NatPostrouting, ChainKind::FilterForward]
        .into_iter()
        .find(|k| {
            Some(k.type_name()) == ty && Some(k.hook()) == hook && Some(k.priority()) == prio
        });
    Some((name?, kind))
}

/// A dumped rule of our table: (chain, handle, tag).
pub fn parse_rule(m: &NetfilterMessage) -> Option<(String, u64, Option<String>)> {
    let netlink_packet_netfilter::NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(r)) =
        &m.inner
    else {
        return None;
    };
    let mut table = None;
    let mut chain = None;
    let mut handle = None;
    let mut tag = None;
    for a in &r.attributes {
        match a {
            RuleAttribute::Table(t) => table = Some(t.as_str()),
            RuleAttribute::Chain(c) => chain = Some(c.clone()),
            RuleAttribute::Handle(h) => handle = Some(*h),
            RuleAttribute::UserData(u) => tag = tag_from_userdata(u),
            _ => {}
        }
    }
    if table != Some(NFT_TABLE) {
        return None;
    }
    Some((chain?, handle?, tag))
}

/// Assembles dumped chains and rules into the observed table.
pub fn assemble(
    chains: Vec<(String, Option<ChainKind>)>,
    rules: Vec<(String, u64, Option<String>)>,
) -> Vec<ObservedChain> {
    let mut out: Vec<ObservedChain> = chains
        .into_iter()
        .map(|(name, kind)| ObservedChain {
            name,
            kind,
            rules: Vec::new(),
        })
        .collect();
    for (chain, handle, tag) in rules {
        if let Some(c) = out.iter_mut().find(|c| c.name == chain) {
            c.rules.push((handle, tag));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    fn emit(e: &[ListAttribute<ExpressionAttribute>]) -> Vec<u8> {
        let mut b = vec![0u8; e.buffer_len()];
        e.emit(&mut b);
        b
    }

    /// Finds `needle` in `hay` (the attribute bytes nft shows in `--debug=netlink`).
    fn has(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn masquerade_rule_matches_what_nft_encodes() {
        let r = NftRule::Masquerade {
            src: "10.244.0.0/16".parse().unwrap(),
            oif: "tailscale0".into(),
        };
        let b = emit(&expressions(&r));
        // [ cmp eq reg 1 0x6c696174 0x6c616373 0x00003065 0x00000000 ] (IFNAMSIZ)
        assert!(has(&b, b"tailscale0\0\0\0\0\0\0"));
        // [ payload load 2b @ network header + 12 => reg 1 ]: base 1, offset 12, len 2
        assert!(has(
            &b,
            &[
                8, 0, 2, 0, 0, 0, 0, 1, 8, 0, 3, 0, 0, 0, 0, 12, 8, 0, 4, 0, 0, 0, 0, 2
            ]
        ));
        // [ cmp eq reg 1 0x0000f40a ]
        assert!(has(&b, &[6, 0, 1, 0, 10, 244]));
        assert!(has(&b, b"masq\0"));
        assert!(!has(&b, b"bitwise"), "a byte-aligned prefix needs no mask");
        let v6 = NftRule::Masquerade {
            src: "fd00:10:244::/56".parse().unwrap(),
            oif: "tailscale0".into(),
        };
        let b = emit(&expressions(&v6));
        // [ payload load 7b @ network header + 8 ], [ cmp eq reg 1 0x100000fd 0x00004402 ]
        assert!(has(&b, &[8, 0, 3, 0, 0, 0, 0, 8, 8, 0, 4, 0, 0, 0, 0, 7]));
        assert!(has(&b, &[0xfd, 0, 0, 0x10, 2, 0x44, 0]));
        assert!(has(&b, &[5, 0, 1, 0, 10]), "nfproto ipv6");
    }

    #[test]
    fn odd_prefix_is_masked() {
        let r = NftRule::Masquerade {
            src: "10.240.0.0/13".parse().unwrap(),
            oif: "tailscale0".into(),
        };
        let b = emit(&expressions(&r));
        assert!(has(&b, b"bitwise"));
        assert!(has(&b, &[0xff, 0xf8]));
    }

    #[test]
    fn mss_clamp_matches_what_nft_encodes() {
        let r = NftRule::MssClamp {
            dir: Direction::In,
            ifname: "tailscale0".into(),
        };
        let b = emit(&expressions(&r));
        for name in [&b"rt\0"[..], b"byteorder\0", b"exthdr\0", b"bitwise\0"] {
            assert!(has(&b, name), "{name:?}");
        }
        // [ rt load tcpmss => reg 1 ]
        assert!(has(&b, &[8, 0, 1, 0, 0, 0, 0, 1, 8, 0, 2, 0, 0, 0, 0, 3]));
        // [ exthdr write tcpopt reg 1 => 2b @ 2 + 2 ]: type 2 (u8), offset 2, len 2, op 1, sreg 1
        assert!(has(
            &b,
            &[
                5, 0, 2, 0, 2, 0, 0, 0, 8, 0, 3, 0, 0, 0, 0, 2, 8, 0, 4, 0, 0, 0, 0, 2
            ]
        ));
        assert!(has(&b, &[8, 0, 6, 0, 0, 0, 0, 1, 8, 0, 7, 0, 0, 0, 0, 1]));
        // iifname = meta key 6
        assert!(has(&b, &[8, 0, 2, 0, 0, 0, 0, 6]));
    }

    #[test]
    fn batch_is_framed_and_counts_acks() {
        let ops = vec![
            NftOp::AddTable,
            NftOp::AddChain {
                name: "postrouting".into(),
                kind: ChainKind::NatPostrouting,
            },
        ];
        let b = batch(&ops, 100);
        assert_eq!(b.acks, 2);
        // BATCH_BEGIN: type 0x10, res_id 10 (nftables) in network order.
        assert_eq!(&b.bytes[4..6], &[0x10, 0]);
        assert_eq!(&b.bytes[18..20], &[0, 10]);
        let end = &b.bytes[b.bytes.len() - 20..];
        assert_eq!(&end[4..6], &[0x11, 0]);
        // NEWTABLE: subsys 10 << 8 | 0
        assert_eq!(&b.bytes[20 + 4..20 + 6], &[0x00, 0x0a]);
    }

    #[test]
    fn userdata_round_trips_as_an_nft_comment() {
        let u = userdata("tsbridge/v1 mss oif tailscale0");
        assert_eq!(u[0], 0);
        assert_eq!(
            tag_from_userdata(&u).as_deref(),
            Some("tsbridge/v1 mss oif tailscale0")
        );
        assert_eq!(tag_from_userdata(&[1, 2, 3]), None);
        assert_eq!(tag_from_userdata(&[]), None);
    }
}
