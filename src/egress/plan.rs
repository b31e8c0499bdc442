//! What tsbridge wants in the kernel, as plain data, and the minimal changes that get the
//! kernel there. Pure: no I/O, unit-tested without root.
//!
//! Owned objects:
//! - policy rules `to <CIDR> goto` [`PRIO_ANCHOR`] with protocol [`RT_PROTO`] at
//!   [`PRIO_LAB`], [`PRIO_POD`], [`PRIO_SERVICE`] (the guards, below tailscale's 5210), and
//!   per address family a `nop` rule at [`PRIO_ANCHOR`] (the anchor they jump to);
//! - the nftables table `inet tsbridge` ([`NFT_TABLE`]) with the chains
//!   [`CHAIN_POSTROUTING`] (nat, masquerade) and [`CHAIN_FORWARD`] (MSS clamp).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::net::Cidr;

/// tsbridge's rtnetlink protocol number on every rule it installs. Unassigned in
/// iproute2's `rt_protos` (and not Talos's `static`), so both sides can tell whose is whose.
pub const RT_PROTO: u8 = 116;
/// Guard priorities: below tailscale's first rule (5210). A guard jumps over tailscale's
/// rules to the anchor, so table 52 (accepted subnet routes, an exit node) is never
/// consulted for these destinations, while every later rule (KubeSpan's `fwmark 0x40/0x60
/// lookup 180` at 32500, `main` at 32766) still is. A `lookup main` guard would skip those
/// later rules, and where `main` has no route the kernel would go on to table 52.
pub const PRIO_LAB: u32 = 5100;
pub const PRIO_POD: u32 = 5110;
pub const PRIO_SERVICE: u32 = 5120;
/// The anchor the guards jump to: the first priority after tailscale's range. tailscaled
/// installs its rules at 5200 + 10/30/50/70 and treats 5200-5299 as its own
/// (`ipPolicyPrefBase` and `onIPRuleDeleted` in wgengine/router/osrouter/router_linux.go),
/// so nothing of tailscale's is skipped-to and our anchor never wakes its rule restorer.
pub const PRIO_ANCHOR: u32 = 5300;
/// The `main` routing table.
pub const TABLE_MAIN: u32 = 254;

pub const NFT_TABLE: &str = "tsbridge";
pub const CHAIN_POSTROUTING: &str = "postrouting";
pub const CHAIN_FORWARD: &str = "forward";

/// The slice of the configuration the planner needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressConfig {
    pub lab_subnets: Vec<Cidr>,
    pub pod_cidrs: Vec<Cidr>,
    pub service_cidrs: Vec<Cidr>,
    pub snat: bool,
    pub mss_clamp: bool,
    /// The TUN interface tailscaled uses.
    pub tun: String,
}

impl EgressConfig {
    pub fn from_config(c: &crate::config::Config) -> Self {
        EgressConfig {
            lab_subnets: c.lab_subnets.clone(),
            pod_cidrs: c.pod_cidrs.clone(),
            service_cidrs: c.service_cidrs.clone(),
            snat: c.snat,
            mss_clamp: c.mss_clamp,
            tun: crate::tailscaled::tun_name(&c.tailscaled_extra_args),
        }
    }
}

/// What a policy rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    /// `lookup TABLE` (tsbridge's guards before the anchor; kept to recognise them).
    Lookup(u32),
    /// `goto PRIORITY`: go on at the rule with that priority. A goto whose target does not
    /// exist is skipped by the kernel, so the anchor goes in first and out last.
    Goto(u32),
    /// `nop`: matches and goes on with the next rule.
    Nop,
    /// An action tsbridge never sets (seen in a dump only).
    Other(u8),
}

/// A policy rule `to <dst> <action>` at `priority`. `dst` with prefix length 0 means every
/// destination of its address family.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRule {
    pub priority: u32,
    pub dst: Cidr,
    pub action: RuleAction,
}

impl PolicyRule {
    fn is_anchor(&self) -> bool {
        self.action == RuleAction::Nop
    }
}

