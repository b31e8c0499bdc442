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

# owner FILE: the package of FILE, under either name merged /usr gives it
owner() {
  local f=$1 alt
  case $f in /usr/*) alt=${f#/usr} ;; *) alt=/usr$f ;; esac
  dpkg-query -S "$f" 2>/dev/null || dpkg-query -S "$alt" 2>/dev/null || die "no package owns $f"
}
# foreign_version PKG HOST_VERSION: the version of PKG for ARCH built from the same source
# upload as the host's (binNMU suffixes +bN differ between architectures), or, when the
# archive no longer has that upload for ARCH, its current one.
foreign_version() {
  local base=${2%+b[0-9]*} v
  for v in $(apt-cache madison "$1:$ARCH" | awk -F'|' '{ gsub(/ /, "", $2); print $2 }'); do
    [ "${v%+b[0-9]*}" = "$base" ] && { echo "$v"; return; }
  done
  v=$(apt-cache policy "$1:$ARCH" | awk '/Candidate:/ { print $2 }')
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "apt knows no $1:$ARCH"
  log "$1:$ARCH $2 is not in the archive: using $v"
  echo "$v"
}

if [ "$ARCH" != amd64 ]; then
  # iproute2 and nftables and the packages of every library the host's ip and nft link,
  # in the versions for ARCH of the host's (the same build for another architecture);
  # unpacked again when they change.
  libs=$(ldd "$(command -v ip)" "$(command -v nft)" | grep -oE '/[^ ]+\.so[^ ]*' | sort -u)
  pkgs=$({
    echo iproute2 nftables
    for f in $libs; do owner "$f" | cut -d: -f1; done
  } | tr ' ' '\n' | sort -u)
  want=$(for p in $pkgs; do printf '%s=%s\n' "$p" "$(foreign_version "$p" "$(dpkg-query -W -f='${Version}' "$p")")"; done)
  if [ "$(cat "$Q_USERLAND/.unpacked" 2>/dev/null)" != "$want" ]; then
    rm -rf "$Q_USERLAND" && mkdir -p "$Q_USERLAND"
    for pv in $want; do
      fetch "${pv%%=*}" "${pv#*=}"
      dpkg -x "$DEBS/$(deb_file "${pv%%=*}" "${pv#*=}")" "$Q_USERLAND" || die "dpkg -x $pv failed"
    done
    log "unpacked for $ARCH into $Q_USERLAND: $(echo $want)"
    echo "$want" >"$Q_USERLAND/.unpacked"
  fi
fi
