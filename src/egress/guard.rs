//! Node-identity guard and pod-path self-check: questions to the kernel, answered as
//! verdicts the health server (and logs) can show.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::kernel::{Kernel, RouteQuery};
use super::plan::{EgressConfig, is_tailnet};
use crate::net::Cidr;

/// MagicDNS's addresses: always routed into the TUN by tailscaled (table 52), so they are
/// a peer every running node knows.
pub const PROBE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 100, 100, 100));
pub const PROBE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53));

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `TSBRIDGE_LAB_SUBNETS` is unset: nothing pins the node's Kubernetes identity.
    Unguarded,
    /// The node has `addr` on `ifname` in a lab subnet, and lab traffic leaves by it.
    Ok { addr: IpAddr, ifname: String },
    /// Something is wrong; the text says what.
    Problem(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodPath {
    /// Not checked yet, or nothing to check against (TUN absent, routes unreadable).
    Unknown(String),
    /// The TUN is up and the plan is in place, but no pod lives on this node yet (no route
    /// into a pod CIDR, none of a CNI device outside them): nothing to ask the kernel
    /// about. Ready, but not verified: the text says so.
    NoPods(String),
    /// A packet from a pod to a tailnet peer would leave by the TUN.
    Ok {
        via: String,
    },
    Problem(String),
    /// A CNI routes pods the configuration does not know (`TSBRIDGE_POD_CIDRS` to fix);
    /// the text names the routes.
    Unconfigured(String),
    /// The route lookup found nothing wrong, but a BPF datapath (Cilium, ...) can send pod
    /// packets past netfilter, which no route lookup sees: not verified. `why` says what
    /// was seen, `check` which setting to check.
    BpfDatapath {
        why: String,
        check: String,
    },
}

/// Interfaces that only a CNI creates (exact names) or whose names a CNI's pods get
/// (prefixes): flannel (`cni0`, `flannel.1`, `flannel-v6.1`, `flannel-wg[-v6]`), Cilium
/// (`cilium_host`, `cilium_net`, `cilium_vxlan`, `cilium_geneve`, `lxc*`), Calico
/// (`vxlan.calico`, `vxlan-v6.calico`, `wireguard.cali`, `wg-v6.cali`, `tunl0`, `cali*`),
/// kube-router (`kube-bridge`), Weave (`weave`), the CNI reference plugins (`cbr0`, `veth*`
/// of ptp). A route through one of them leads to pods.
const CNI_LINKS: &[&str] = &[
    "cni0",
    "cbr0",
    "flannel.1",
    "flannel-v6.1",
    "flannel-wg",
    "flannel-wg-v6",
    "cilium_host",
    "cilium_net",
    "cilium_vxlan",
    "cilium_geneve",
    "vxlan.calico",
    "vxlan-v6.calico",
    "wireguard.cali",
    "wg-v6.cali",
    "tunl0",
    "kube-bridge",
    "weave",
];
const CNI_LINK_PREFIXES: &[&str] = &["lxc", "cali", "veth"];

pub fn is_cni_link(name: &str) -> bool {
    CNI_LINKS.contains(&name) || CNI_LINK_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Routes in `main` through a CNI device whose destination is in none of the configured
/// pod, service and lab CIDRs: pods the configuration does not know (Cilium's default
/// 10.0.0.0/8 pool against the 10.244.0.0/16 default, an IPv6 pod network left out of
/// `TSBRIDGE_POD_CIDRS`). Their packets leave tailscale0 unmasqueraded and are dropped.
pub fn unconfigured_pod_routes(
    links: &[super::kernel::Link],
    routes: &[super::kernel::Route],
    cfg: &EgressConfig,
) -> Vec<String> {
    let known = cfg
        .pod_cidrs
        .iter()
        .chain(&cfg.service_cidrs)
        .chain(&cfg.lab_subnets);
    let known: Vec<&Cidr> = known.collect();
    let mut out = Vec::new();
    for r in routes {
        let Some(link) = r
            .oif
            .and_then(|o| links.iter().find(|l| l.index == o))
            .filter(|l| is_cni_link(&l.name))
        else {
            continue;
        };
        let d = r.dst;
        let special = d.prefix_len() == 0
            || is_tailnet(d.addr())
            || match d.addr() {
                IpAddr::V4(a) => a.is_loopback() || a.is_multicast() || a.is_link_local(),
                IpAddr::V6(a) => a.is_loopback() || a.is_multicast() || a.is_unicast_link_local(),
            };
        if special || known.iter().any(|k| k.contains(d.addr())) {
            continue;
        }
        let shown = format!("{d} dev {}", link.name);
        if !out.contains(&shown) {
            out.push(shown);
        }
    }
    out
}

/// The identity verdict.
pub fn identity(k: &mut dyn Kernel, cfg: &EgressConfig) -> Identity {
    if cfg.lab_subnets.is_empty() {
        return Identity::Unguarded;
    }
    let (links, addrs) = match (k.links(), k.addrs()) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(e), _) | (_, Err(e)) => {
            return Identity::Problem(format!("cannot read the node's addresses: {e}"));
        }
    };
    let name = |idx: u32| {
        links
            .iter()
            .find(|l| l.index == idx)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{idx}"))
    };
    let own = lab_address(&addrs_of(&addrs), &cfg.lab_subnets)
        .and_then(|ip| addrs.iter().find(|a| a.addr == ip));
    let Some(own) = own else {
        let subnets: Vec<String> = cfg.lab_subnets.iter().map(Cidr::to_string).collect();
        return Identity::Problem(format!(
            "the node has no address in TSBRIDGE_LAB_SUBNETS ({}): Kubernetes would pick another address, possibly the tailnet one",
            subnets.join(",")
        ));
    };
    let subnet = cfg
        .lab_subnets
        .iter()
        .find(|s| s.contains(own.addr))
        .copied();
    // Where would traffic to a neighbour in the lab subnet go? Not into the TUN, and not
    // from a tailnet source (an accepted subnet route would do both without the guard).
    if let Some(probe) = subnet.and_then(|s| neighbour(&s, &addrs_of(&addrs))) {
        match k.route_get(&RouteQuery {
            dst: probe,
            src: None,
            iif: None,
        }) {
            Ok(ans) => {
                if ans.oif.map(name).as_deref() == Some(cfg.tun.as_str()) {
                    return Identity::Problem(format!(
                        "traffic to the lab subnet ({probe}) is routed into {}: a tailnet route captures it",
                        cfg.tun
                    ));
                }
                if let Some(src) = ans.prefsrc.filter(|s| is_tailnet(*s)) {
                    return Identity::Problem(format!(
                        "traffic to the lab subnet ({probe}) would use the tailnet source {src}"
                    ));
                }
            }
            Err(e) => {
                return Identity::Problem(format!("no route to the lab subnet ({probe}): {e}"));
            }
        }
    }
    Identity::Ok {
        addr: own.addr,
        ifname: name(own.index),
    }
}

