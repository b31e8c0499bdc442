//! The control server: headscale on its own lab host, its users, keys and nodes.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{
    BASE_DOMAIN, CONTROL_PORT, Error, Host, LAB_TAGS, LAB_USER, Lab, Proc, Result, err, tail,
    wait_until,
};

/// The control server: headscale on its own host.
#[derive(Clone, Debug)]
pub struct Control {
    pub host: Host,
    /// `http://192.168.77.1:8080`, the `--login-server` for clients.
    pub url: String,
    pub config: PathBuf,
    pub proc: Proc,
    /// The id of [`LAB_USER`].
    pub user_id: u64,
    /// For an HTTPS control server ([`Lab::control_https`]): a directory holding the
    /// lab's CA as `ca-certificates.crt`, to be a client's `/etc/ssl/certs`.
    pub certs_dir: Option<PathBuf>,
}

impl Control {
    /// What a plain tailscaled needs in its environment to use this control server and
    /// its embedded DERP: DERP over plain HTTP for an HTTP control server (the DERP has
    /// no TLS then), the lab's CA (`SSL_CERT_FILE`) for an HTTPS one.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Lab::tailscaled_env()
            .into_iter()
            .filter(|(k, _)| self.certs_dir.is_none() || *k != "TS_DEBUG_USE_DERP_HTTP")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if let Some(d) = &self.certs_dir {
            env.push((
                "SSL_CERT_FILE".into(),
                d.join("ca-certificates.crt").display().to_string(),
            ));
        }
        env
    }
}

/// A pre-auth key minted by headscale. The key is a test secret: it is given to tsbridge
/// through its environment, as a user would.
#[derive(Clone)]
pub struct AuthKey {
    pub id: u64,
    pub key: String,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey {{ id: {}, key: [redacted] }}", self.id)
    }
}

impl Lab {
    /// Starts headscale on a new host `ctl` (192.168.77.1 when created first), waits until
    /// it answers, and creates [`LAB_USER`].
    pub fn control(&self) -> Result<Control> {
        self.start_control(false)
    }

    /// Like [`Lab::control`], but headscale serves HTTPS (and its DERP over TLS) with a
    /// certificate for its address signed by nothing but itself; clients trust it through
    /// [`Control::certs_dir`] or [`Control::client_env`]. A real control server is HTTPS,
    /// and only HTTPS passes a plain HTTP proxy (CONNECT): the Noise upgrade of a plain
    /// HTTP control server does not survive one.
    pub fn control_https(&self) -> Result<Control> {
        self.start_control(true)
    }

    fn start_control(&self, https: bool) -> Result<Control> {
        let host = self.host("ctl")?;
        let dir = &host.dir;
        let addr = host.lan_addr;
        let scheme = if https { "https" } else { "http" };
        let url = format!("{scheme}://{addr}:{CONTROL_PORT}");
        let (tls, certs_dir) = if https {
            let certs = dir.join("certs");
            self.self_signed_cert(&host, &certs)?;
            (
                format!(
                    "tls_cert_path: {c}/ca-certificates.crt\ntls_key_path: {c}/key.pem\n",
                    c = certs.display()
                ),
                Some(certs),
            )
        } else {
            (String::new(), None)
        };
        let policy = dir.join("policy.json");
        let owners: BTreeMap<&str, Vec<String>> = LAB_TAGS
            .iter()
            .map(|t| (*t, vec![format!("{LAB_USER}@")]))
            .collect();
        let policy_doc = serde_json::json!({
            "tagOwners": owners,
            "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
        });
        fs::write(&policy, policy_doc.to_string())
            .map_err(|e| Error(format!("write {}: {e}", policy.display())))?;
        let d = dir.display();
        let config = format!(
            r#"server_url: {url}
listen_addr: {addr}:{CONTROL_PORT}
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: lab
    region_name: Lab DERP
    verify_clients: true
    stun_listen_addr: {addr}:3478
    private_key_path: {d}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: {addr}
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: {policy}
dns:
  magic_dns: true
  base_domain: {BASE_DOMAIN}
  override_local_dns: false
  nameservers:
    global: []
    split: {{}}
unix_socket: {d}/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
{tls}"#,
            policy = policy.display()
        );
        let config_path = dir.join("headscale.yaml");
        fs::write(&config_path, config)
            .map_err(|e| Error(format!("write {}: {e}", config_path.display())))?;
        let hs = self.tools.headscale.to_string_lossy().into_owned();
        let cfg = config_path.to_string_lossy().into_owned();
        let proc = self.spawn(&host.ns, "headscale", &[&hs, "serve", "-c", &cfg], &[])?;
        let mut control = Control {
            host,
            url,
            config: config_path,
            proc,
            user_id: 0,
            certs_dir,
        };
        let sock = control.host.dir.join("headscale.sock");
        wait_until(Duration::from_secs(30), "headscale to listen", || {
            if let Some(st) = self.try_wait(&control.proc) {
                return Err(Error(format!(
                    "headscale exited ({st}): {}",
                    tail(&self.log(&control.proc), 20)
                )));
            }
            Ok(sock.exists().then_some(()))
        })?;
        control.user_id = self.create_user(&control, LAB_USER)?;
        Ok(control)
    }

