//! An HTTP proxy on its own lab host: Debian's tinyproxy (`tinyproxy-bin`, installed by
//! scripts/setup.sh), as a node behind a corporate proxy would use.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Error, Host, LAN_CIDR, Lab, Proc, Result, err, in_ns, tail, wait_until};

/// The proxy's port.
pub const PROXY_PORT: u16 = 8888;

/// A running proxy.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub host: Host,
    pub proc: Proc,
    /// `http://[user:password@]ADDR:PORT`, as a client's `HTTPS_PROXY`.
    pub url: String,
}

impl Lab {
    /// Starts tinyproxy on a new host `role`, open to the lab network, requiring
    /// `credentials` (user, password; Basic authentication) when given. Its log (one line
    /// per request and CONNECT) is [`Lab::log`] of [`Proxy::proc`].
    pub fn http_proxy(&self, role: &str, credentials: Option<(&str, &str)>) -> Result<Proxy> {
        let host = self.host(role)?;
        let conf = host.dir.join("tinyproxy.conf");
        let mut text = format!(
            "Port {PROXY_PORT}\nListen {}\nTimeout 60\nMaxClients 64\nLogLevel Connect\n\
             Allow {LAN_CIDR}\nDisableViaHeader Yes\n",
            host.lan_addr
        );
        if let Some((user, password)) = credentials {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(&conf, text).map_err(|e| Error(format!("write {}: {e}", conf.display())))?;
        let conf = conf.display().to_string();
        // -d: in the foreground, logging to stderr (the lab's log file).
        let proc = self.spawn(
            &host.ns,
            "tinyproxy",
            &["tinyproxy", "-d", "-c", &conf],
            &[],
        )?;
        let addr = SocketAddr::from((host.lan_addr, PROXY_PORT));
        wait_until(Duration::from_secs(10), "tinyproxy to listen", || {
            if let Some(st) = self.try_wait(&proc) {
                return err(format!(
                    "tinyproxy exited ({st}): {}",
                    tail(&self.log(&proc), 20)
                ));
            }
            Ok(in_ns(&host.ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .then_some(()))
        })?;
        let auth = credentials.map_or(String::new(), |(u, p)| format!("{u}:{p}@"));
        Ok(Proxy {
            url: format!("http://{auth}{addr}"),
            host,
            proc,
        })
    }
}
