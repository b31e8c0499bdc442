#!/usr/bin/env bash
# Fetches the pinned Debian kernel and busybox-static packages (versions.env) into
# $TSBRIDGE_CACHE/qemu/debs with `apt-get download` and unpacks them with `dpkg -x`.
# Nothing is installed system-wide. Offline once the cache is filled.
# Prints nothing on stdout; the unpacked trees are at the paths qemu_paths() gives.
. "$(dirname "$0")/../../scripts/lib.sh"

QCACHE="$CACHE/qemu"
DEBS="$SHARED_CACHE/qemu/debs"
mkdir -p "$DEBS"

# deb_file PKG VERSION: the file name apt-get download gives (':' in the epoch is %3a).
deb_file() { printf '%s_%s_amd64.deb' "$1" "${2//:/%3a}"; }

fetch() {
  local pkg=$1 ver=$2 f
  f="$DEBS/$(deb_file "$pkg" "$ver")"
  [ -s "$f" ] && return 0
  log "apt-get download $pkg=$ver"
  # The download runs as root into a directory _apt cannot write: say so instead of a warning.
  if ! (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null); then
    log "apt-get update (the package index does not know $pkg=$ver yet)"
    apt-get update -qq || die "apt-get update failed"
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null) ||
      die "apt-get download $pkg=$ver failed: the pinned version may have left the archive; pin a current one in versions.env"
  fi
  [ -s "$f" ] || die "apt-get download $pkg=$ver did not produce $f"
}

unpack() {
  local pkg=$1 ver=$2 dir=$3
  [ -e "$dir/.unpacked" ] && return 0
  log "dpkg -x $pkg $ver"
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg -x "$DEBS/$(deb_file "$pkg" "$ver")" "$dir" || die "dpkg -x $pkg failed"
  touch "$dir/.unpacked"
}

fetch "$QEMU_KERNEL_PKG" "$QEMU_KERNEL_VERSION"
fetch busybox-static "$QEMU_BUSYBOX_VERSION"
unpack "$QEMU_KERNEL_PKG" "$QEMU_KERNEL_VERSION" "$QCACHE/kernel-$QEMU_KERNEL_VERSION"
unpack busybox-static "$QEMU_BUSYBOX_VERSION" "$QCACHE/busybox-${QEMU_BUSYBOX_VERSION//:/_}"
# modules.dep for the initramfs builder's dependency closure (busybox depmod: no kmod needed).
kdir="$QCACHE/kernel-$QEMU_KERNEL_VERSION"
kver=$(basename "$(ls -d "$kdir"/lib/modules/*)")
if [ ! -s "$kdir/lib/modules/$kver/modules.dep" ]; then
  log "depmod $kver"
  "$QCACHE/busybox-${QEMU_BUSYBOX_VERSION//:/_}/bin/busybox" depmod -b "$kdir" "$kver" || die "depmod $kver failed"
fi
