//! `tsbridge patch`: flags -> [`crate::talos::PatchOptions`] -> the patch on stdout.
//! The auth key comes from the environment or standard input, never from argv.

use std::io::{Read, Write};
use std::process::ExitCode;

use lexopt::prelude::*;

use super::error::CliError;
use crate::net::Cidr;
use crate::secret::Secret;
use crate::talos::{self, CoreDns, PatchOptions, TalosVersion};

/// Environment variables the auth key is read from, first found wins.
pub const AUTHKEY_VARS: &[&str] = &["TSBRIDGE_PATCH_AUTHKEY", "TS_AUTHKEY"];

const HELP: &str = "\
Usage: tsbridge patch --talos-version V --lab-subnet CIDR [OPTIONS] > patch.yaml

Prints the Talos machine-config patch (multi-document YAML) for a node: the
ExtensionServiceConfig `tailscale`, kubelet's node IP (and with --control-plane etcd's
advertised address) pinned to the lab subnet(s) with the tailnet ranges excluded, and with
--coredns a CoreDNS that resolves the tailnet's MagicDNS names for pods.
Apply it with `talosctl gen config --config-patch @patch.yaml` or `talosctl patch mc`.

Options:
  --talos-version V     Talos version the node's config schema is for (required), e.g.
                        1.13 or v1.14.0; from 1.14 the Kubernetes config documents are
                        used (KubeNodeConfig, KubeletConfig, ...), below the v1alpha1 fields
  --lab-subnet CIDR     the node's identity subnet (required; repeat or comma-separate)
  --control-plane       a control-plane node (adds etcd advertisedSubnets, CoreDNS objects)
  --pod-cidr CIDR       pod CIDRs (default 10.244.0.0/16; repeat or comma-separate); give
                        every family the cluster uses (podSubnets), e.g. for dual-stack
                        --pod-cidr 10.244.0.0/16,fd00:10:244::/56
  --service-cidr CIDR   service CIDRs (default 10.96.0.0/12); cluster DNS = 10th address
  --machine-config FILE take the pod and service CIDRs from the cluster's own Talos machine
                        configuration (cluster.network.podSubnets and serviceSubnets, both
                        families): controlplane.yaml / worker.yaml from `talosctl gen
                        config`, or `talosctl -n NODE read /system/state/config.yaml`
  --tag TAG             advertise tag:NAME (repeat or comma-separate)
  --hostname NAME       TS_HOSTNAME
  --login-server URL    control server (e.g. a headscale URL)
  --extra-args ARGS     further `tailscale up` flags for TS_EXTRA_ARGS (shell-quoted)
  --coredns             disable Talos's CoreDNS and ship one that forwards the tailnet
                        zone to 100.100.100.100 (needs --tailnet); pins kubelet clusterDNS
  --tailnet SUFFIX      the tailnet's MagicDNS suffix, e.g. tail1234.ts.net
  --cluster-domain D    Kubernetes cluster domain (default cluster.local)
  --coredns-image REF   CoreDNS image (default registry.k8s.io/coredns/coredns:v1.14.6)
  --coredns-manifests   print only the CoreDNS objects (exactly the inline manifest's
                        content) for `kubectl apply --server-side --force-conflicts -f -`
                        on a running cluster, where Talos does not replace objects that
                        exist; needs --tailnet, and the same --service-cidr,
                        --cluster-domain and --coredns-image as the patch; no key is read
  --authkey-stdin       read the auth key from standard input
  -h, --help            print help

The auth key is read from TSBRIDGE_PATCH_AUTHKEY or TS_AUTHKEY, or from standard input with
--authkey-stdin; never from the command line. It is written only into the patch on stdout.
Without a key the patch has no TS_AUTHKEY (add it later, or rely on existing node state).
";

fn value(parser: &mut lexopt::Parser) -> Result<String, CliError> {
    Ok(parser.value()?.string()?)
}

fn cidrs(flag: &str, text: &str, into: &mut Vec<Cidr>) -> Result<(), CliError> {
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c: Cidr = part
            .parse()
            .map_err(|e| CliError::Usage(format!("{flag} {part:?}: {e}")))?;
        into.push(c);
    }
    Ok(())
}

