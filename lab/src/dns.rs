//! A cluster DNS in the lab: the real CoreDNS running as a Kubernetes pod would, reached at
//! a service address through a DNAT on the node (what kube-proxy does for `kube-dns`), with
//! an upstream resolver behind it that knows no tailnet names (as the Internet's DNS).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use crate::{Error, Host, Lab, Ns, Pod, Proc, Result, in_ns, wait_until};

/// Runs CoreDNS the way a Kubernetes pod gets it: a private `/run` with a service-account
/// token (the `kubernetes` plugin reads it at start), the Corefile as a mounted file. The
/// API server it is pointed at does not exist: the plugin waits for it (5 s) and serves
/// anyway, which is all the tailnet zone needs. `ip netns exec` gives the process its own
/// mount namespace, so nothing of this reaches the machine.
const POD_SCRIPT: &str = r#"set -e
mount -t tmpfs -o size=1m,mode=0755 tsbridge-lab-pod /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount /run/coredns
printf 'tsbridge-lab\n' > /run/secrets/kubernetes.io/serviceaccount/token
printf '%s' "$COREFILE" > /run/coredns/Corefile
exec "$COREDNS" -conf /run/coredns/Corefile
"#;

impl Lab {
    /// Starts the real CoreDNS in `ns` with `corefile`; `as_pod` runs it as in a
    /// Kubernetes pod (see [`POD_SCRIPT`]). Returns once it answers DNS on `probe`.
    pub fn start_coredns(
        &self,
        ns: &Ns,
        name: &str,
        corefile: &str,
        as_pod: bool,
        probe: IpAddr,
    ) -> Result<Proc> {
        let bin = self.tools.coredns()?.to_string_lossy().into_owned();
        let p = if as_pod {
            self.spawn(
                ns,
                name,
                &["sh", "-c", POD_SCRIPT],
                &[
                    ("COREFILE", corefile),
                    ("COREDNS", &bin),
                    ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                    ("KUBERNETES_SERVICE_PORT", "6443"),
                ],
            )?
        } else {
            let file = self.dir.join(format!("{name}.Corefile"));
            std::fs::write(&file, corefile)
                .map_err(|e| Error(format!("write {}: {e}", file.display())))?;
            let conf = file.to_string_lossy().into_owned();
            self.spawn(ns, name, &[&bin, "-conf", &conf], &[])?
        };
        let what = format!("CoreDNS {name} to answer on {probe}:53");
        wait_until(Duration::from_secs(30), &what, || {
            if let Some(st) = self.try_wait(&p) {
                return Err(Error(format!(
                    "CoreDNS {name} exited ({st}):\n{}",
                    crate::tail(&self.log(&p), 20)
                )));
            }
            Ok(dns_answers(ns, SocketAddr::new(probe, 53)).then_some(()))
        })?;
        Ok(p)
    }

    /// Sets the resolver `ip netns exec` shows processes in `ns` as /etc/resolv.conf.
    pub fn set_resolver(&self, ns: &Ns, server: IpAddr) -> Result<()> {
        let f = Path::new("/etc/netns").join(ns.name()).join("resolv.conf");
        std::fs::write(&f, format!("nameserver {server}\n"))
            .map_err(|e| Error(format!("write {}: {e}", f.display())))
    }

    /// Makes `service` on `node` reach DNS (UDP and TCP 53) on `pod`, as kube-proxy makes
    /// the kube-dns Service address reach a CoreDNS pod: a route for the address and a DNAT
    /// for the node's own packets and forwarded ones (nft table `ip tsbridge-lab-svc`).
    pub fn dns_service(&self, node: &Host, pod: &Pod, service: Ipv4Addr) -> Result<()> {
        let backend = pod.addr_v4;
        let rules = format!(
            "table ip tsbridge-lab-svc {{
  chain output {{
    type nat hook output priority -100;
    ip daddr {service} meta l4proto {{ tcp, udp }} th dport 53 dnat to {backend}
  }}
  chain prerouting {{
    type nat hook prerouting priority -100;
    ip daddr {service} meta l4proto {{ tcp, udp }} th dport 53 dnat to {backend}
  }}
}}
"
        );
        let file = self.dir.join(format!("{}-svc.nft", node.role));
        std::fs::write(&file, rules)
            .map_err(|e| Error(format!("write {}: {e}", file.display())))?;
        self.exec_ok(&node.ns, &["nft", "-f", &file.to_string_lossy()])?;
        self.exec_ok(
            &node.ns,
            &[
                "ip",
                "route",
                "replace",
                &format!("{service}/32"),
                "dev",
                &pod.node_if,
            ],
        )?;
        Ok(())
    }
}

/// Whether a DNS server answers at `server` from inside `ns` (any answer, any rcode).
pub fn dns_answers(ns: &Ns, server: SocketAddr) -> bool {
    in_ns(ns, move || {
        let Ok(sock) = UdpSocket::bind(if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
        // A query for `probe.` type A, id 0x7ab5.
        let q = [
            0x7a, 0xb5, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'p', b'r', b'o', b'b', b'e', 0, 0, 1, 0,
            1,
        ];
        let mut buf = [0u8; 512];
        sock.send_to(&q, server).is_ok()
            && sock
                .recv(&mut buf)
                .is_ok_and(|n| n >= 12 && buf[..2] == [0x7a, 0xb5])
    })
}
