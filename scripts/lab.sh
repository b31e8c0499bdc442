#!/usr/bin/env bash
# The README's main job. Until the network-namespace lab lands, it shows the configuration
# check on the example node environment.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
log "checking the example node configuration (examples/lab.env)"
env -i bash -c 'set -a; . examples/lab.env; exec target/x86_64-unknown-linux-musl/release/tsbridge config'
