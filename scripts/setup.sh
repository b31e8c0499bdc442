#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine: the Rust musl
# target, the Debian packages, and the pinned Go tools. Safe to run again; fast when done.
. "$(dirname "$0")/lib.sh"

# The extension's two platforms: amd64 and arm64 (linked with rustup's rust-lld, see
# .cargo/config.toml: no C cross toolchain).
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! rustup target list --installed | grep -qx "$t"; then
    log "adding the Rust target $t"
    rustup target add "$t" || die "rustup could not add $t"
  fi
done
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c" || die "rustup could not add $c"
done

# Debian packages: iproute2 and iputils-ping (lab namespaces), nftables (tests inspect state with `nft`;
# tsbridge itself never runs it), file (static-binary check), iperf3 (benchmarks),
# skopeo (reads the OCI archive), qemu-system-x86 and qemu-system-arm (the amd64 and arm64
# QEMU tests), qemu-user (the arm64 unit tests run under qemu-aarch64), procps (sysctl in the lab),
# python3 (scripts/oci.py), curl (the LocalAPI fixture recorder in tests/lab.rs),
# tinyproxy-bin (the HTTP proxy of the lab's proxy test; the binary only, no service started
# on this machine), openssl (the lab's HTTPS control server certificate), wireguard-tools
# (`wg`, configures the userspace WireGuard of the KubeSpan lab test), tcpdump (its
# capture on the lab link), iptables (flannel's iptables-nft rules in the CNI lab test) and
# conntrack (the NAT bindings it counts).
# scripts/check-packages.py fails when a command the suite runs needs a package not listed.
PKGS=(iproute2 iputils-ping nftables file iperf3 skopeo qemu-system-x86 qemu-system-arm qemu-user cpio dpkg-dev procps python3 curl tinyproxy-bin openssl wireguard-tools tcpdump iptables conntrack)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# The arm64 QEMU test boots Debian's arm64 kernel and busybox, fetched with `apt-get
# download` (tests/qemu/fetch.sh): apt must know the architecture (nothing arm64 is installed).
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "dpkg --add-architecture arm64 (for apt-get download of the arm64 QEMU test's packages)"
  dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
fi

"$ROOT/scripts/tools.sh"

# Long mode (fuzzing) needs the nightly toolchain and cargo-fuzz.
if [ "${TSBRIDGE_LONG:-0}" = 1 ]; then
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal ||
    die "rustup could not install the nightly toolchain (needed by cargo fuzz)"
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || die "cargo install cargo-fuzz failed"
fi
