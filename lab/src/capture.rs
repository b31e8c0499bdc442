//! Packet captures on lab links (tcpdump), to see what actually crosses a wire.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{Error, Lab, Ns, Proc, Result, err, wait_until};

/// A running capture; [`Lab::stop_capture`] ends it.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

/// What a capture saw.
pub struct Captured {
    pub file: PathBuf,
    bytes: Vec<u8>,
}

impl Captured {
    /// One summary line per packet matching the pcap `filter` (`tcpdump -r FILE -n FILTER`).
    pub fn packets(&self, filter: &str) -> Result<Vec<String>> {
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-n", filter])
            .output()
            .map_err(|e| Error(format!("tcpdump -r: {e}")))?;
        if !out.status.success() {
            return err(format!(
                "tcpdump -r {} {filter:?}: {}",
                self.file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Whether `needle` occurs anywhere in the captured bytes (a plaintext payload).
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }
}

impl Lab {
    /// Starts `tcpdump -i IFACE` in `ns`, whole packets written as they arrive; returns
    /// once tcpdump listens.
    pub fn capture(&self, ns: &Ns, iface: &str, name: &str) -> Result<Capture> {
        if crate::tools::which("tcpdump").is_none() {
            return err("`tcpdump` is not installed: run scripts/setup.sh");
        }
        let file = self.dir.join(format!("{name}.pcap"));
        let path = file.to_string_lossy().into_owned();
        let proc = self.spawn(
            ns,
            name,
            &[
                "tcpdump",
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
                &path,
            ],
            &[],
        )?;
        wait_until(Duration::from_secs(10), "tcpdump to listen", || {
            Ok(self.log(&proc).contains("listening on").then_some(()))
        })
        .map_err(|e| Error(format!("{e}: {}", self.log(&proc))))?;
        Ok(Capture { proc, file })
    }

    /// Ends a capture (SIGINT: tcpdump writes out what it has) and reads it.
    pub fn stop_capture(&self, c: Capture) -> Result<Captured> {
        if self
            .signal_and_wait(&c.proc, Signal::SIGINT, Duration::from_secs(10))
            .is_none()
        {
            return err(format!("tcpdump did not stop: {}", self.log(&c.proc)));
        }
        let bytes =
            fs::read(&c.file).map_err(|e| Error(format!("read {}: {e}", c.file.display())))?;
        Ok(Captured {
            file: c.file,
            bytes,
        })
    }
}
