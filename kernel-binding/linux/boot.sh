#!/usr/bin/env bash
# Boots the guest kernel under qemu TCG with a virtio-blk disk whose DMA goes through
# swiotlb (swiotlb=force, iommu_platform=on) and a pci-testdev for dma_map_benchmark,
# captures the console and extracts the result block printed by guest/test.sh.
#
# usage: boot.sh [options]
#   --name NAME        label of this boot (default: linux); files go to
#                      $BOUNCE_KERNEL_CACHE/runs/NAME/{console.log,results.txt,disk.img}
#   --append "ARGS"    extra kernel arguments, e.g. "swiotlb.strategy=magazine" or test
#                      knobs such as "bouncetest.bench_seconds=5" (see guest/test.sh)
#   --debug            boot the debug kernel variant (build-kernel.sh --debug)
#   --nodyn            boot the variant without SWIOTLB_DYNAMIC (build-kernel.sh --nodyn)
#   --kernel PATH      bzImage to boot (default: the variant's build output)
#   --initrd PATH      initramfs (default: build-initramfs.sh output)
#   --timeout SECONDS  hard limit for the whole VM run (default 600, debug 1800)
#   --smp N --mem SIZE vCPUs (default 2) and memory (default 512M)
#   --disk-size SIZE   size of the scratch disk (default 256M; recreated each boot)
#   --disks N          1 (default) or 2 scratch disks. With 2 they sit at fixed PCI
#                      addresses, /dev/vda at 0000:00:04.0 and /dev/vdb at 0000:00:05.0
#                      (the names swiotlb.strategy= routes use, see AB_DEVICES in lib.sh),
#                      and guest/test.sh runs its phases on both at once (an A/B boot)
#   --no-force         leave out swiotlb=force (reference run without bouncing: the
#                      debugfs counters must stay flat)
#   --quiet            do not echo the console, only the result block
# Environment: BOUNCE_QEMU_EXTRA  extra qemu arguments (word-split)
#
# Exit status: 0 result block found, integrity passed, no kernel splat (WARN, BUG,
# lockdep, DMA-API) and shared memory accounted (test.sh's memory check); 1 integrity
# failed, splats or unaccounted shared memory; 2 no result block (boot failure, panic
# or timeout).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NAME=linux
APPEND=""
VARIANT_ARGS=()
KERNEL=""
INITRD=""
TIMEOUT=""
SMP=2
MEM=512M
DISK_SIZE=256M
QUIET=0
DISKS=1
FORCE="swiotlb=force"
while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME=$2; shift ;;
        --append) APPEND=$2; shift ;;
        --debug) VARIANT_ARGS=(--debug) ;;
        --nodyn) VARIANT_ARGS=(--nodyn) ;;
        --kernel) KERNEL=$2; shift ;;
        --initrd) INITRD=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --smp) SMP=$2; shift ;;
        --mem) MEM=$2; shift ;;
        --disk-size) DISK_SIZE=$2; shift ;;
        --disks) DISKS=$2; shift ;;
        --quiet) QUIET=1 ;;
        --no-force) FORCE="" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