pub(crate) fn main(parser: &mut lexopt::Parser) -> Result<ExitCode, CliError> {
    let mut talos_version: Option<TalosVersion> = None;
    let mut lab = Vec::new();
    let mut pods = Vec::new();
    let mut services = Vec::new();
    let mut machine_config: Option<String> = None;
    let mut tags = Vec::new();
    let mut control_plane = false;
    let mut hostname = None;
    let mut login_server = None;
    let mut extra_args = None;
    let mut coredns = false;
    let mut tailnet: Option<String> = None;
    let mut cluster_domain: Option<String> = None;
    let mut coredns_image: Option<String> = None;
    let mut authkey_stdin = false;
    let mut coredns_manifests = false;

    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("talos-version") => {
                talos_version = Some(TalosVersion::parse(&value(parser)?)?);
            }
            Long("lab-subnet") => cidrs("--lab-subnet", &value(parser)?, &mut lab)?,
            Long("pod-cidr") => cidrs("--pod-cidr", &value(parser)?, &mut pods)?,
            Long("service-cidr") => cidrs("--service-cidr", &value(parser)?, &mut services)?,
            Long("machine-config") => machine_config = Some(value(parser)?),
            Long("tag") => tags.extend(
                value(parser)?
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            ),
            Long("control-plane") => control_plane = true,
            Long("hostname") => hostname = Some(value(parser)?),
            Long("login-server") => login_server = Some(value(parser)?),
            Long("extra-args") => extra_args = Some(value(parser)?),
            Long("coredns") => coredns = true,
            Long("tailnet") => tailnet = Some(value(parser)?),
            Long("cluster-domain") => cluster_domain = Some(value(parser)?),
            Long("coredns-image") => coredns_image = Some(value(parser)?),
            Long("authkey-stdin") => authkey_stdin = true,
            Long("coredns-manifests") => coredns_manifests = true,
            Long("authkey") | Long("auth-key") => {
                return Err(CliError::Usage(
                    "the auth key is never taken from the command line (shell history, /proc/*/cmdline): \
                     set TSBRIDGE_PATCH_AUTHKEY or TS_AUTHKEY, or pipe it in with --authkey-stdin"
                        .into(),
                ));
            }
            other => return Err(other.unexpected().into()),
        }
    }

    if coredns_manifests {
        if authkey_stdin {
            return Err(CliError::Usage(
                "--authkey-stdin is not used with --coredns-manifests: the CoreDNS objects hold no key".into(),
            ));
        }
        let tailnet = tailnet.ok_or_else(|| {
            CliError::Usage(
                "--coredns-manifests needs --tailnet SUFFIX (the tailnet's MagicDNS suffix, e.g. tail1234.ts.net)".into(),
            )
        })?;
        let c = core_dns(tailnet, cluster_domain, coredns_image);
        if services.is_empty() {
            services = talos::default_service_cidrs();
        }
        return write_stdout(&talos::render_coredns_manifests(&c, &services)?);
    }

    let talos = talos_version.ok_or_else(|| {
        CliError::Usage(
            "--talos-version is required (e.g. 1.13 or v1.14.0): the patch's schema depends on it"
                .into(),
        )
    })?;
    let mut o = PatchOptions::new(talos, lab);
    if let Some(path) = machine_config {
        if !pods.is_empty() || !services.is_empty() {
            return Err(CliError::Usage(
                "--machine-config sets the pod and service CIDRs from the cluster's configuration; drop --pod-cidr/--service-cidr, or --machine-config".into(),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::Usage(format!("--machine-config {path}: {e}")))?;
        let n = talos::machine_config::cluster_network(&text)
            .map_err(|e| CliError::Usage(format!("--machine-config {path}: {e}")))?;
        pods = n.pod_subnets;
        services = n.service_subnets;
    }
    if !pods.is_empty() {
        o.pod_cidrs = pods;
    }
    if !services.is_empty() {
        o.service_cidrs = services;
    }
    o.control_plane = control_plane;
    o.tags = tags;
    o.hostname = hostname;
    o.login_server = login_server;
    o.extra_args = extra_args;
    o.coredns = match (coredns, tailnet) {
        (true, Some(t)) => Some(core_dns(t, cluster_domain, coredns_image)),
        (true, None) => {
            return Err(CliError::Usage(
                "--coredns needs --tailnet SUFFIX (the tailnet's MagicDNS suffix, e.g. tail1234.ts.net)".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(CliError::Usage(
                "--tailnet is only used with --coredns; add --coredns or drop --tailnet".into(),
            ));
        }
        (false, None) => {
            if cluster_domain.is_some() || coredns_image.is_some() {
                return Err(CliError::Usage(
                    "--cluster-domain and --coredns-image are only used with --coredns".into(),
                ));
            }
            None
        }
    };
    o.auth_key = if authkey_stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            CliError::Usage(format!("--authkey-stdin: reading standard input: {e}"))
        })?;
        let key = Secret::new(text.trim().to_owned());
        if key.expose().is_empty() {
            return Err(CliError::Usage(
                "--authkey-stdin: standard input is empty; pipe the auth key in".into(),
            ));
        }
        Some(key)
    } else {
        AUTHKEY_VARS
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|k| !k.trim().is_empty()))
            .map(|k| Secret::new(k.trim().to_owned()))
    };
    // Read: clear the environment's copy too (no log here, and this process exits within
    // milliseconds, so a failure to clear is not worth a line on stderr).
    let _ = crate::environ::scrub(AUTHKEY_VARS);
    if o.auth_key.is_none() {
        eprintln!(
            "tsbridge: note: no auth key (TSBRIDGE_PATCH_AUTHKEY, TS_AUTHKEY or --authkey-stdin); the patch has no TS_AUTHKEY"
        );
    }

    write_stdout(&talos::render(&o)?)
}

fn core_dns(tailnet: String, domain: Option<String>, image: Option<String>) -> CoreDns {
    CoreDns {
        tailnet: tailnet.trim_end_matches('.').to_owned(),
        cluster_domain: domain.unwrap_or_else(|| talos::DEFAULT_CLUSTER_DOMAIN.into()),
        image: image.unwrap_or_else(|| talos::DEFAULT_COREDNS_IMAGE.into()),
    }
}

fn write_stdout(text: &str) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Usage(format!("writing the patch to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
