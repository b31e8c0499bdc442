#!/usr/bin/env bash
# Checks `make extension`'s output (run after it): dist/tailscale-bridge.oci.tar is one OCI
# image index with a linux/amd64 and a linux/arm64 image; Debian's skopeo reads each
# platform (--override-arch), and each single layer unpacks to exactly its tree
# dist/extension-ARCH/ (paths, modes, contents; owner 0:0, times = SOURCE_DATE_EPOCH),
# whose binaries are static ELF files of the platform's machine. Packing is reproducible:
# the same trees with other owners, times and permission bits, and a second full build,
# give the same digests.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ARCHIVE=dist/tailscale-bridge.oci.tar
for arch in "${ARCHES[@]}"; do
  [ -d "dist/extension-$arch" ] || die "dist/extension-$arch is missing: run \`make extension\` first"
done
[ -f "$ARCHIVE" ] || die "$ARCHIVE is missing: run \`make extension\` first"
command -v skopeo >/dev/null || die "skopeo is not installed: run \`make setup\` (scripts/setup.sh)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then log "ok: $name"; else log "FAIL: $name"; fails=$((fails + 1)); fi
}

epoch=$(git log -1 --format=%ct)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
# The digest of what a registry would get: the image index skopeo reads from the archive.
digest_of() { skopeo inspect --raw "oci-archive:$1" | sha256sum | cut -d' ' -f1; }
d1=$(digest_of "$ARCHIVE") || die "skopeo cannot read $ARCHIVE"
log "skopeo reads $ARCHIVE: index sha256:$d1"

# The index: one image per platform, in ARCHES order.
skopeo inspect --raw "oci-archive:$ARCHIVE" >"$tmp/index.json"
platforms=$(python3 - "$tmp/index.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["mediaType"] == "application/vnd.oci.image.index.v1+json", m.get("mediaType")
for d in m["manifests"]:
    assert d["mediaType"] == "application/vnd.oci.image.manifest.v1+json", d["mediaType"]
    print(d["platform"]["os"] + "/" + d["platform"]["architecture"])
PY
) || die "$ARCHIVE holds no OCI image index: $(cat "$tmp/index.json")"
check "one OCI image index with exactly the platforms ${ARCHES[*]}" \
  test "$(echo $platforms)" = "$(printf 'linux/%s ' "${ARCHES[@]}" | sed 's/ $//')"

# What `skopeo copy --all ... docker://REGISTRY/...` pushes: the whole index, unchanged.
skopeo copy --all --quiet "oci-archive:$ARCHIVE" "oci:$tmp/all:x" || die "skopeo copy --all failed"
check "skopeo copy --all keeps the index (same digest)" test "$(skopeo inspect --raw "oci:$tmp/all:x" | sha256sum | cut -d' ' -f1)" = "$d1"

listing() { (cd "$1" && find . -mindepth 1 -printf '%P %y %m %s\n' | LC_ALL=C sort); }
# machine ARCH: file(1)'s name for the ELF machine of ARCH
machine() { case $1 in amd64) echo x86-64 ;; arm64) echo "ARM aarch64" ;; esac; }

for arch in "${ARCHES[@]}"; do
  tree=dist/extension-$arch
  img="$tmp/img-$arch"
  # skopeo picks the image of the platform asked for (this machine's by default).
  skopeo --override-os linux --override-arch "$arch" copy --quiet "oci-archive:$ARCHIVE" "dir:$img" ||
    die "skopeo copy of linux/$arch failed"
  check "$arch: skopeo reads the linux/$arch image" test "$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["os"] + "/" + c["architecture"])' \
    "$img/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["digest"].split(":")[1])' "$img/manifest.json")")" = "linux/$arch"
  python3 - "$img/manifest.json" >"$tmp/layers-$arch" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for l in m["layers"]:
    print(l["mediaType"], l["digest"].split(":", 1)[1])
