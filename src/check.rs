//! `tsbridge check`: explains, on a node, whether a pod can reach the tailnet and why not.
//!
//! Read-only: it asks tailscaled's LocalAPI, dumps the kernel's rules, nftables and routes
//! (the same pure diff the reconciler uses), asks MagicDNS for a peer's name and then the
//! cluster DNS for the same name (the path a pod's query takes). Each check prints ok/FAIL,
//! what it saw, and a one-line fix. Exit status 0 only when all pass (3 when none failed
//! but something could not be verified).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, Config};
use crate::dns::DnsError;
use crate::egress::guard::{Identity, PodPath};
use crate::egress::plan::{EgressConfig, NftOp};
use crate::localapi::LocalApi;
use crate::status::BackendState;

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    /// Not failed, but nothing could be verified (the pod path on a node without pods):
    /// `ok` is false, and it does not count as failed.
    pub unverified: bool,
    pub detail: String,
    /// What to change; `None` when it passes.
    pub fix: Option<String>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Item {
    Item {
        name,
        ok: true,
        unverified: false,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Item {
    Item {
        name,
        ok: false,
        unverified: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn unverified(name: &'static str, detail: impl Into<String>) -> Item {
    Item {
        name,
        ok: false,
        unverified: true,
        detail: detail.into(),
        fix: None,
    }
}

/// Which cluster DNS server the `cluster-dns` check asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterDns {
    /// The 10th address of the first service CIDR (IPv4 first), as Talos's kubelet uses.
    Default,
    /// `--cluster-dns ADDR`.
    At(SocketAddr),
    /// `--cluster-dns off`: not checked.
    Off,
}

impl ClusterDns {
    /// `off`, an address (port 53) or an address and port.
    pub fn parse(s: &str) -> Option<ClusterDns> {
        if s == "off" {
            return Some(ClusterDns::Off);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(ClusterDns::At(SocketAddr::new(ip, 53)));
        }
        s.parse().ok().map(ClusterDns::At)
    }
}

pub fn main(json: bool, cluster_dns: ClusterDns) -> ExitCode {
    let loaded = config::from_process_env();
    let items = match loaded.config {
        Err(e) => vec![fail(
            "config",
            e.to_string().replace('\n', ";"),
            "fix the listed variables in the ExtensionServiceConfig named tailscale",
        )],
        Ok(cfg) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(run_checks(&cfg, cluster_dns)),
                Err(e) => vec![fail(
                    "runtime",
                    e.to_string(),
                    "tsbridge could not start its async runtime",
                )],
            }
        }
    };
    print!(
        "{}",
        if json {
            render_json(&items)
        } else {
            render_text(&items)
        }
    );
    exit_code(&items)
}

/// 0 when every check passed; 3 when none failed but some could not be verified; 1
/// otherwise.
pub fn exit_code(items: &[Item]) -> ExitCode {
    if !items.is_empty() && items.iter().all(|i| i.ok) {
        ExitCode::SUCCESS
    } else if !items.is_empty() && items.iter().all(|i| i.ok || i.unverified) {
        ExitCode::from(3)
    } else {
        ExitCode::from(1)
    }
}

pub fn render_text(items: &[Item]) -> String {
    let mut out = String::new();
    for i in items {
        let mark = match (i.ok, i.unverified) {
            (true, _) => "ok  ",
            (false, true) => "skip",
            (false, false) => "FAIL",
        };
        out.push_str(&format!("{mark} {:<13} {}\n", i.name, one_line(&i.detail)));
        if let Some(f) = &i.fix {
            // An unverified part names what to check; a failed one what to fix.
            let label = if i.unverified { "check" } else { "fix" };
            out.push_str(&format!("     {:<13} {label}: {}\n", "", one_line(f)));
        }
    }
    let failed = items.iter().filter(|i| !i.ok && !i.unverified).count();
    let skipped: Vec<&str> = items
        .iter()
        .filter(|i| i.unverified)
        .map(|i| i.name)
        .collect();
    if failed == 0 && skipped.is_empty() {
        out.push_str("all checks passed: pods on this node can reach the tailnet\n");
    } else if failed == 0 {
        out.push_str(&format!(
            "no check failed, but not verified: {}\n",
            skipped.join(", ")
        ));
    } else {
        out.push_str(&format!("{failed} of {} checks failed\n", items.len()));
    }
    out
}

pub fn render_json(items: &[Item]) -> String {
    let v = serde_json::json!({
        "ok": !items.is_empty() && items.iter().all(|i| i.ok),
        "unverified": items.iter().filter(|i| i.unverified).map(|i| i.name).collect::<Vec<_>>(),
        "checks": items,
    });
    format!("{v}\n")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The peers part of `/localapi/v0/status` (with peers).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FullStatus {
    #[serde(rename = "BackendState")]
    backend_state: String,
    #[serde(rename = "TailscaleIPs")]
    tailscale_ips: Option<Vec<IpAddr>>,
    #[serde(rename = "MagicDNSSuffix")]
    magic_dns_suffix: String,
    #[serde(rename = "Health")]
    health: Option<Vec<String>>,
    #[serde(rename = "Self")]
    self_node: Option<PeerStatus>,
    #[serde(rename = "Peer")]
    peer: Option<std::collections::BTreeMap<String, PeerStatus>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PeerStatus {
    #[serde(rename = "DNSName")]
    dns_name: String,
    #[serde(rename = "TailscaleIPs")]
    tailscale_ips: Option<Vec<IpAddr>>,
    #[serde(rename = "Online")]
    online: bool,
}

const STATUS_LIMIT: Duration = Duration::from_secs(3);

/// Why tailscaled's status could not be read.
#[derive(Debug, thiserror::Error)]
enum StatusError {
    #[error("the LocalAPI did not answer within {} s", STATUS_LIMIT.as_secs())]
    Timeout,
    #[error(transparent)]
    Api(#[from] crate::localapi::ApiError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

async fn run_checks(cfg: &Config, cluster_dns: ClusterDns) -> Vec<Item> {
    let mut items = vec![pass("config", "valid")];
    let api = LocalApi::new(&cfg.socket);
    let status = match tokio::time::timeout(STATUS_LIMIT, api.get("/localapi/v0/status")).await {
        Err(_) => Err(StatusError::Timeout),
        Ok(Err(e)) => Err(StatusError::Api(e)),
        Ok(Ok(b)) => serde_json::from_slice::<FullStatus>(&b).map_err(StatusError::Json),
    };
    items.push(tailscaled_item(&status, cfg));

    let ecfg = EgressConfig::from_config(cfg);
    match crate::egress::snapshot(&ecfg) {
        Ok(snap) => {
            items.push(rules_item(&snap.pending));
            items.push(nft_item(&snap.pending, &ecfg));
            items.push(pod_path_item(&snap.pod_path));
            items.push(identity_item(&snap.identity));
        }
        Err(e) => items.push(fail(
            "kernel",
            format!("cannot read the kernel's rules and nftables: {e}"),
            "run `tsbridge check` as root in the host network namespace (CAP_NET_ADMIN)",
        )),
    }
    let (item, magic) = magicdns_item(status.as_ref().ok()).await;
    items.push(item);
    let server = match cluster_dns {
        ClusterDns::Off => return items,
        ClusterDns::At(a) => Ok(a),
        ClusterDns::Default => default_cluster_dns(&cfg.service_cidrs),
    };
    items.push(match (server, magic) {
        (Err(e), _) => fail(
            CLUSTER_DNS,
            format!("no cluster DNS address: {e}"),
            "pass --cluster-dns ADDR (the kube-dns Service's address)",
        ),
        (Ok(_), None) => fail(
            CLUSTER_DNS,
            "skipped: MagicDNS gave no answer to compare with",
            "fix the magicdns check first",
        ),
        (Ok(server), Some(m)) => {
            let got = crate::dns::query_a(server, &m.name, CLUSTER_DNS_LIMIT).await;
            cluster_dns_item(server, &m, got, &cfg.service_cidrs)
        }
    });
    items
}

const CLUSTER_DNS: &str = "cluster-dns";
/// CoreDNS forwards the query on to MagicDNS: a little more time than a direct query.
const CLUSTER_DNS_LIMIT: Duration = Duration::from_secs(3);

/// Talos's cluster DNS: the 10th address of the first service CIDR, IPv4 preferred (the
/// check's query is an A query over either family).
fn default_cluster_dns(service_cidrs: &[crate::net::Cidr]) -> Result<SocketAddr, String> {
    let first = service_cidrs
        .iter()
        .find(|c| c.is_ipv4())
        .or_else(|| service_cidrs.first())
        .ok_or("TSBRIDGE_SERVICE_CIDRS is empty")?;
    crate::talos::cluster_dns(first)
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|e| e.to_string())
}

/// What MagicDNS said for one name, for the cluster DNS to be compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MagicAnswer {
    name: String,
    /// The tailnet's MagicDNS suffix (the zone the cluster DNS must forward).
    suffix: String,
    addrs: Vec<Ipv4Addr>,
}

/// The `cluster-dns` verdict: the cluster DNS must give the same A records as MagicDNS.
fn cluster_dns_item(
    server: SocketAddr,
    m: &MagicAnswer,
    got: Result<Vec<Ipv4Addr>, DnsError>,
    service_cidrs: &[crate::net::Cidr],
) -> Item {
    let at = if server.port() == 53 {
        server.ip().to_string()
    } else {
        server.to_string()
    };
    let via = format!("{} via the cluster DNS {at}", m.name);
    let magic = shown(&m.addrs);
    let svc = if service_cidrs == crate::talos::default_service_cidrs().as_slice() {
        String::new()
    } else {
        let list: Vec<String> = service_cidrs.iter().map(ToString::to_string).collect();
        format!(" --service-cidr {}", list.join(","))
    };
    let apply = format!(
        "give pods the CoreDNS that forwards {suffix} to {MAGICDNS}: `tsbridge patch --coredns-manifests --tailnet {suffix}{svc} | kubectl apply --server-side --force-conflicts -f -`, then `kubectl -n kube-system rollout restart deployment/coredns`; keep it across upgrades with `tsbridge patch --coredns` in the control planes' machine config (README: MagicDNS names for pods)",
        suffix = m.suffix,
        MAGICDNS = crate::talos::MAGICDNS,
    );
    match got {
        Ok(mut a) => {
            a.sort_unstable();
            a.dedup();
            let mut want = m.addrs.clone();
            want.sort_unstable();
            want.dedup();
            if a == want {
                pass(
                    CLUSTER_DNS,
                    format!(
                        "{via} -> {}, as {} answers",
                        shown(&a),
                        crate::talos::MAGICDNS
                    ),
                )
            } else if a.is_empty() {
                fail(
                    CLUSTER_DNS,
                    format!(
                        "{via}: no A record, but MagicDNS answers {magic}: the cluster DNS does not forward {} to MagicDNS",
                        m.suffix
                    ),
                    apply,
                )
            } else {
                fail(
                    CLUSTER_DNS,
                    format!(
                        "{via} -> {}, but MagicDNS answers {magic}: the cluster DNS does not forward {} to MagicDNS",
                        shown(&a),
                        m.suffix
                    ),
                    apply,
                )
            }
        }
        Err(DnsError::Rcode(3)) => fail(
            CLUSTER_DNS,
            format!(
                "{via}: NXDOMAIN, but MagicDNS answers {magic}: the cluster DNS does not forward {} to MagicDNS, so pods cannot resolve tailnet names",
                m.suffix
            ),
            apply,
        ),
        Err(DnsError::Rcode(rc)) => fail(
            CLUSTER_DNS,
            format!(
                "{via}: {} (MagicDNS answers {magic}): the cluster DNS does not forward {} to MagicDNS, or the node running CoreDNS cannot reach {}",
                rcode_name(rc),
                m.suffix,
                crate::talos::MAGICDNS
            ),
            format!(
                "{apply}; if it already does, run `tsbridge check` on the nodes running CoreDNS (`kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide`)"
            ),
        ),
        Err(e @ (DnsError::Timeout(_) | DnsError::Io(_))) => fail(
            CLUSTER_DNS,
            format!("{via}: {e}"),
            "is CoreDNS running (`kubectl -n kube-system get pods -l k8s-app=kube-dns`)? The cluster DNS is the 10th address of TSBRIDGE_SERVICE_CIDRS; pass --cluster-dns ADDR if yours differs",
        ),
        Err(e) => fail(
            CLUSTER_DNS,
            format!("{via}: {e}"),
            "the address given is not a DNS server; pass --cluster-dns with the kube-dns Service's address",
        ),
    }
}

fn rcode_name(rc: u8) -> String {
    match rc {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("DNS error rcode {n}"),
    }
}

fn shown(a: &[Ipv4Addr]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn tailscaled_item(status: &Result<FullStatus, StatusError>, cfg: &Config) -> Item {
    const NAME: &str = "tailscaled";
    let s = match status {
        Ok(s) => s,
        Err(e) => {
            return fail(
                NAME,
                format!("LocalAPI at {}: {e}", cfg.socket.display()),
                "is the tailscale service running? (talosctl service ext-tailscale; talosctl logs ext-tailscale); TS_SOCKET must match",
            );
        }
    };
    if let Some(w) = s
        .health
        .iter()
        .flatten()
        .find(|h| h.contains("State store failed"))
    {
        return fail(
            NAME,
            crate::status::state_store_problem(&crate::secret::redact(w), &cfg.state_dir),
            "make TS_STATE_DIR writable (not read-only, not full), then restart the service (talosctl service ext-tailscale restart)",
        );
    }
    let backend = BackendState::from_name(&s.backend_state);
    let addrs = s.tailscale_ips.clone().unwrap_or_default();
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    match backend {
        BackendState::Running if !addrs.is_empty() => pass(
            NAME,
            format!(
                "Running, {} (MagicDNS suffix {})",
                shown.join(" "),
                s.magic_dns_suffix.trim_matches('.')
            ),
        ),
        BackendState::Running => fail(
            NAME,
            "Running but without tailnet addresses",
            "check the node in the admin console (expired or disabled?)",
        ),
        BackendState::NeedsLogin => fail(
            NAME,
            "NeedsLogin",
            "set a valid TS_AUTHKEY (a fresh pre-auth key) and apply the ExtensionServiceConfig",
        ),
        BackendState::NeedsMachineAuth => fail(
            NAME,
            "NeedsMachineAuth",
            "approve the machine in the tailnet's admin console",
        ),
        other => fail(
            NAME,
            format!("backend state {}", other.name()),
            "see talosctl logs ext-tailscale for why tailscaled is not Running",
        ),
    }
}

fn rules_item(pending: &crate::egress::plan::Changes) -> Item {
    const NAME: &str = "guard-rules";
    if pending.add_rules.is_empty() && pending.del_rules.is_empty() {
        return pass(NAME, "tsbridge's policy rules are in place");
    }
    let missing: Vec<String> = pending
        .add_rules
        .iter()
        .map(|r| format!("{} to {}", r.priority, r.dst))
        .collect();
    fail(
        NAME,
        format!(
            "{} missing ({}), {} stray",
            pending.add_rules.len(),
            missing.join(", "),
            pending.del_rules.len()
        ),
        "tsbridge run restores them within milliseconds: is it running? (talosctl logs ext-tailscale)",
    )
}

fn nft_item(pending: &crate::egress::plan::Changes, cfg: &EgressConfig) -> Item {
    const NAME: &str = "nft-table";
    if !cfg.snat && !cfg.mss_clamp {
        return pass(
            NAME,
            "not needed (TSBRIDGE_SNAT and TSBRIDGE_MSS_CLAMP off)",
        );
    }
    if pending.nft.is_empty() {
        return pass(NAME, "table inet tsbridge is complete (SNAT and MSS clamp)");
    }
    let table_missing = pending.nft.iter().any(|o| matches!(o, NftOp::AddTable));
    let detail = if table_missing {
        "table inet tsbridge is missing".to_owned()
    } else {
        format!(
            "table inet tsbridge differs ({} changes pending)",
            pending.nft.len()
        )
    };
    fail(
        NAME,
        detail,
        "tsbridge run restores it within milliseconds: is it running? (talosctl logs ext-tailscale)",
    )
}

fn pod_path_item(p: &PodPath) -> Item {
    const NAME: &str = "pod-path";
    match p {
        PodPath::Ok { via } => pass(
            NAME,
            format!("a pod packet to the tailnet leaves via {via}"),
        ),
        PodPath::Problem(why) => fail(
            NAME,
            why.clone(),
            "a route or rule sends pod traffic elsewhere: compare `ip rule` and `ip route get 100.100.100.100 from <pod ip> iif <pod interface>`",
        ),
        PodPath::Unconfigured(why) => fail(
            NAME,
            why.clone(),
            "set TSBRIDGE_POD_CIDRS to the cluster's podSubnets, every family (`tsbridge patch --pod-cidr ...` writes it)",
        ),
        PodPath::NoPods(why) => unverified(NAME, format!("no pods yet, unverified: {why}")),
        PodPath::BpfDatapath { why, check } => Item {
            fix: Some(check.clone()),
            ..unverified(NAME, why.clone())
        },
        PodPath::Unknown(why) => fail(
            NAME,
            format!("not verified: {why}"),
            "needs tailscaled Running (its TUN, tailscale0) and the node's routes readable",
        ),
    }
}

fn identity_item(i: &Identity) -> Item {
    const NAME: &str = "node-identity";
    match i {
        Identity::Ok { addr, ifname } => pass(
            NAME,
            format!("{addr} on {ifname} is in TSBRIDGE_LAB_SUBNETS"),
        ),
        Identity::Unguarded => fail(
            NAME,
            "TSBRIDGE_LAB_SUBNETS is not set: nothing keeps the node IP off the tailnet",
            "set TSBRIDGE_LAB_SUBNETS and apply the patch from `tsbridge patch`",
        ),
        Identity::Problem(p) => fail(
            NAME,
            p.clone(),
            "check TSBRIDGE_LAB_SUBNETS against the node's addresses (`ip -br addr`)",
        ),
    }
}

async fn magicdns_item(status: Option<&FullStatus>) -> (Item, Option<MagicAnswer>) {
    const NAME: &str = "magicdns";
    let Some(s) = status else {
        let item = fail(
            NAME,
            "skipped: tailscaled status unknown",
            "fix the tailscaled check first",
        );
        return (item, None);
    };
    // A peer's name (online first), else our own: MagicDNS answers both.
    let mut candidates: Vec<&PeerStatus> = s.peer.iter().flat_map(|m| m.values()).collect();
    candidates.sort_by_key(|p| !p.online);
    let target = candidates
        .into_iter()
        .chain(s.self_node.as_ref())
        .find(|p| !p.dns_name.is_empty());
    let Some(target) = target else {
        let item = fail(
            NAME,
            "no peer with a MagicDNS name",
            "enable MagicDNS for the tailnet (dns.magic_dns / admin console)",
        );
        return (item, None);
    };
    let name = target.dns_name.trim_end_matches('.').to_owned();
    let want: Vec<Ipv4Addr> = target
        .tailscale_ips
        .iter()
        .flatten()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    let server = SocketAddr::from((Ipv4Addr::new(100, 100, 100, 100), 53));
    match crate::dns::query_a(server, &name, Duration::from_secs(2)).await {
        Ok(got) if !got.is_empty() && (want.is_empty() || got.iter().any(|a| want.contains(a))) => {
            let item = pass(
                NAME,
                format!("{name} -> {} via 100.100.100.100", shown(&got)),
            );
            let answer = MagicAnswer {
                suffix: s.magic_dns_suffix.trim_matches('.').to_owned(),
                name,
                addrs: got,
            };
            (item, Some(answer))
        }
        Ok(got) => {
            let item = fail(
                NAME,
                format!("{name}: answer {got:?} does not match the peer's addresses {want:?}"),
                "MagicDNS answers stale data; check tailscaled's netmap (tailscale status)",
            );
            (item, None)
        }
        Err(e) => {
            let item = fail(
                NAME,
                format!("{name} via 100.100.100.100: {e}"),
                "100.100.100.100 must route into tailscale0 (table 52); check `ip route get 100.100.100.100`",
            );
            (item, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_zero_only_when_everything_passes() {
        let ok = vec![pass("a", "x"), pass("b", "y")];
        assert_eq!(exit_code(&ok), ExitCode::SUCCESS);
        let bad = vec![pass("a", "x"), fail("b", "broken", "do this")];
        assert_eq!(exit_code(&bad), ExitCode::from(1));
        assert_eq!(exit_code(&[]), ExitCode::from(1));
        let text = render_text(&bad);
        assert!(text.contains("FAIL b"), "{text}");
        assert!(text.contains("fix: do this"), "{text}");
        assert!(text.ends_with("1 of 2 checks failed\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&bad)).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][1]["name"], "b");
        assert_eq!(v["checks"][1]["fix"], "do this");
        assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
        let v: serde_json::Value = serde_json::from_str(&render_json(&ok)).unwrap();
        assert_eq!(v["ok"], true);
    }

    fn answer() -> MagicAnswer {
        MagicAnswer {
            name: "peer.tail1234.ts.net".into(),
            suffix: "tail1234.ts.net".into(),
            addrs: vec![Ipv4Addr::new(100, 64, 0, 7)],
        }
    }

    #[test]
    fn cluster_dns_must_answer_what_magicdns_answers() {
        let dns: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let svc = crate::talos::default_service_cidrs();
        let m = answer();
        let ok = cluster_dns_item(dns, &m, Ok(vec![Ipv4Addr::new(100, 64, 0, 7)]), &svc);
        assert!(ok.ok, "{ok:?}");
        assert!(
            ok.detail
                .contains("via the cluster DNS 10.96.0.10 -> 100.64.0.7"),
            "{ok:?}"
        );

        // Talos's default CoreDNS sends the tailnet zone upstream, which knows nothing.
        let nx = cluster_dns_item(dns, &m, Err(DnsError::Rcode(3)), &svc);
        assert!(!nx.ok);
        assert!(
            nx.detail.contains("NXDOMAIN")
                && nx.detail.contains("does not forward tail1234.ts.net"),
            "{nx:?}"
        );
        let fix = nx.fix.unwrap();
        assert!(fix.contains("`tsbridge patch --coredns-manifests --tailnet tail1234.ts.net | kubectl apply --server-side --force-conflicts -f -`"), "{fix}");
        assert!(!fix.contains("--service-cidr"), "{fix}");

        for got in [Ok(vec![]), Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])] {
            let i = cluster_dns_item(dns, &m, got, &svc);
            assert!(!i.ok && i.detail.contains("does not forward"), "{i:?}");
            assert!(i.fix.unwrap().contains("--coredns-manifests"));
        }
        let sf = cluster_dns_item(dns, &m, Err(DnsError::Rcode(2)), &svc);
        assert!(sf.detail.contains("SERVFAIL"), "{sf:?}");
        assert!(
            sf.fix
                .unwrap()
                .contains("tsbridge check` on the nodes running CoreDNS")
        );

        // Nobody answers: the fix is about the server, not the Corefile.
        let t = cluster_dns_item(dns, &m, Err(DnsError::Timeout(CLUSTER_DNS_LIMIT)), &svc);
        assert!(!t.ok && t.detail.contains("no answer within 3 s"), "{t:?}");
        let fix = t.fix.unwrap();
        assert!(
            fix.contains("--cluster-dns") && !fix.contains("coredns-manifests"),
            "{fix}"
        );

        // A non-default service CIDR is carried into the command, so the Service matches.
        let custom = vec!["10.112.0.0/12".parse().unwrap()];
        let i = cluster_dns_item(dns, &m, Err(DnsError::Rcode(3)), &custom);
        assert!(
            i.fix
                .unwrap()
                .contains("--tailnet tail1234.ts.net --service-cidr 10.112.0.0/12 |")
        );
    }

    #[test]
    fn in_memory_state_is_named_by_the_tailscaled_check() {
        let cfg = crate::config::test_config(&[("TS_STATE_DIR", "/var/lib/ts")]);
        let status = FullStatus {
            backend_state: "NoState".into(),
            health: Some(vec!["State store failed to initialize, Tailscale will not work until this is resolved. See https://tailscale.com/s/state-store-init-error. Error: open /var/lib/ts/tailscaled.state.tmp1: read-only file system".into()]),
            ..FullStatus::default()
        };
        let i = tailscaled_item(&Ok(status), &cfg);
        assert!(!i.ok);
        assert!(
            i.detail.starts_with("tailscaled cannot write its state directory /var/lib/ts (open /var/lib/ts/tailscaled.state.tmp1: read-only file system)"),
            "{i:?}"
        );
        assert!(i.fix.unwrap().contains("TS_STATE_DIR"));
    }

    #[test]
    fn cluster_dns_address_and_flag() {
        let v4: crate::net::Cidr = "10.96.0.0/12".parse().unwrap();
        let v6: crate::net::Cidr = "fd00:10:96::/112".parse().unwrap();
        assert_eq!(
            default_cluster_dns(&[v6, v4]).unwrap(),
            "10.96.0.10:53".parse().unwrap()
        );
        assert_eq!(
            default_cluster_dns(&[v6]).unwrap(),
            "[fd00:10:96::a]:53".parse().unwrap()
        );
        assert!(default_cluster_dns(&[]).is_err());
        assert_eq!(ClusterDns::parse("off"), Some(ClusterDns::Off));
        assert_eq!(
            ClusterDns::parse("10.43.0.10"),
            Some(ClusterDns::At("10.43.0.10:53".parse().unwrap()))
        );
        assert_eq!(
            ClusterDns::parse("127.0.0.1:5353"),
            Some(ClusterDns::At("127.0.0.1:5353".parse().unwrap()))
        );
        assert_eq!(ClusterDns::parse("kube-dns"), None);
    }

    #[test]
    fn verdicts_carry_fixes() {
        let i = identity_item(&Identity::Unguarded);
        assert!(!i.ok && i.fix.unwrap().contains("TSBRIDGE_LAB_SUBNETS"));
        let p = pod_path_item(&PodPath::Unknown("tailscale0 does not exist yet".into()));
        assert!(!p.ok && p.detail.contains("tailscale0"));
        let p = pod_path_item(&PodPath::Ok {
            via: "tailscale0".into(),
        });
        assert!(p.ok && p.fix.is_none());
        let p = pod_path_item(&PodPath::Unconfigured("10.0.1.0/24 dev cilium_host".into()));
        assert!(!p.ok && !p.unverified && p.fix.unwrap().contains("TSBRIDGE_POD_CIDRS"));
    }

    #[test]
    fn a_bpf_datapath_is_skipped_with_the_setting_to_check() {
        let items = vec![
            pass("config", "valid"),
            pod_path_item(&PodPath::BpfDatapath {
                why: "Cilium on this node (...): ...; unverified".into(),
                check: "Helm `bpf.hostLegacyRouting=true`".into(),
            }),
        ];
        assert!(!items[1].ok && items[1].unverified);
        assert_eq!(exit_code(&items), ExitCode::from(3));
        let text = render_text(&items);
        assert!(
            text.contains("skip pod-path      Cilium on this node"),
            "{text}"
        );
        assert!(
            text.contains("check: Helm `bpf.hostLegacyRouting=true`"),
            "{text}"
        );
        assert!(!text.contains("all checks passed"), "{text}");
    }

    #[test]
    fn no_pods_yet_is_neither_ok_nor_failed() {
        let items = vec![
            pass("config", "valid"),
            pod_path_item(&PodPath::NoPods("no route into TSBRIDGE_POD_CIDRS".into())),
        ];
        assert!(!items[1].ok && items[1].unverified);
        assert_eq!(exit_code(&items), ExitCode::from(3));
        let text = render_text(&items);
        assert!(
            text.contains("skip pod-path      no pods yet, unverified: "),
            "{text}"
        );
        assert!(
            text.ends_with("no check failed, but not verified: pod-path\n"),
            "{text}"
        );
        assert!(!text.contains("all checks passed"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&items)).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["unverified"][0], "pod-path");
        assert_eq!(v["checks"][1]["unverified"], true);
        let mut with_failure = items.clone();
        with_failure.push(fail("magicdns", "no answer", "fix it"));
        assert_eq!(exit_code(&with_failure), ExitCode::from(1));
    }
}