    /// A key and a self-signed certificate for `host`'s address in `dir` (`key.pem`,
    /// `ca-certificates.crt`: the certificate is its own CA).
    fn self_signed_cert(&self, host: &Host, dir: &std::path::Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error(format!("mkdir {}: {e}", dir.display())))?;
        let key = dir.join("key.pem").display().to_string();
        let cert = dir.join("ca-certificates.crt").display().to_string();
        let san = format!("subjectAltName=IP:{}", host.lan_addr);
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=tsbridge-lab-control",
                "-addext",
                &san,
                "-keyout",
                &key,
                "-out",
                &cert,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("openssl (package openssl, scripts/setup.sh): {e}")))?;
        if !out.status.success() {
            return err(format!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Runs the headscale CLI against the lab's control server; returns its stdout.
    pub fn headscale(&self, control: &Control, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.tools.headscale)
            .arg("-c")
            .arg(&control.config)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("headscale {args:?}: {e}")))?;
        if !out.status.success() {
            return err(format!(
                "headscale {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn headscale_json(&self, control: &Control, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.headscale(control, &a)?;
        serde_json::from_str(&text)
            .map_err(|e| Error(format!("headscale {args:?}: not JSON ({e}): {text}")))
    }

    /// Creates a headscale user; returns its id.
    pub fn create_user(&self, control: &Control, name: &str) -> Result<u64> {
        let v = self.headscale_json(control, &["users", "create", name])?;
        json_id(&v).ok_or_else(|| Error(format!("headscale users create: no id in {v}")))
    }

    /// Mints a pre-auth key for `user_id` (like the real set-up's create step: short-lived).
    /// `expiration` like `10m`; `tags` like `["tag:lab"]`.
    pub fn preauth_key(
        &self,
        control: &Control,
        user_id: u64,
        expiration: &str,
        reusable: bool,
        tags: &[&str],
    ) -> Result<AuthKey> {
        let uid = user_id.to_string();
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            &uid,
            "--expiration",
            expiration,
        ];
        if reusable {
            args.push("--reusable");
        }
        let tags_joined = tags.join(",");
        if !tags.is_empty() {
            args.extend(["--tags", &tags_joined]);
        }
        let v = self.headscale_json(control, &args)?;
        let key = v
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| Error("headscale preauthkeys create: no key in the answer".into()))?;
        let id = json_id(&v).unwrap_or(0);
        Ok(AuthKey {
            id,
            key: key.to_owned(),
        })
    }

    /// Expires a pre-auth key now (an "expired key" for tests).
    pub fn expire_key(&self, control: &Control, key: &AuthKey) -> Result<()> {
        self.headscale(
            control,
            &["preauthkeys", "expire", "--id", &key.id.to_string()],
        )
        .map(|_| ())
    }

    /// headscale's node list (JSON array).
    pub fn nodes(&self, control: &Control) -> Result<Vec<serde_json::Value>> {
        let v = self.headscale_json(control, &["nodes", "list"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// headscale's id of the node with this hostname (`given_name` or `name`).
    pub fn node_id(&self, control: &Control, hostname: &str) -> Result<u64> {
        let nodes = self.nodes(control)?;
        nodes
            .iter()
            .find(|n| n["given_name"] == hostname || n["name"] == hostname)
            .and_then(json_id)
            .ok_or_else(|| Error(format!("headscale knows no node {hostname:?}")))
    }

    /// Approves advertised subnet routes of a node (`headscale nodes approve-routes`).
    pub fn approve_routes(&self, control: &Control, hostname: &str, routes: &[&str]) -> Result<()> {
        let id = self.node_id(control, hostname)?.to_string();
        let routes = routes.join(",");
        self.headscale(
            control,
            &[
                "nodes",
                "approve-routes",
                "--identifier",
                &id,
                "--routes",
                &routes,
            ],
        )
        .map(|_| ())
    }
}

fn json_id(v: &serde_json::Value) -> Option<u64> {
    match v.get("id")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
