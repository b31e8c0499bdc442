# tsbridge - see README.md. The two commands a user needs: `make lab` and `make test`.
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-musl
BIN := target/$(TARGET)/release/tsbridge
# The arm64 build of the extension: linked with rustup's rust-lld (.cargo/config.toml).
ARM64_TARGET := aarch64-unknown-linux-musl
ARM64_BIN := target/$(ARM64_TARGET)/release/tsbridge
# The release binary must stay small (see README).
MAX_SIZE := 2621440

.PHONY: all setup tools build build-arm64 lab test unit lint check-binary extension test-extension test-talos qemu-test qemu-test-arm64 test-long fuzz bench

all: build

setup:
	scripts/setup.sh

tools:
	scripts/tools.sh

build:
	cargo build --release --locked --target $(TARGET)
	@$(MAKE) --no-print-directory check-binary

build-arm64:
	cargo build --release --locked --target $(ARM64_TARGET)
	@$(MAKE) --no-print-directory check-binary BIN=$(ARM64_BIN) MACHINE='ARM aarch64'

# Static, of the right machine (file(1)'s name for it), and small.
MACHINE := x86-64
check-binary:
	@file $(BIN) | grep -q 'static' || { echo "error: $(BIN) is not static: $$(file $(BIN))"; exit 1; }
	@file $(BIN) | grep -q ', $(MACHINE),' || { echo "error: $(BIN) is not a $(MACHINE) binary: $$(file $(BIN))"; exit 1; }
	@size=$$(stat -c %s $(BIN)); echo "tsbridge release binary $(BIN): $$size bytes (limit $(MAX_SIZE))"; \
	  [ $$size -le $(MAX_SIZE) ] || { echo "error: $(BIN) is larger than $(MAX_SIZE) bytes"; exit 1; }

# The Talos system extension for amd64 and arm64: dist/extension-amd64/,
# dist/extension-arm64/ and dist/tailscale-bridge.oci.tar, one multi-arch OCI image index
# (no Docker).
extension: build build-arm64
	scripts/tools.sh tailscale
	scripts/extension.sh

# Checks dist/: skopeo reads both platforms, each layer equals its tree, builds are reproducible.
test-extension: extension
	scripts/test-extension.sh

# Checks both extension trees and `tsbridge patch` with Talos's own Go code (tests/talos).
test-talos: extension
	scripts/test-talos.sh

# Boots a real kernel under QEMU that runs dist/extension-amd64/ as Talos would (tests/qemu).
qemu-test: extension
	tests/qemu/run.sh

# The same with the arm64 kernel, busybox and dist/extension-arm64/ under qemu-system-aarch64.
qemu-test-arm64: extension
	TSBRIDGE_QEMU_ARCH=arm64 tests/qemu/run.sh

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
