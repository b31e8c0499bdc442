//! Drift repair timed by the kernel: the benchmark deletes one of tsbridge's objects over
//! netlink and two listener sockets in the node's namespace timestamp the kernel's
//! deletion notification and the notification of tsbridge's re-creation. No process is
//! forked and nothing is polled in the timed path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage};
use netlink_packet_netfilter::nftables::{ChainAttribute, ChainMessage, NfTablesMessage};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::Socket;
use serde_json::Value;
use tsbridge::egress::kernel::{Kernel, Netlink};
use tsbridge::egress::nl::NlSocket;
use tsbridge::egress::plan::{NFT_TABLE, NftOp, RT_PROTO};

use crate::observe::realtime;
use crate::stats;

const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV6_RULE: u32 = 19;
const NFNLGRP_NFTABLES: u32 = 7;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const FRA_PROTOCOL: u16 = 21;
const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_DELCHAIN: u8 = 5;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_DELRULE: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    NftTable,
    NftChain,
    NftRule,
    GuardRule,
}

impl Object {
    pub const ALL: [Object; 4] = [
        Object::NftTable,
        Object::NftChain,
        Object::NftRule,
        Object::GuardRule,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Object::NftTable => "nft_table",
            Object::NftChain => "nft_chain",
            Object::NftRule => "nft_rule",
            Object::GuardRule => "guard_rule",
        }
    }

    fn deleted(self, n: &Note) -> bool {
        match self {
            Object::GuardRule => !n.nft && n.ty == RTM_DELRULE,
            Object::NftTable => n.nft && n.ty == u16::from(NFT_MSG_DELTABLE),
            Object::NftChain => n.nft && n.ty == u16::from(NFT_MSG_DELCHAIN),
            Object::NftRule => n.nft && n.ty == u16::from(NFT_MSG_DELRULE),
        }
    }

    fn recreated(self, n: &Note) -> bool {
        match self {
            Object::GuardRule => !n.nft && n.ty == RTM_NEWRULE && n.ours,
            _ => {
                n.nft
                    && [NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE]
                        .iter()
                        .any(|t| n.ty == u16::from(*t))
            }
        }
    }
}

/// One notification: when it arrived, what it was, who caused it.
#[derive(Clone, Copy, Debug)]
struct Note {
    at: Instant,
    nft: bool,
    ty: u16,
    pid: u32,
    /// A policy rule with tsbridge's protocol (rules only).
    ours: bool,
}

/// Listens (on a thread already in the node's namespace) and forwards every relevant
/// notification with its arrival time.
fn listen(nft: bool, tx: mpsc::Sender<Note>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    if !realtime() {
        eprintln!("drift listener: no real-time priority; timings include scheduling delays");
    }
    let proto = if nft {
        netlink_sys::constants::NETLINK_NETFILTER
    } else {
        netlink_sys::constants::NETLINK_ROUTE
    };
    let mut s = Socket::new(proto)?;
    s.bind_auto()?;
    let groups: &[u32] = if nft {
        &[NFNLGRP_NFTABLES]
    } else {
        &[RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE]
    };
    for g in groups {
        s.add_membership(*g)?;
    }
    s.set_rx_buf_sz(4 << 20)?;
    tsbridge::egress::nl::set_timeout(&s, Duration::from_millis(100))?;
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let n = match s.recv(&mut &mut buf[..], 0) {
            Ok(n) => n.min(buf.len()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let at = Instant::now();
        let mut off = 0;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            if len < 16 || off + len > n {
                break;
            }
            let m = &buf[off..off + len];
            let ty = u16::from_ne_bytes([m[4], m[5]]);
            let pid = u32::from_ne_bytes([m[12], m[13], m[14], m[15]]);
            let note = if nft {
                // Only the objects of `inet tsbridge` (its name is the first attribute).
                let ours = m.len() > 24 && m[24..].starts_with(format!("{NFT_TABLE}\0").as_bytes());
                (ty >> 8 == 10 && ours).then_some(Note {
                    at,
                    nft: true,
                    ty: ty & 0xff,
                    pid,
                    ours,
                })
            } else {
                Some(Note {
                    at,
                    nft: false,
                    ty,
                    pid,
                    ours: rule_protocol(m) == Some(RT_PROTO),
                })
            };
            if let Some(note) = note
                && tx.send(note).is_err()
            {
                return Ok(());
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

/// FRA_PROTOCOL of a rule message.
fn rule_protocol(m: &[u8]) -> Option<u8> {
    let mut off = 16 + 12;
    while off + 4 <= m.len() {
        let len = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([m[off + 2], m[off + 3]]) & 0x3fff;
        if len < 4 || off + len > m.len() {
            return None;
        }
        if ty == FRA_PROTOCOL {
            return m.get(off + 4).copied();
        }
        off += (len + 3) & !3;
    }
    None
}

/// `nft delete chain inet tsbridge NAME` as one batch (with its rules: the kernel removes
/// them with the chain).
fn delete_chain(s: &mut NlSocket, name: &str) -> Result<(), String> {
    let seq = s.take_seqs(3);
    let ctrl =
        |c| NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 10), c);
    let del = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        NfTablesMessage::DeleteChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(NFT_TABLE.into()),
                ChainAttribute::Name(name.into()),
            ],
        }),
    );
    let mut bytes = Vec::new();
    for (i, (m, flags)) in [
        (ctrl(ControlMessage::BatchBegin), NLM_F_REQUEST),
        (del, NLM_F_REQUEST | NLM_F_ACK),
        (ctrl(ControlMessage::BatchEnd), NLM_F_REQUEST),
    ]
    .into_iter()
    .enumerate()
    {
        let mut nl = NetlinkMessage::from(m);
        nl.header.flags = flags;
        nl.header.sequence_number = seq + i as u32;
        nl.finalize();
        let start = bytes.len();
        bytes.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut bytes[start..]);
    }
    s.send_batch("delete chain", &bytes, seq..seq + 3, 1)
        .map_err(|e| e.to_string())
}

