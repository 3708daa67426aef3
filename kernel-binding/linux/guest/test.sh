#!/bin/sh
# Guest test script, run by /init (busybox sh). Prints progress, then a result block
# between "=== BOUNCE-RESULTS-BEGIN ===" and "=== BOUNCE-RESULTS-END ===" that the host
# (boot.sh) parses. Every line inside the block is "<key>: <k>=<v> ...".
#
# Knobs, read from the kernel command line (boot.sh --append):
#   bouncetest.dio_threads=4      integrity: threads on /dev/vda
#   bouncetest.bench_seconds=1    dma_map_benchmark seconds per run
#   bouncetest.bench_reps=5       runs per granule/direction (median reported)
#   bouncetest.bench_threads=1    dma_map_benchmark threads
#   bouncetest.bench_granules=1,4,16
#   bouncetest.bench_dirs=1,2     1 = DMA_TO_DEVICE, 2 = DMA_FROM_DEVICE, 0 = bidirectional
#   bouncetest.tput_seconds=2     throughput run (write, then read)
#   bouncetest.tput_reps=3        throughput runs (median reported)
#   bouncetest.tput_bs=65536      throughput block size
#   bouncetest.tput_threads=2     throughput threads
#   bouncetest.iops_seconds=2     IOPS run: random O_DIRECT of iops_bs (write, then read)
#   bouncetest.iops_reps=3        IOPS runs (median reported)
#   bouncetest.iops_bs=4096       IOPS block size
#   bouncetest.iops_threads=4     IOPS threads (jobs) per disk
#   bouncetest.skip=bench,tput    skip phases (dio, bench, tput, iops)
#   bouncetest.dio_fault=1        self-test of the checker: dio -F flips a byte on disk
#                                 per size, so the run must report integrity=FAIL
# With a second disk (/dev/vdb, boot.sh --disks 2) the dio integrity and throughput
# phases run on both disks at once, and the result block gets per-disk lines
# (dio_disk:, tput_disk:); every boot with the bounce patch reports the per-device
# counters of /sys/kernel/bounce (sysfs_device:, sysfs_lane:),
# so two strategies (or Linux's swiotlb and a strategy) compare inside one boot.
# Shared memory: every phase reports debugfs swiotlb/bounce_memory (memory_<phase>:),
# Linux's pools included; with a strategy active, "after boot" checks that no shared
# memory is unaccounted (the pages the conversion hooks converted equal the strategies'
# committed and quarantined bytes) and that Linux's idle default pool was freed unless
# a device is routed to it (result: memory=ok).
# The strategy label comes from swiotlb.strategy= ("linux" when absent); the strategy
# that actually runs from debugfs swiotlb/bounce_strategy (the bounce patch; "linux"
# when no strategy is active or the kernel has no bounce patch).

CMDLINE=$(cat /proc/cmdline)
DBG=/sys/kernel/debug
SWIOTLB=$DBG/swiotlb
RES=/tmp/results
: > "$RES"

# param NAME DEFAULT: value of bouncetest.NAME= on the command line.
param() {
    for w in $CMDLINE; do
        case "$w" in "bouncetest.$1="*) echo "${w#*=}"; return ;; esac
    done
    echo "$2"
}
# median FILE COLUMN / column_min FILE COLUMN / column_list FILE COLUMN ("a,b,c")
median() {
    awk -v c="$2" '$c != "nan" { print $c }' "$1" | sort -n |
        awk '{ a[NR] = $1 } END { if (!NR) print "nan"; else if (NR % 2) print a[(NR + 1) / 2];
                                  else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
column_min() { awk -v c="$2" '$c != "nan" { print $c }' "$1" | sort -n | head -n 1; }
column_list() { awk -v c="$2" '{ printf "%s%s", (NR > 1 ? "," : ""), $c } END { print "" }' "$1"; }
skipped() { case ",$SKIP," in *",$1,"*) return 0 ;; esac; return 1; }
res() { echo "$*" >> "$RES"; }
say() { echo "test: $*"; }

