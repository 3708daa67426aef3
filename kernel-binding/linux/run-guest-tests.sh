#!/usr/bin/env bash
# One command for the Linux guest route: setup, build kernel, build initramfs, boot each
# configuration, print an integrity table and (with more than one configuration) a
# ratio table against the "linux" baseline.
#
# usage: run-guest-tests.sh [options]
#   --skip-setup        do not run setup.sh (packages already installed)
#   --configs "LIST"    configurations to boot (default: "linux", "linux-nodyn", every
#                       strategy of `bounce list --names`, "bogus", "ab-linux-magazine").
#                       "linux" boots with no swiotlb.strategy= parameter (Linux's
#                       own swiotlb, the baseline of the ratio table); any other NAME boots
#                       with swiotlb.strategy=NAME. NAME must then be the strategy that runs
#                       (debugfs swiotlb/bounce_strategy) if it is one of the built-in
#                       strategies ($STRATEGIES below); any other NAME, e.g. "bogus", must be
#                       rejected at boot with a console message, leaving Linux's swiotlb in
#                       charge. "nobounce" boots without swiotlb=force (the cost of bouncing
#                       itself). "linux-nodyn" boots Linux's swiotlb on a kernel built
#                       without SWIOTLB_DYNAMIC (build-kernel.sh --nodyn), the second
#                       baseline: upstream's default, one fixed pool. "ab-A-B" (A, B: linux or a built-in strategy) boots with two
#                       disks, /dev/vda routed to A and /dev/vdb to B in one boot
#                       (swiotlb.strategy=<default>,<vda's PCI name>:A,<vdb's>:B; the default
#                       is B, or A when B is linux), runs integrity and throughput on both
#                       at once and prints a per-disk A/B table.
#   --repeat N          boot every configuration N times, interleaved (linux, legacy, ...,
#                       linux, legacy, ...): N rounds; each ratio is taken within a round
#                       (a configuration's value over the baseline's in the same round),
#                       the table prints the median and the spread (min-max) of those
#                       (default 1). TCG on a shared host is noisy: an A/A run of four
#                       identical kernels gave ratios from 0.7x to 1.5x with N=1.
#   --append "ARGS"     extra kernel arguments for every boot (e.g. bouncetest.* knobs)
#   --debug             build and boot the debug kernel variant (lockdep etc.)
#   --timeout SECONDS   per-boot limit (boot.sh default: 600, debug 1800)
#   --quiet             do not echo guest consoles (logs stay in the cache)
# Environment: see build-kernel.sh (BOUNCE_KERNEL_CACHE, BOUNCE_PATCH_DIR, BOUNCE_STATICLIB,
# BOUNCE_JOBS) and boot.sh (BOUNCE_QEMU_EXTRA).
#
# Exit status: non-zero if a build failed, a boot did not reach the result block, any
# integrity check failed, a kernel log shows a splat (WARN, BUG, lockdep, DMA-API), or a
# boot ran another swiotlb strategy than its configuration asks for (see --configs).
# The tables are also written to $BOUNCE_KERNEL_CACHE/runs/summary.txt.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The strategies built into the bounce library (swiotlb.strategy=NAME): the registry
# in strategies/src/lib.rs, through `bounce list --names`.
STRATEGIES=$(strategy_names)

SETUP=1
CONFIGS="linux linux-nodyn $STRATEGIES bogus ab-linux-magazine"
REPEAT=1
APPEND=""
DEBUG_ARGS=()
BOOT_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-setup) SETUP=0 ;;
        --configs) CONFIGS=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --append) APPEND=$2; shift ;;
        --debug) DEBUG_ARGS=(--debug) ;;
        --timeout) BOOT_ARGS+=(--timeout "$2"); shift ;;
        --quiet) BOOT_ARGS+=(--quiet) ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
