#!/usr/bin/env bash
# The README's main job. Until the network-namespace lab lands, it shows the configuration
# check on the example node environment.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
log "checking the example node configuration (examples/lab.env)"
env -i bash -c 'set -a; . examples/lab.env; exec target/x86_64-unknown-linux-musl/release/tsbridge config'

log "lab: a pod behind a tsbridge node reaches a tailnet peer by address (v4, v6) and by MagicDNS name"
cargo test --locked --test egress_lab pod_reaches_peer_by_address_and_by_name -- --nocapture
