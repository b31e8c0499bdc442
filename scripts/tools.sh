#!/usr/bin/env bash
# Builds (stripped, CGO_ENABLED=0) the real Go counterparts at the versions pinned in versions.env into .tools/bin:
# tailscale, tailscaled (tailscale.com; also for arm64 into .tools/bin/linux-arm64, for the
# arm64 extension and the arm64 QEMU test's peer), containerboot (what the official Talos extension
# runs: the lab's migration tests and the benchmarks), coredns (the lab's cluster DNS),
# wireguard (wireguard-go, the KubeSpan lab test's WireGuard), the CNI reference plugins
# bridge and host-local with cnitool (the CNI lab test) and headscale. Builds are
# cached per version in $TSBRIDGE_CACHE, so the second run (and CI on the same machine)
# only copies.
. "$(dirname "$0")/lib.sh"

# install NAME MODULE_PATH VERSION [ARCH]: for the host (amd64) or cross-built for ARCH,
# cached per version and architecture.
install_tool() {
  local name=$1 pkg=$2 version=$3 arch=${4:-amd64}
  local dir="$CACHE/bin/$name-$version-stripped" dest
  [ "$arch" = amd64 ] || dir="$CACHE/bin/$name-$version-linux-$arch-stripped"
  dest=$(tools_bin "$arch")
  if [ ! -x "$dir/$name" ]; then
    log "go install $pkg@$version (linux/$arch)"
    local tmp
    tmp=$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")
    if [ "$arch" = amd64 ]; then
      GOBIN="$tmp" go install -ldflags="-s -w" "$pkg@$version" || die "go install $pkg@$version failed"
    else
      # go install refuses GOBIN when cross-compiling: it writes GOPATH/bin/linux_ARCH/.
      GOPATH="$tmp" GOOS=linux GOARCH="$arch" go install -ldflags="-s -w" "$pkg@$version" ||
        die "go install $pkg@$version for linux/$arch failed"
      mv "$tmp/bin/linux_$arch/$name" "$tmp/$name"
    fi
    mkdir -p "$dir"
    mv "$tmp/$name" "$dir/$name" && rm -rf "$tmp"
  fi
  mkdir -p "$dest"
  install -m 0755 "$dir/$name" "$dest/$name"
}

for arch in "${ARCHES[@]}"; do
  install_tool tailscale tailscale.com/cmd/tailscale "$TAILSCALE_VERSION" "$arch"
  install_tool tailscaled tailscale.com/cmd/tailscaled "$TAILSCALE_VERSION" "$arch"
done
# `scripts/tools.sh tailscale` stops here (the extension needs only these two).
if [ "${1:-}" = tailscale ]; then
  log "tools ready in $TOOLS_BIN: tailscale tailscaled (amd64; $(tools_bin arm64): arm64)"
  exit 0
fi

install_tool containerboot tailscale.com/cmd/containerboot "$TAILSCALE_VERSION"
install_tool coredns github.com/coredns/coredns "$COREDNS_VERSION"
# The KubeSpan lab test's WireGuard (the machines' kernel has no wireguard module).
install_tool wireguard golang.zx2c4.com/wireguard "$WIREGUARD_GO_VERSION"

# The CNI lab test: the reference plugins flannel delegates to, and cnitool to run them.
install_tool bridge github.com/containernetworking/plugins/plugins/main/bridge "$CNI_PLUGINS_VERSION"
install_tool host-local github.com/containernetworking/plugins/plugins/ipam/host-local "$CNI_PLUGINS_VERSION"
install_tool cnitool github.com/containernetworking/cni/cnitool "$CNITOOL_VERSION"

# headscale: built from scripts/tools/headscale/go.mod (see the comment there for why not
# `go install`); the version there must match versions.env.
# Also for arm64: the control server of the arm64 QEMU test.
grep -q "github.com/juanfont/headscale $HEADSCALE_VERSION" "$ROOT/scripts/tools/headscale/go.mod" ||
  die "scripts/tools/headscale/go.mod does not pin headscale $HEADSCALE_VERSION (versions.env)"
for arch in "${ARCHES[@]}"; do
  hs_dir="$CACHE/bin/headscale-$HEADSCALE_VERSION-stripped"
  [ "$arch" = amd64 ] || hs_dir="$CACHE/bin/headscale-$HEADSCALE_VERSION-linux-$arch-stripped"
  if [ ! -x "$hs_dir/headscale" ]; then
    log "go build headscale $HEADSCALE_VERSION (linux/$arch)"
    mkdir -p "$hs_dir"
    (cd "$ROOT/scripts/tools/headscale" && GOOS=linux GOARCH=$arch go build -ldflags="-s -w" -o "$hs_dir/headscale.tmp" github.com/juanfont/headscale/cmd/headscale) ||
      die "building headscale $HEADSCALE_VERSION for linux/$arch failed"
    mv "$hs_dir/headscale.tmp" "$hs_dir/headscale"
  fi
  mkdir -p "$(tools_bin "$arch")"
  install -m 0755 "$hs_dir/headscale" "$(tools_bin "$arch")/headscale"
done

# promcheck: `promtool check metrics`'s linter and Prometheus's text parser, from
# tests/promcheck/go.mod (client_golang pinned there; see main.go for why not promtool).
grep -q "github.com/prometheus/client_golang $PROMETHEUS_CLIENT_GOLANG_VERSION" "$ROOT/tests/promcheck/go.mod" ||
  die "tests/promcheck/go.mod does not pin client_golang $PROMETHEUS_CLIENT_GOLANG_VERSION (versions.env)"
(cd "$ROOT/tests/promcheck" && go build -ldflags="-s -w" -o "$TOOLS_BIN/promcheck" .) ||
  die "building tests/promcheck failed"
log "tools ready in $TOOLS_BIN: $(find "$TOOLS_BIN" -type f -printf '%P\n' | sort | tr '\n' ' ')"
