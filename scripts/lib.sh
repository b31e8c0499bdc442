# Shared helpers for scripts/*.sh. Source it; it sets up paths and pinned versions.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
. "$ROOT/versions.env"
# A cache the scripts own, outside the clone, so a fresh clone on the same machine (CI)
# reuses Go builds and downloaded packages.
CACHE=${TSBRIDGE_CACHE:-/var/cache/tsbridge}
# The content-addressed parts (Go's build and module caches, the pinned .deb downloads) can
# come from another cache: the cold set-up stage (scripts/test-cold.sh) runs with a new,
# empty TSBRIDGE_CACHE but shares these, so it costs links and copies, not rebuilds.
SHARED_CACHE=${TSBRIDGE_SHARED_CACHE:-$CACHE}
TOOLS_BIN="$ROOT/.tools/bin"
export GOCACHE="$SHARED_CACHE/gocache" GOMODCACHE="$SHARED_CACHE/gomodcache" CGO_ENABLED=0
export GOFLAGS="-trimpath -modcacherw"
mkdir -p "$CACHE/bin" "$TOOLS_BIN"

# The platforms the extension is built for (Go/Debian architecture names), on an amd64 host.
ARCHES=(amd64 arm64)
# rust_target ARCH: the Rust target tsbridge is built for on ARCH (static, musl).
rust_target() {
  case $1 in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    *) die "unknown architecture $1" ;;
  esac
}
# tools_bin ARCH: where scripts/tools.sh puts the Go tools built for ARCH (the host's own,
# amd64, in .tools/bin; the others in .tools/bin/linux-ARCH).
tools_bin() { if [ "$1" = amd64 ]; then echo "$TOOLS_BIN"; else echo "$TOOLS_BIN/linux-$1"; fi; }

# qemu_dirs ARCH: the QEMU test's pinned packages for ARCH and where tests/qemu/fetch.sh
# unpacks them: Q_KERNEL_PKG, Q_KERNEL_VERSION, Q_BUSYBOX_VERSION, Q_KDIR (the kernel
# package's tree), Q_BUSYBOX (the static busybox for ARCH), Q_HOST_BUSYBOX (the host's, for
# depmod), Q_USERLAND (arm64: Debian's ip and nft with their libraries).
qemu_dirs() {
  local q="$CACHE/qemu"
  case $1 in
    amd64)
      Q_KERNEL_PKG=$QEMU_KERNEL_PKG Q_KERNEL_VERSION=$QEMU_KERNEL_VERSION Q_BUSYBOX_VERSION=$QEMU_BUSYBOX_VERSION
      Q_KDIR="$q/kernel-$QEMU_KERNEL_VERSION"
      Q_BUSYBOX="$q/busybox-${QEMU_BUSYBOX_VERSION//:/_}/bin/busybox"
      Q_USERLAND=
      ;;
    arm64)
      Q_KERNEL_PKG=$QEMU_ARM64_KERNEL_PKG Q_KERNEL_VERSION=$QEMU_ARM64_KERNEL_VERSION Q_BUSYBOX_VERSION=$QEMU_ARM64_BUSYBOX_VERSION
      Q_KDIR="$q/arm64/kernel-$QEMU_ARM64_KERNEL_VERSION"
      Q_BUSYBOX="$q/arm64/busybox-${QEMU_ARM64_BUSYBOX_VERSION//:/_}/bin/busybox"
      Q_USERLAND="$q/arm64/userland"
      ;;
    *) die "no QEMU test for the architecture $1" ;;
  esac
  Q_HOST_BUSYBOX="$q/busybox-${QEMU_BUSYBOX_VERSION//:/_}/bin/busybox"
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# go_pin GOMOD MODULE VERSION: GOMOD must require MODULE at VERSION (from versions.env).
go_pin() {
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2 $3([[:space:]]|$)" "$1" ||
    die "$1 does not require $2 $3 (versions.env): make them agree"
}
