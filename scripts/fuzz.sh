#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (TSBRIDGE_FUZZ_SECONDS each, default 60)
# on the corpus kept in fuzz/corpus. New inputs go to a scratch directory, so the committed
# corpus stays small; a crash leaves its input in fuzz/artifacts/<target>/ and fails.
# Needs the nightly toolchain and cargo-fuzz (scripts/setup.sh installs them in long mode).
. "$(dirname "$0")/lib.sh"
cd "$ROOT/fuzz"

secs=${TSBRIDGE_FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || die "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
rustup toolchain list | grep -q '^nightly' || die "the nightly toolchain is missing: rustup toolchain install nightly"

targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || die "no fuzz targets found"
log "building fuzz targets"
cargo +nightly fuzz build -O

scratch=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  log "fuzzing $t for ${secs}s"
  mkdir -p "$scratch/$t" "corpus/$t"
  dict=()
  [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
  cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 "${dict[@]}" ||
    die "fuzz target $t failed; the input is in fuzz/artifacts/$t/ (reproduce: cd fuzz && cargo +nightly fuzz run $t <file>)"
done
log "fuzzing passed: $(echo $targets)"