/// What tsbridge owns in the kernel now: (policy rules with its protocol, nft rules).
fn owned(k: &mut Netlink) -> (usize, usize) {
    let rules = k
        .dump_rules()
        .map(|r| r.iter().filter(|o| o.protocol == RT_PROTO).count())
        .unwrap_or(0);
    let nft = k
        .dump_nft()
        .ok()
        .flatten()
        .map_or(0, |t| t.iter().map(|c| c.rules.len()).sum());
    (rules, nft)
}

struct Rng(u64);

impl Rng {
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

/// Deletes each object `trials` times (random gaps of 50-150 ms) and times the repairs.
/// Runs on a thread in the node's namespace. Returns one latency summary per object.
pub fn run(trials: usize) -> Result<Vec<(Object, Value)>, String> {
    if !realtime() {
        eprintln!("drift deleter: no real-time priority; timings include its scheduling delays");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut listeners = Vec::new();
    for nft in [false, true] {
        let (tx, stop) = (tx.clone(), stop.clone());
        // The listener threads inherit this thread's namespace.
        listeners.push(std::thread::spawn(move || listen(nft, tx, stop)));
    }
    drop(tx);
    let res = trials_with(trials, &rx);
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        let _ = l.join();
    }
    res
}

fn trials_with(trials: usize, rx: &mpsc::Receiver<Note>) -> Result<Vec<(Object, Value)>, String> {
    let mut k = Netlink::new().map_err(|e| e.to_string())?;
    let mut chains =
        NlSocket::new(netlink_sys::constants::NETLINK_NETFILTER).map_err(|e| e.to_string())?;
    let mine = [k.port_ids()[0], k.port_ids()[1], chains.port()];
    let whole = owned(&mut k);
    if whole.0 == 0 || whole.1 == 0 {
        return Err(format!("tsbridge's state is not in place: {whole:?}"));
    }
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(88172645463325252, |d| d.as_nanos() as u64 | 1));
    // Let the listeners subscribe before the first deletion.
    std::thread::sleep(Duration::from_millis(200));
    let mut out = Vec::new();
    for obj in Object::ALL {
        let mut ms = Vec::with_capacity(trials);
        let mut missed = 0;
        for _ in 0..trials {
            std::thread::sleep(Duration::from_millis(rng.between(50, 150)));
            while rx.try_recv().is_ok() {}
            match obj {
                Object::NftTable => k.apply_nft(&[NftOp::DelTable]).map_err(|e| e.to_string()),
                Object::NftRule | Object::NftChain => {
                    let t = k.dump_nft().map_err(|e| e.to_string())?.unwrap_or_default();
                    let c = t.first().ok_or("no chain in inet tsbridge")?;
                    if obj == Object::NftChain {
                        delete_chain(&mut chains, &c.name)
                    } else {
                        let handle = c.rules.first().ok_or("an empty chain")?.0;
                        k.apply_nft(&[NftOp::DelRule {
                            chain: c.name.clone(),
                            handle,
                        }])
                        .map_err(|e| e.to_string())
                    }
                }
                Object::GuardRule => {
                    let rules = k.dump_rules().map_err(|e| e.to_string())?;
                    let r = rules
                        .iter()
                        .find(|o| o.protocol == RT_PROTO)
                        .ok_or("no guard rule")?;
                    k.del_rule(&r.rule).map_err(|e| e.to_string())
                }
            }?;
            let mut deleted = None;
            let mut back = None;
            let end = Instant::now() + Duration::from_secs(5);
            while back.is_none() {
                let Ok(n) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) else {
                    break;
                };
                if deleted.is_none() && mine.contains(&n.pid) && obj.deleted(&n) {
                    deleted = Some(n.at);
                } else if deleted.is_some() && !mine.contains(&n.pid) && obj.recreated(&n) {
                    back = Some(n.at);
                }
            }
            match (deleted, back) {
                (Some(d), Some(b)) => ms.push(b.duration_since(d).as_secs_f64() * 1000.0),
                _ => missed += 1,
            }
            // Whole again before the next trial (not timed).
            let end = Instant::now() + Duration::from_secs(5);
            while owned(&mut k) != whole {
                if Instant::now() > end {
                    return Err(format!(
                        "{}: not repaired within 5 s: {:?}, want {whole:?}",
                        obj.key(),
                        owned(&mut k)
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        out.push((obj, stats::latency(&ms, missed)));
    }
    Ok(out)
}