DIO_THREADS=$(param dio_threads 4)
BENCH_SECONDS=$(param bench_seconds 1)
BENCH_REPS=$(param bench_reps 5)
BENCH_THREADS=$(param bench_threads 1)
BENCH_GRANULES=$(param bench_granules 1,4,16 | tr , ' ')
BENCH_DIRS=$(param bench_dirs 1,2 | tr , ' ')
TPUT_SECONDS=$(param tput_seconds 2)
TPUT_REPS=$(param tput_reps 3)
TPUT_BS=$(param tput_bs 65536)
TPUT_THREADS=$(param tput_threads 2)
IOPS_SECONDS=$(param iops_seconds 2)
IOPS_REPS=$(param iops_reps 3)
IOPS_BS=$(param iops_bs 4096)
IOPS_THREADS=$(param iops_threads 4)
SKIP=$(param skip "")
DIO_FAULT=""
[ "$(param dio_fault 0)" = 1 ] && DIO_FAULT=-F
STRATEGY=linux
for w in $CMDLINE; do
    case "$w" in swiotlb.strategy=*) STRATEGY=${w#*=} ;; esac
done

# One line with every one-value swiotlb debugfs file: name=value ...
# (the bounce patch's tables -- bounce_stats, bounce_memory: "name value" lines;
# bounce_devices -- are reported on lines of their own.)
one_value() { case "$(basename "$1")" in bounce_stats|bounce_memory|bounce_devices) return 1 ;; esac; }
swiotlb_line() {
    line=""
    for f in "$SWIOTLB"/*; do
        [ -f "$f" ] && one_value "$f" || continue
        line="$line $(basename "$f")=$(cat "$f" 2>/dev/null || echo '?')"
    done
    echo "${line# }"
}
swiotlb_dump() {
    say "swiotlb debugfs ($1):"
    for f in "$SWIOTLB"/*; do
        [ -f "$f" ] && one_value "$f" || continue
        printf '  %-36s %s\n' "$(basename "$f")" "$(cat "$f" 2>/dev/null)"
    done
    [ -f "$SWIOTLB/bounce_memory" ] && sed 's/^/  /' "$SWIOTLB/bounce_memory"
    res "swiotlb_$1: $(swiotlb_line)"
    if [ -f "$SWIOTLB/bounce_memory" ]; then
        res "memory_$1: $(awk '{ printf "%s%s=%s", (NR > 1 ? " " : ""), $1, $2 }' "$SWIOTLB/bounce_memory")"
    fi
    if [ -f "$SWIOTLB/bounce_stats" ]; then
        say "bounce_stats ($1):"
        sed 's/^/  /' "$SWIOTLB/bounce_stats"
        res "bounce_$1: $(awk '{ printf "%s%s=%s", (NR > 1 ? " " : ""), $1, $2 }' "$SWIOTLB/bounce_stats")"
    fi
}
# Resets the high-water marks so that each phase reports its own peak.
swiotlb_reset_hiwater() {
    for f in "$SWIOTLB"/*hiwater; do [ -f "$f" ] && echo 0 > "$f" 2>/dev/null; done
}

say "=== bounce guest test ==="
say "kernel: $(uname -r) $(uname -v)"
say "cmdline: $CMDLINE"
say "cpus: $(nproc)  mem: $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2-)"
ACTIVE=linux
[ -f "$SWIOTLB/bounce_strategy" ] && ACTIVE=$(cat "$SWIOTLB/bounce_strategy")
# The bounce patch reports a swiotlb.strategy= value it cannot use at boot.
REJECTED=$(dmesg | grep -c 'bounce: swiotlb.strategy=.* rejected')
say "strategy: $STRATEGY (active: $ACTIVE)"
[ "$REJECTED" = 0 ] || say "$(dmesg | grep 'bounce: swiotlb.strategy=.* rejected' | head -n 1)"
res "kernel: release=$(uname -r) cpus=$(nproc) uptime_s=$(cut -d' ' -f1 /proc/uptime)"
res "cmdline: $CMDLINE"
FORCE=no
case " $CMDLINE " in *" swiotlb=force "*) FORCE=yes ;; esac
res "strategy: name=$STRATEGY active=$ACTIVE rejected=$REJECTED force=$FORCE"

[ -d "$SWIOTLB" ] || say "WARNING: $SWIOTLB missing (no swiotlb debugfs?)"
swiotlb_dump before

# ---------------------------------------------------------------- shared memory
# No shared memory unaccounted: the hooks' count of converted pages against the
# strategies' own figures. kccd may be converting at the moment of a read (the two are
# read one after the other), so a mismatch is read again, up to 20 times 0.1 s apart.
MEMORY=ok
if [ "$ACTIVE" != linux ] && [ -f "$SWIOTLB/bounce_memory" ]; then
    mem_kv() { awk -v k="$1" '$1 == k { print $2 }' /tmp/memory; }
    tries=0
    while :; do
        cat "$SWIOTLB/bounce_memory" > /tmp/memory
        hook=$(mem_kv hook_shared_bytes)
        want=$(( $(mem_kv strategy_shared_bytes) + $(mem_kv strategy_quarantined_bytes) ))
        [ "$hook" = "$want" ] && break
        tries=$((tries + 1))
        [ "$tries" -lt 20 ] || break
        sleep 0.1
    done
    state=$(mem_kv linux_pool_state)
    say "shared memory: hooks $hook bytes, strategies $want bytes, Linux's pool $(mem_kv linux_pool_bytes) bytes ($state)"
    if [ "$hook" != "$want" ]; then
        say "ERROR: $hook bytes converted by the hooks, $want accounted by the strategies"
        MEMORY=UNACCOUNTED
    fi
    # Linux's default pool must be gone unless a device is routed to it.
    case "$state" in
        released) [ "$(mem_kv linux_pool_bytes)" = 0 ] || MEMORY=POOL-NOT-FREED ;;
        kept-routed) case "$STRATEGY" in *:linux*) ;; *) MEMORY=POOL-KEPT ;; esac ;;
        *) MEMORY=POOL-$state ;;
    esac
    [ "$MEMORY" = ok ] || say "ERROR: shared memory check: $MEMORY"
    res "memory_check: result=$MEMORY hook_bytes=$hook strategy_bytes=$want tries=$tries pool_state=$state"
fi

# ---------------------------------------------------------------- devices
say "PCI devices:"
for d in /sys/bus/pci/devices/*; do
    drv=-
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    echo "  $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") class=$(cat "$d/class") driver=$drv"
done
[ -b /dev/vda ] || say "ERROR: /dev/vda missing"
DISKS=vda
[ -b /dev/vdb ] && DISKS="vda vdb"
for disk in $DISKS; do
    # The PCI device a disk's DMA goes through: the name swiotlb.strategy= routes use.
    pci=$(basename "$(readlink -f "/sys/block/$disk/device/..")")
    say "disk /dev/$disk on $pci"
    res "disk: name=$disk pci=$pci"
done

# Binds the kernel's dma_map_benchmark driver to a PCI device nobody drives. The driver
# has no ID table, so driver_override is the only way in. Preference: qemu's
# pci-testdev (1b36:0005), edu (1234:11e8), then any other unbound non-bridge device.
bind_bench() {
    [ -e "$DBG/dma_map_benchmark" ] && return 0
    for want in 0x1b36:0x0005 0x1234:0x11e8 any; do
        for d in /sys/bus/pci/devices/*; do
            [ -e "$d/driver" ] && continue
            id="$(cat "$d/vendor"):$(cat "$d/device")"
            case "$(cat "$d/class")" in 0x06*) continue ;; esac   # bridges
            [ "$want" = any ] || [ "$id" = "$want" ] || continue
            dev=$(basename "$d")
            echo dma_map_benchmark > "$d/driver_override"
            echo "$dev" > /sys/bus/pci/drivers_probe 2>/dev/null
            if [ -e "$DBG/dma_map_benchmark" ]; then
                say "dma_map_benchmark bound to $dev ($id)"
                res "bench_device: pci=$dev id=$id"
                return 0
            fi
            echo > "$d/driver_override"
        done
    done
    return 1
}

FAIL=0
# ---------------------------------------------------------------- dio integrity
if skipped dio; then
    res "dio: passed=0 failed=0 rc=skipped"
else
    say "dio integrity: $DIO_THREADS threads on each of: $DISKS ${DIO_FAULT:+(fault injection self-test)}"
    swiotlb_reset_hiwater
    T0=$(cut -d' ' -f1 /proc/uptime)
    # One checker per disk, all at once.
    for disk in $DISKS; do
        ( dio -d "/dev/$disk" -t "$DIO_THREADS" $DIO_FAULT > "/tmp/dio.$disk.out" 2>&1
          echo $? > "/tmp/dio.$disk.rc" ) &
    done
    wait
    rc=0
    passed=0
    failed=0
    for disk in $DISKS; do
        cat "/tmp/dio.$disk.out"
        drc=$(cat "/tmp/dio.$disk.rc")
        grep '^dio: size=' "/tmp/dio.$disk.out" | sed "s/^dio: size=/dio_size: disk=$disk size=/" >> "$RES"
        grep '^dio:   first error' "/tmp/dio.$disk.out" | sed "s/^dio:   first error: /dio_error: disk=$disk msg=/" >> "$RES"
        summary=$(grep -E '^dio: [0-9]+ passed, [0-9]+ failed' "/tmp/dio.$disk.out" | tail -n 1)
        p=$(echo "$summary" | sed -n 's/^dio: \([0-9]*\) passed.*/\1/p')
        f=$(echo "$summary" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
        if [ "$DISKS" != vda ]; then
            res "dio_disk: disk=$disk passed=${p:-0} failed=${f:-unknown} rc=$drc"
        fi
        [ "$drc" = 0 ] && [ -n "$summary" ] || { FAIL=1; rc=$drc; }
        passed=$((passed + ${p:-0}))
        failed=$((failed + ${f:-0}))
    done
    res "dio: passed=$passed failed=$failed rc=$rc seconds=$(awk "BEGIN{print $(cut -d' ' -f1 /proc/uptime)-$T0}")"
    swiotlb_dump after_dio
fi

# ---------------------------------------------------------------- dma_map_benchmark
# Repetitions are interleaved (rep 1 of every granule/direction, then rep 2, ...) so a
# burst of host load hits all combinations alike; the result line reports the median
# over the repetitions (TCG on a shared host has heavy-tailed latencies).
if skipped bench; then
    :
elif ! bind_bench; then
    say "ERROR: could not bind dma_map_benchmark to any PCI device"
    res "bench_device: pci=none"
    res "bench: rc=nodevice"
else
    swiotlb_reset_hiwater
    rm -f /tmp/bench.g*
    r=0
    while [ "$r" -lt "$BENCH_REPS" ]; do
        r=$((r + 1))
        for g in $BENCH_GRANULES; do
            for d in $BENCH_DIRS; do
                say "dma_map_benchmark -t $BENCH_THREADS -s $BENCH_SECONDS -g $g -d $d (rep $r/$BENCH_REPS)"
                dma_map_benchmark -t "$BENCH_THREADS" -s "$BENCH_SECONDS" -g "$g" -d "$d" > /tmp/bench.out 2>&1
                rc=$?
                cat /tmp/bench.out
                map=$(sed -n 's/^average map latency(us):\([0-9.]*\) standard deviation:\([0-9.]*\).*/\1 \2/p' /tmp/bench.out)
                unmap=$(sed -n 's/^average unmap latency(us):\([0-9.]*\) standard deviation:\([0-9.]*\).*/\1 \2/p' /tmp/bench.out)
                # shellcheck disable=SC2086  # split "avg sd avg sd" into $1..$4
                set -- $map $unmap
                echo "${1:-nan} ${2:-nan} ${3:-nan} ${4:-nan} $rc" >> "/tmp/bench.g$g.d$d"
            done
        done
    done
    for g in $BENCH_GRANULES; do
        for d in $BENCH_DIRS; do
            f=/tmp/bench.g$g.d$d
            rc=$(awk '$5 != 0 { bad = $5 } END { print bad + 0 }' "$f")
            res "bench: granule=$g dir=$d threads=$BENCH_THREADS seconds=$BENCH_SECONDS reps=$BENCH_REPS" \
                "map_us=$(median "$f" 1) map_sd=$(median "$f" 2) unmap_us=$(median "$f" 3) unmap_sd=$(median "$f" 4)" \
                "map_us_min=$(column_min "$f" 1) unmap_us_min=$(column_min "$f" 3)" \
                "map_us_all=$(column_list "$f" 1) unmap_us_all=$(column_list "$f" 3) rc=$rc"
        done
    done
    swiotlb_dump after_bench
fi

# ---------------------------------------------------------------- throughput, IOPS
# throughput_phase KIND PATTERN SECONDS REPS BS THREADS: dio -T on every disk at once,
# REPS times, write then read; KIND is the result key (tput: MB/s of sequential I/O,
# iops: operations per second of random I/O). Result lines: KIND: (medians),
# KIND_run: (every run), KIND_disk: (per disk, two-disk boots).
throughput_phase() {
    kind=$1 pattern=$2 secs=$3 reps=$4 bs=$5 threads=$6
    rflag=""
    [ "$pattern" = rand ] && rflag=-r
    swiotlb_reset_hiwater
    : > /tmp/tput.all
    : > /tmp/tput.other
    r=0
    while [ "$r" -lt "$reps" ]; do
        r=$((r + 1))
        say "$kind: dio -T $secs -b $bs -t $threads $rflag on $DISKS (rep $r/$reps)"
        # Two disks: the one started first alternates from run to run, so neither gets
        # a head start every time.
        order=$DISKS
        [ $((r % 2)) = 0 ] && [ "$DISKS" != vda ] && order="vdb vda"
        for disk in $order; do
            ( dio -d "/dev/$disk" -T "$secs" -b "$bs" -t "$threads" $rflag > "/tmp/tput.$disk.out" 2>&1
              echo $? > "/tmp/tput.$disk.rc" ) &
        done
        wait
        for disk in $DISKS; do
            cat "/tmp/tput.$disk.out"
            rc=$(cat "/tmp/tput.$disk.rc")
            if [ "$disk" = vda ]; then
                grep '^tput: ' "/tmp/tput.$disk.out" >> /tmp/tput.all
            else
                grep '^tput: ' "/tmp/tput.$disk.out" | sed "s/^tput: /tput: disk=$disk /" >> /tmp/tput.other
            fi
            [ "$rc" = 0 ] || res "${kind}_error: disk=$disk rc=$rc rep=$r"
        done
    done
    sed "s/^tput: /${kind}_run: /" /tmp/tput.all >> "$RES"
    for mode in write read; do
        # columns: MBps iops errors
        grep "^tput: mode=$mode " /tmp/tput.all | sed -n 's/.* MBps=\([0-9.]*\) iops=\([0-9.]*\) errors=\([0-9]*\).*/\1 \2 \3/p' > /tmp/tput.$mode
        [ -s /tmp/tput.$mode ] || continue
        res "$kind: mode=$mode pattern=$pattern bs=$bs threads=$threads seconds=$secs reps=$reps" \
            "MBps=$(median /tmp/tput.$mode 1) MBps_min=$(column_min /tmp/tput.$mode 1)" \
            "iops=$(median /tmp/tput.$mode 2) errors=$(awk '{ e += $3 } END { print e + 0 }' /tmp/tput.$mode)"
    done
    # Per disk (A/B boots): the same medians for each disk, vda's from /tmp/tput.all.
    if [ "$DISKS" != vda ]; then
        for disk in $DISKS; do
            for mode in write read; do
                if [ "$disk" = vda ]; then src=/tmp/tput.all; else src=/tmp/tput.other; fi
                grep "mode=$mode " "$src" | sed -n 's/.* MBps=\([0-9.]*\) iops=\([0-9.]*\) errors=\([0-9]*\).*/\1 \2 \3/p' > /tmp/tput.d
                [ -s /tmp/tput.d ] || continue
                res "${kind}_disk: disk=$disk mode=$mode bs=$bs threads=$threads MBps=$(median /tmp/tput.d 1)" \
                    "MBps_all=$(column_list /tmp/tput.d 1) iops=$(median /tmp/tput.d 2)" \
                    "iops_all=$(column_list /tmp/tput.d 2)" \
                    "errors=$(awk '{ e += $3 } END { print e + 0 }' /tmp/tput.d)"
            done
        done
    fi
    swiotlb_dump "after_$kind"
}
skipped tput || throughput_phase tput seq "$TPUT_SECONDS" "$TPUT_REPS" "$TPUT_BS" "$TPUT_THREADS"
skipped iops || throughput_phase iops rand "$IOPS_SECONDS" "$IOPS_REPS" "$IOPS_BS" "$IOPS_THREADS"

# ---------------------------------------------------------------- /sys/kernel/bounce
# Per-device counters without debugfs (the bounce patch; absent on other kernels).
SYSB=/sys/kernel/bounce
if [ -d "$SYSB" ]; then
    res "sysfs: strategy=$(cat "$SYSB/strategy")"
    for d in "$SYSB"/device*; do
        [ -d "$d" ] || continue
        name=$(cat "$d/name")
        [ -n "$name" ] || continue
        line="name=$name"
        for f in strategy lane maps unmaps bytes_to_bounce bytes_from_bounce failures inflight_bytes inflight_bytes_peak; do
            line="$line $f=$(cat "$d/$f")"
        done
        # One line of counts each (BOUNCE_FAILURE_* order; size buckets), commas here.
        for f in failures_by_reason failures_by_size; do
            [ -f "$d/$f" ] && line="$line $f=$(tr ' ' , < "$d/$f")"
        done
        say "sysfs device: $line"
        res "sysfs_device: $line"
    done
    for d in "$SYSB"/lane*; do
        [ -d "$d" ] || continue
        line="lane=${d##*/lane}"
        for f in strategy maps failures capacity_bytes shared_bytes shared_bytes_peak; do
            line="$line $f=$(cat "$d/$f")"
        done
        res "sysfs_lane: $line"
    done
fi

# ---------------------------------------------------------------- kernel log
# Splats (lockdep, sleeping in atomic, WARN/BUG) and pool exhaustion.
dmesg > /tmp/dmesg.out
splats=$(grep -cE 'BUG:|WARNING:|INFO: possible|possible circular locking|inconsistent lock state|sleeping function called from invalid context|Call Trace:|DMA-API: .*(driver|failed|error)' /tmp/dmesg.out)
full=$(grep -c 'swiotlb buffer is full' /tmp/dmesg.out)
ioerr=$(grep -cE 'I/O error|blk_update_request|critical medium error' /tmp/dmesg.out)
if [ "$splats" != 0 ] || [ "$ioerr" != 0 ]; then
    say "kernel log lines of interest:"
    grep -E -A20 'BUG:|WARNING:|INFO: possible|possible circular|inconsistent lock|sleeping function|Call Trace:|DMA-API: .*(driver|failed|error)|I/O error' /tmp/dmesg.out | head -n 200
fi
grep -E 'swiotlb|software IO TLB|bounce:' /tmp/dmesg.out | head -n 20
res "kernel_log: splats=$splats swiotlb_full=$full io_errors=$ioerr"
[ "$ioerr" = 0 ] || FAIL=1

# integrity: data, I/O errors; kernel_log: no splat (lockdep, WARN, BUG, DMA-API).
KLOG=clean
[ "$splats" = 0 ] || KLOG=splats
if [ "$FAIL" = 0 ]; then I=PASS; else I=FAIL; fi
res "result: integrity=$I kernel_log=$KLOG memory=$MEMORY"

dmesg -n 1   # keep console messages out of the block
echo "=== BOUNCE-RESULTS-BEGIN ==="
cat "$RES"
echo "=== BOUNCE-RESULTS-END ==="
exit "$FAIL"
