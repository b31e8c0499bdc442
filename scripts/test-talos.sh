#!/usr/bin/env bash
# Checks dist/extension/ and every `tsbridge patch` output with Talos's own Go code
# (tests/talos: pkg/machinery pinned in its go.mod) and the Kubernetes API types.
# Needs `make build` and `make extension` first.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

BIN="$ROOT/target/x86_64-unknown-linux-musl/release/tsbridge"
[ -x "$BIN" ] || die "$BIN is missing: run \`make build\` first"
[ -f dist/extension/manifest.yaml ] || die "dist/extension is missing: run \`make extension\` first"

cd tests/talos
TSBRIDGE_EXTENSION_DIR="$ROOT/dist/extension" TSBRIDGE_BIN="$BIN" go test -count=1 -v ./... 2>&1 |
  grep -v '^=== RUN'
exit "${PIPESTATUS[0]}"
