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

stage "static release builds (amd64, and arm64 cross-linked with rust-lld)"
make --no-print-directory build build-arm64

stage "unit and integration tests (the lab tests need root, network namespaces and the tools from scripts/setup.sh)"
[ "$(id -u)" = 0 ] || die "the integration tests build network namespaces: run as root"
cargo test --locked --workspace

stage "arm64: tsbridge's unit tests built for aarch64 and run under user-mode emulation (qemu-aarch64)"
command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 is missing: run scripts/setup.sh (Debian qemu-user)"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64 TSBRIDGE_TEST_USER_EMULATION=1 \
  cargo test --locked --target aarch64-unknown-linux-musl -p tsbridge --lib --bins

stage "Talos extension image (amd64 and arm64 trees, one reproducible multi-arch OCI index, read by skopeo)"
scripts/tools.sh tailscale
scripts/extension.sh
scripts/test-extension.sh

stage "both extension trees and tsbridge patch checked by Talos's own Go code"
scripts/test-talos.sh

stage "QEMU: a real kernel boots and runs dist/extension-amd64/ as Talos would"
tests/qemu/run.sh

stage "QEMU arm64: the arm64 kernel boots and runs dist/extension-arm64/ (qemu-system-aarch64, TCG)"
TSBRIDGE_QEMU_ARCH=arm64 tests/qemu/run.sh

# Long mode (`make test-long`, TSBRIDGE_LONG=1): slow suites that CI's default run skips.
if [ "${TSBRIDGE_LONG:-0}" = 1 ]; then
  stage "fuzzing (long mode, ${TSBRIDGE_FUZZ_SECONDS:-60}s per target)"
  scripts/fuzz.sh
  stage "fault suites in the lab (long mode: the default run did one iteration of each)"
  TSBRIDGE_FAULT_LONG=1 cargo test --locked --test faults_lab -- --include-ignored --test-threads=1
fi

log "all stages passed"
