//! The user-managed CoreDNS that `tsbridge patch --coredns` ships: Talos's own objects
//! and Corefile, plus a forward of the tailnet zone to MagicDNS.

use std::fmt::Write as _;

use super::yaml::{block, q};
use crate::net::Cidr;

/// Talos v1.14's default CoreDNS image (`constants.CoreDNSImage:DefaultCoreDNSVersion`).
pub const DEFAULT_COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.14.6";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// MagicDNS: answers tailnet names for any source address (FACTS.md section 5).
pub const MAGICDNS: &str = "100.100.100.100";

/// The "disable and replace" CoreDNS with a forward of the tailnet zone to MagicDNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreDns {
    /// The tailnet's MagicDNS suffix, e.g. `tail1234.ts.net`.
    pub tailnet: String,
    pub cluster_domain: String,
    pub image: String,
}

/// The Corefile: the tailnet zone to MagicDNS, everything else as Talos's default Corefile.
pub fn corefile(c: &CoreDns) -> String {
    let t = &c.tailnet;
    let d = &c.cluster_domain;
    format!(
        "{t}:53 {{
    errors
    cache 30
    forward . {MAGICDNS}
}}
.:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    log . {{
        class error
    }}
    prometheus :9153
    kubernetes {d} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . /etc/resolv.conf {{
        max_concurrent 1000
    }}
    cache 30 {{
        disable success {d}
        disable denial {d}
    }}
    loop
    reload
    loadbalance
}}
"
    )
}

/// The user-managed CoreDNS: the same object names as Talos's own (so it takes them over in
/// a running cluster), with the tailnet forward in its Corefile.
pub fn coredns_manifest(c: &CoreDns, service_cidrs: &[Cidr], dns: &[String]) -> String {
    let families: Vec<&str> = service_cidrs
        .iter()
        .map(|s| if s.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let policy = if dns.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut m = String::new();
    m.push_str(
        "apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
  labels:
    kubernetes.io/bootstrapping: rbac-defaults
rules:
  - apiGroups: [\"\"]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
  labels:
    kubernetes.io/bootstrapping: rbac-defaults
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
  - kind: ServiceAccount
    name: coredns
    namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
",
    );
    m.push_str(&block(&corefile(c), 4));
    let _ = write!(
        m,
        "---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    kubernetes.io/name: CoreDNS
spec:
  replicas: 2
  selector:
    matchLabels:
      k8s-app: kube-dns
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 1
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      nodeSelector:
        kubernetes.io/os: linux
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    k8s-app: kube-dns
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          operator: Exists
          effect: NoSchedule
        - key: node.cloudprovider.kubernetes.io/uninitialized
          operator: Exists
          effect: NoSchedule
      containers:
        - name: coredns
          image: {image}
          imagePullPolicy: IfNotPresent
          args: [-conf, /etc/coredns/Corefile]
          env:
            - name: GOMEMLIMIT
              value: 161MiB
          resources:
            limits:
              memory: 170Mi
            requests:
              cpu: 100m
              memory: 70Mi
          ports:
            - name: dns
              containerPort: 53
              protocol: UDP
            - name: dns-tcp
              containerPort: 53
              protocol: TCP
            - name: metrics
              containerPort: 9153
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /health
              port: 8080
              scheme: HTTP
            initialDelaySeconds: 60
            timeoutSeconds: 5
            successThreshold: 1
            failureThreshold: 5
          readinessProbe:
            httpGet:
              path: /ready
              port: 8181
              scheme: HTTP
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              add: [NET_BIND_SERVICE]
              drop: [ALL]
          volumeMounts:
            - name: config-volume
              mountPath: /etc/coredns
              readOnly: true
      volumes:
        - name: config-volume
          configMap:
            name: coredns
            items:
              - key: Corefile
                path: Corefile
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    kubernetes.io/cluster-service: \"true\"
    kubernetes.io/name: CoreDNS
  annotations:
    prometheus.io/port: \"9153\"
    prometheus.io/scrape: \"true\"
spec:
  selector:
    k8s-app: kube-dns
  clusterIP: {first}
  clusterIPs: [{ips}]
  ipFamilies: [{families}]
  ipFamilyPolicy: {policy}
  ports:
    - name: dns
      port: 53
      protocol: UDP
      targetPort: 53
    - name: dns-tcp
      port: 53
      protocol: TCP
      targetPort: 53
    - name: metrics
      port: 9153
      protocol: TCP
      targetPort: 9153
",
        image = q(&c.image),
        first = q(&dns[0]),
        ips = dns.iter().map(|d| q(d)).collect::<Vec<_>>().join(", "),
        families = families.join(", "),
    );
    m
}

#[cfg(test)]
impl CoreDns {
    /// The options most tests use: a tailnet suffix and Talos's defaults.
    pub(crate) fn example() -> CoreDns {
        CoreDns {
            tailnet: "tail1234.ts.net".into(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            image: DEFAULT_COREDNS_IMAGE.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corefile_forwards_tailnet_and_keeps_talos_defaults() {
        let mut c = CoreDns::example();
        c.cluster_domain = "k8s.example".into();
        let f = corefile(&c);
        assert!(f.starts_with("tail1234.ts.net:53 {\n"));
        assert!(f.contains("    kubernetes k8s.example in-addr.arpa ip6.arpa {\n"));
        assert!(f.contains("    forward . /etc/resolv.conf {\n"));
        assert!(f.contains("        disable success k8s.example\n"));
        assert_eq!(f.matches('{').count(), f.matches('}').count());
    }
}
