#!/usr/bin/env bash
# Builds containerboot (what the official Talos extension runs) at the pinned tailscale
# version, stripped and static like scripts/tools.sh builds the other Go tools, cached in
# $TSBRIDGE_CACHE; copies it to .tools/bin/containerboot.
. "$(dirname "$0")/../scripts/lib.sh"

dir="$CACHE/bin/containerboot-$TAILSCALE_VERSION-stripped"
if [ ! -x "$dir/containerboot" ]; then
  log "go install tailscale.com/cmd/containerboot@$TAILSCALE_VERSION"
  mkdir -p "$CACHE/bin"
  tmp=$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")
  GOBIN="$tmp" go install -ldflags="-s -w" "tailscale.com/cmd/containerboot@$TAILSCALE_VERSION" ||
    die "go install tailscale.com/cmd/containerboot@$TAILSCALE_VERSION failed"
  mkdir -p "$dir"
  mv "$tmp/containerboot" "$dir/containerboot" && rmdir "$tmp"
fi
install -m 0755 "$dir/containerboot" "$TOOLS_BIN/containerboot"