pub fn addrs_of(a: &[super::kernel::Addr]) -> Vec<IpAddr> {
    a.iter().map(|a| a.addr).collect()
}

/// The node's address in the lab subnets: the first of `addrs` (the kernel's order) in any
/// of them. It is the node identity, and where `TSBRIDGE_LISTEN=lab:PORT` binds.
pub fn lab_address(addrs: &[IpAddr], lab_subnets: &[Cidr]) -> Option<IpAddr> {
    addrs
        .iter()
        .copied()
        .find(|a| lab_subnets.iter().any(|s| s.contains(*a)))
}

/// An address inside `c` (counting up from its first host) that is none of `own`.
pub fn neighbour(c: &Cidr, own: &[IpAddr]) -> Option<IpAddr> {
    (1u32..16).find_map(|i| {
        let ip = offset(c.addr(), i)?;
        (c.contains(ip) && !own.contains(&ip)).then_some(ip)
    })
}

fn offset(ip: IpAddr, i: u32) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a).checked_add(i).map(|v| IpAddr::V4(v.into())),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(i as u128)
            .map(|v| IpAddr::V6(v.into())),
    }
}

/// The pod-path verdict: for each pod CIDR family with a local pod route, ask the kernel
/// where a forwarded packet from a pod address (arriving on that route's interface) to
/// MagicDNS would go.
pub fn pod_path(k: &mut dyn Kernel, cfg: &EgressConfig) -> PodPath {
    let route = route_verdict(k, cfg);
    let route_text = match &route {
        PodPath::Ok { via } => format!("the route lookup sends pod packets into {via}"),
        PodPath::NoPods(_) => format!(
            "no pods on this node yet, and a pod-address packet is routed into {}",
            cfg.tun
        ),
        // Failures stay failures; nothing to verify without a TUN.
        _ => return route,
    };
    match k.datapath() {
        Ok(links) => match super::datapath::assess(&links, &cfg.tun) {
            None => route,
            Some(d) => PodPath::BpfDatapath {
                why: d.unverified(&route_text, &cfg.tun),
                check: d.check(&cfg.tun),
            },
        },
        Err(e) => PodPath::BpfDatapath {
            why: format!(
                "{route_text}, but the BPF programs on the node's interfaces cannot be read ({e}), so a BPF datapath bypassing netfilter cannot be ruled out; unverified"
            ),
            check: "run tsbridge with CAP_NET_ADMIN in the host network namespace".into(),
        },
    }
}