[ -n "${CONFIGS// /}" ] || die "--configs is empty"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive number"
for cfg in $CONFIGS; do
    [[ "$cfg" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad configuration name '$cfg'"
done

# ab_sides CONFIG: "A B" of an "ab-A-B" configuration (nothing for any other).
ab_sides() {
    [[ "$1" =~ ^ab-([A-Za-z0-9_]+)-([A-Za-z0-9_]+)$ ]] && echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
}
# ab_default A B: the default strategy of an A/B boot (the first side that is not linux).
ab_default() {
    if [ "$2" != linux ]; then echo "$2"; elif [ "$1" != linux ]; then echo "$1"; else echo linux; fi
}
for cfg in $CONFIGS; do
    case "$cfg" in ab-*)
        sides=$(ab_sides "$cfg") || die "bad A/B configuration '$cfg' (want ab-A-B)"
        for side in $sides; do
            [[ " linux $STRATEGIES " == *" $side "* ]] \
                || die "A/B configuration '$cfg': '$side' is neither linux nor one of: $STRATEGIES"
        done ;;
    esac
done

D="$BOUNCE_LINUX_DIR"
T_START=$(date +%s)
declare -A TIMES

t0=$(date +%s)
if [ "$SETUP" = 1 ]; then
    "$D/setup.sh"
fi
TIMES[setup]=$(( $(date +%s) - t0 ))

t0=$(date +%s)
"$D/build-kernel.sh" "${DEBUG_ARGS[@]}" >/dev/null
# The second baseline's kernel, when a configuration boots it (not with --debug).
if [[ " $CONFIGS " == *" linux-nodyn "* ]]; then
    [ ${#DEBUG_ARGS[@]} = 0 ] || die "linux-nodyn has no debug variant: drop it from --configs with --debug"
    "$D/build-kernel.sh" --nodyn >/dev/null
fi
TIMES[kernel]=$(( $(date +%s) - t0 ))

t0=$(date +%s)
"$D/build-initramfs.sh" >/dev/null
TIMES[initramfs]=$(( $(date +%s) - t0 ))

SUFFIX=""
[ ${#DEBUG_ARGS[@]} -gt 0 ] && SUFFIX="-debug"
declare -A RC          # boot name -> boot.sh exit status
declare -A BOOTS       # config -> its boot names
declare -A CFG_OF      # boot name -> config
BOOT_NAMES=()
for ((rep = 1; rep <= REPEAT; rep++)); do
    for cfg in $CONFIGS; do
        name="$cfg$SUFFIX"
        [ "$REPEAT" = 1 ] || name="$name.$rep"
        args="$APPEND"
        extra=()
        case "$cfg" in
            linux) ;;
            nobounce) extra=(--no-force) ;;
            linux-nodyn) extra=(--nodyn) ;;
            ab-*)
                read -r side_a side_b <<<"$(ab_sides "$cfg")"
                def=$(ab_default "$side_a" "$side_b")
                [ "$def" = linux ] \
                    || args="swiotlb.strategy=$def,$AB_PCI_A:$side_a,$AB_PCI_B:$side_b $args"
                extra=(--disks 2) ;;
            *) args="swiotlb.strategy=$cfg $args" ;;
        esac
        rc=0
        t0=$(date +%s)
        "$D/boot.sh" --name "$name" --append "${args% }" "${extra[@]}" "${DEBUG_ARGS[@]}" \
            "${BOOT_ARGS[@]}" || rc=$?
        TIMES[boot:$name]=$(( $(date +%s) - t0 ))
        RC[$name]=$rc
        BOOTS[$cfg]="${BOOTS[$cfg]:-} $name"
        CFG_OF[$name]=$cfg
        BOOT_NAMES+=("$name")
    done
done

# The strategy a configuration must run: "linux" (no strategy), the configuration's
# name (a built-in strategy), or "rejected" (any other name: a console message and
# Linux's swiotlb).
expected_strategy() {
    case "$1" in
        linux|nobounce|linux-nodyn) echo linux ;;
        ab-*) # shellcheck disable=SC2046  # "A B"
              ab_default $(ab_sides "$1") ;;
        *) if [[ " $STRATEGIES " == *" $1 "* ]]; then echo "$1"; else echo rejected; fi ;;
    esac
}