impl std::fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.priority)?;
        if self.dst.prefix_len() == 0 {
            f.write_str(if self.dst.is_ipv4() {
                " (IPv4)"
            } else {
                " (IPv6)"
            })?;
        } else {
            write!(f, " to {}", self.dst)?;
        }
        match self.action {
            RuleAction::Lookup(t) => write!(f, " lookup {t}"),
            RuleAction::Goto(p) => write!(f, " goto {p}"),
            RuleAction::Nop => f.write_str(" nop"),
            RuleAction::Other(a) => write!(f, " action {a}"),
        }
    }
}

/// A policy rule as the kernel reports it, reduced to what matters for ownership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRule {
    pub rule: PolicyRule,
    pub protocol: u8,
    /// Carries selectors or an action tsbridge never sets (so it is not one of ours as
    /// planned, even with our protocol number): it is removed.
    pub foreign_shape: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Forwarded out of the TUN (pod -> tailnet).
    Out,
    /// Forwarded in from the TUN (tailnet -> pod).
    In,
}

/// One nftables rule tsbridge owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NftRule {
    /// `oifname TUN ip[6] saddr SRC masquerade`
    Masquerade { src: Cidr, oif: String },
    /// `[oi]ifname TUN tcp flags & syn != 0 tcp option maxseg size set rt mtu`
    MssClamp { dir: Direction, ifname: String },
}

impl NftRule {
    /// The rule's identity, stored as the rule's userdata, so a dump tells which desired
    /// rule an installed one is (the kernel gives no other stable name).
    pub fn tag(&self) -> String {
        match self {
            NftRule::Masquerade { src, oif } => format!("tsbridge/v1 masq {src} oif {oif}"),
            NftRule::MssClamp { dir, ifname } => {
                let d = match dir {
                    Direction::Out => "oif",
                    Direction::In => "iif",
                };
                format!("tsbridge/v1 mss {d} {ifname}")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainKind {
    /// `type nat hook postrouting priority srcnat`
    NatPostrouting,
    /// `type filter hook forward priority mangle`
    FilterForward,
}

impl ChainKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ChainKind::NatPostrouting => "nat",
            ChainKind::FilterForward => "filter",
        }
    }
    /// NF_INET_* hook number.
    pub fn hook(self) -> u32 {
        match self {
            ChainKind::NatPostrouting => 4,
            ChainKind::FilterForward => 2,
        }
    }
    pub fn priority(self) -> i32 {
        match self {
            ChainKind::NatPostrouting => 100,
            ChainKind::FilterForward => -150,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    pub kind: ChainKind,
    pub rules: Vec<NftRule>,
}

/// Everything tsbridge wants in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub rules: Vec<PolicyRule>,
    /// `None`: no nft table at all (SNAT and clamp both off).
    pub chains: Option<Vec<ChainSpec>>,
}

/// The configuration -> desired kernel objects. Independent of tailscaled's state on
/// purpose: the guards and the masquerade (which matches the TUN by name) are right before
/// tailscale0 exists and across tailscaled restarts, so there is no window without them.
pub fn desired(cfg: &EgressConfig) -> Desired {
    let mut guards: Vec<PolicyRule> = Vec::new();
    for (cidrs, prio) in [
        (&cfg.lab_subnets, PRIO_LAB),
        (&cfg.pod_cidrs, PRIO_POD),
        (&cfg.service_cidrs, PRIO_SERVICE),
    ] {
        for c in cidrs {
            let r = PolicyRule {
                priority: prio,
                dst: *c,
                action: RuleAction::Goto(PRIO_ANCHOR),
            };
            if !guards.contains(&r) {
                guards.push(r);
            }
        }
    }
    // Anchors first: the kernel applies `rules` in this order.
    let mut rules: Vec<PolicyRule> = [Cidr::ANY_V4, Cidr::ANY_V6]
        .into_iter()
        .filter(|any| guards.iter().any(|g| g.dst.is_ipv4() == any.is_ipv4()))
        .map(|dst| PolicyRule {
            priority: PRIO_ANCHOR,
            dst,
            action: RuleAction::Nop,
        })
        .collect();
    rules.extend(guards);
    let mut chains = Vec::new();
    if cfg.snat {
        chains.push(ChainSpec {
            name: CHAIN_POSTROUTING.into(),
            kind: ChainKind::NatPostrouting,
            rules: cfg
                .pod_cidrs
                .iter()
                .map(|c| NftRule::Masquerade {
                    src: *c,
                    oif: cfg.tun.clone(),
                })
                .collect(),
        });
    }
    if cfg.mss_clamp {
        chains.push(ChainSpec {
            name: CHAIN_FORWARD.into(),
            kind: ChainKind::FilterForward,
            rules: [Direction::Out, Direction::In]
                .into_iter()
                .map(|dir| NftRule::MssClamp {
                    dir,
                    ifname: cfg.tun.clone(),
                })
                .collect(),
        });
    }
    Desired {
        rules,
        chains: if chains.is_empty() {
            None
        } else {
            Some(chains)
        },
    }
}

/// A chain of `inet tsbridge` as dumped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedChain {
    pub name: String,
    /// `None` for a chain that is not a base chain, or whose hook is not ours.
    pub kind: Option<ChainKind>,
    /// (handle, tag) in kernel order; the tag is `None` for a rule without our userdata.
    pub rules: Vec<(u64, Option<String>)>,
}

/// The table `inet tsbridge` as dumped (`None`: absent).
pub type ObservedNft = Option<Vec<ObservedChain>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftOp {
    AddTable,
    DelTable,
    AddChain { name: String, kind: ChainKind },
    AddRule { chain: String, rule: NftRule },
    DelRule { chain: String, handle: u64 },
}

/// The changes from `observed` to `desired`; empty when they agree. Rules are added (in
/// order: anchors before the guards that jump to them) before any is deleted, so a guard
/// being replaced (an upgrade from `lookup main` guards) never leaves its destination
/// unguarded; deletions go guards first, anchors last. All nft ops go to the kernel as one
/// atomic batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub del_rules: Vec<PolicyRule>,
    pub add_rules: Vec<PolicyRule>,
    pub nft: Vec<NftOp>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.del_rules.is_empty() && self.add_rules.is_empty() && self.nft.is_empty()
    }
}

