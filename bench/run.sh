#!/usr/bin/env bash
# `make bench`: tsbridge against containerboot in the network-namespace lab. Needs root,
# the release build (make build) and the pinned tools (scripts/tools.sh, containerboot included).
# Prints a table; writes bench/out/results.json and bench/out/RESULTS.md (and each
# daemon's log under bench/out/logs/), and copies the first two to bench/ (commit them).
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
"$ROOT/scripts/tools.sh"
cargo bench --locked --bench lab
cp bench/out/RESULTS.md bench/RESULTS.md
cp bench/out/results.json bench/results.json
log "results: bench/RESULTS.md (table and goals), bench/results.json (raw)"
