//! The cluster's own pod and service subnets, read from a Talos machine configuration
//! (`cluster.network.podSubnets` / `serviceSubnets` of the v1alpha1 document), so
//! `tsbridge patch --machine-config FILE` sets `TSBRIDGE_POD_CIDRS` and
//! `TSBRIDGE_SERVICE_CIDRS` to what the cluster really uses, every family included.
//!
//! A reader for exactly that path, not a YAML parser: block mappings by indentation,
//! block sequences (`- item`, also at the key's own indentation) and flow sequences
//! (`[a, b]`), quoted or plain scalars, comments, several documents. That is how Talos
//! writes a configuration (`talosctl gen config`, `talosctl read
//! /system/state/config.yaml`); anything it does not understand on that path is an error
//! naming the line, never a guess.

use crate::net::Cidr;

/// Talos's defaults when the configuration does not set them
/// (`pkg/machinery/constants`: DefaultIPv4PodNet, DefaultIPv4ServiceNet).
pub const TALOS_DEFAULT_POD_SUBNETS: &str = "10.244.0.0/16";
pub const TALOS_DEFAULT_SERVICE_SUBNETS: &str = "10.96.0.0/12";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetwork {
    pub pod_subnets: Vec<Cidr>,
    pub service_subnets: Vec<Cidr>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    #[error(
        "no `cluster:` section: not a Talos machine configuration (use controlplane.yaml / worker.yaml from `talosctl gen config`, or `talosctl -n NODE read /system/state/config.yaml`)"
    )]
    NoCluster,
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
}

/// Reads `cluster.network.{podSubnets,serviceSubnets}`; a missing list means Talos's
/// default for it.
pub fn cluster_network(text: &str) -> Result<ClusterNetwork, MachineConfigError> {
    let mut saw_cluster = false;
    let mut pods: Option<Vec<Cidr>> = None;
    let mut services: Option<Vec<Cidr>> = None;
    // (indent, key) of the open mappings.
    let mut path: Vec<(usize, String)> = Vec::new();
    // The list being read: which one, and the indentation of its key.
    let mut list: Option<(bool, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |what: &str| MachineConfigError::Line {
            line,
            what: what.to_owned(),
        };
        let content = strip_comment(raw);
        if content.trim().is_empty() {
            continue;
        }
        if content.starts_with("---") || content.starts_with("...") {
            path.clear();
            list = None;
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        let item = content.trim();
        if let Some((is_pods, key_indent)) = list {
            if let Some(value) = item.strip_prefix('-') {
                if indent >= key_indent {
                    let c = cidr(value.trim()).map_err(|e| bad(&e))?;
                    let into = if is_pods { &mut pods } else { &mut services };
                    into.get_or_insert_with(Vec::new).push(c);
                    continue;
                }
            }
            list = None;
        }
        if item.starts_with('-') {
            // A sequence elsewhere (machine.certSANs, ...): not on our path.
            continue;
        }
        let Some((key, value)) = item.split_once(':') else {
            continue;
        };
        let key = unquote(key.trim());
        let value = value.trim();
        while path.last().is_some_and(|(d, _)| *d >= indent) {
            path.pop();
        }
        let at: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
        if at.is_empty() && key == "cluster" {
            saw_cluster = true;
        }
        if at == ["cluster", "network"] && (key == "podSubnets" || key == "serviceSubnets") {
            let is_pods = key == "podSubnets";
            if value.is_empty() {
                list = Some((is_pods, indent));
                let into = if is_pods { &mut pods } else { &mut services };
                into.get_or_insert_with(Vec::new);
            } else {
                let items = flow_list(value).map_err(|e| bad(&e))?;
                let into = if is_pods { &mut pods } else { &mut services };
                into.get_or_insert_with(Vec::new).extend(items);
            }
            continue;
        }
        if value.is_empty() {
            path.push((indent, key));
        }
    }
    if !saw_cluster {
        return Err(MachineConfigError::NoCluster);
    }
    let or_default = |v: Option<Vec<Cidr>>, d: &str| {
        v.filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.split(',').filter_map(|s| s.parse().ok()).collect())
    };
    Ok(ClusterNetwork {
        pod_subnets: or_default(pods, TALOS_DEFAULT_POD_SUBNETS),
        service_subnets: or_default(services, TALOS_DEFAULT_SERVICE_SUBNETS),
    })
}