/// Policy rules: ours (by protocol) that are not desired, or duplicated, go; desired ones
/// that are missing come. Rules of any other protocol are never touched.
pub fn diff_rules(
    desired: &[PolicyRule],
    observed: &[ObservedRule],
) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let mut seen: BTreeMap<&PolicyRule, usize> = BTreeMap::new();
    let mut del = Vec::new();
    for o in observed.iter().filter(|o| o.protocol == RT_PROTO) {
        let n = seen.entry(&o.rule).or_default();
        *n += 1;
        if o.foreign_shape || !desired.contains(&o.rule) || *n > 1 {
            del.push(o.rule.clone());
        }
    }
    anchors_last(&mut del);
    let add = desired
        .iter()
        .filter(|d| {
            !observed
                .iter()
                .any(|o| o.protocol == RT_PROTO && !o.foreign_shape && &o.rule == *d)
        })
        .cloned()
        .collect();
    (del, add)
}

/// nftables: create what is missing, delete rules that are not desired (or duplicated),
/// leave matching rules alone. A chain with the wrong hook cannot be changed in place, so
/// then the whole table is replaced (still one atomic batch: no packet sees it half-done).
pub fn diff_nft(desired: Option<&[ChainSpec]>, observed: &ObservedNft) -> Vec<NftOp> {
    let mut ops = Vec::new();
    let Some(want) = desired else {
        if observed.is_some() {
            ops.push(NftOp::DelTable);
        }
        return ops;
    };
    let create_all = |ops: &mut Vec<NftOp>| {
        ops.push(NftOp::AddTable);
        for c in want {
            ops.push(NftOp::AddChain {
                name: c.name.clone(),
                kind: c.kind,
            });
            for r in &c.rules {
                ops.push(NftOp::AddRule {
                    chain: c.name.clone(),
                    rule: r.clone(),
                });
            }
        }
    };
    let Some(have) = observed else {
        create_all(&mut ops);
        return ops;
    };
    let chain_mismatch = have.iter().any(|h| {
        want.iter()
            .find(|w| w.name == h.name)
            .is_none_or(|w| h.kind != Some(w.kind))
    });
    if chain_mismatch {
        ops.push(NftOp::DelTable);
        create_all(&mut ops);
        return ops;
    }
    for w in want {
        let Some(h) = have.iter().find(|h| h.name == w.name) else {
            ops.push(NftOp::AddChain {
                name: w.name.clone(),
                kind: w.kind,
            });
            for r in &w.rules {
                ops.push(NftOp::AddRule {
                    chain: w.name.clone(),
                    rule: r.clone(),
                });
            }
            continue;
        };
        let want_tags: Vec<String> = w.rules.iter().map(NftRule::tag).collect();
        let mut kept: Vec<&str> = Vec::new();
        for (handle, tag) in &h.rules {
            match tag {
                Some(t) if want_tags.contains(t) && !kept.contains(&t.as_str()) => kept.push(t),
                _ => ops.push(NftOp::DelRule {
                    chain: w.name.clone(),
                    handle: *handle,
                }),
            }
        }
        for r in &w.rules {
            if !kept.contains(&r.tag().as_str()) {
                ops.push(NftOp::AddRule {
                    chain: w.name.clone(),
                    rule: r.clone(),
                });
            }
        }
    }
    ops
}

