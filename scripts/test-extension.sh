#!/usr/bin/env bash
# Checks `make extension`'s output (run after it): Debian's skopeo reads the OCI archive,
# its single layer unpacks to exactly dist/extension/ (paths, modes, contents; owner 0:0,
# times = SOURCE_DATE_EPOCH), and packing is reproducible: the same tree with other
# owners, times and permission bits, and a second full build, give the same digest.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ARCHIVE=dist/tailscale-bridge.oci.tar
[ -d dist/extension ] && [ -f "$ARCHIVE" ] || die "dist/ is missing: run \`make extension\` first"
command -v skopeo >/dev/null || die "skopeo is not installed: run \`make setup\` (scripts/setup.sh)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then log "ok: $name"; else log "FAIL: $name"; fails=$((fails + 1)); fi
}

epoch=$(git log -1 --format=%ct)
digest_of() { skopeo inspect --format '{{.Digest}}' "oci-archive:$1"; }
d1=$(digest_of "$ARCHIVE") || die "skopeo cannot read $ARCHIVE"
log "skopeo reads $ARCHIVE: $d1"

# The single layer, unpacked, equals dist/extension/.
skopeo copy --quiet "oci-archive:$ARCHIVE" "dir:$tmp/img" || die "skopeo copy failed"
python3 - "$tmp/img/manifest.json" >"$tmp/layers" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for l in m["layers"]:
    print(l["mediaType"], l["digest"].split(":", 1)[1])
PY
check "exactly one layer" test "$(wc -l <"$tmp/layers")" -eq 1
read -r media layer <"$tmp/layers"
check "layer is a gzip tar" test "$media" = application/vnd.oci.image.layer.v1.tar+gzip
mkdir "$tmp/root"
tar -xzf "$tmp/img/$layer" -C "$tmp/root"
listing() { (cd "$1" && find . -mindepth 1 -printf '%P %y %m %s\n' | LC_ALL=C sort); }
check "layer unpacks to dist/extension/ (paths, types, modes, sizes)" diff <(listing dist/extension) <(listing "$tmp/root")
check "layer contents equal dist/extension/" diff -r dist/extension "$tmp/root"
check "every layer entry owned by 0:0 at SOURCE_DATE_EPOCH" \
  test -z "$(tar --numeric-owner --full-time -tvzf "$tmp/img/$layer" | awk -v t="$(date -u -d "@$epoch" '+%Y-%m-%d %H:%M:%S')" '$2 != "0/0" || ($4 " " $5) != t')"
# The docker-save view of the same archive (what `crane push FILE` and `docker load` read)
# lists the layer by its uncompressed digest.
diff_id=$(gunzip -c "$tmp/img/$layer" | sha256sum | cut -d' ' -f1)
check "docker-archive view reads the same layer" test \
  "$(skopeo inspect --format '{{.Layers}}' "docker-archive:$ARCHIVE")" = "[sha256:$diff_id]"
check "entries sorted" bash -c "diff <(tar -tzf '$tmp/img/$layer') <(tar -tzf '$tmp/img/$layer' | LC_ALL=C sort)"
check "no shell or iptables in the service rootfs" \
  test "$(ls dist/extension/rootfs/usr/local/lib/containers/tailscale/usr/local/bin | tr '\n' ' ')" = "tailscale tailscaled tsbridge "

# Same tree, different owners, times and permission bits -> same digest.
cp -a dist/extension "$tmp/scrambled"
chown -R 1234:5678 "$tmp/scrambled"
find "$tmp/scrambled" -exec touch -h -d '2001-02-03 04:05:06' {} +
chmod 0700 "$tmp/scrambled/rootfs/usr/local/lib/containers/tailscale/usr/local/bin/tsbridge"
chmod 0600 "$tmp/scrambled/manifest.yaml"
python3 scripts/oci.py "$tmp/scrambled" "$tmp/scrambled.tar" "$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)" "$epoch" >/dev/null
check "scrambled owners/times/modes give the same digest" test "$(digest_of "$tmp/scrambled.tar")" = "$d1"
check "scrambled tree gives a byte-identical archive" cmp -s "$tmp/scrambled.tar" "$ARCHIVE"

# A second full build from the same commit gives the same digest.
cp "$ARCHIVE" "$tmp/first.tar"
scripts/extension.sh 2>/dev/null
check "second build: same digest" test "$(digest_of "$ARCHIVE")" = "$d1"
check "second build: byte-identical archive" cmp -s "$ARCHIVE" "$tmp/first.tar"

# A changed tree must change the digest (the comparison above can fail).
echo "# changed" >>"$tmp/scrambled/manifest.yaml"
python3 scripts/oci.py "$tmp/scrambled" "$tmp/changed.tar" x "$epoch" >/dev/null
check "a changed file changes the digest" test "$(digest_of "$tmp/changed.tar")" != "$d1"

[ "$fails" -eq 0 ] || die "$fails extension checks failed"
log "extension checks passed"
