//! Does pod traffic go through netfilter at all? A BPF datapath (Cilium's, Calico's eBPF
//! dataplane) can redirect a pod's packet from the pod's interface straight to the egress
//! device, past the host's netfilter hooks, where tsbridge's SNAT and MSS clamp are. The
//! kernel's route lookup (the pod-path probe) still answers `tailscale0` then, so a route
//! verdict alone would say "ok" for a path nobody verified.
//!
//! Pure: the adapter (`kernel::Netlink::datapath`) lists, per interface, its kind and the
//! BPF programs attached to it (tc `bpf` filters, tcx, netkit); [`assess`] decides.

use super::guard::is_cni_link;

/// What the kernel shows about one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkProgs {
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `netkit`, `vxlan`, ...), when the link has one.
    pub kind: Option<String>,
    /// The BPF programs attached to it, one line each: `tc ingress bpf cil_from_container
    /// id 42`, `tcx ingress (2 programs)`.
    pub programs: Vec<String>,
}

/// Cilium's own devices (`bpf/init.sh`, `pkg/datapath/linux`): the host-side pair
/// `cilium_host`/`cilium_net` exists in every mode, `cilium_vxlan`/`cilium_geneve` in
/// tunnel mode.
pub const CILIUM_DEVICES: &[&str] = &["cilium_host", "cilium_net", "cilium_vxlan", "cilium_geneve"];

/// A BPF datapath on this node: what was seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfDatapath {
    /// Cilium's devices present on the node.
    pub cilium: Vec<String>,
    /// Pod-facing interfaces (and the TUN) with BPF programs: `lxc1a2b (tc ingress bpf
    /// cil_from_container id 7)`.
    pub programs: Vec<String>,
    /// netkit devices (BPF by construction: netkit has no datapath of its own).
    pub netkit: Vec<String>,
}

/// At most this many interfaces are named in a verdict (a node can have hundreds of pods).
const SHOWN: usize = 3;

/// Whether this node's pod traffic may bypass netfilter: Cilium's devices, BPF programs on
/// a pod-facing interface (a CNI device, a pod's veth, netkit) or on the TUN `tun`.
/// `None`: nothing seen, the route lookup tells the whole story.
pub fn assess(links: &[LinkProgs], tun: &str) -> Option<BpfDatapath> {
    let mut d = BpfDatapath::default();
    for l in links {
        if CILIUM_DEVICES.contains(&l.name.as_str()) {
            d.cilium.push(l.name.clone());
        }
        let netkit = l.kind.as_deref() == Some("netkit");
        if netkit {
            d.netkit.push(l.name.clone());
        }
        let pod_facing = netkit || is_cni_link(&l.name) || l.name == tun;
        if pod_facing && !l.programs.is_empty() {
            d.programs
                .push(format!("{} ({})", l.name, l.programs.join(", ")));
        }
    }
    // In Cilium's order, whatever the kernel's.
    d.cilium
        .sort_by_key(|n| CILIUM_DEVICES.iter().position(|c| c == n));
    (!(d.cilium.is_empty() && d.programs.is_empty() && d.netkit.is_empty())).then_some(d)
}

fn shown(v: &[String]) -> String {
    let mut s = v.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > SHOWN {
        s.push_str(&format!(" and {} more", v.len() - SHOWN));
    }
    s
}

impl BpfDatapath {
    pub fn is_cilium(&self) -> bool {
        !self.cilium.is_empty()
    }

    /// What was seen, in one sentence.
    pub fn seen(&self) -> String {
        let mut parts = Vec::new();
        if self.is_cilium() {
            parts.push(format!("Cilium's devices ({})", self.cilium.join(", ")));
        }
        if !self.programs.is_empty() {
            parts.push(format!("BPF programs on {}", shown(&self.programs)));
        }
        if !self.netkit.is_empty() {
            parts.push(format!("netkit pod devices ({})", shown(&self.netkit)));
        }
        parts.join("; ")
    }

    /// The verdict's text: the route verdict it qualifies, what is not verified and why.
    pub fn unverified(&self, route: &str, tun: &str) -> String {
        let who = if self.is_cilium() {
            "Cilium"
        } else {
            "a BPF datapath"
        };
        format!(
            "{who} on this node ({}): {route}, but with BPF host routing (or BPF masquerading on {tun}) pod packets are redirected past netfilter, where tsbridge's SNAT and MSS clamp are, and the route lookup cannot tell; unverified",
            self.seen()
        )
    }

