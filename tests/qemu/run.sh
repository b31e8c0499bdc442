#!/usr/bin/env bash
# `make qemu-test`: boots the pinned Debian kernel under QEMU with an initramfs that runs
# the built extension (dist/extension-ARCH/, or $TSBRIDGE_QEMU_EXTENSION) exactly as Talos
# would, and reads the verdict from the serial console. See README "QEMU test".
# TSBRIDGE_QEMU_ARCH=arm64 (`make qemu-test-arm64`): the arm64 kernel, busybox, extension
# tree and tailnet under qemu-system-aarch64 (TCG), the same checks.
. "$(dirname "$0")/../../scripts/lib.sh"
cd "$ROOT"

ARCH=${TSBRIDGE_QEMU_ARCH:-amd64}
EXT=${TSBRIDGE_QEMU_EXTENSION:-dist/extension-$ARCH}
# the in-VM checks, in the order vm/vm-test.sh prints them
CHECKS=(lab spec config-wait service-running joined key-hidden pod-address pod-name guards nft restart identity poweroff)
# TCG by default: KVM does not work on the development machines (see README).
ACCEL=${TSBRIDGE_QEMU_ACCEL:-tcg}
TIMEOUT=${TSBRIDGE_QEMU_TIMEOUT:-600}
case $ARCH in
  amd64)
    OUT=target/qemu
    QEMU=(qemu-system-x86_64 -accel "$ACCEL" -cpu max)
    CONSOLE=ttyS0
    ;;
  arm64)
    OUT=target/qemu-arm64
    # -M virt: QEMU's generic board (PL011 serial, the kernel's own drivers); pauth-impdef:
    # pointer authentication with QEMU's cheap algorithm, not the architected QARMA, which
    # is slow to emulate (Debian's kernel signs return addresses everywhere).
    QEMU=(qemu-system-aarch64 -M virt -accel "$ACCEL" -cpu max,pauth-impdef=on)
    CONSOLE=ttyAMA0
    ;;
  *) die "TSBRIDGE_QEMU_ARCH=$ARCH: amd64 or arm64" ;;
esac

[ -d "$EXT/rootfs" ] || die "$EXT is missing: run \`make extension\` first"
[ -n "$(command -v "${QEMU[0]}")" ] || die "${QEMU[0]} is missing: run scripts/setup.sh"
tests/qemu/fetch.sh "$ARCH"
qemu_dirs "$ARCH"
"$ROOT/scripts/tools.sh" >/dev/null

mkdir -p "$OUT"
go_pin tests/qemu/runner/go.mod github.com/siderolabs/talos/pkg/machinery "$TALOS_MACHINERY_VERSION"
log "testing and building the Talos-like service runner"
(cd tests/qemu/runner && go test ./... >/dev/null) || die "tests/qemu/runner: go test failed (run it there to see why)"
(cd tests/qemu/runner && GOOS=linux GOARCH=$ARCH go build -ldflags="-s -w" -o "$ROOT/$OUT/talos-runner" .) || die "building tests/qemu/runner failed"
tests/qemu/build-initramfs.sh "$OUT/initrd.gz" "$EXT" "$OUT/talos-runner" "$ARCH"

kernel=$(ls "$Q_KDIR"/boot/vmlinuz-*)
console="$OUT/console.log"
log "booting $(basename "$kernel") under ${QEMU[0]} ($ACCEL, timeout ${TIMEOUT}s); console: $console"
start=$(date +%s)
set +e
timeout --foreground -k 10 "$TIMEOUT" "${QEMU[@]}" -smp 2 -m 2048 \
  -nographic -no-reboot -net none -kernel "$kernel" -initrd "$OUT/initrd.gz" \
  -append "console=$CONSOLE panic=-1 quiet" </dev/null >"$console" 2>&1
qrc=$?
set -e
log "QEMU exited with $qrc after $(($(date +%s) - start)) s"

show() {
  echo "----- console log ($console, last 250 lines) -----" >&2
  tr -d '\r' <"$console" | grep -av '^\s*$' | tail -n 250 >&2
  echo "----- end of console log -----" >&2
}
# Read once: `tr | grep -m1` fails under pipefail when grep exits before tr has written a
# long log (SIGPIPE), which named a check that was there as missing.
lines=$(tr -d '\r' <"$console")
for c in "${CHECKS[@]}"; do
  line=$(grep -a -m1 "^CHECK $c: " <<<"$lines") || {
    show
    fail_line=$(grep -a -m1 '^FAIL ' <<<"$lines" || true)
    die "QEMU test: check '$c' missing${fail_line:+ ($fail_line)}${qrc:+; qemu exit $qrc}"
  }
  echo "ok  ${line#CHECK }"
done
grep -aq 'TSBRIDGE-QEMU-RESULT: PASS' "$console" || { show; die "QEMU test: no PASS marker"; }
log "QEMU test ($ARCH) passed in $(($(date +%s) - start)) s"