PY
  check "$arch: exactly one layer" test "$(wc -l <"$tmp/layers-$arch")" -eq 1
  read -r media layer <"$tmp/layers-$arch"
  check "$arch: layer is a gzip tar" test "$media" = application/vnd.oci.image.layer.v1.tar+gzip
  root="$tmp/root-$arch"
  mkdir "$root"
  tar -xzf "$img/$layer" -C "$root"
  check "$arch: layer unpacks to $tree/ (paths, types, modes, sizes)" diff <(listing "$tree") <(listing "$root")
  check "$arch: layer contents equal $tree/" diff -r "$tree" "$root"
  check "$arch: every layer entry owned by 0:0 at SOURCE_DATE_EPOCH" \
    test -z "$(tar --numeric-owner --full-time -tvzf "$img/$layer" | awk -v t="$(date -u -d "@$epoch" '+%Y-%m-%d %H:%M:%S')" '$2 != "0/0" || ($4 " " $5) != t')"
  # The docker-save view of the same archive (what `docker load` reads) lists the layer by
  # its uncompressed digest, one image per platform.
  diff_id=$(gunzip -c "$img/$layer" | sha256sum | cut -d' ' -f1)
  check "$arch: docker-archive view reads the same layer" test \
    "$(skopeo inspect --format '{{.Layers}}' "docker-archive:$ARCHIVE:tailscale-bridge:$version-$arch")" = "[sha256:$diff_id]"
  check "$arch: entries sorted" bash -c "diff <(tar -tzf '$img/$layer') <(tar -tzf '$img/$layer' | LC_ALL=C sort)"
  bindir="$root/rootfs/usr/local/lib/containers/tailscale/usr/local/bin"
  check "$arch: no shell or iptables in the service rootfs" \
    test "$(ls "$bindir" | tr '\n' ' ')" = "tailscale tailscaled tsbridge "
  for b in tsbridge tailscaled tailscale; do
    desc=$(file -b "$bindir/$b")
    check "$arch: $b is a static ELF for $(machine "$arch") ($desc)" \
      bash -c '[[ $1 == ELF\ 64-bit\ LSB\ *", $2, "* && $1 == *static* ]]' _ "$desc" "$(machine "$arch")"
  done
done

# Same trees, different owners, times and permission bits -> same digest.
scrambled=()
for arch in "${ARCHES[@]}"; do
  s="$tmp/scrambled-$arch"
  cp -a "dist/extension-$arch" "$s"
  chown -R 1234:5678 "$s"
  find "$s" -exec touch -h -d '2001-02-03 04:05:06' {} +
  chmod 0700 "$s/rootfs/usr/local/lib/containers/tailscale/usr/local/bin/tsbridge"
  chmod 0600 "$s/manifest.yaml"
  scrambled+=("linux/$arch=$s")
done
python3 scripts/oci.py "$tmp/scrambled.tar" "$version" "$epoch" "${scrambled[@]}" >/dev/null
check "scrambled owners/times/modes give the same digest" test "$(digest_of "$tmp/scrambled.tar")" = "$d1"
check "scrambled trees give a byte-identical archive" cmp -s "$tmp/scrambled.tar" "$ARCHIVE"

# A second full build from the same commit gives the same digest.
cp "$ARCHIVE" "$tmp/first.tar"
scripts/extension.sh 2>/dev/null
check "second build: same digest" test "$(digest_of "$ARCHIVE")" = "$d1"
check "second build: byte-identical archive" cmp -s "$ARCHIVE" "$tmp/first.tar"

# A changed tree (of either platform) must change the digest (the comparisons above can fail).
echo "# changed" >>"$tmp/scrambled-arm64/manifest.yaml"
python3 scripts/oci.py "$tmp/changed.tar" "$version" "$epoch" "${scrambled[@]}" >/dev/null
check "a changed file in the arm64 tree changes the digest" test "$(digest_of "$tmp/changed.tar")" != "$d1"

[ "$fails" -eq 0 ] || die "$fails extension checks failed"
log "extension checks passed"
