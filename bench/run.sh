#!/usr/bin/env bash
# `make bench`: tsbridge against containerboot in the network-namespace lab. Needs root,
# the release build (make build) and the pinned tools (scripts/tools.sh, containerboot included).
# Prints a table; writes bench/out/results.json and bench/out/RESULTS.md, and copies the
# latter to bench/RESULTS.md (commit it).
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
"$ROOT/scripts/tools.sh"
cargo bench --locked --bench lab
cp bench/out/RESULTS.md bench/RESULTS.md
log "results: bench/RESULTS.md (table), bench/out/results.json (raw)"
