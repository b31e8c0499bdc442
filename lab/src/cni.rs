//! Pods attached to a node as flannel attaches them: flannel's CNI plugin delegates to the
//! CNI reference `bridge` plugin (bridge `cni0`, `host-local` IPAM) with a configuration it
//! builds from flanneld's `subnet.env` (flannel-io/cni-plugin `flannel_linux.go`,
//! `doCmdAdd`/`getDelegateIPAM`). The lab writes that delegate configuration and runs the
//! real reference plugins through the CNI protocol with `cnitool`.

use std::fs;
use std::net::Ipv4Addr;

use crate::{Error, Host, Lab, Ns, Result, err};

/// flannel's vxlan backend MTU on a 1500-byte network (`FLANNEL_MTU` in subnet.env).
pub const FLANNEL_MTU: u32 = 1450;

/// A pod the CNI plugins attached.
#[derive(Clone, Debug)]
pub struct CniPod {
    pub ns: Ns,
    /// The address host-local gave its `eth0`.
    pub addr: Ipv4Addr,
    /// cnitool's answer (the CNI result JSON).
    pub result: String,
}

impl Lab {
    /// Attaches a new pod namespace to `node` with the delegate configuration flannel's
    /// CNI plugin generates for Talos's `cni-conf.json` (`hairpinMode`,
    /// `isDefaultGateway`) under `flanneld --ip-masq`: `type: bridge`, `ipMasq: false`
    /// (flannel masquerades itself), `isGateway: true`, `mtu` 1450, host-local IPAM over
    /// the node's flannel `subnet`, a route to the `cluster` CIDR. The bridge is `cni0`.
    pub fn cni_pod(&self, node: &Host, subnet: &str, cluster: &str) -> Result<CniPod> {
        let (cnitool, plugins) = self.tools.cni()?;
        let dir = node.dir.join("cni");
        let conf_dir = dir.join("net.d");
        fs::create_dir_all(&conf_dir)
            .map_err(|e| Error(format!("mkdir {}: {e}", conf_dir.display())))?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "bridge",
            "hairpinMode": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "isGateway": true,
            "mtu": FLANNEL_MTU,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": cluster }],
                "dataDir": dir.join("ipam").display().to_string(),
            },
        });
        let path = conf_dir.join("10-flannel.conf");
        fs::write(&path, conf.to_string())
            .map_err(|e| Error(format!("write {}: {e}", path.display())))?;
        let ns = self.new_ns("cnipod")?;
        let netns = format!("/run/netns/{}", ns.name());
        let out = self.exec(
            &node.ns,
            &[
                "env",
                &format!("CNI_PATH={}", plugins.display()),
                &format!("NETCONFPATH={}", conf_dir.display()),
                &cnitool.display().to_string(),
                "add",
                "cbr0",
                &netns,
            ],
        )?;
        if !out.status.success() {
            return err(format!(
                "cnitool add cbr0 {netns}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let result = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&result)
            .map_err(|e| Error(format!("cnitool's result is not JSON ({e}): {result}")))?;
        let addr = v["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .next()
            .ok_or_else(|| Error(format!("no IPv4 address in cnitool's result: {result}")))?;
        self.enable_forwarding(node)?;
        Ok(CniPod { ns, addr, result })
    }
}
