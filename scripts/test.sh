#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run). Stops at the first failing stage.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

stage() { log "stage: $*"; }

stage "set-up on a cold machine (new artifact cache) and the package list"
scripts/test-cold.sh

stage "format and lint"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

stage "static release build"
make --no-print-directory build

stage "unit and integration tests (the lab tests need root, network namespaces and the tools from scripts/setup.sh)"
[ "$(id -u)" = 0 ] || die "the integration tests build network namespaces: run as root"
cargo test --locked --workspace

stage "Talos extension image (reproducible OCI archive, read by skopeo)"
scripts/tools.sh tailscale
scripts/extension.sh
scripts/test-extension.sh

stage "extension and tsbridge patch checked by Talos's own Go code"
scripts/test-talos.sh

stage "QEMU: a real kernel boots and runs dist/extension/ as Talos would"
tests/qemu/run.sh

# Long mode (`make test-long`, TSBRIDGE_LONG=1): slow suites that CI's default run skips.
if [ "${TSBRIDGE_LONG:-0}" = 1 ]; then
  stage "fuzzing (long mode, ${TSBRIDGE_FUZZ_SECONDS:-60}s per target)"
  scripts/fuzz.sh
  stage "fault suites in the lab (long mode: the default run did one iteration of each)"
  TSBRIDGE_FAULT_LONG=1 cargo test --locked --test faults_lab -- --include-ignored --test-threads=1
fi

log "all stages passed"