[[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "--name must be a simple word, got '$NAME'"
[[ "$DISKS" =~ ^[12]$ ]] || die "--disks must be 1 or 2, got '$DISKS'"

ensure_cache_dir
[ -n "$KERNEL" ] || KERNEL=$("$BOUNCE_LINUX_DIR/build-kernel.sh" "${VARIANT_ARGS[@]}" --print-image)
[ -n "$INITRD" ] || INITRD="$CACHE_INITRAMFS/initramfs.cpio"
if [ -z "$TIMEOUT" ]; then
    if [ "${VARIANT_ARGS[*]}" = --debug ]; then TIMEOUT=1800; else TIMEOUT=600; fi
fi
[ -f "$KERNEL" ] || die "kernel $KERNEL not found: run build-kernel.sh ${VARIANT_ARGS[*]}"
[ -f "$INITRD" ] || die "initramfs $INITRD not found: run build-initramfs.sh"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run setup.sh"

RUN="$CACHE_RUNS/$NAME"
mkdir -p "$RUN"
LOG="$RUN/console.log"
RESULTS="$RUN/results.txt"
DISK="$RUN/disk.img"
DISK1="$RUN/disk1.img"
rm -f "$LOG" "$RESULTS" "$DISK" "$DISK1"

D0_ADDR=""
if [ "$DISKS" = 2 ]; then
    step "boot $NAME: scratch disks $DISK and $DISK1 ($DISK_SIZE each)"
    truncate -s "$DISK_SIZE" "$DISK1"
    D0_ADDR=",addr=0x4"
else
    step "boot $NAME: scratch disk $DISK ($DISK_SIZE)"
fi
truncate -s "$DISK_SIZE" "$DISK"
# cache=none needs O_DIRECT on the host file system (not available on tmpfs).
CACHE_MODE=none
if ! dd if=/dev/zero of="$DISK" bs=4096 count=1 oflag=direct conv=notrunc status=none 2>/dev/null; then
    warn "host file system of $RUN has no O_DIRECT: using cache=writeback"
    CACHE_MODE=writeback
fi

CMDLINE="console=ttyS0 $FORCE panic=-1 $APPEND"
CMDLINE=$(tr -s ' ' <<<"$CMDLINE" | sed 's/^ //; s/ $//')
# shellcheck disable=SC2054  # the commas belong to qemu's option syntax
QEMU=(qemu-system-x86_64 -accel tcg -smp "$SMP" -m "$MEM" -nographic -no-reboot
      -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"
      -drive "file=$DISK,if=none,format=raw,id=d0,cache=$CACHE_MODE"
      -device "virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on$D0_ADDR"
      -device pci-testdev -nic none)
if [ "$DISKS" = 2 ]; then
    QEMU+=(-drive "file=$DISK1,if=none,format=raw,id=d1,cache=$CACHE_MODE"
           -device virtio-blk-pci,drive=d1,iommu_platform=on,disable-legacy=on,addr=0x5)
fi
# shellcheck disable=SC2206
[ -n "${BOUNCE_QEMU_EXTRA:-}" ] && QEMU+=($BOUNCE_QEMU_EXTRA)
info "timeout ${TIMEOUT}s, console log $LOG"
info "$(printf '%q ' "${QEMU[@]}")"

T0=$(date +%s)
rc=0
if [ "$QUIET" = 1 ]; then
    timeout -k 10 "$TIMEOUT" "${QEMU[@]}" < /dev/null > "$LOG" 2>&1 || rc=$?
else
    timeout -k 10 "$TIMEOUT" "${QEMU[@]}" < /dev/null 2>&1 | tee "$LOG" || rc=${PIPESTATUS[0]}
fi
ELAPSED=$(( $(date +%s) - T0 ))

tr -d '\r' < "$LOG" \
    | sed -n '/^=== BOUNCE-RESULTS-BEGIN ===/,/^=== BOUNCE-RESULTS-END ===/p' \
    | grep -E '^(=== BOUNCE-RESULTS-(BEGIN|END) ===|[a-z_]+: )' > "$RESULTS" || true
echo "boot: name=$NAME seconds=$ELAPSED qemu_rc=$rc" >> "$RESULTS"

step "boot $NAME finished in ${ELAPSED}s (qemu exit status $rc)"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    warn "qemu hit the ${TIMEOUT}s timeout"
fi
if ! grep -q '^=== BOUNCE-RESULTS-END ===' "$RESULTS"; then
    tail -n 30 "$LOG" | tr -d '\r' >&2
    warn "no result block in $LOG (boot failure, panic or timeout)"
    exit 2
fi
grep -v '^===' "$RESULTS"
if grep -q '^result: integrity=PASS kernel_log=clean memory=ok' "$RESULTS"; then
    info "integrity PASS, kernel log clean, shared memory accounted ($RESULTS)"
    exit 0
fi
grep -q '^result: integrity=PASS' "$RESULTS" || warn "integrity FAIL ($RESULTS)"
grep -q '^result: .*kernel_log=clean' "$RESULTS" \
    || warn "kernel log has splats (WARN/BUG/lockdep/DMA-API); see $LOG"
grep -q '^result: .*memory=ok' "$RESULTS" \
    || warn "shared memory check failed (memory_check: line of $RESULTS)"
exit 1
