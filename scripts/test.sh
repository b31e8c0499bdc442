#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run). Stops at the first failing stage.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

stage() { log "stage: $*"; }

stage "format and lint"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

stage "static release build"
make --no-print-directory build

stage "unit and integration tests"
cargo test --locked

# Long mode (`make test-long`, TSBRIDGE_LONG=1): slow suites that CI's default run skips.
if [ "${TSBRIDGE_LONG:-0}" = 1 ]; then
  stage "fuzzing (long mode, ${TSBRIDGE_FUZZ_SECONDS:-60}s per target)"
  scripts/fuzz.sh
  stage "fault suites in the lab (long mode)"
  cargo test --locked --test faults_lab -- --ignored --test-threads=1
fi

log "all stages passed"