/// The route lookup's part of the pod-path verdict.
fn route_verdict(k: &mut dyn Kernel, cfg: &EgressConfig) -> PodPath {
    let (links, addrs, routes) = match (k.links(), k.addrs(), k.main_routes()) {
        (Ok(l), Ok(a), Ok(r)) => (l, a, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return PodPath::Unknown(format!("cannot read the node's routes: {e}"));
        }
    };
    let Some(tun) = links.iter().find(|l| l.name == cfg.tun) else {
        return PodPath::Unknown(format!("{} does not exist yet", cfg.tun));
    };
    let name = |idx: u32| {
        links
            .iter()
            .find(|l| l.index == idx)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{idx}"))
    };
    let own = addrs_of(&addrs);
    let unknown = unconfigured_pod_routes(&links, &routes, cfg);
    if !unknown.is_empty() {
        let configured: Vec<String> = cfg.pod_cidrs.iter().map(Cidr::to_string).collect();
        return PodPath::Unconfigured(format!(
            "pod routes outside TSBRIDGE_POD_CIDRS ({}): {}; their pods reach tailscale0 unmasqueraded and get no answer: add the cluster's pod subnets (podSubnets, both families) to TSBRIDGE_POD_CIDRS",
            configured.join(","),
            unknown.join(", ")
        ));
    }
    let lo = links.iter().find(|l| l.name == "lo").map(|l| l.index);
    // Per pod CIDR: from a pod address arriving on its pod interface when this node has
    // pods there; else from an address of the CIDR arriving on `lo` (the routing from a
    // pod source, without an interface to check).
    let mut checked = Vec::new();
    let mut without_pods = Vec::new();
    for pod in &cfg.pod_cidrs {
        // The node's own pods sit behind a directly connected route (cni0, a veth);
        // routes to other nodes' pods (via a gateway, e.g. flannel.1) are the fallback.
        let candidates = routes.iter().filter(|r| {
            pod.contains(r.dst.addr())
                && r.dst.prefix_len() >= pod.prefix_len()
                && r.oif.is_some_and(|o| o != tun.index)
        });
        let local = candidates
            .clone()
            .find(|r| !r.via_gateway)
            .or(candidates.clone().next());
        let (src, iif, has_pods) = match local {
            Some(r) => (neighbour(&r.dst, &own), r.oif, true),
            None => (neighbour(pod, &own), lo, false),
        };
        let (Some(src), Some(iif)) = (src, iif) else {
            continue;
        };
        let dst = if pod.is_ipv4() { PROBE_V4 } else { PROBE_V6 };
        let what = if has_pods { "pod" } else { "pod address" };
        match k.route_get(&RouteQuery {
            dst,
            src: Some(src),
            iif: Some(iif),
        }) {
            Ok(ans) if ans.oif == Some(tun.index) && ans.kind == 1 => {
                if has_pods {
                    checked.push(format!("{src}->{dst}"));
                } else {
                    without_pods.push(format!("{src}->{dst}"));
                }
            }
            Ok(ans) => {
                return PodPath::Problem(format!(
                    "a packet from {what} {src} (in on {}) to {dst} leaves by {} (route type {}), not {}",
                    name(iif),
                    ans.oif.map(name).unwrap_or_else(|| "nowhere".into()),
                    ans.kind,
                    cfg.tun
                ));
            }
            Err(e) => {
                return PodPath::Problem(format!(
                    "a packet from {what} {src} (in on {}) to {dst} is not routed: {e} (is forwarding on?)",
                    name(iif)
                ));
            }
        }
    }
    match (checked.is_empty(), without_pods.is_empty()) {
        (false, true) => PodPath::Ok {
            via: format!("{} ({})", cfg.tun, checked.join(", ")),
        },
        (false, false) => PodPath::Ok {
            via: format!(
                "{} ({}; no pods yet for {}, routed from lo)",
                cfg.tun,
                checked.join(", "),
                without_pods.join(", ")
            ),
        },
        (true, _) if !without_pods.is_empty() => PodPath::NoPods(format!(
            "no pods on this node yet (no route into TSBRIDGE_POD_CIDRS); a pod-address packet arriving on lo is routed into {} ({}), no pod interface to verify; checked again when the CNI adds a pod route",
            cfg.tun,
            without_pods.join(", ")
        )),
        (true, _) => PodPath::Unknown("no address in TSBRIDGE_POD_CIDRS to probe from".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::kernel::fake::FakeKernel;
    use crate::egress::kernel::{Addr, Link, Route, RouteAnswer};

    fn cfg(lab: &[&str]) -> EgressConfig {
        EgressConfig {
            lab_subnets: lab.iter().map(|s| s.parse().unwrap()).collect(),
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            snat: true,
            mss_clamp: true,
            tun: "tailscale0".into(),
        }
    }

    fn node() -> FakeKernel {
        FakeKernel {
            links: vec![
                Link {
                    index: 2,
                    name: "eth0".into(),
                    up: true,
                },
                Link {
                    index: 5,
                    name: "tailscale0".into(),
                    up: true,
                },
                Link {
                    index: 7,
                    name: "cni0".into(),
                    up: true,
                },
            ],
            addrs: vec![
                Addr {
                    index: 2,
                    addr: "192.168.50.10".parse().unwrap(),
                    prefix_len: 24,
                },
                Addr {
                    index: 5,
                    addr: "100.64.0.3".parse().unwrap(),
                    prefix_len: 32,
                },
                Addr {
                    index: 7,
                    addr: "10.244.1.1".parse().unwrap(),
                    prefix_len: 24,
                },
            ],
            routes: vec![
                Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    oif: Some(2),
                    via_gateway: true,
                },
                // Another node's pods, through an overlay: not the one to ask from.
                Route {
                    dst: "10.244.2.0/24".parse().unwrap(),
                    oif: Some(9),
                    via_gateway: true,
                },
                Route {
                    dst: "10.244.1.0/24".parse().unwrap(),
                    oif: Some(7),
                    via_gateway: false,
                },
            ],
            ..Default::default()
        }
    }

    fn lab_probe() -> RouteQuery {
        RouteQuery {
            dst: "192.168.50.1".parse().unwrap(),
            src: None,
            iif: None,
        }
    }

    #[test]
    fn identity_unguarded_without_lab_subnets() {
        assert_eq!(identity(&mut node(), &cfg(&[])), Identity::Unguarded);
    }

    #[test]
    fn identity_ok_when_lab_traffic_leaves_by_the_lab_interface() {
        let mut k = node();
        k.answers.push((
            lab_probe(),
            RouteAnswer {
                oif: Some(2),
                prefsrc: Some("192.168.50.10".parse().unwrap()),
                table: 254,
                kind: 1,
            },
        ));
        assert_eq!(
            identity(&mut k, &cfg(&["192.168.50.0/24"])),
            Identity::Ok {
                addr: "192.168.50.10".parse().unwrap(),
                ifname: "eth0".into()
            }
        );
    }

    #[test]
    fn identity_problem_when_captured_or_missing() {
        let mut k = node();
        k.answers.push((
            lab_probe(),
            RouteAnswer {
                oif: Some(5),
                prefsrc: Some("100.64.0.3".parse().unwrap()),
                table: 52,
                kind: 1,
            },
        ));
        let v = identity(&mut k, &cfg(&["192.168.50.0/24"]));
        assert!(
            matches!(&v, Identity::Problem(m) if m.contains("tailscale0")),
            "{v:?}"
        );
        let v = identity(&mut node(), &cfg(&["172.16.0.0/24"]));
        assert!(
            matches!(&v, Identity::Problem(m) if m.contains("no address")),
            "{v:?}"
        );
    }

    #[test]
    fn pod_path_asks_with_pod_source_and_pod_interface() {
        let mut k = node();
        let q = RouteQuery {
            dst: PROBE_V4,
            src: Some("10.244.1.2".parse().unwrap()),
            iif: Some(7),
        };
        k.answers.push((
            q.clone(),
            RouteAnswer {
                oif: Some(5),
                prefsrc: None,
                table: 52,
                kind: 1,
            },
        ));
        assert!(matches!(pod_path(&mut k, &cfg(&[])), PodPath::Ok { .. }));
        k.answers[0].1.oif = Some(2);
        let v = pod_path(&mut k, &cfg(&[]));
        assert!(
            matches!(&v, PodPath::Problem(m) if m.contains("eth0")),
            "{v:?}"
        );
        k.answers.clear();
        assert!(matches!(pod_path(&mut k, &cfg(&[])), PodPath::Problem(_)));
        k.links.remove(1);
        assert!(matches!(pod_path(&mut k, &cfg(&[])), PodPath::Unknown(_)));
    }

    fn lo() -> Link {
        Link {
            index: 1,
            name: "lo".into(),
            up: true,
        }
    }

    #[test]
    fn no_pods_yet_is_unverified_after_probing_from_lo() {
        let mut k = node();
        k.links.push(lo());
        k.routes.retain(|r| r.dst.to_string() != "10.244.1.0/24");
        k.routes.retain(|r| r.dst.to_string() != "10.244.2.0/24");
        let q = RouteQuery {
            dst: PROBE_V4,
            src: Some("10.244.0.1".parse().unwrap()),
            iif: Some(1),
        };
        k.answers.push((
            q,
            RouteAnswer {
                oif: Some(5),
                prefsrc: None,
                table: 52,
                kind: 1,
            },
        ));
        let v = pod_path(&mut k, &cfg(&[]));
        assert!(
            matches!(&v, PodPath::NoPods(m) if m.contains("10.244.0.1->100.100.100.100") && m.contains("no pods on this node yet")),
            "{v:?}"
        );
        // A wrong answer from lo is a problem, pods or not.
        k.answers[0].1.oif = Some(2);
        let v = pod_path(&mut k, &cfg(&[]));
        assert!(
            matches!(&v, PodPath::Problem(m) if m.contains("eth0")),
            "{v:?}"
        );
    }

    #[test]
    fn cni_routes_outside_the_pod_cidrs_are_named() {
        // Cilium's default pool (10.0.0.0/8) against the default TSBRIDGE_POD_CIDRS.
        let mut k = node();
        k.links.push(Link {
            index: 11,
            name: "cilium_host".into(),
            up: true,
        });
        k.routes.push(Route {
            dst: "10.0.1.0/24".parse().unwrap(),
            oif: Some(11),
            via_gateway: true,
        });
        let v = pod_path(&mut k, &cfg(&[]));
        assert!(
            matches!(&v, PodPath::Unconfigured(m) if m.contains("10.0.1.0/24 dev cilium_host") && m.contains("TSBRIDGE_POD_CIDRS (10.244.0.0/16)")),
            "{v:?}"
        );
        // Dual-stack pods on cni0 with only the IPv4 CIDR configured.
        let mut k = node();
        k.routes.push(Route {
            dst: "fd00:10:244:1::/64".parse().unwrap(),
            oif: Some(7),
            via_gateway: false,
        });
        let v = pod_path(&mut k, &cfg(&[]));
        assert!(
            matches!(&v, PodPath::Unconfigured(m) if m.contains("fd00:10:244:1::/64 dev cni0")),
            "{v:?}"
        );
        // Not pods: default and link-local routes, other devices, configured ranges.
        let links = vec![
            Link {
                index: 7,
                name: "cni0".into(),
                up: true,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                up: true,
            },
        ];
        let routes: Vec<Route> = [
            ("0.0.0.0/0", 7),
            ("fe80::/64", 7),
            ("172.16.0.0/16", 2),
            ("10.244.3.0/24", 7),
            ("10.96.0.0/12", 7),
        ]
        .into_iter()
        .map(|(d, o)| Route {
            dst: d.parse().unwrap(),
            oif: Some(o),
            via_gateway: false,
        })
        .collect();
        assert!(unconfigured_pod_routes(&links, &routes, &cfg(&[])).is_empty());
        assert!(is_cni_link("lxc12ab") && is_cni_link("cali0f") && !is_cni_link("eth0"));
    }

    #[test]
    fn a_bpf_datapath_makes_a_good_route_unverified() {
        use crate::egress::datapath::LinkProgs;
        let mut k = node();
        k.answers.push((
            RouteQuery {
                dst: PROBE_V4,
                src: Some("10.244.1.2".parse().unwrap()),
                iif: Some(7),
            },
            RouteAnswer {
                oif: Some(5),
                prefsrc: None,
                table: 52,
                kind: 1,
            },
        ));
        k.datapath = vec![
            LinkProgs {
                name: "cilium_host".into(),
                kind: Some("veth".into()),
                programs: vec!["tc ingress bpf cil_to_host id 3".into()],
            },
            LinkProgs {
                name: "lxc0a".into(),
                kind: Some("veth".into()),
                programs: vec!["tcx ingress (1 program)".into()],
            },
        ];
        let v = pod_path(&mut k, &cfg(&[]));
        let PodPath::BpfDatapath { why, check } = &v else {
            panic!("{v:?}")
        };
        assert!(
            why.contains(
                "the route lookup sends pod packets into tailscale0 (10.244.1.2->100.100.100.100)"
            ) && why.contains("lxc0a (tcx ingress (1 program))")
                && why.ends_with("unverified"),
            "{why}"
        );
        assert!(check.contains("bpf.hostLegacyRouting=true"), "{check}");
        // A wrong route is still a failure, BPF or not.
        k.answers[0].1.oif = Some(2);
        assert!(matches!(pod_path(&mut k, &cfg(&[])), PodPath::Problem(_)));
        // No pods yet on a Cilium node: unverified, naming Cilium.
        let mut k = node();
        k.links.push(lo());
        k.routes
            .retain(|r| !r.dst.to_string().starts_with("10.244."));
        k.answers.push((
            RouteQuery {
                dst: PROBE_V4,
                src: Some("10.244.0.1".parse().unwrap()),
                iif: Some(1),
            },
            RouteAnswer {
                oif: Some(5),
                prefsrc: None,
                table: 52,
                kind: 1,
            },
        ));
        k.datapath = vec![LinkProgs {
            name: "cilium_net".into(),
            ..Default::default()
        }];
        let v = pod_path(&mut k, &cfg(&[]));
        assert!(
            matches!(&v, PodPath::BpfDatapath { why, .. } if why.starts_with("Cilium on this node") && why.contains("no pods on this node yet")),
            "{v:?}"
        );
        // Plain interfaces: the route verdict stands.
        k.datapath = vec![LinkProgs {
            name: "eth0".into(),
            ..Default::default()
        }];
        assert!(matches!(pod_path(&mut k, &cfg(&[])), PodPath::NoPods(_)));
    }

    #[test]
    fn neighbour_skips_own_addresses() {
        let c: Cidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            neighbour(&c, &["10.244.1.1".parse().unwrap()]),
            Some("10.244.1.2".parse().unwrap())
        );
        let one: Cidr = "10.0.0.5/32".parse().unwrap();
        assert_eq!(neighbour(&one, &[]), None);
    }
}
