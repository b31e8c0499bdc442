//! The real binaries a lab runs, and whether this machine can run a lab at all.

use std::path::{Path, PathBuf};

use crate::{Result, err};

/// Paths of the real binaries the lab runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub tailscale: PathBuf,
    pub tailscaled: PathBuf,
    pub headscale: PathBuf,
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
        let tool = |name: &str| -> Result<PathBuf> {
            let p = bin.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                err(format!(
                    "{} is missing: run `make tools` (or scripts/setup.sh) first",
                    p.display()
                ))
            }
        };
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
            tsbridge,
        })
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
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
