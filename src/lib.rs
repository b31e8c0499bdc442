//! tsbridge: puts a Talos node on the tailnet and makes the tailnet usable from its pods.
//!
//! The library holds everything; `main.rs` only dispatches. Pure planning lives in plain
//! functions over plain data; kernel and process effects are small adapters.

pub mod backoff;
pub mod check;
pub mod cli;
pub mod config;
pub mod dns;
pub mod egress;
pub mod environ;
pub mod health;
pub mod join;
pub mod localapi;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reaper;
pub mod run;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod status;
pub mod supervisor;
pub mod tailscaled;
pub mod talos;
