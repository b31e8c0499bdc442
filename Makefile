# tsbridge - see README.md. The two commands a user needs: `make lab` and `make test`.
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-musl
BIN := target/$(TARGET)/release/tsbridge
# The release binary must stay small (see README).
MAX_SIZE := 2621440

.PHONY: all setup tools build lab test unit lint check-binary test-long fuzz bench

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

# The main job: the lab demo (until the lab lands: the configuration check of the example).
lab: setup build
	scripts/lab.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

unit:
	cargo test --locked

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
