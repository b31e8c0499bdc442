#!/usr/bin/env bash
# Checks both extension trees (dist/extension-amd64/, dist/extension-arm64/) and every
# `tsbridge patch` output with Talos's own Go code (tests/talos: pkg/machinery pinned in
# go.mod and go.v113.mod, both run) and the Kubernetes API types. The whole package runs
# against the amd64 tree; TestExtension runs again against the arm64 tree.
# Needs `make build` and `make extension` first.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

BIN="$ROOT/target/x86_64-unknown-linux-musl/release/tsbridge"
# The extension trees to check (dist/extension-amd64 and -arm64 unless
# TSBRIDGE_EXTENSION_DIR names one other tree).
if [ -n "${TSBRIDGE_EXTENSION_DIR:-}" ]; then
  EXTS=("$TSBRIDGE_EXTENSION_DIR")
else
  EXTS=()
  for arch in "${ARCHES[@]}"; do EXTS+=("$ROOT/dist/extension-$arch"); done
fi
[ -x "$BIN" ] || die "$BIN is missing: run \`make build\` first"
for ext in "${EXTS[@]}"; do
  [ -f "$ext/manifest.yaml" ] || die "$ext is missing: run \`make extension\` first"
done
export TSBRIDGE_EXTENSION_DIR="${EXTS[0]}" TSBRIDGE_BIN="$BIN"

cd tests/talos
machinery=github.com/siderolabs/talos/pkg/machinery
# talos_go_test VERSION MODFILE [FLAGS...]: the checks with that pin (see tests/talos/talos_test.go)
talos_go_test() {
  go_pin "$2" "$machinery" "$1"
  log "tests/talos with $machinery $1 ($2), extension $TSBRIDGE_EXTENSION_DIR"
  go test -count=1 -v -modfile="$2" "${@:3}" ./... 2>&1 | grep -v '^=== RUN'
  [ "${PIPESTATUS[0]}" = 0 ] || die "tests/talos failed with $machinery $1"
  local ext
  for ext in "${EXTS[@]:1}"; do
    log "tests/talos TestExtension with $machinery $1 ($2), extension $ext"
    TSBRIDGE_EXTENSION_DIR="$ext" go test -count=1 -v -modfile="$2" "${@:3}" -run '^TestExtension$' ./... 2>&1 | grep -v '^=== RUN'
    [ "${PIPESTATUS[0]}" = 0 ] || die "tests/talos TestExtension failed with $machinery $1 on $ext"
  done
}
talos_go_test "$TALOS_MACHINERY_VERSION" go.mod
talos_go_test "$TALOS_MACHINERY_V1ALPHA1_VERSION" go.v113.mod -tags talos113
