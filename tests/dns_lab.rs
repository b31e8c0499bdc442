//! MagicDNS names through the cluster DNS (issue 10 §6): `tsbridge check` asks the cluster
//! DNS service address for a peer's MagicDNS name and compares the answer with
//! 100.100.100.100's.
//!
//! The cluster DNS is the real CoreDNS (`COREDNS_VERSION`, Talos's default image version)
//! running as a pod would, behind the node, reached at 10.96.0.10 (the 10th address of the
//! default service CIDR) through a DNAT on the node as kube-proxy makes the `kube-dns`
//! Service reach its pods. Its upstream (`forward . /etc/resolv.conf`) is a resolver that
//! knows no tailnet names, as the Internet's DNS. Its query to 100.100.100.100 takes the pod
//! path: the node's tailscale0 with tsbridge's SNAT.
//!
//! 1. A running cluster before the change: CoreDNS with Talos's default Corefile (the
//!    generated Corefile without its tailnet block). The check fails with NXDOMAIN and its
//!    fix names `tsbridge patch --coredns-manifests ... | kubectl apply ...`.
//! 2. After that command (and a rollout): CoreDNS with the Corefile taken from the
//!    ConfigMap that `tsbridge patch --coredns-manifests` prints. The check passes: the
//!    generated Corefile itself is what is tested.
//! 3. A cluster DNS address where nothing answers: the check fails for that reason.
//!
//! Needs root and the pinned tools (`make tools`, which builds CoreDNS).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use tsbridge_lab::{BASE_DOMAIN, Lab, Tools, wait_until};

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// A resolver that answers NXDOMAIN to everything, on the node's side of the pod's veth.
fn upstream(addr: Ipv4Addr) -> String {
    format!(
        ".:53 {{\n    bind {addr}\n    template ANY ANY {{\n        rcode NXDOMAIN\n    }}\n}}\n"
    )
}

/// The Corefile inside the ConfigMap of `tsbridge patch --coredns-manifests`' output.
fn corefile_of(manifests: &str) -> String {
    let doc = manifests
        .split("\n---\n")
        .find(|d| d.contains("\nkind: ConfigMap\n"))
        .expect("a ConfigMap in the manifests");
    let body = doc
        .split_once("\n  Corefile: |\n")
        .expect("data.Corefile as a literal block")
        .1;
    let mut out = String::new();
    for line in body.lines() {
        match line.strip_prefix("    ") {
            Some(l) => out.push_str(l),
            None if line.is_empty() => {}
            None => break,
        }
        out.push('\n');
    }
    out
}

#[test]
fn check_follows_a_tailnet_name_through_the_cluster_dns() {
    let tools = Tools::find(env!("CARGO_BIN_EXE_tsbridge")).expect("lab tools");
    let lab = Lab::new(tools).expect("lab");
    let control = lab.control().expect("headscale");
    let _peer = lab.peer(&control, "peer").expect("peer");
    let node = lab.host("node1").expect("node");
    let pod = lab.pod(&node).expect("the CoreDNS pod");
    let env = lab.node_env_with_key(&control, &node).expect("node env");
    let ts = lab.start_tsbridge(&node, &env).expect("start tsbridge");
    lab.wait_running(&node, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&ts), 30)));

    let out = Command::new(env!("CARGO_BIN_EXE_tsbridge"))
        .args(["patch", "--coredns-manifests", "--tailnet", BASE_DOMAIN])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = corefile_of(&String::from_utf8_lossy(&out.stdout));
    let (tailnet_block, talos_default) = generated
        .split_once("}\n.:53 {\n")
        .map(|(a, b)| (a, format!(".:53 {{\n{b}")))
        .expect("the tailnet block, then Talos's `.:53` block");
    assert!(
        tailnet_block.starts_with(&format!("{BASE_DOMAIN}:53 {{\n")),
        "{generated}"
    );
    assert!(
        talos_default.contains("forward . /etc/resolv.conf"),
        "{generated}"
    );

    let gw = pod.gateway_v4;
    let _upstream = lab
        .start_coredns(
            &node.ns,
            "upstream-dns",
            &upstream(gw),
            false,
            IpAddr::V4(gw),
        )
        .expect("upstream resolver");
    lab.set_resolver(&pod.ns, IpAddr::V4(gw)).unwrap();
    lab.dns_service(&node, &pod, SERVICE).unwrap();
    let pod_ip = IpAddr::V4(pod.addr_v4);

    // 1. Talos's default CoreDNS.
    let coredns = lab
        .start_coredns(&pod.ns, "coredns", &talos_default, true, pod_ip)
        .expect("CoreDNS with Talos's default Corefile");
    // MagicDNS must know the peer first (the netmap may still be arriving).
    let (code, text) = wait_until(Duration::from_secs(30), "the magicdns check", || {
        let r = lab.tsbridge_check(&node, &env, &[])?;
        Ok(r.1.contains("ok   magicdns").then_some(r))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tsbridge_lab::tail(&lab.log(&ts), 30)));
    eprintln!("tsbridge check, Talos's default CoreDNS:\n{text}");
    assert_eq!(code, 1, "{text}");
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "only the cluster DNS fails:\n{text}");
    assert!(
        failed[0].contains("cluster-dns") && failed[0].contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        failed[0].contains(&format!("does not forward {BASE_DOMAIN}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "fix: give pods the CoreDNS that forwards {BASE_DOMAIN} to 100.100.100.100: `tsbridge patch --coredns-manifests --tailnet {BASE_DOMAIN} | kubectl apply --server-side --force-conflicts -f -`"
        )),
        "{text}"
    );
    let (_, json) = lab.tsbridge_check(&node, &env, &["--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let item = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cluster-dns")
        .cloned()
        .expect("a cluster-dns check");
    assert_eq!(item["ok"], false, "{item}");

    // 2. The generated Corefile (what `kubectl apply` of the manifests and a rollout give).
    lab.stop(&coredns);
    let _coredns = lab
        .start_coredns(&pod.ns, "coredns", &generated, true, pod_ip)
        .expect("CoreDNS with the generated Corefile");
    let (code, text) = lab.tsbridge_check(&node, &env, &[]).unwrap();
    eprintln!("tsbridge check, the generated CoreDNS:\n{text}");
    assert_eq!(code, 0, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("cluster-dns"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("ok   cluster-dns")
            && line.contains(&format!(
                "peer.{BASE_DOMAIN} via the cluster DNS {SERVICE} -> 100."
            ))
            && line.ends_with("as 100.100.100.100 answers"),
        "{line}"
    );

    // 3. A cluster DNS address where nothing answers (the control host has no DNS).
    let (code, text) = lab
        .tsbridge_check(&node, &env, &["--cluster-dns", "192.168.77.1"])
        .unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no answer within 3 s"), "{text}");
    assert!(!text.contains("coredns-manifests"), "{text}");
    assert!(text.contains("--cluster-dns ADDR"), "{text}");
}
