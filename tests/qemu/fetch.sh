#!/usr/bin/env bash
# Fetches the pinned Debian kernel and busybox-static packages (versions.env) for the QEMU
# test's architecture into $TSBRIDGE_CACHE/qemu/debs with `apt-get download` and unpacks
# them with `dpkg -x`. Nothing is installed system-wide. Offline once the cache is filled.
#   fetch.sh [amd64|arm64]     (default amd64)
# For arm64 also Debian's arm64 `ip` and `nft` with their libraries: the packages of what
# the host's own `ip` and `nft` link (ldd), at the host's versions, unpacked into one tree
# (the amd64 initramfs copies the host's binaries instead).
# Prints nothing on stdout; the unpacked trees are at the paths qemu_dirs() (lib.sh) gives.
. "$(dirname "$0")/../../scripts/lib.sh"

ARCH=${1:-amd64}
# another architecture's modules.dep is made with the host's busybox depmod
[ "$ARCH" = amd64 ] || "$ROOT/tests/qemu/fetch.sh" amd64
qemu_dirs "$ARCH"
DEBS="$SHARED_CACHE/qemu/debs"
mkdir -p "$DEBS"

# deb_file PKG VERSION: the file name apt-get download gives (':' in the epoch is %3a).
deb_file() { printf '%s_%s_%s.deb' "$1" "${2//:/%3a}" "${3:-$ARCH}"; }

fetch() {
  local pkg=$1 ver=$2 f spec
  f="$DEBS/$(deb_file "$pkg" "$ver")"
  [ -s "$f" ] && return 0
  spec="$pkg:$ARCH=$ver"
  log "apt-get download $spec"
  # The download runs as root into a directory _apt cannot write: say so instead of a warning.
  if ! (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$spec" >/dev/null); then
    if [ "$ARCH" != amd64 ] && ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
      die "apt does not know the architecture $ARCH: run scripts/setup.sh (dpkg --add-architecture $ARCH)"
    fi
    log "apt-get update (the package index does not know $spec yet)"
    apt-get update -qq || die "apt-get update failed"
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$spec" >/dev/null) ||
      die "apt-get download $spec failed: the pinned version may have left the archive; pin a current one in versions.env"
  fi
  [ -s "$f" ] || die "apt-get download $spec did not produce $f"
}

unpack() {
  local pkg=$1 ver=$2 dir=$3
  [ -e "$dir/.unpacked" ] && return 0
  log "dpkg -x $pkg $ver ($ARCH)"
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg -x "$DEBS/$(deb_file "$pkg" "$ver")" "$dir" || die "dpkg -x $pkg failed"
  touch "$dir/.unpacked"
}

fetch "$Q_KERNEL_PKG" "$Q_KERNEL_VERSION"
fetch busybox-static "$Q_BUSYBOX_VERSION"
unpack "$Q_KERNEL_PKG" "$Q_KERNEL_VERSION" "$Q_KDIR"
unpack busybox-static "$Q_BUSYBOX_VERSION" "$(dirname "$(dirname "$Q_BUSYBOX")")"
# modules.dep for the initramfs builder's dependency closure (busybox depmod: no kmod
# needed; the host's busybox of the same version for a foreign kernel).
kver=$(basename "$(ls -d "$Q_KDIR"/lib/modules/*)")
if [ ! -s "$Q_KDIR/lib/modules/$kver/modules.dep" ]; then
  log "depmod $kver"
  "$Q_HOST_BUSYBOX" depmod -b "$Q_KDIR" "$kver" || die "depmod $kver failed"
fi

if [ "$ARCH" != amd64 ]; then
  # The packages of the host's ip and nft and of every library they link, at the host's
  # versions (the same build for another architecture); unpacked again when they change.
  pkgs=$(for f in $(command -v ip) $(command -v nft) $(ldd "$(command -v ip)" "$(command -v nft)" | grep -oE '/[^ ]+\.so[^ ]*'); do
    dpkg-query -S "$(readlink -f "$f")" 2>/dev/null || dpkg-query -S "$f"
  done | cut -d: -f1 | sort -u) || die "cannot tell which packages the host's ip and nft come from"
  want=$(for p in $pkgs; do printf '%s=%s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p")"; done)
  if [ "$(cat "$Q_USERLAND/.unpacked" 2>/dev/null)" != "$want" ]; then
    rm -rf "$Q_USERLAND" && mkdir -p "$Q_USERLAND"
    for pv in $want; do
      fetch "${pv%%=*}" "${pv#*=}"
      log "dpkg -x $pv ($ARCH) into $Q_USERLAND"
      dpkg -x "$DEBS/$(deb_file "${pv%%=*}" "${pv#*=}")" "$Q_USERLAND" || die "dpkg -x $pv failed"
    done
    echo "$want" >"$Q_USERLAND/.unpacked"
  fi
fi
