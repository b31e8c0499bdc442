#!/usr/bin/env bash
# Builds the Talos system extension for every platform (lib.sh ARCHES: amd64, arm64) from
# the release binaries (`make build build-arm64`) and the pinned tailscaled/tailscale
# (`scripts/tools.sh tailscale`), without a Docker daemon:
#   dist/extension-ARCH/             manifest.yaml + rootfs/, exactly as Talos reads it
#   dist/tailscale-bridge.oci.tar    one OCI image index: a single-layer linux/ARCH image
#                                    of each tree, pushed as one multi-arch tag
# Reproducible: file times are the commit time (SOURCE_DATE_EPOCH), modes are normalised,
# and scripts/oci.py writes sorted entries owned by 0:0 and a fixed gzip header.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

# The Go module version a binary was built from (cross-built ones cannot run here).
go_module_version() { go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'; }

for arch in "${ARCHES[@]}"; do
  bin=target/$(rust_target "$arch")/release/tsbridge
  [ -x "$bin" ] || die "$bin is missing: run \`make build build-arm64\` first"
  tools=$(tools_bin "$arch")
  for t in tailscaled tailscale; do
    [ -x "$tools/$t" ] || die "$tools/$t is missing: run \`make tools\` first"
    # The shipped tailscaled must be the pinned one (FACTS: >= v1.100 for the nftables marks).
    got=$(go_module_version "$tools/$t")
    [ "$got" = "$TAILSCALE_VERSION" ] ||
      die "$tools/$t is version ${got:-unknown}, versions.env pins $TAILSCALE_VERSION: run \`make tools\`"
  done
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
manifest_version=$(sed -n 's/^  version: \(.*\)$/\1/p' manifest.yaml | head -1)
[ "$version" = "$manifest_version" ] ||
  die "manifest.yaml says version $manifest_version, Cargo.toml says $version: make them agree"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null) || die "not a git checkout: set SOURCE_DATE_EPOCH"
fi

svc=tailscale
rm -rf dist/extension dist/tailscale-bridge.oci.tar
platforms=()
for arch in "${ARCHES[@]}"; do
  out=dist/extension-$arch
  rm -rf "$out"
  install -d -m 0755 "$out/rootfs/usr/local/etc/containers" "$out/rootfs/usr/local/lib/containers/$svc/usr/local/bin"
  install -m 0644 manifest.yaml "$out/manifest.yaml"
  install -m 0644 "extension/$svc.yaml" "$out/rootfs/usr/local/etc/containers/$svc.yaml"
  bindir="$out/rootfs/usr/local/lib/containers/$svc/usr/local/bin"
  install -m 0755 "target/$(rust_target "$arch")/release/tsbridge" "$bindir/tsbridge"
  install -m 0755 "$(tools_bin "$arch")/tailscaled" "$(tools_bin "$arch")/tailscale" "$bindir/"
  find "$out" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  platforms+=("linux/$arch=$out")
done

digest=$(python3 scripts/oci.py dist/tailscale-bridge.oci.tar "$version" "$SOURCE_DATE_EPOCH" "${platforms[@]}") ||
  die "packing the OCI archive failed"
log "dist/extension-{$(IFS=,; echo "${ARCHES[*]}")}/ and dist/tailscale-bridge.oci.tar ($version, index $digest)"