# awk helper: kv(line, key) returns the value of key=value in a result line.
AWK_KV='function kv(line, key,   n, i, a) {
    n = split(line, a, " ")
    for (i = 1; i <= n; i++) if (index(a[i], key "=") == 1) return substr(a[i], length(key) + 2)
    return ""
}'

# Prints "<metric> <value>" for every comparable number of one boot.
metrics() {
    awk "$AWK_KV"'
        /^bench: / { g = kv($0, "granule"); d = kv($0, "dir")
                     print "bench_g" g "_d" d "_map_us", kv($0, "map_us")
                     print "bench_g" g "_d" d "_unmap_us", kv($0, "unmap_us") }
        /^tput: /  { print "tput_" kv($0, "mode") "_bs" kv($0, "bs") "_MBps", kv($0, "MBps") }
        /^iops: /  { print "iops_" kv($0, "mode") "_rand_bs" kv($0, "bs"), kv($0, "iops") }
        /^dio: /   { print "dio_seconds", kv($0, "seconds") }
        /^memory_before: /    { print "shared_MB_boot", kv($0, "total_shared_bytes") / 1048576 }
        /^memory_after_dio: / { print "shared_MB_dio", kv($0, "total_shared_bytes") / 1048576 }
    ' "$1" 2>/dev/null || true
}

