//! The real binaries a lab runs, and whether this machine can run a lab at all.

use std::path::{Path, PathBuf};

use crate::{Result, err};

/// Paths of the real binaries the lab runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub tailscale: PathBuf,
    pub tailscaled: PathBuf,
    pub headscale: PathBuf,
    /// wireguard-go (binary `wireguard`), for KubeSpan in the lab.
    pub wireguard: PathBuf,
    /// `promtool check metrics`'s checker (tests/promcheck), see [`Tools::check_metrics`].
    pub promcheck: PathBuf,
    /// containerboot, what the official Talos extension (siderolabs/tailscale) runs.
    /// Checked when a lab runs it ([`Tools::containerboot`]): `make lab` does not need it.
    containerboot: PathBuf,
    /// The real CoreDNS (the lab's cluster DNS, `dns.rs`); checked when a lab runs it
    /// ([`Tools::coredns`]).
    coredns: PathBuf,
    /// The directory of the pinned tools: the CNI reference plugins (`bridge`,
    /// `host-local`) and `cnitool`, checked when a lab attaches a pod with them
    /// ([`Tools::cni`]).
    bin: PathBuf,
    /// The tsbridge binary under test (tests pass `env!("CARGO_BIN_EXE_tsbridge")`).
    pub tsbridge: PathBuf,
}

impl Tools {
    /// The pinned tools from `$TSBRIDGE_TOOLS_BIN` or the workspace's `.tools/bin`
    /// (`make tools`), and the given tsbridge binary. A missing tool is an error naming the
    /// command that provides it: tests must not silently skip.
    pub fn find(tsbridge: impl Into<PathBuf>) -> Result<Tools> {
        let bin = std::env::var_os("TSBRIDGE_TOOLS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin"));
        let bin = bin.canonicalize().unwrap_or(bin);
        let tool = |name: &str| built(bin.join(name));
        let tsbridge = tsbridge.into();
        if !tsbridge.is_file() {
            return err(format!("tsbridge binary {} is missing", tsbridge.display()));
        }
        for cmd in ["ip", "ping"] {
            if which(cmd).is_none() {
                return err(format!(
                    "`{cmd}` is not installed: run scripts/setup.sh (packages iproute2, iputils-ping)"
                ));
            }
        }
        Ok(Tools {
            tailscale: tool("tailscale")?,
            tailscaled: tool("tailscaled")?,
            headscale: tool("headscale")?,
            wireguard: tool("wireguard")?,
            promcheck: tool("promcheck")?,
            containerboot: bin.join("containerboot"),
            coredns: bin.join("coredns"),
            bin: bin.clone(),
            tsbridge,
        })
    }
}

impl Tools {
    /// Checks a Prometheus text exposition with Prometheus's own parser and linter (what
    /// `promtool check metrics` runs); the error carries promcheck's complaints.
    pub fn check_metrics(&self, exposition: &str) -> Result<()> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(&self.promcheck)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| crate::Error(format!("{}: {e}", self.promcheck.display())))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| crate::Error("promcheck: no stdin".into()))?;
        let written = stdin.write_all(exposition.as_bytes());
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| crate::Error(format!("promcheck: {e}")))?;
        written.map_err(|e| crate::Error(format!("promcheck stdin: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            err(format!(
                "promcheck rejects the exposition: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// containerboot's path; an error naming the command that builds it when missing.
    pub fn containerboot(&self) -> Result<PathBuf> {
        built(self.containerboot.clone())
    }

    /// `cnitool` and the directory holding the CNI plugins it runs (`CNI_PATH`); an error
    /// naming the command that builds them when one is missing.
    pub fn cni(&self) -> Result<(PathBuf, PathBuf)> {
        for p in ["bridge", "host-local"] {
            built(self.bin.join(p))?;
        }
        Ok((built(self.bin.join("cnitool"))?, self.bin.clone()))
    }

    /// CoreDNS's path; an error naming the command that builds it when missing.
    pub fn coredns(&self) -> Result<PathBuf> {
        built(self.coredns.clone())
    }
}

/// `p` if it is there, else an error naming the command that builds the pinned tools.
fn built(p: PathBuf) -> Result<PathBuf> {
    if p.is_file() {
        Ok(p)
    } else {
        err(format!(
            "{} is missing: run `make tools` (or scripts/setup.sh) first",
            p.display()
        ))
    }
}

pub(crate) fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Checks the lab can run here: root, and the tools present.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return err("the lab needs root (network namespaces, veth, TUN): run the tests as root");
    }
    if !Path::new("/dev/net/tun").exists() {
        return err("/dev/net/tun is missing: tailscaled needs the TUN driver");
    }
    Ok(())
}