pub fn diff(desired: &Desired, rules: &[ObservedRule], nft: &ObservedNft) -> Changes {
    let (del_rules, add_rules) = diff_rules(&desired.rules, rules);
    Changes {
        del_rules,
        add_rules,
        nft: diff_nft(desired.chains.as_deref(), nft),
    }
}

/// What to remove on shutdown: every rule with our protocol, and our table.
pub fn teardown(rules: &[ObservedRule], nft: &ObservedNft) -> Changes {
    let mut del_rules: Vec<PolicyRule> = rules
        .iter()
        .filter(|o| o.protocol == RT_PROTO)
        .map(|o| o.rule.clone())
        .collect();
    anchors_last(&mut del_rules);
    Changes {
        del_rules,
        add_rules: Vec::new(),
        nft: if nft.is_some() {
            vec![NftOp::DelTable]
        } else {
            Vec::new()
        },
    }
}

/// While a guard exists its anchor must too (a goto without its target is skipped).
fn anchors_last(rules: &mut [PolicyRule]) {
    rules.sort_by_key(PolicyRule::is_anchor);
}

/// True when `ip` is a tailnet address (100.64.0.0/10 or fd7a:115c:a1e0::/48).
pub fn is_tailnet(ip: IpAddr) -> bool {
    crate::net::TAILNET_V4.contains(ip) || crate::net::TAILNET_V6.contains(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn cfg() -> EgressConfig {
        EgressConfig {
            lab_subnets: vec![c("192.168.50.0/24")],
            pod_cidrs: vec![c("10.244.0.0/16"), c("fd00:10:244::/56")],
            service_cidrs: vec![c("10.96.0.0/12")],
            snat: true,
            mss_clamp: true,
            tun: "tailscale0".into(),
        }
    }

    fn ours(r: &PolicyRule) -> ObservedRule {
        ObservedRule {
            rule: r.clone(),
            protocol: RT_PROTO,
            foreign_shape: false,
        }
    }

    /// What the kernel would hold after applying `ops` to `nft` (a model of the batch).
    fn apply_model(nft: &ObservedNft, ops: &[NftOp], next_handle: &mut u64) -> ObservedNft {
        let mut t = nft.clone();
        for op in ops {
            match op {
                NftOp::AddTable => {
                    if t.is_none() {
                        t = Some(Vec::new())
                    }
                }
                NftOp::DelTable => t = None,
                NftOp::AddChain { name, kind } => t.as_mut().unwrap().push(ObservedChain {
                    name: name.clone(),
                    kind: Some(*kind),
                    rules: vec![],
                }),
                NftOp::AddRule { chain, rule } => {
                    *next_handle += 1;
                    let ch = t
                        .as_mut()
                        .unwrap()
                        .iter_mut()
                        .find(|c| &c.name == chain)
                        .unwrap();
                    ch.rules.push((*next_handle, Some(rule.tag())));
                }
                NftOp::DelRule { chain, handle } => {
                    let ch = t
                        .as_mut()
                        .unwrap()
                        .iter_mut()
                        .find(|c| &c.name == chain)
                        .unwrap();
                    let before = ch.rules.len();
                    ch.rules.retain(|(h, _)| h != handle);
                    assert_eq!(before - 1, ch.rules.len(), "deleted a missing handle");
                }
            }
        }
        t
    }

    #[test]
    fn guards_jump_over_tailscale_to_an_anchor_per_family() {
        let d = desired(&cfg());
        let got: Vec<String> = d.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "5300: (IPv4) nop",
                "5300: (IPv6) nop",
                "5100: to 192.168.50.0/24 goto 5300",
                "5110: to 10.244.0.0/16 goto 5300",
                "5110: to fd00:10:244::/56 goto 5300",
                "5120: to 10.96.0.0/12 goto 5300",
            ]
        );
        // Guards before tailscale's first rule (5210), anchor after its range (5200-5299).
        for r in &d.rules {
            match r.action {
                RuleAction::Goto(t) => assert!(r.priority < 5210 && t == PRIO_ANCHOR && t >= 5300),
                RuleAction::Nop => assert_eq!(r.priority, PRIO_ANCHOR),
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    #[test]
    fn an_ipv4_only_configuration_has_no_ipv6_anchor() {
        let mut k = cfg();
        k.pod_cidrs.truncate(1);
        let anchors: Vec<_> = desired(&k)
            .rules
            .into_iter()
            .filter(|r| r.action == RuleAction::Nop)
            .collect();
        assert_eq!(anchors.len(), 1);
        assert!(anchors[0].dst.is_ipv4() && anchors[0].dst.prefix_len() == 0);
    }

    #[test]
    fn upgrade_replaces_lookup_main_guards_adding_before_deleting() {
        let d = desired(&cfg());
        // What tsbridge before the goto guards left in the kernel.
        let old: Vec<ObservedRule> = [
            (PRIO_LAB, "192.168.50.0/24"),
            (PRIO_POD, "10.244.0.0/16"),
            (PRIO_POD, "fd00:10:244::/56"),
            (PRIO_SERVICE, "10.96.0.0/12"),
        ]
        .into_iter()
        .map(|(priority, dst)| {
            ours(&PolicyRule {
                priority,
                dst: c(dst),
                action: RuleAction::Lookup(TABLE_MAIN),
            })
        })
        .collect();
        let (del, add) = diff_rules(&d.rules, &old);
        assert_eq!(add, d.rules, "the whole new shape, anchors first");
        assert_eq!(del.len(), 4);
        assert!(
            del.iter()
                .all(|r| r.action == RuleAction::Lookup(TABLE_MAIN))
        );
        // Once both are there, only the old ones go; then nothing is left to do.
        let mut both = old.clone();
        both.extend(d.rules.iter().map(ours));
        let (del2, add2) = diff_rules(&d.rules, &both);
        assert_eq!(del2, del);
        assert!(add2.is_empty());
        let new: Vec<_> = d.rules.iter().map(ours).collect();
        assert_eq!(diff_rules(&d.rules, &new), (vec![], vec![]));
    }

    #[test]
    fn anchors_are_deleted_after_every_guard() {
        let d = desired(&cfg());
        let obs: Vec<_> = d.rules.iter().map(ours).collect();
        let t = teardown(&obs, &None);
        assert_eq!(t.del_rules.len(), 6);
        assert!(t.del_rules[..4].iter().all(|r| !r.is_anchor()));
        assert!(t.del_rules[4..].iter().all(PolicyRule::is_anchor));
        let mut k = cfg();
        k.lab_subnets.clear();
        k.pod_cidrs.clear();
        k.service_cidrs.clear();
        // Nothing to guard: everything of ours goes, the anchors last.
        let (del, add) = diff_rules(&desired(&k).rules, &obs);
        assert!(add.is_empty());
        assert_eq!(del.len(), 6);
        assert!(del[4..].iter().all(PolicyRule::is_anchor));
    }

    #[test]
    fn nft_table_has_masquerade_per_pod_cidr_and_two_clamps() {
        let d = desired(&cfg());
        let chains = d.chains.unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].kind, ChainKind::NatPostrouting);
        assert_eq!(
            chains[0].rules,
            [
                NftRule::Masquerade {
                    src: c("10.244.0.0/16"),
                    oif: "tailscale0".into()
                },
                NftRule::Masquerade {
                    src: c("fd00:10:244::/56"),
                    oif: "tailscale0".into()
                }
            ]
        );
        assert_eq!(chains[1].kind, ChainKind::FilterForward);
        assert_eq!(chains[1].rules.len(), 2);
    }

    #[test]
    fn toggles_remove_their_part() {
        let mut k = cfg();
        k.snat = false;
        let ch = desired(&k).chains.unwrap();
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].name, CHAIN_FORWARD);
        k.mss_clamp = false;
        assert_eq!(desired(&k).chains, None);
        // The guards stay: they are about the node's identity, not about SNAT.
        assert_eq!(desired(&k).rules.len(), 6);
    }

    #[test]
    fn unset_lab_subnets_still_guard_pods_and_services() {
        let mut k = cfg();
        k.lab_subnets.clear();
        assert!(desired(&k).rules.iter().all(|r| r.priority != PRIO_LAB));
        assert_eq!(desired(&k).rules.len(), 5);
    }

    #[test]
    fn fresh_node_gets_everything_then_nothing() {
        let d = desired(&cfg());
        let ch = diff(&d, &[], &None);
        assert_eq!(ch.add_rules, d.rules);
        assert!(ch.del_rules.is_empty());
        assert_eq!(ch.nft.first(), Some(&NftOp::AddTable));
        assert_eq!(ch.nft.len(), 1 + 2 + 4);
        let mut h = 0;
        let nft = apply_model(&None, &ch.nft, &mut h);
        let rules: Vec<_> = d.rules.iter().map(ours).collect();
        assert!(
            diff(&d, &rules, &nft).is_empty(),
            "second pass changes nothing"
        );
    }

    #[test]
    fn foreign_rules_are_never_touched() {
        let d = desired(&cfg());
        let mut obs: Vec<_> = d.rules.iter().map(ours).collect();
        // tailscale's rules and Talos's (protocol static) at other priorities.
        for (prio, proto) in [(5210, 0u8), (5270, 0), (32500, 4)] {
            obs.push(ObservedRule {
                rule: PolicyRule {
                    priority: prio,
                    dst: c("0.0.0.0/0"),
                    action: RuleAction::Lookup(52),
                },
                protocol: proto,
                foreign_shape: true,
            });
        }
        // Even a foreign rule identical to a guard is not ours to delete.
        obs.push(ObservedRule {
            protocol: 4,
            ..ours(&d.rules[2])
        });
        let (del, add) = diff_rules(&d.rules, &obs);
        assert!(del.is_empty() && add.is_empty());
        let t = teardown(&obs, &None);
        let mut want = d.rules[2..].to_vec();
        want.extend_from_slice(&d.rules[..2]);
        assert_eq!(t.del_rules, want, "teardown removes exactly ours");
    }

    #[test]
    fn stale_duplicate_and_misshapen_rules_of_ours_go() {
        let d = desired(&cfg());
        let mut obs: Vec<_> = d.rules.iter().map(ours).collect();
        obs.push(ours(&d.rules[3])); // a duplicate (e.g. two instances raced)
        obs.push(ours(&d.rules[0])); // a duplicate anchor
        let stale = PolicyRule {
            priority: PRIO_POD,
            dst: c("10.250.0.0/16"),
            action: RuleAction::Goto(PRIO_ANCHOR),
        };
        obs.push(ours(&stale)); // a pod CIDR removed from the config
        obs.push(ObservedRule {
            foreign_shape: true,
            ..ours(&d.rules[4])
        });
        let (del, add) = diff_rules(&d.rules, &obs);
        assert_eq!(
            del,
            vec![
                d.rules[3].clone(),
                stale,
                d.rules[4].clone(),
                d.rules[0].clone()
            ]
        );
        assert!(
            add.is_empty(),
            "the well-formed copy of rules[4] remains: {add:?}"
        );
    }

    #[test]
    fn a_deleted_rule_is_restored_alone() {
        let d = desired(&cfg());
        for gone in [0, 3] {
            let obs: Vec<_> = d
                .rules
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, r)| ours(r))
                .collect();
            let (del, add) = diff_rules(&d.rules, &obs);
            assert!(del.is_empty());
            assert_eq!(add, vec![d.rules[gone].clone()]);
        }
    }

    #[test]
    fn deleted_nft_rule_and_chain_are_restored_minimally() {
        let d = desired(&cfg());
        let mut h = 0;
        let full = apply_model(&None, &diff_nft(d.chains.as_deref(), &None), &mut h);
        // Someone deletes one masquerade rule.
        let mut t = full.clone();
        t.as_mut().unwrap()[0].rules.remove(1);
        let ops = diff_nft(d.chains.as_deref(), &t);
        assert_eq!(
            ops,
            [NftOp::AddRule {
                chain: CHAIN_POSTROUTING.into(),
                rule: d.chains.as_ref().unwrap()[0].rules[1].clone()
            }]
        );
        // Someone deletes the forward chain.
        let mut t = full.clone();
        t.as_mut().unwrap().remove(1);
        let ops = diff_nft(d.chains.as_deref(), &t);
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[0], NftOp::AddChain { name, .. } if name == CHAIN_FORWARD));
        let fixed = apply_model(&t, &ops, &mut h);
        assert!(diff_nft(d.chains.as_deref(), &fixed).is_empty());
    }

    #[test]
    fn foreign_or_duplicate_rules_inside_our_table_are_removed() {
        let d = desired(&cfg());
        let mut h = 0;
        let mut t = apply_model(&None, &diff_nft(d.chains.as_deref(), &None), &mut h);
        let first = t.as_ref().unwrap()[1].rules[0].clone();
        t.as_mut().unwrap()[1].rules.push((900, None)); // added by hand with `nft add rule`
        t.as_mut().unwrap()[1].rules.push((901, first.1.clone())); // a duplicate
        let ops = diff_nft(d.chains.as_deref(), &t);
        assert_eq!(
            ops,
            [
                NftOp::DelRule {
                    chain: CHAIN_FORWARD.into(),
                    handle: 900
                },
                NftOp::DelRule {
                    chain: CHAIN_FORWARD.into(),
                    handle: 901
                }
            ]
        );
    }

    #[test]
    fn wrong_chain_hook_or_extra_chain_replaces_the_table_atomically() {
        let d = desired(&cfg());
        let mut h = 0;
        let mut t = apply_model(&None, &diff_nft(d.chains.as_deref(), &None), &mut h);
        t.as_mut().unwrap()[0].kind = Some(ChainKind::FilterForward);
        let ops = diff_nft(d.chains.as_deref(), &t);
        assert_eq!(ops[0], NftOp::DelTable);
        assert_eq!(ops[1], NftOp::AddTable);
        let fixed = apply_model(&t, &ops, &mut h);
        assert!(diff_nft(d.chains.as_deref(), &fixed).is_empty());
    }

    #[test]
    fn config_change_swaps_only_the_changed_rule() {
        let d = desired(&cfg());
        let mut h = 0;
        let t = apply_model(&None, &diff_nft(d.chains.as_deref(), &None), &mut h);
        let mut k = cfg();
        k.pod_cidrs = vec![c("10.244.0.0/16"), c("fd00:10:245::/56")];
        let d2 = desired(&k);
        let ops = diff_nft(d2.chains.as_deref(), &t);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(ops[0], NftOp::DelRule { .. }));
        assert!(matches!(ops[1], NftOp::AddRule { .. }));
        // Turning SNAT and clamp off removes the table.
        k.snat = false;
        k.mss_clamp = false;
        assert_eq!(
            diff_nft(desired(&k).chains.as_deref(), &t),
            [NftOp::DelTable]
        );
    }

    #[test]
    fn teardown_removes_table_and_our_rules_only() {
        let t = teardown(&[], &Some(vec![]));
        assert_eq!(t.nft, [NftOp::DelTable]);
        assert!(teardown(&[], &None).is_empty());
    }

    #[test]
    fn tailnet_addresses() {
        assert!(is_tailnet("100.101.102.103".parse().unwrap()));
        assert!(is_tailnet("fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(!is_tailnet("192.168.1.1".parse().unwrap()));
    }
}