/// The line without a trailing comment (a `#` at the start or after a blank, outside
/// quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, ch) in line.char_indices() {
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if ch == '"' || ch == '\'' => quote = Some(ch),
            None if ch == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = ch;
    }
    line
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = t.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    t.to_owned()
}

fn cidr(s: &str) -> Result<Cidr, String> {
    let v = unquote(s);
    v.parse::<Cidr>()
        .map_err(|e| format!("{v:?} is not a subnet: {e}"))
}

fn flow_list(s: &str) -> Result<Vec<Cidr>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| {
            format!("expected a list like [10.244.0.0/16, fd00:10:244::/56], got {s:?}")
        })?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(cidr)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[Cidr]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    /// The layout of `talosctl gen config` (v1alpha1 with documentation comments), with a
    /// dual-stack network, and a later document of another kind.
    const GENERATED: &str = "\
version: v1alpha1 # Indicates the schema used to decode the contents.
debug: false # Enable verbose logging to the console.
machine:
    type: controlplane
    certSANs: []
    network: {}
    kubelet:
        image: ghcr.io/siderolabs/kubelet:v1.33.4
        defaultRuntimeSeccompProfileEnabled: true # Enable container runtime default Seccomp profile.
cluster:
    id: abc
    secret: c2VjcmV0
    controlPlane:
        endpoint: https://192.168.10.10:6443
    clusterName: demo
    # Provides cluster specific network configuration options.
    network:
        dnsDomain: cluster.local # The domain used by Kubernetes DNS.
        # The pod subnet CIDR.
        podSubnets:
            - 10.244.0.0/16
            - fd00:10:244::/56 # IPv6 pods
        # The service subnet CIDR.
        serviceSubnets:
            - 10.96.0.0/12
            - \"fd00:10:96::/112\"
    token: abc.def
---
apiVersion: v1alpha1
kind: KubeletConfig
network:
    podSubnets:
        - 10.99.0.0/16
";

    #[test]
    fn reads_both_families_from_a_generated_configuration() {
        let n = cluster_network(GENERATED).unwrap();
        assert_eq!(strs(&n.pod_subnets), ["10.244.0.0/16", "fd00:10:244::/56"]);
        assert_eq!(
            strs(&n.service_subnets),
            ["10.96.0.0/12", "fd00:10:96::/112"]
        );
    }

    #[test]
    fn flow_lists_sequences_at_the_keys_indentation_and_defaults() {
        let n = cluster_network(
            "cluster:\n  network:\n    podSubnets: [\"10.0.0.0/8\", fd00:10::/56]\n    serviceSubnets:\n    - 10.43.0.0/16\n",
        )
        .unwrap();
        assert_eq!(strs(&n.pod_subnets), ["10.0.0.0/8", "fd00:10::/56"]);
        assert_eq!(strs(&n.service_subnets), ["10.43.0.0/16"]);
        // No network section: Talos's defaults.
        let n = cluster_network("machine:\n  type: worker\ncluster:\n  clusterName: x\n").unwrap();
        assert_eq!(strs(&n.pod_subnets), ["10.244.0.0/16"]);
        assert_eq!(strs(&n.service_subnets), ["10.96.0.0/12"]);
        // A key of the same name elsewhere is not the cluster's.
        let n = cluster_network(
            "machine:\n  network:\n    podSubnets: [10.1.0.0/16]\ncluster:\n  network:\n    dnsDomain: x\n",
        )
        .unwrap();
        assert_eq!(strs(&n.pod_subnets), ["10.244.0.0/16"]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            cluster_network("apiVersion: v1alpha1\nkind: KubeletConfig\n"),
            Err(MachineConfigError::NoCluster)
        );
        let e = cluster_network("cluster:\n  network:\n    podSubnets:\n      - 10.244.0.1/16\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 4: \"10.244.0.1/16\" is not a subnet"),
            "{e}"
        );
        let e = cluster_network("cluster:\n  network:\n    podSubnets: 10.244.0.0/16\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3: expected a list"), "{e}");
    }

    #[test]
    fn comments_are_not_values() {
        assert_eq!(strip_comment("a: b # c"), "a: b ");
        assert_eq!(strip_comment("a: \"b # c\""), "a: \"b # c\"");
        assert_eq!(strip_comment("# all"), "");
        assert_eq!(strip_comment("a: b#c"), "a: b#c");
    }
}