# Did each boot run the strategy its configuration asks for? (strategy: line)
declare -A SEL         # boot name -> ok | bad
for name in "${BOOT_NAMES[@]}"; do
    SEL[$name]=$(awk -v want="$(expected_strategy "${CFG_OF[$name]}")" "$AWK_KV"'
        /^strategy: / { active = kv($0, "active"); rej = kv($0, "rejected") + 0 }
        END {
            if (want == "rejected") ok = (active == "linux" && rej > 0)
            else ok = (active == want && rej == 0)
            print ok ? "ok" : "bad"
        }' "$CACHE_RUNS/$name/results.txt" 2>/dev/null || echo bad)
done

# ---------------------------------------------------------------- tables
SUMMARY="$CACHE_RUNS/summary.txt"
mkdir -p "$CACHE_RUNS"
{
echo
echo "== integrity ($(date -u +%Y-%m-%dT%H:%MZ), ${SUFFIX:+debug }kernel $LINUX_SOURCE_VERSION) =="
echo "(active: the strategy that ran, from debugfs; maps_dio: bounce's maps during the dio"
echo " phase; shared_MB boot/dio/end: all shared memory (debugfs swiotlb/bounce_memory:"
echo " Linux's pools and the strategies') after boot, after the dio phase and after the"
echo " last phase; linux_pool: what became of Linux's default pool once a strategy ran)"
printf '%-18s %-6s %-9s %-6s %-6s %-5s %-5s %-6s %-4s %-11s %-8s %-15s %-11s %-7s %s\n' \
    boot booted active dio bench tput iops splats full hiwater_dio maps_dio shared_MB \
    linux_pool seconds result
for name in "${BOOT_NAMES[@]}"; do
    f="$CACHE_RUNS/$name/results.txt"
    if [ ! -f "$f" ]; then printf '%-18s %s\n' "$name" "no results file"; continue; fi
    awk -v name="$name" -v want="$(expected_strategy "${CFG_OF[$name]}")" -v sel="${SEL[$name]}" "$AWK_KV"'
        /^dio: /            { dio = kv($0, "passed") "/" (kv($0, "passed") + kv($0, "failed")) }
        /^bench: /          { nb++; if (kv($0, "rc") == "0" && kv($0, "map_us") != "nan") okb++ }
        /^tput: /           { nt++; if (kv($0, "errors") == "0") okt++ }
        /^iops: /           { ni++; if (kv($0, "errors") == "0") oki++ }
        /^swiotlb_after_dio:/ { hw = kv($0, "io_tlb_used_hiwater") }
        /^memory_/          { mb = sprintf("%.0f", kv($0, "total_shared_bytes") / 1048576)
                              if ($1 == "memory_before:") mb0 = mb; else if ($1 == "memory_after_dio:") mb1 = mb
                              mbl = mb; lp = kv($0, "linux_pool_state") }
        /^bounce_after_dio:/ { maps = kv($0, "maps") }
        /^strategy: /       { active = kv($0, "active") }
        /^kernel_log: /     { splats = kv($0, "splats"); full = kv($0, "swiotlb_full") }
        /^result: /         { result = kv($0, "integrity"); if (kv($0, "kernel_log") != "clean") result = result "+SPLATS"
                              if (kv($0, "memory") != "ok") result = result "+MEMORY(" kv($0, "memory") ")" }
        /^boot: /           { secs = kv($0, "seconds") }
        /^=== BOUNCE-RESULTS-END/ { ended = 1 }
        END {
            if (!ended) result = "NO-RESULTS"
            if (result == "") result = "FAIL"
            if (sel != "ok") result = result "+WRONG-STRATEGY(want " want ")"
            else if (want == "rejected") result = result " (rejected: Linux swiotlb)"
            shared = (mb0 == "") ? "-" : mb0 "/" (mb1 == "" ? "-" : mb1) "/" mbl
            printf "%-18s %-6s %-9s %-6s %-6s %-5s %-5s %-6s %-4s %-11s %-8s %-15s %-11s %-7s %s\n", name,
                ended ? "yes" : "NO", active == "" ? "-" : active,
                dio == "" ? "-" : dio, nb ? okb + 0 "/" nb : "-", nt ? okt + 0 "/" nt : "-",
                ni ? oki + 0 "/" ni : "-", splats == "" ? "-" : splats, full == "" ? "-" : full,
                hw == "" ? "-" : hw, maps == "" ? "-" : maps, shared, lp == "" ? "-" : lp,
                secs == "" ? "-" : secs, result
        }' "$f"
done

# Conversions per phase: what kccd (and boot) converted while each phase ran, from the
# deltas of bounce_stats between the phase's dumps; a conversion is a
# set_memory_decrypted()/set_memory_encrypted() call (TLB flush, direct-map split).
echo
echo "== conversions per phase (dec/enc: set_memory_decrypted/encrypted calls:pages;"
echo "   wake: kccd wake-ups; boot: up to the first dump; strategies only) =="
printf '%-18s %-6s %14s %14s %8s\n' boot phase dec enc wake
for name in "${BOOT_NAMES[@]}"; do
    f="$CACHE_RUNS/$name/results.txt"
    [ -f "$f" ] || continue
    awk -v name="$name" "$AWK_KV"'
        /^bounce_(before|after_[a-z]+): / {
            ph = $1; sub(/^bounce_/, "", ph); sub(/:$/, "", ph); sub(/^after_/, "", ph)
            if (ph == "before") ph = "boot"
            dc = kv($0, "decrypt_calls"); dp = kv($0, "pages_decrypted")
            ec = kv($0, "encrypt_calls"); ep = kv($0, "pages_encrypted"); w = kv($0, "refill_wakeups")
            printf "%-18s %-6s %14s %14s %8d\n", name, ph, (dc - pdc) ":" (dp - pdp),
                (ec - pec) ":" (ep - pep), w - pw
            pdc = dc; pdp = dp; pec = ec; pep = ep; pw = w
        }' "$f"
done

# The ratio tables' columns: every configuration but the A/B boots (whose whole-boot
# figures are one disk's share; they have a table of their own below).
CFG_LIST=()
for cfg in $CONFIGS; do case "$cfg" in ab-*) ;; *) CFG_LIST+=("$cfg") ;; esac; done
# Every boot's metrics as "<config> <rep> <metric> <value>" lines.
all_metrics() {
    local name rep
    for name in "${BOOT_NAMES[@]}"; do
        rep=1
        [[ "$name" =~ \.([0-9]+)$ ]] && rep=${BASH_REMATCH[1]}
        case "${CFG_OF[$name]}" in ab-*) continue ;; esac
        metrics "$CACHE_RUNS/$name/results.txt" | sed "s/^/${CFG_OF[$name]} $rep /"
    done
}
# ratio_table BASE: every configuration against BASE, ratio by ratio: in each round
# (rep) of interleaved boots the configuration's value over BASE's value in the same
# round, then the median of those ratios and, with several rounds, their spread
# (min-max), so slow and fast moments of the host cancel within a round.
ratio_table() {
    local base=$1
    echo
    echo "== ratios to $base$SUFFIX: per round of boots, median (min-max over $REPEAT round(s))" \
         "(latency, seconds and MB of shared memory: lower is better; MB/s and IOPS: higher is better) =="
    for cfg in "${CFG_LIST[@]}"; do
        if [ "$(expected_strategy "$cfg")" = rejected ]; then
            echo "($cfg runs Linux's swiotlb, like linux: its column shows this host's noise)"
        fi
    done
    all_metrics | awk -v base="$base" -v cfgs="${CFG_LIST[*]}" '
        function med(arr, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = arr[i]; j = i - 1; while (j >= 1 && arr[j] > t) { arr[j + 1] = arr[j]; j-- } arr[j + 1] = t }
            return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
        }
        $4 != "" && $4 != "nan" {
            if (!(($3) in seen)) { seen[$3] = 1; order[++nm] = $3 }
            val[$1, $2, $3] = $4; if ($2 > maxrep) maxrep = $2
        }
        END {
            nc = split(cfgs, cl, " ")
            printf "%-26s %10s", "metric", base
            for (c = 1; c <= nc; c++) if (cl[c] != base) printf " %19s", cl[c]
            printf "\n"
            for (i = 1; i <= nm; i++) {
                m = order[i]; k = 0
                for (r = 1; r <= maxrep; r++) if ((base, r, m) in val) bv[++k] = val[base, r, m]
                if (!k) continue
                printf "%-26s %10s", m, med(bv, k)
                for (c = 1; c <= nc; c++) {
                    if (cl[c] == base) continue
                    n = 0
                    for (r = 1; r <= maxrep; r++)
                        if ((cl[c], r, m) in val && (base, r, m) in val && val[base, r, m] + 0 != 0)
                            rr[++n] = val[cl[c], r, m] / val[base, r, m]
                    if (!n) { printf " %19s", "-"; continue }
                    lo = hi = rr[1]; for (j = 2; j <= n; j++) { if (rr[j] < lo) lo = rr[j]; if (rr[j] > hi) hi = rr[j] }
                    if (n == 1) printf " %18.2fx", rr[1]
                    else printf " %19s", sprintf("%.2fx (%.2f-%.2f)", med(rr, n), lo, hi)
                }
                printf "\n"
            }
        }'
}
if [ ${#CFG_LIST[@]} -gt 1 ]; then
    if [ -z "${BOOTS[linux]:-}" ]; then
        echo
        echo "(no ratio table: the baseline \"linux\" was not among the configurations)"
    else
        ratio_table linux
        [ -z "${BOOTS[linux-nodyn]:-}" ] || ratio_table linux-nodyn
    fi
fi

# Per-disk A/B tables of the ab-* boots.
for name in "${BOOT_NAMES[@]}"; do
    case "${CFG_OF[$name]}" in ab-*) ;; *) continue ;; esac
    f="$CACHE_RUNS/$name/results.txt"
    [ -f "$f" ] || continue
    echo
    echo "== A/B inside one boot: $name (vda: ${CFG_OF[$name]#ab-}; medians of the MB/s and IOPS runs) =="
    awk "$AWK_KV"'
        /^disk: /        { pci[kv($0, "name")] = kv($0, "pci") }
        /^dio_disk: /    { d = kv($0, "disk"); dio[d] = kv($0, "passed") "/" (kv($0, "passed") + kv($0, "failed")) }
        /^tput_disk: /   { d = kv($0, "disk"); m = kv($0, "mode"); mb[d, m] = kv($0, "MBps"); all[d, m] = kv($0, "MBps_all") }
        /^iops_disk: /   { d = kv($0, "disk"); m = "iops_" kv($0, "mode"); mb[d, m] = kv($0, "iops"); all[d, m] = kv($0, "iops_all") }
        /^sysfs_device: / { st[kv($0, "name")] = kv($0, "strategy"); maps[kv($0, "name")] = kv($0, "maps")
                           fl[kv($0, "name")] = kv($0, "failures"); pk[kv($0, "name")] = kv($0, "inflight_bytes_peak") }
        END {
            printf "%-5s %-13s %-9s %-9s %10s %10s %10s %10s %10s %9s %12s\n", "disk", "pci", "strategy", "dio",
                "write_MBps", "read_MBps", "write_iops", "read_iops", "maps", "failures", "peak_bytes"
            n = split("vda vdb", ds, " ")
            for (i = 1; i <= n; i++) {
                d = ds[i]; p = pci[d]
                printf "%-5s %-13s %-9s %-9s %10s %10s %10s %10s %10s %9s %12s\n", d, p, (p in st) ? st[p] : "-",
                    (d in dio) ? dio[d] : "-", mb[d, "write"] == "" ? "-" : mb[d, "write"],
                    mb[d, "read"] == "" ? "-" : mb[d, "read"],
                    mb[d, "iops_write"] == "" ? "-" : mb[d, "iops_write"],
                    mb[d, "iops_read"] == "" ? "-" : mb[d, "iops_read"], (p in maps) ? maps[p] : "-",
                    (p in fl) ? fl[p] : "-", (p in pk) ? pk[p] : "-"
            }
            # B/A per throughput run (both disks ran each run at the same time): the
            # median and the spread over the runs.
            split("write read iops_write iops_read", modes, " ")
            for (m = 1; m <= 4; m++) {
                mode = modes[m]
                na = split(all["vda", mode], ra, ","); nb = split(all["vdb", mode], rb, ",")
                k = 0
                for (i = 1; i <= na && i <= nb; i++) if (ra[i] + 0 > 0) r[++k] = rb[i] / ra[i]
                if (!k) continue
                for (i = 2; i <= k; i++) { t = r[i]; j = i - 1; while (j >= 1 && r[j] > t) { r[j + 1] = r[j]; j-- } r[j + 1] = t }
                med = (k % 2) ? r[(k + 1) / 2] : (r[k / 2] + r[k / 2 + 1]) / 2
                printf "vdb/vda %s %s: %.2fx (%.2f..%.2f over %d runs)\n", mode, (mode ~ /^iops/) ? "ops/s" : "MB/s",
                    med, r[1], r[k], k
            }
        }' "$f"
