# tsbridge - see README.md. The two commands a user needs: `make lab` and `make test`.
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-musl
BIN := target/$(TARGET)/release/tsbridge
# The release binary must stay small (see README).
MAX_SIZE := 2621440

.PHONY: all setup tools build lab test unit lint check-binary extension test-extension test-talos qemu-test test-long fuzz bench

all: build

setup:
	scripts/setup.sh

tools:
	scripts/tools.sh

build:
	cargo build --release --locked --target $(TARGET)
	@$(MAKE) --no-print-directory check-binary

check-binary:
	@file $(BIN) | grep -q 'static' || { echo "error: $(BIN) is not static: $$(file $(BIN))"; exit 1; }
	@size=$$(stat -c %s $(BIN)); echo "tsbridge release binary: $$size bytes (limit $(MAX_SIZE))"; \
	  [ $$size -le $(MAX_SIZE) ] || { echo "error: $(BIN) is larger than $(MAX_SIZE) bytes"; exit 1; }

# The Talos system extension: dist/extension/ and dist/tailscale-bridge.oci.tar (no Docker).
extension: build
	scripts/tools.sh tailscale
	scripts/extension.sh

# Checks dist/: skopeo reads it, the layer equals dist/extension/, builds are reproducible.
test-extension: extension
	scripts/test-extension.sh

# Checks dist/extension/ and `tsbridge patch` with Talos's own Go code (tests/talos).
test-talos: extension
	scripts/test-talos.sh

# Boots a real kernel under QEMU that runs dist/extension/ as Talos would (tests/qemu).
qemu-test: extension
	tests/qemu/run.sh

# The main job: the network-namespace lab demo (headscale, a peer, a node running tsbridge).
lab: setup build
	scripts/lab.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

unit:
	cargo test --locked --workspace

# The whole test suite, from a fresh clone: set-up, lint, build, all tests.
test: setup
	scripts/test.sh

# The test suite plus the slow suites (fuzzing for TSBRIDGE_FUZZ_SECONDS per target).
test-long:
	TSBRIDGE_LONG=1 scripts/setup.sh
	TSBRIDGE_LONG=1 scripts/test.sh

fuzz:
	scripts/fuzz.sh

# Benchmarks against containerboot (not tests): a table on stdout, JSON in bench/out/.
bench: setup build
	bench/run.sh
