#!/usr/bin/env bash
# The README's main job: a network-namespace lab with a real control server (headscale),
# a tailnet peer and a node running `tsbridge run` (the release binary); it shows the node
# joining step by step, a pod reaching the peer, then tears everything down. Needs root;
# run via `make lab`.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
[ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, veth, TUN)"
BIN=target/x86_64-unknown-linux-musl/release/tsbridge
[ -x "$BIN" ] || die "$BIN is missing: run make build"
log "building the lab driver (lab/)"
cargo build --locked -q -p tsbridge-lab --bin tsbridge-lab
log "starting the lab"
target/debug/tsbridge-lab demo --tsbridge "$BIN"

log "lab: a pod behind a tsbridge node reaches a tailnet peer by address (v4, v6) and by MagicDNS name"
cargo test --locked --test egress_lab pod_reaches_peer_by_address_and_by_name -- --nocapture
