#!/usr/bin/env bash
# Builds the guest initramfs: static busybox, /init, guest/test.sh and the static
# test programs (guest/dio.c and the tree's tools/testing/selftests/dma/dma_map_benchmark.c).
#
# usage: build-initramfs.sh            (needs the tree unpacked by build-kernel.sh)
#
# Output: $BOUNCE_KERNEL_CACHE/initramfs/initramfs.cpio (uncompressed newc cpio, made
# with the tree's usr/gen_init_cpio so no root privileges and no mknod are needed).
# Rebuilt when any input changed; prints the cpio path on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument: $1" ;;
esac

T0=$(date +%s)
ensure_cache_dir
GUEST="$BOUNCE_LINUX_DIR/guest"
BUSYBOX=/bin/busybox
OUT="$CACHE_INITRAMFS"
CPIO="$OUT/initramfs.cpio"
BENCH_SRC="$CACHE_TREE/tools/testing/selftests/dma/dma_map_benchmark.c"
BENCH_HDR="$CACHE_TREE/include/linux/map_benchmark.h"
GEN_SRC="$CACHE_TREE/usr/gen_init_cpio.c"

step "check inputs"
for f in "$BENCH_SRC" "$BENCH_HDR" "$GEN_SRC"; do
    [ -f "$f" ] || die "$f not found: run build-kernel.sh first (it unpacks the tree)"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install busybox-static (setup.sh)"
if ! file_out=$(LC_ALL=C readelf -l "$BUSYBOX" 2>/dev/null) || grep -q 'INTERP' <<<"$file_out"; then
    die "$BUSYBOX is not statically linked: install busybox-static, not busybox (setup.sh)"
fi
for f in init test.sh dio.c; do [ -f "$GUEST/$f" ] || die "missing $GUEST/$f"; done

STAMP=$(cat "$GUEST/init" "$GUEST/test.sh" "$GUEST/dio.c" "$BENCH_SRC" "$BENCH_HDR" "$GEN_SRC" \
        "$BUSYBOX" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$CPIO" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
    info "initramfs up to date: $CPIO"
    echo "$CPIO"
    exit 0
fi

rm -rf "$OUT/work"
mkdir -p "$OUT/work/include/linux"

step "compile static test programs (gcc -static)"
CFLAGS=(-O2 -Wall -static -pthread)
gcc "${CFLAGS[@]}" -Wextra -o "$OUT/work/dio" "$GUEST/dio.c"
# The selftest includes <linux/map_benchmark.h>, which is not a uapi header in 6.12:
# give it that one header and let <linux/types.h> come from the host's uapi headers.
cp "$BENCH_HDR" "$OUT/work/include/linux/map_benchmark.h"
gcc "${CFLAGS[@]}" -I"$OUT/work/include" -o "$OUT/work/dma_map_benchmark" "$BENCH_SRC"
gcc -O2 -o "$OUT/work/gen_init_cpio" "$GEN_SRC"
info "dio $(stat -c %s "$OUT/work/dio") bytes, dma_map_benchmark $(stat -c %s "$OUT/work/dma_map_benchmark") bytes"

step "assemble cpio"
LIST="$OUT/work/initramfs.list"
{
    for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /mnt /root /etc; do
        echo "dir $d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "nod /dev/null 0666 0 0 c 1 3"
    echo "file /bin/busybox $BUSYBOX 0755 0 0"
    # One symlink per applet, at the path busybox itself would install it.
    "$BUSYBOX" --list-full | while IFS= read -r applet; do
        [ "$applet" = bin/busybox ] && continue
        echo "slink /$applet /bin/busybox 0777 0 0"
    done
    echo "file /init $GUEST/init 0755 0 0"
    echo "file /test.sh $GUEST/test.sh 0755 0 0"
    echo "file /usr/bin/dio $OUT/work/dio 0755 0 0"
    echo "file /usr/bin/dma_map_benchmark $OUT/work/dma_map_benchmark 0755 0 0"
} > "$LIST"
"$OUT/work/gen_init_cpio" -t 0 "$LIST" > "$CPIO.tmp"
mv "$CPIO.tmp" "$CPIO"
echo "$STAMP" > "$OUT/stamp"
info "built $CPIO ($(stat -c %s "$CPIO") bytes) in $(( $(date +%s) - T0 )) s"
echo "$CPIO"
