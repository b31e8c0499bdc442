#!/usr/bin/env bash
# Checks dist/extension/ and every `tsbridge patch` output with Talos's own Go code
# (tests/talos: pkg/machinery pinned in go.mod and go.v113.mod, both run) and the
# Kubernetes API types.
# Needs `make build` and `make extension` first.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

BIN="$ROOT/target/x86_64-unknown-linux-musl/release/tsbridge"
# The extension tree to check (dist/extension unless TSBRIDGE_EXTENSION_DIR names another).
EXT=${TSBRIDGE_EXTENSION_DIR:-$ROOT/dist/extension}
[ -x "$BIN" ] || die "$BIN is missing: run \`make build\` first"
[ -f "$EXT/manifest.yaml" ] || die "$EXT is missing: run \`make extension\` first"
export TSBRIDGE_EXTENSION_DIR="$EXT" TSBRIDGE_BIN="$BIN"

cd tests/talos
machinery=github.com/siderolabs/talos/pkg/machinery
# talos_go_test VERSION MODFILE [FLAGS...]: the checks with that pin (see tests/talos/talos_test.go)
talos_go_test() {
  go_pin "$2" "$machinery" "$1"
  log "tests/talos with $machinery $1 ($2)"
  go test -count=1 -v -modfile="$2" "${@:3}" ./... 2>&1 | grep -v '^=== RUN'
  [ "${PIPESTATUS[0]}" = 0 ] || die "tests/talos failed with $machinery $1"
}
talos_go_test "$TALOS_MACHINERY_VERSION" go.mod
talos_go_test "$TALOS_MACHINERY_V1ALPHA1_VERSION" go.v113.mod -tags talos113