done

echo
printf '== times (s): setup %s, kernel build %s, initramfs %s' \
    "${TIMES[setup]}" "${TIMES[kernel]}" "${TIMES[initramfs]}"
for name in "${BOOT_NAMES[@]}"; do printf ', boot %s %s' "$name" "${TIMES[boot:$name]}"; done
printf ', total %s ==\n' "$(( $(date +%s) - T_START ))"
} | tee "$SUMMARY"

bad=0
for name in "${BOOT_NAMES[@]}"; do
    case "${RC[$name]}" in
        0) ;;
        1) echo "FAIL: $name: integrity failure or kernel splats (see $CACHE_RUNS/$name/console.log)" >&2; bad=1 ;;
        *) echo "FAIL: $name: no result block, boot.sh status ${RC[$name]} (see $CACHE_RUNS/$name/console.log)" >&2; bad=1 ;;
    esac
    if [ "${SEL[$name]}" != ok ] && [ "${RC[$name]}" != 2 ]; then
        echo "FAIL: $name: wrong swiotlb strategy, want $(expected_strategy "${CFG_OF[$name]}")" \
             "(strategy: line of $CACHE_RUNS/$name/results.txt; console.log has the boot messages)" >&2
        bad=1
    fi
done
[ "$bad" = 0 ] && echo "run-guest-tests: all ${#BOOT_NAMES[@]} boot(s) passed"
exit "$bad"
