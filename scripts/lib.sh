# Shared helpers for scripts/*.sh. Source it; it sets up paths and pinned versions.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
. "$ROOT/versions.env"
# A cache the scripts own, outside the clone, so a fresh clone on the same machine (CI)
# reuses Go builds and downloaded packages.
CACHE=${TSBRIDGE_CACHE:-/var/cache/tsbridge}
# The content-addressed parts (Go's build and module caches, the pinned .deb downloads) can
# come from another cache: the cold set-up stage (scripts/test-cold.sh) runs with a new,
# empty TSBRIDGE_CACHE but shares these, so it costs links and copies, not rebuilds.
SHARED_CACHE=${TSBRIDGE_SHARED_CACHE:-$CACHE}
TOOLS_BIN="$ROOT/.tools/bin"
export GOCACHE="$SHARED_CACHE/gocache" GOMODCACHE="$SHARED_CACHE/gomodcache" CGO_ENABLED=0
export GOFLAGS="-trimpath -modcacherw"
mkdir -p "$CACHE/bin" "$TOOLS_BIN"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# go_pin GOMOD MODULE VERSION: GOMOD must require MODULE at VERSION (from versions.env).
go_pin() {
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2 $3([[:space:]]|$)" "$1" ||
    die "$1 does not require $2 $3 (versions.env): make them agree"
}
