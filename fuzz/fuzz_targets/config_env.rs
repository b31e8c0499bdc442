//! The environment parser (`tsbridge::config::load`) on arbitrary environments: it must
//! never panic, never show an auth key in a problem or warning, and never accept a
//! key-shaped argument.
//!
//! Input: lines. A line starting with a byte below 0x20 names a known variable by that byte
//! (so the fuzzer reaches every variable quickly), the rest of the line is its value;
//! other lines are `KEY=VALUE`. Bytes need not be UTF-8.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const KNOWN: &[&str] = &[
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_EXTRA_ARGS",
    "TS_TAILSCALED_EXTRA_ARGS",
    "TS_STATE_DIR",
    "TS_SOCKET",
    "TS_HOSTNAME",
    "TS_ROUTES",
    "TS_ACCEPT_DNS",
    "TS_AUTH_ONCE",
    "TS_USERSPACE",
    "TS_LOCAL_ADDR_PORT",
    "TS_ENABLE_METRICS",
    "TS_ENABLE_HEALTH_CHECK",
    "TSBRIDGE_LAB_SUBNETS",
    "TSBRIDGE_POD_CIDRS",
    "TSBRIDGE_SERVICE_CIDRS",
    "TSBRIDGE_SNAT",
    "TSBRIDGE_MSS_CLAMP",
    "TSBRIDGE_LISTEN",
    "TSBRIDGE_LOG_FORMAT",
    "TSBRIDGE_LOG_LEVEL",
    "TSBRIDGE_TAILSCALED",
    "TSBRIDGE_TAILSCALE",
    "TS_DEBUG_FIREWALL_MODE",
    "TS_DEST_IP",
    "TS_KUBE_SECRET",
];

fuzz_target!(|data: &[u8]| {
    let mut env = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(&first) = line.first() else { continue };
        let (k, v) = if first < 0x20 {
            (
                KNOWN[usize::from(first) % KNOWN.len()].as_bytes().to_vec(),
                line[1..].to_vec(),
            )
        } else {
            match line.iter().position(|&b| b == b'=') {
                Some(i) => (line[..i].to_vec(), line[i + 1..].to_vec()),
                None => (line.to_vec(), Vec::new()),
            }
        };
        env.push((OsString::from_vec(k), OsString::from_vec(v)));
    }
    let loaded = tsbridge::config::load(env, Path::new("/usr/local/bin"));
    common::assert_no_key_shown(&common::shown(&loaded));
    common::assert_no_key_in_args(&loaded);
});
