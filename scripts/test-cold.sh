#!/usr/bin/env bash
# A first run on a machine that never ran the project, every CI run (issue 10): the set-up
# (scripts/setup.sh) and the QEMU tests' fetch (tests/qemu/fetch.sh arm64, which fetches
# the amd64 packages first), run from a copy of
# the checkout without .tools/, against an artifact cache that does not exist yet
# (TSBRIDGE_CACHE). Go's build and module caches and the pinned .deb downloads stay shared
# (TSBRIDGE_SHARED_CACHE: content-addressed, so this costs links and copies, not
# rebuilds). A missing mkdir or an install step once done by hand fails here.
# Then scripts/check-packages.py: every command the suite runs comes from a Debian package
# the set-up installs, so a package missing from its list fails even on a machine that
# happens to have it; with --self-test, the check is shown to fail without each package.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

cold=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-cold.XXXXXX")
trap 'rm -rf "$cold"' EXIT
src="$cold/src"
cache="$cold/cache"
mkdir "$src"
# the tracked files as they are in the working tree (a fresh clone, local edits included)
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src" || die "copying the checkout failed"

start=$(date +%s)
log "set-up on a cold cache: TSBRIDGE_CACHE=$cache (absent), Go caches and .deb downloads from $SHARED_CACHE"
(
  export TSBRIDGE_CACHE="$cache" TSBRIDGE_SHARED_CACHE="$SHARED_CACHE"
  "$src/scripts/setup.sh" && "$src/tests/qemu/fetch.sh" arm64
) || die "the set-up failed on a cold cache (TSBRIDGE_CACHE=$cache did not exist): a first \`make test\` on a new machine fails the same way"

# What the suite then needs is in place, in the new cache and the copy only.
for t in tailscale tailscaled headscale linux-arm64/tailscale linux-arm64/tailscaled linux-arm64/headscale; do
  [ -x "$src/.tools/bin/$t" ] || die "cold set-up: .tools/bin/$t missing"
done
# cold_qemu ARCH: the kernel and busybox for ARCH are unpacked in the new cache
cold_qemu() {
  local CACHE=$cache
  qemu_dirs "$1"
  compgen -G "$Q_KDIR/boot/vmlinuz-*" >/dev/null && [ -x "$Q_BUSYBOX" ]
}
for arch in "${ARCHES[@]}"; do
  cold_qemu "$arch" || die "cold set-up: no $arch kernel or busybox unpacked in $cache/qemu"
done
log "cold set-up passed in $(($(date +%s) - start)) s"

python3 scripts/check-packages.py --self-test >"$cold/packages.txt" ||
  { cat "$cold/packages.txt"; die "a command the suite runs comes from a package scripts/setup.sh does not install"; }
tail -n 3 "$cold/packages.txt"
