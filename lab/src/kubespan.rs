//! KubeSpan as Talos sets it up on a node, reproduced on lab hosts with real WireGuard
//! (userspace wireguard-go over TUN, configured with `wg`: the build machines' kernel has
//! no wireguard module).
//!
//! Every value is read from siderolabs/talos (main of 2026-11):
//! - `pkg/machinery/constants/constants.go`: port 51820, table 180, firewall mark 0x20
//!   (set by the WireGuard device on its own UDP packets), force mark 0x40 (packets to a
//!   KubeSpan peer), mask 0x60, rule priority 32500, link `kubespan`, MTU 1420;
//! - `internal/app/machined/pkg/controllers/kubespan/manager.go`: the link (wireguard,
//!   listen port, fwmark 0x20, one peer per node with its allowed IPs), the routes
//!   `default dev kubespan table 180` (v4 and v6, metric 1, MTU, protocol static), the
//!   rules `fwmark 0x40/0x60 lookup 180` at 32500 (v4 and v6), and the chains
//!   `kubespan_prerouting` (filter, prerouting, priority filter) and `kubespan_outgoing`
//!   (route, output, priority filter) in table `inet talos` (the default of
//!   `NfTablesChainController`, `controllers/network/nftables_chain.go`): accept what
//!   carries 0x20; (outgoing only) accept `oifname lo`, clamp the MSS to the MTU for the
//!   routed addresses; mark packets to the routed addresses `mark & ~0x60 ^ 0x40`;
//! - `.../kubespan/peer_spec.go`: a peer's allowed IPs are its node addresses, its
//!   additional addresses (the pod CIDRs with `advertiseKubernetesNetworks`) and its
//!   KubeSpan address; the routed set (manager.go) is the union without the KubeSpan
//!   (ULA) addresses;
//! - `internal/app/machined/pkg/adapters/network/nftables_rule.go`: how those rules compile
//!   (one rule per family for address matches; MSS = MTU - 20 - 20 - 12 for IPv4,
//!   MTU - 40 - 20 - 12 for IPv6, rewritten only when larger; syn without rst).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::{Error, Host, Lab, Proc, Result, err, wait_until};

pub const PORT: u16 = 51820;
pub const TABLE: u32 = 180;
pub const MARK: u32 = 0x20;
pub const FORCE_MARK: u32 = 0x40;
pub const MASK: u32 = 0x60;
pub const RULE_PRIORITY: u32 = 32500;
pub const LINK: &str = "kubespan";
pub const MTU: u16 = 1420;
pub const KEEPALIVE_SECS: u32 = 25;

/// One KubeSpan member: a lab host and the pod CIDRs it advertises.
pub struct Member<'a> {
    pub host: &'a Host,
    /// `advertiseKubernetesNetworks`: the node's pod CIDRs (v4 and/or v6).
    pub pod_cidrs: Vec<String>,
}

/// A running KubeSpan mesh; the WireGuard processes belong to the lab (stopped with it).
pub struct KubeSpan {
    nodes: Vec<Node>,
}

struct Node {
    role: String,
    wireguard: Proc,
}

impl KubeSpan {
    fn node(&self, host: &Host) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.role == host.role)
            .ok_or_else(|| Error(format!("{} is not a KubeSpan member", host.role)))
    }

    /// `wg ARGS` against `host`'s KubeSpan link (in the WireGuard process's namespaces,
    /// where its control socket is).
    pub fn wg(&self, host: &Host, args: &[&str]) -> Result<String> {
        let n = self.node(host)?;
        wg_in(n.wireguard.pid, args)
    }

    /// Bytes (received, sent) over `host`'s KubeSpan link, all peers together.
    pub fn transfer(&self, host: &Host) -> Result<(u64, u64)> {
        let out = self.wg(host, &["show", LINK, "transfer"])?;
        let mut total = (0, 0);
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rx), Some(tx)) = (f.get(1), f.get(2)) else {
                continue;
            };
            total.0 += rx.parse::<u64>().unwrap_or(0);
            total.1 += tx.parse::<u64>().unwrap_or(0);
        }
        Ok(total)
    }
}