    /// Which settings to check, for the fix line.
    pub fn check(&self, tun: &str) -> String {
        if self.is_cilium() {
            format!(
                "make Cilium hand pod traffic to the host stack: Helm `bpf.hostLegacyRouting=true` (`cilium-dbg status` on the node's agent shows `Host Routing: Legacy`) and {tun} not in Cilium's `devices`; then tsbridge's SNAT and MSS clamp apply (README: CNIs, Cilium)"
            )
        } else {
            format!(
                "make sure the CNI hands pod traffic leaving via {tun} to the host stack (no BPF redirect to {tun}), or that it masquerades it to {tun}'s address and clamps the MSS itself (README: CNIs)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, programs: &[&str]) -> LinkProgs {
        LinkProgs {
            name: name.into(),
            kind: kind.map(Into::into),
            programs: programs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn flannel_node_is_plain() {
        let links = [
            link("lo", None, &[]),
            link("eth0", None, &[]),
            link("cni0", Some("bridge"), &[]),
            link("flannel.1", Some("vxlan"), &[]),
            link("veth1234", Some("veth"), &[]),
            link("tailscale0", Some("tun"), &[]),
        ];
        assert_eq!(assess(&links, "tailscale0"), None);
    }

    #[test]
    fn programs_off_the_pod_path_do_not_count() {
        // A BPF program on the lab NIC (a firewall, a monitoring agent) is not on the
        // pod's way out.
        let links = [
            link("eth0", None, &["tc ingress bpf fw id 3"]),
            link("tailscale0", Some("tun"), &[]),
        ];
        assert_eq!(assess(&links, "tailscale0"), None);
    }

    #[test]
    fn cilium_by_its_devices_and_programs() {
        let links = [
            link("eth0", None, &["tc ingress bpf cil_from_netdev id 9"]),
            link(
                "cilium_host",
                Some("veth"),
                &["tc ingress bpf cil_to_host id 10"],
            ),
            link("cilium_net", Some("veth"), &[]),
            link("cilium_vxlan", Some("vxlan"), &[]),
            link("lxc1a2b", Some("veth"), &["tcx ingress (1 program)"]),
            link("tailscale0", Some("tun"), &[]),
        ];
        let d = assess(&links, "tailscale0").expect("cilium");
        assert!(d.is_cilium());
        assert_eq!(d.cilium, ["cilium_host", "cilium_net", "cilium_vxlan"]);
        assert_eq!(
            d.programs,
            [
                "cilium_host (tc ingress bpf cil_to_host id 10)",
                "lxc1a2b (tcx ingress (1 program))"
            ]
        );
        let text = d.unverified("the route lookup sends pods into tailscale0", "tailscale0");
        assert!(text.starts_with("Cilium on this node (Cilium's devices (cilium_host"));
        assert!(text.ends_with("unverified"), "{text}");
        assert!(d.check("tailscale0").contains("bpf.hostLegacyRouting=true"));
        assert!(
            d.check("tailscale0")
                .contains("tailscale0 not in Cilium's `devices`")
        );
    }

    #[test]
    fn bpf_without_cilium_and_on_the_tun() {
        // Calico's eBPF dataplane: programs on the cali* pod interfaces.
        let links = [link(
            "cali12ab",
            Some("veth"),
            &["tc ingress bpf calico_from_wl id 4"],
        )];
        let d = assess(&links, "tailscale0").expect("bpf");
        assert!(!d.is_cilium());
        assert!(
            d.unverified("r", "tailscale0")
                .starts_with("a BPF datapath on this node")
        );
        assert!(!d.check("tailscale0").contains("Cilium"));
        // Something masquerading in BPF on the TUN itself.
        let links = [link(
            "tailscale0",
            Some("tun"),
            &["tc egress bpf cil_to_netdev id 5"],
        )];
        assert!(assess(&links, "tailscale0").is_some());
        // netkit pods: BPF by construction, even before a program shows.
        let links = [link("lxc99", Some("netkit"), &[])];
        let d = assess(&links, "tailscale0").expect("netkit");
        assert_eq!(d.netkit, ["lxc99"]);
    }

    #[test]
    fn many_pods_are_summarised() {
        let links: Vec<LinkProgs> = (0..10)
            .map(|i| {
                link(
                    &format!("lxc{i}"),
                    Some("veth"),
                    &["tcx ingress (1 program)"],
                )
            })
            .collect();
        let d = assess(&links, "tailscale0").expect("bpf");
        assert!(d.seen().ends_with("and 7 more"), "{}", d.seen());
    }
}
