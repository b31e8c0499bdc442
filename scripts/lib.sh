# Shared helpers for scripts/*.sh. Source it; it sets up paths and pinned versions.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
. "$ROOT/versions.env"
# A cache the scripts own, outside the clone, so a fresh clone on the same machine (CI)
# reuses Go builds and downloaded packages.
CACHE=${TSBRIDGE_CACHE:-/var/cache/tsbridge}
TOOLS_BIN="$ROOT/.tools/bin"
export GOCACHE="$CACHE/gocache" GOMODCACHE="$CACHE/gomodcache" CGO_ENABLED=0
export GOFLAGS="-trimpath -modcacherw"
mkdir -p "$CACHE/bin" "$TOOLS_BIN"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
