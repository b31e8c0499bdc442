//! `tsbridge check`: explains, on a node, whether a pod can reach the tailnet and why not.
//!
//! Read-only: it asks tailscaled's LocalAPI, dumps the kernel's rules, nftables and routes
//! (the same pure diff the reconciler uses), and sends one MagicDNS query. Each check
//! prints ok/FAIL, what it saw, and a one-line fix. Exit status 0 only when all pass.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, Config};
use crate::egress::guard::{Identity, PodPath};
use crate::egress::plan::{EgressConfig, NftOp};
use crate::localapi::LocalApi;
use crate::status::BackendState;

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to change; `None` when it passes.
    pub fix: Option<String>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Item {
    Item {
        name,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Item {
    Item {
        name,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub fn main(json: bool) -> ExitCode {
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
                Ok(rt) => rt.block_on(run_checks(&cfg)),
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

pub fn exit_code(items: &[Item]) -> ExitCode {
    if !items.is_empty() && items.iter().all(|i| i.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub fn render_text(items: &[Item]) -> String {
    let mut out = String::new();
    for i in items {
        let mark = if i.ok { "ok  " } else { "FAIL" };
        out.push_str(&format!("{mark} {:<13} {}\n", i.name, one_line(&i.detail)));
        if let Some(f) = &i.fix {
            out.push_str(&format!("     {:<13} fix: {}\n", "", one_line(f)));
        }
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        out.push_str("all checks passed: pods on this node can reach the tailnet\n");
    } else {
        out.push_str(&format!("{failed} of {} checks failed\n", items.len()));
    }
    out
}

pub fn render_json(items: &[Item]) -> String {
    let v = serde_json::json!({
        "ok": !items.is_empty() && items.iter().all(|i| i.ok),
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

async fn run_checks(cfg: &Config) -> Vec<Item> {
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
    items.push(magicdns_item(status.as_ref().ok()).await);
    items
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
        PodPath::Unknown(why) => fail(
            NAME,
            format!("not verified: {why}"),
            "needs tailscaled Running and at least one pod route on this node",
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

async fn magicdns_item(status: Option<&FullStatus>) -> Item {
    const NAME: &str = "magicdns";
    let Some(s) = status else {
        return fail(
            NAME,
            "skipped: tailscaled status unknown",
            "fix the tailscaled check first",
        );
    };
    // A peer's name (online first), else our own: MagicDNS answers both.
    let mut candidates: Vec<&PeerStatus> = s.peer.iter().flat_map(|m| m.values()).collect();
    candidates.sort_by_key(|p| !p.online);
    let target = candidates
        .into_iter()
        .chain(s.self_node.as_ref())
        .find(|p| !p.dns_name.is_empty());
    let Some(target) = target else {
        return fail(
            NAME,
            "no peer with a MagicDNS name",
            "enable MagicDNS for the tailnet (dns.magic_dns / admin console)",
        );
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
            let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
            pass(
                NAME,
                format!("{name} -> {} via 100.100.100.100", shown.join(" ")),
            )
        }
        Ok(got) => fail(
            NAME,
            format!("{name}: answer {got:?} does not match the peer's addresses {want:?}"),
            "MagicDNS answers stale data; check tailscaled's netmap (tailscale status)",
        ),
        Err(e) => fail(
            NAME,
            format!("{name} via 100.100.100.100: {e}"),
            "100.100.100.100 must route into tailscale0 (table 52); check `ip route get 100.100.100.100`",
        ),
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
    }
}
