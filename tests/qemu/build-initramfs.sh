#!/usr/bin/env bash
# Builds the QEMU test's initramfs (a gzip'ed newc cpio) from cached and built pieces:
#   build-initramfs.sh OUT.cpio.gz EXTENSION_DIR RUNNER_BIN [ARCH]
# for the VM's architecture ARCH (amd64 or arm64, default amd64), every binary built for it:
# - busybox (static) with an applet link for every command, /sbin/modprobe included so the
#   kernel can load modules on demand;
# - the kernel modules the test needs with their dependency closure, a filtered
#   modules.dep/modules.alias for busybox modprobe;
# - Debian's ip and nft with their shared libraries (busybox ip has no netns): amd64 the
#   host's, arm64 the same packages for arm64 (fetch.sh);
# - headscale, tailscale, tailscaled from .tools/bin (arm64: .tools/bin/linux-arm64) for
#   the simulated tailnet;
# - the extension tree EXTENSION_DIR/rootfs copied unchanged to / (so the spec lands in
#   /usr/local/etc/containers/ and the service rootfs in /usr/local/lib/containers/<name>/,
#   where Talos puts them) and EXTENSION_DIR/manifest.yaml to /usr/local/share/extension/;
# - the Talos-like service runner and the in-VM scripts (tests/qemu/vm/).
. "$(dirname "$0")/../../scripts/lib.sh"

OUT=${1:?usage: build-initramfs.sh OUT EXTENSION_DIR RUNNER_BIN}
EXT=${2:?extension dir}
RUNNER=${3:?runner binary}
ARCH=${4:-amd64}
qemu_dirs "$ARCH"
KDIR=$Q_KDIR
BUSYBOX=$Q_BUSYBOX
TOOLS=$(tools_bin "$ARCH")
KVER=$(basename "$(ls -d "$KDIR"/lib/modules/*)")
HERE="$ROOT/tests/qemu"

[ -x "$BUSYBOX" ] && [ -s "$KDIR/lib/modules/$KVER/modules.dep" ] || die "kernel/busybox not unpacked: run tests/qemu/fetch.sh $ARCH"
[ -d "$EXT/rootfs/usr/local/etc/containers" ] || die "$EXT is not an extension tree (no rootfs/usr/local/etc/containers)"
for t in headscale tailscale tailscaled; do
  [ -x "$TOOLS/$t" ] || die "$TOOLS/$t missing: run scripts/tools.sh"
done

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
R="$STAGE/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,run,tmp,var/lib,var/log,root,mnt}
chmod 1777 "$R/tmp"

# busybox and its applets
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
# (a foreign busybox lists its applets under user-mode emulation)
if [ "$ARCH" = amd64 ]; then applets=$("$BUSYBOX" --list); else applets=$(qemu-aarch64 "$BUSYBOX" --list); fi
[ -n "$applets" ] || die "$BUSYBOX lists no applets"
for a in $applets; do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
ln -sf ../bin/busybox "$R/sbin/modprobe"

# Kernel modules: the test's list and everything they depend on (modules.dep). The MSS
# clamp's exthdr and rt expressions are built into nf_tables.ko in 6.1. A module the
# kernel has built in (modules.builtin) needs nothing.
MODS=(tun veth overlay crc32c_generic nf_tables nft_ct nft_nat nft_masq nft_chain_nat nf_nat
  nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_reject_inet nf_conntrack)
MDIR="$KDIR/lib/modules/$KVER"
declare -A want=()
for m in "${MODS[@]}"; do
  line=$(grep -E "(^|/)${m//_/[_-]}\.ko(\.[a-z]+)?:" "$MDIR/modules.dep") || {
    grep -qE "(^|/)${m//_/[_-]}\.ko$" "$MDIR/modules.builtin" 2>/dev/null && continue
    die "module $m not in $KVER"
  }
  for f in ${line/:/}; do want[$f]=1; done
done
mkdir -p "$R/lib/modules/$KVER"
for f in "${!want[@]}"; do
  mkdir -p "$R/lib/modules/$KVER/$(dirname "$f")"
  cp "$MDIR/$f" "$R/lib/modules/$KVER/$f"
done
grep -E "^($(printf '%s|' "${!want[@]}" | sed 's/|$//; s/\./\\./g')):" "$MDIR/modules.dep" >"$R/lib/modules/$KVER/modules.dep"
# aliases of the included modules only (the kernel asks for e.g. nft-expr-masq, crypto-crc32c)
names=$(for f in "${!want[@]}"; do basename "$f" .ko; done | tr '-' '_' | sort -u)
awk -v names="$names" 'BEGIN{n=split(names,a,"\n"); for(i=1;i<=n;i++) ok[a[i]]=1} {m=$3; gsub("-","_",m); if (m in ok) print}' \
  "$MDIR/modules.alias" >"$R/lib/modules/$KVER/modules.alias"
printf '%s\n' "${MODS[@]}" >"$R/etc/modules"

# Debian's ip and nft with their libraries (loader included).
copy_elf() {
  local bin=$1 dest=$2 lib
  install -D -m 0755 "$bin" "$R$dest"
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+\.so[^ ]*'); do
    [ -e "$R$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$R$lib"
  done
}
if [ "$ARCH" = amd64 ]; then
  copy_elf "$(command -v ip)" /usr/sbin/ip
  copy_elf "$(command -v nft)" /usr/sbin/nft
else
  # the arm64 packages of the same ip and nft, unpacked by fetch.sh: the binaries, and
  # their shared libraries where the packages put them (the loader included)
  [ -s "$Q_USERLAND/.unpacked" ] || die "arm64 ip/nft not unpacked: run tests/qemu/fetch.sh $ARCH"
  for b in ip nft; do
    f=$(find "$Q_USERLAND/bin" "$Q_USERLAND/sbin" "$Q_USERLAND/usr/bin" "$Q_USERLAND/usr/sbin" -name "$b" -type f 2>/dev/null | head -n 1)
    [ -n "$f" ] || die "no $b in $Q_USERLAND"
    install -D -m 0755 "$f" "$R/usr/sbin/$b"
  done
  (cd "$Q_USERLAND" && find lib usr/lib -maxdepth 2 \( -type f -o -type l \) -name '*.so*' -print0 |
    xargs -0 cp -a --parents -t "$R") || die "copying the arm64 libraries failed"
fi

# the simulated tailnet's binaries (outside the extension: the control server and the peer)
mkdir -p "$R/opt/lab/bin"
for t in headscale tailscale tailscaled; do install -m 0755 "$TOOLS/$t" "$R/opt/lab/bin/$t"; done

# The extension, unchanged, where Talos puts it.
cp -a "$EXT/rootfs/." "$R/"
mkdir -p "$R/usr/local/share/extension"
[ -f "$EXT/manifest.yaml" ] && cp "$EXT/manifest.yaml" "$R/usr/local/share/extension/"

# the service runner and the in-VM scripts
install -m 0755 "$RUNNER" "$R/sbin/talos-runner"
install -m 0755 "$HERE/vm/init" "$R/init"
install -m 0755 "$HERE"/vm/*.sh "$R/opt/lab/"
echo "$KVER" >"$R/etc/kernel-release"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"

(cd "$R" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "initramfs $OUT: $(du -h "$OUT" | cut -f1)"