fn wg_in(pid: u32, args: &[&str]) -> Result<String> {
    let pid = pid.to_string();
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-m", "-n", "--", "wg"])
        .args(args)
        .output()
        .map_err(|e| Error(format!("nsenter ... wg: {e} (package wireguard-tools)")))?;
    if !out.status.success() {
        return err(format!(
            "wg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The KubeSpan (ULA) address of the `i`-th member: Talos derives it from the cluster id
/// and the node; here a fixed /64 with the member's number.
fn ula(i: usize) -> String {
    format!("fd7f:175a:b97c:5602::{:x}", i + 1)
}

/// Talos's `inet talos` chains for a node whose peers own `routed` (v4 and v6 prefixes).
pub fn talos_chains(routed: &[String]) -> String {
    let v4: Vec<&str> = routed
        .iter()
        .filter(|p| !p.contains(':'))
        .map(String::as_str)
        .collect();
    let v6: Vec<&str> = routed
        .iter()
        .filter(|p| p.contains(':'))
        .map(String::as_str)
        .collect();
    let set_mark = format!(
        "meta mark set meta mark & {:#010x} ^ {FORCE_MARK:#010x} accept",
        !MASK
    );
    let mut by_family = Vec::new();
    if !v4.is_empty() {
        by_family.push(("ip", v4.join(", "), MTU - 52));
    }
    if !v6.is_empty() {
        by_family.push(("ip6", v6.join(", "), MTU - 72));
    }
    let mut s = String::from("table inet talos {\n  chain kubespan_prerouting {\n");
    s.push_str("    type filter hook prerouting priority filter; policy accept;\n");
    let _ = writeln!(s, "    meta mark & {MASK:#010x} == {MARK:#010x} accept");
    for (fam, set, _) in &by_family {
        let _ = writeln!(s, "    {fam} daddr {{ {set} }} {set_mark}");
    }
    s.push_str("  }\n  chain kubespan_outgoing {\n");
    s.push_str("    type route hook output priority filter; policy accept;\n");
    let _ = writeln!(s, "    meta mark & {MASK:#010x} == {MARK:#010x} accept");
    s.push_str("    oifname \"lo\" accept\n");
    for (fam, set, mss) in &by_family {
        let _ = writeln!(
            s,
            "    {fam} daddr {{ {set} }} meta l4proto tcp tcp flags & (syn | rst) == syn tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
        );
    }
    for (fam, set, _) in &by_family {
        let _ = writeln!(s, "    {fam} daddr {{ {set} }} {set_mark}");
    }
    s.push_str("  }\n}\n");
    s
}

impl Lab {
    /// Sets KubeSpan up between `members` (every member a peer of every other, endpoints
    /// on the lab network), as Talos does. `wg` and `nsenter` must be installed
    /// (scripts/setup.sh), wireguard-go is [`crate::Tools::wireguard`].
    pub fn kubespan(&self, members: &[Member<'_>]) -> Result<KubeSpan> {
        for t in ["wg", "nsenter", "nft"] {
            if crate::tools::which(t).is_none() {
                return err(format!(
                    "`{t}` is not installed: run scripts/setup.sh (wireguard-tools, util-linux, nftables)"
                ));
            }
        }
        // Each WireGuard process gets a private tmpfs for its control socket directory
        // (wireguard-go has it fixed at /var/run/wireguard; every member's link is named
        // `kubespan`). The mount point itself must exist.
        fs::create_dir_all("/run/wireguard")
            .map_err(|e| Error(format!("mkdir /run/wireguard: {e}")))?;
        let mut keys = Vec::new();
        for m in members {
            let key = wg_plain(&["genkey"], None)?;
            let public = wg_plain(&["pubkey"], Some(&key))?;
            let path = m.host.dir.join("kubespan.key");
            fs::write(&path, &key).map_err(|e| Error(format!("write {}: {e}", path.display())))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error(format!("chmod {}: {e}", path.display())))?;
            keys.push((path, public.trim().to_owned()));
        }
        let allowed = |i: usize| -> Vec<String> {
            let mut a = vec![format!("{}/32", members[i].host.lan_addr)];
            a.extend(members[i].pod_cidrs.iter().cloned());
            a
        };
        let wireguard = self.tools.wireguard.to_string_lossy().into_owned();
        let mut nodes = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let h = m.host;
            let script =
                format!("mount -t tmpfs kubespan /run/wireguard && exec {wireguard} -f {LINK}");
            let proc = self.spawn(
                &h.ns,
                &format!("{}-wireguard", h.role),
                &["sh", "-c", &script],
                &[("WG_PROCESS_FOREGROUND", "1")],
            )?;
            wait_until(
                Duration::from_secs(10),
                "wireguard-go's control socket",
                || Ok(wg_in(proc.pid, &["show", LINK]).ok().map(|_| ())),
            )
            .map_err(|e| Error(format!("{e}\n{}", crate::tail(&self.log(&proc), 20))))?;
            let mut args: Vec<String> = [
                "set",
                LINK,
                "private-key",
                &keys[i].0.to_string_lossy(),
                "listen-port",
                &PORT.to_string(),
                "fwmark",
                &format!("{MARK:#x}"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut routed = Vec::new();
            for (j, other) in members.iter().enumerate().filter(|(j, _)| *j != i) {
                let mut ips = allowed(j);
                routed.extend(ips.iter().cloned());
                ips.push(format!("{}/128", ula(j)));
                args.extend([
                    "peer".into(),
                    keys[j].1.clone(),
                    "endpoint".into(),
                    format!("{}:{PORT}", other.host.lan_addr),
                    "allowed-ips".into(),
                    ips.join(","),
                    "persistent-keepalive".into(),
                    KEEPALIVE_SECS.to_string(),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            wg_in(proc.pid, &args)?;
            let ula = ula(i);
            self.exec_ok(
                &h.ns,
                &[
                    "sh",
                    "-ec",
                    &format!(
                        "ip link set {LINK} mtu {MTU} up
                         ip -6 addr add {ula}/64 dev {LINK} nodad
                         ip route add default dev {LINK} table {TABLE} proto static metric 1 mtu {MTU}
                         ip -6 route add default dev {LINK} table {TABLE} proto static metric 1 mtu {MTU}
                         ip rule add pref {RULE_PRIORITY} fwmark {FORCE_MARK:#x}/{MASK:#x} lookup {TABLE} proto static
                         ip -6 rule add pref {RULE_PRIORITY} fwmark {FORCE_MARK:#x}/{MASK:#x} lookup {TABLE} proto static"
                    ),
                ],
            )?;
            let chains = h.dir.join("kubespan.nft");
            fs::write(&chains, talos_chains(&routed))
                .map_err(|e| Error(format!("write {}: {e}", chains.display())))?;
            self.exec_ok(&h.ns, &["nft", "-f", &chains.to_string_lossy()])?;
            nodes.push(Node {
                role: h.role.clone(),
                wireguard: proc,
            });
        }
        Ok(KubeSpan { nodes })
    }
}

/// `wg genkey` / `wg pubkey` (no interface involved).
fn wg_plain(args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("wg")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error(format!("wg {args:?}: {e} (package wireguard-tools)")))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .ok_or_else(|| Error("wg: no stdin".into()))?
            .write_all(input.as_bytes())
            .map_err(|e| Error(format!("wg {args:?}: {e}")))?;
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .map_err(|e| Error(format!("wg {args:?}: {e}")))?;
    if !out.status.success() {
        return err(format!("wg {args:?} failed"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_follow_talos_compiled_rules() {
        let s = talos_chains(&[
            "192.168.77.4/32".into(),
            "10.244.2.0/24".into(),
            "fd00:10:244:2::/64".into(),
        ]);
        assert!(s.contains("type route hook output priority filter; policy accept;"));
        assert!(s.contains("meta mark & 0x00000060 == 0x00000020 accept"));
        assert!(s.contains(
            "ip daddr { 192.168.77.4/32, 10.244.2.0/24 } meta mark set meta mark & 0xffffff9f ^ 0x00000040 accept"
        ));
        assert!(s.contains("maxseg size > 1368 tcp option maxseg size set 1368"));
        assert!(s.contains("ip6 daddr { fd00:10:244:2::/64 }"));
        assert!(s.contains("maxseg size > 1348"));
    }
}
