#!/usr/bin/env bash
# Builds the Talos system extension from the release binary (`make build`) and the pinned
# tailscaled/tailscale (`scripts/tools.sh`), without a Docker daemon:
#   dist/extension/                  manifest.yaml + rootfs/, exactly as Talos reads it
#   dist/tailscale-bridge.oci.tar    the same tree as a single-layer OCI image archive
# Reproducible: file times are the commit time (SOURCE_DATE_EPOCH), modes are normalised,
# and scripts/oci.py writes sorted entries owned by 0:0 and a fixed gzip header.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

BIN=target/x86_64-unknown-linux-musl/release/tsbridge
[ -x "$BIN" ] || die "$BIN is missing: run \`make build\` first"
for t in tailscaled tailscale; do
  [ -x "$TOOLS_BIN/$t" ] || die "$TOOLS_BIN/$t is missing: run \`make tools\` first"
done
# The shipped tailscaled must be the pinned one (FACTS: >= v1.100 for the nftables marks).
got=$("$TOOLS_BIN/tailscaled" --version | head -1)
case "$got" in "${TAILSCALE_VERSION#v}" | "${TAILSCALE_VERSION#v}"-*) ;; *) false ;; esac ||
  die "$TOOLS_BIN/tailscaled is version $got, versions.env pins $TAILSCALE_VERSION: run \`make tools\`"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
manifest_version=$(sed -n 's/^  version: \(.*\)$/\1/p' manifest.yaml | head -1)
[ "$version" = "$manifest_version" ] ||
  die "manifest.yaml says version $manifest_version, Cargo.toml says $version: make them agree"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null) || die "not a git checkout: set SOURCE_DATE_EPOCH"
fi

out=dist/extension
svc=tailscale
rm -rf "$out" dist/tailscale-bridge.oci.tar
install -d -m 0755 "$out/rootfs/usr/local/etc/containers" "$out/rootfs/usr/local/lib/containers/$svc/usr/local/bin"
install -m 0644 manifest.yaml "$out/manifest.yaml"
install -m 0644 "extension/$svc.yaml" "$out/rootfs/usr/local/etc/containers/$svc.yaml"
bindir="$out/rootfs/usr/local/lib/containers/$svc/usr/local/bin"
install -m 0755 "$BIN" "$bindir/tsbridge"
install -m 0755 "$TOOLS_BIN/tailscaled" "$TOOLS_BIN/tailscale" "$bindir/"
find "$out" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

digest=$(python3 scripts/oci.py "$out" dist/tailscale-bridge.oci.tar "$version" "$SOURCE_DATE_EPOCH") ||
  die "packing the OCI archive failed"
log "dist/extension/ and dist/tailscale-bridge.oci.tar ($version, manifest $digest)"
