#!/usr/bin/env bash
# Builds the guest kernel (bzImage) from Debian's pinned linux-source-6.12 tarball.
#
# usage: build-kernel.sh [--debug | --nodyn] [--print-image]
#   --debug        build the debug variant (guest.config + debug.config: lockdep,
#                  DEBUG_ATOMIC_SLEEP, ...) in its own build directory
#   --nodyn        build the variant without SWIOTLB_DYNAMIC (guest.config +
#                  nodyn.config), Linux's second baseline, in its own build directory
#   --print-image  only print the path of the variant's bzImage and exit
#
# Environment:
#   BOUNCE_KERNEL_CACHE  cache root (default /var/cache/bounce-kernel), see README.md
#   BOUNCE_JOBS          make -j value (default 2; the CI machine has 2 cores)
#   BOUNCE_PATCH_DIR     directory with *.patch (applied in C-locale order, -p1) and
#                        optional *.config fragments (merged after guest.config);
#                        default: patches/ next to this script
#   BOUNCE_STATICLIB     path of a prebuilt static library (the Rust strategy code) to
#                        use instead of building one (step 4)
#
# Steps (each one is skipped when its inputs did not change):
#   1. unpack the tarball once into $BOUNCE_KERNEL_CACHE/src (marker: state/unpacked)
#   2. bring the tree to "pristine + patches/*.patch": patches applied earlier are
#      reverted (patch -R, newest first) and the new series applied; files touched
#      get a fresh mtime, so kbuild rebuilds only what changed. If a revert fails
#      (tree edited by hand) the touched files are re-extracted from the tarball.
#   3. configure: make tinyconfig + fragments + olddefconfig in the O= build dir,
#      then check that every option requested by a fragment took effect
#   4. if the .config has CONFIG_SWIOTLB_BOUNCE=y (patches/bounce.config): build the
#      strategies as a no_std static library for this .config with
#      `.ci/nostd-build.sh --staticlib bounce-kernel` (cargo target dir under the
#      cache: an unchanged workspace is a no-op) and copy it, with
#      kernel-binding/include/bounce.h, to kernel/dma/bounce/ in the tree (only when
#      changed, so kbuild relinks only then). Otherwise remove copies left there.
#   5. make -j$BOUNCE_JOBS bzImage
set -euo pipefail
. "$(dirname "$0")/lib.sh"

VARIANT=baseline
PRINT_IMAGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --debug) VARIANT=debug ;;
        --nodyn) VARIANT=nodyn ;;
        --print-image) PRINT_IMAGE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done

OUT=$(build_dir_for "$VARIANT")
IMAGE="$OUT/arch/x86/boot/bzImage"
if [ "$PRINT_IMAGE" = 1 ]; then echo "$IMAGE"; exit 0; fi

PATCH_DIR="${BOUNCE_PATCH_DIR:-$BOUNCE_LINUX_DIR/patches}"
FRAGMENTS=("$BOUNCE_LINUX_DIR/guest.config")
[ "$VARIANT" = debug ] && FRAGMENTS+=("$BOUNCE_LINUX_DIR/debug.config")
[ "$VARIANT" = nodyn ] && FRAGMENTS+=("$BOUNCE_LINUX_DIR/nodyn.config")
if [ -d "$PATCH_DIR" ]; then
    while IFS= read -r f; do FRAGMENTS+=("$f"); done \
        < <(find "$PATCH_DIR" -maxdepth 1 -name '*.config' -type f | LC_ALL=C sort)
fi

T_ALL=$(date +%s)
check_linux_source
ensure_cache_dir
# One build at a time: the source tree and its patch state are shared by the variants.
exec 9>"$BOUNCE_KERNEL_CACHE/.build.lock"
if ! flock -n 9; then
    info "waiting for another build-kernel.sh (lock $BOUNCE_KERNEL_CACHE/.build.lock)"
    flock -w 7200 9 || die "gave up waiting for the build lock"
fi
mkdir -p "$CACHE_STATE" "$CACHE_BUILD"
for f in "${FRAGMENTS[@]}"; do [ -f "$f" ] || die "missing config fragment $f"; done

# ---------------------------------------------------------------- 1. unpack
step "1/5 unpack $LINUX_SOURCE_TARBALL ($LINUX_SOURCE_VERSION)"
TAR_ID="$LINUX_SOURCE_VERSION $(stat -c '%s %Y' "$LINUX_SOURCE_TARBALL")"
if [ -f "$CACHE_STATE/unpacked" ] && [ "$(cat "$CACHE_STATE/unpacked")" = "$TAR_ID" ] \
        && [ -f "$CACHE_TREE/Makefile" ]; then
    info "already unpacked in $CACHE_TREE"
else
    info "unpacking into $CACHE_TREE (about 1.5 GB, takes a minute)"
    # A new tarball invalidates the patched tree and every build made from it.
    rm -rf "$CACHE_SRC" "$CACHE_SRC.tmp" "$CACHE_STATE/applied" "$CACHE_BUILD"
    rm -f "$CACHE_STATE/unpacked"
    mkdir -p "$CACHE_SRC.tmp" "$CACHE_BUILD"
    timed tar -xJf "$LINUX_SOURCE_TARBALL" -C "$CACHE_SRC.tmp"
    [ -f "$CACHE_SRC.tmp/$LINUX_TREE_NAME/Makefile" ] \
        || die "tarball did not contain $LINUX_TREE_NAME/Makefile"
    mv "$CACHE_SRC.tmp" "$CACHE_SRC"
    echo "$TAR_ID" > "$CACHE_STATE/unpacked"
fi

# ---------------------------------------------------------------- 2. patches
step "2/5 patches from $PATCH_DIR"
APPLIED="$CACHE_STATE/applied"      # copies of the applied patches + their order
mkdir -p "$APPLIED"
touch "$APPLIED/series"

desired_series() {
    [ -d "$PATCH_DIR" ] || return 0
    find "$PATCH_DIR" -maxdepth 1 -name '*.patch' -type f -printf '%f\n' | LC_ALL=C sort |
        while IFS= read -r name; do
            printf '%s %s\n' "$(sha256sum < "$PATCH_DIR/$name" | cut -d' ' -f1)" "$name"
        done
}

# Files named in a patch (both sides, without the a/ b/ prefix).
patch_files() {
    sed -n -E 's#^(---|\+\+\+) ([ab]/)?([^[:space:]]+).*#\3#p' "$1" | grep -v '^/dev/null$' | sort -u
}

# Drops the last entry of the applied series.
pop_applied() {
    local last
    last=$(tail -n 1 "$APPLIED/series" | cut -d' ' -f2-)
    rm -f "$APPLIED/$last"
    sed -i '$d' "$APPLIED/series"
}

DESIRED=$(desired_series)
if [ "$DESIRED" = "$(cat "$APPLIED/series")" ]; then
    if [ -z "$DESIRED" ]; then info "no patches (pristine tree)"; else
        info "up to date: $(wc -l <<<"$DESIRED") patch(es) applied"; fi
else
    # Revert what is applied, newest first.
    while [ -s "$APPLIED/series" ]; do
        name=$(tail -n 1 "$APPLIED/series" | cut -d' ' -f2-)
        if (cd "$CACHE_TREE" && patch -R -p1 -s -f --dry-run < "$APPLIED/$name" >/dev/null 2>&1); then
            info "reverting $name"
            (cd "$CACHE_TREE" && patch -R -p1 -s -f --no-backup-if-mismatch < "$APPLIED/$name" >/dev/null)
            pop_applied
        else
            warn "$name does not revert cleanly (tree edited by hand?);" \
                 "restoring every file touched by applied patches from the tarball"
            mapfile -t files < <(for p in "$APPLIED"/*.patch; do [ -f "$p" ] && patch_files "$p"; done | sort -u)
            for f in "${files[@]}"; do rm -f "$CACHE_TREE/$f" "$CACHE_TREE/$f.orig" "$CACHE_TREE/$f.rej"; done
            # --touch: fresh mtimes, so kbuild recompiles the restored files.
            # Files the patches created are not in the tarball: tar reports them; ignore.
            tar -xJf "$LINUX_SOURCE_TARBALL" -C "$CACHE_SRC" --touch \
                "${files[@]/#/$LINUX_TREE_NAME/}" 2>/dev/null || true
            rm -f "$APPLIED"/*.patch
            : > "$APPLIED/series"
        fi
    done
    # Apply the desired series in order.
    while IFS=' ' read -r sum name; do
        [ -n "$name" ] || continue
        info "applying $name"
        if ! out=$(cd "$CACHE_TREE" && patch -p1 -f --dry-run < "$PATCH_DIR/$name" 2>&1); then
            printf '%s\n' "$out" >&2
            die "patch $name does not apply to $LINUX_TREE_NAME $LINUX_SOURCE_VERSION (with the patches before it)"
        fi
        cp "$PATCH_DIR/$name" "$APPLIED/$name"
        (cd "$CACHE_TREE" && patch -p1 -s -f --no-backup-if-mismatch < "$APPLIED/$name" >/dev/null)
        echo "$sum $name" >> "$APPLIED/series"
    done <<<"$DESIRED"
fi

# ---------------------------------------------------------------- 3. configure
step "3/5 configure $VARIANT in $OUT"
mkdir -p "$OUT"
STAMP=$( { echo "$TAR_ID"; cat "$APPLIED/series"; for f in "${FRAGMENTS[@]}"; do echo "== $f"; cat "$f"; done; } \
         | sha256sum | cut -d' ' -f1)
MAKE=(make -C "$CACHE_TREE" O="$OUT" ARCH=x86_64 -j"$BOUNCE_JOBS"
      KBUILD_BUILD_USER=bounce KBUILD_BUILD_HOST=bounce)

# Every CONFIG_X=value / "# CONFIG_X is not set" line of the fragments must be in .config;
# when fragments disagree, the later one's line (merge_config.sh's winner) is the one.
check_config() {
    local frag line sym want got bad=0
    local -A WANT FROM
    local -a ORDER=()
    for frag in "${FRAGMENTS[@]}"; do
        while IFS= read -r line; do
            if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
                sym=${BASH_REMATCH[1]}; want="$sym=${BASH_REMATCH[2]}"
            elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
                sym=${BASH_REMATCH[1]}; want="# $sym is not set"
            else
                continue
            fi
            [ -n "${WANT[$sym]:-}" ] || ORDER+=("$sym")
            WANT[$sym]=$want
            FROM[$sym]=${frag##*/}
        done < "$frag"
    done
    for sym in "${ORDER[@]}"; do
        want=${WANT[$sym]}
        got=$(grep -E "^($sym=|# $sym is not set)" "$OUT/.config" || true)
        # An unset option may also be absent altogether (its dependencies are off).
        if [ "$got" != "$want" ] && ! { [ "$want" = "# $sym is not set" ] && [ -z "$got" ]; }; then
            printf 'ERROR: %s asks for "%s", final .config has "%s"\n' \
                "${FROM[$sym]}" "$want" "${got:-<absent: dependencies not met>}" >&2
            bad=1
        fi
    done
    return "$bad"
}

if [ -f "$OUT/.config" ] && [ "$(cat "$OUT/.bounce-config-stamp" 2>/dev/null)" = "$STAMP" ]; then
    info "configuration unchanged"
else
    info "make tinyconfig + ${FRAGMENTS[*]##*/} + olddefconfig"
    "${MAKE[@]}" -s tinyconfig >/dev/null
    (cd "$OUT" && "$CACHE_TREE/scripts/kconfig/merge_config.sh" -m -O "$OUT" \
        "$OUT/.config" "${FRAGMENTS[@]}" >/dev/null)
    "${MAKE[@]}" -s olddefconfig >/dev/null
    rm -f "$OUT/.bounce-config-stamp"
fi
check_config || die "requested config options did not take effect (see above); fix the fragment's dependencies"
echo "$STAMP" > "$OUT/.bounce-config-stamp"
info "all $(cat "${FRAGMENTS[@]}" | grep -cE '^(CONFIG_|# CONFIG_.* is not set)') requested options present"

# ---------------------------------------------------------------- 4. library
# The strategies (Rust, no_std) linked by the patch's kernel/dma/bounce/Makefile.
BOUNCE_DIR="$CACHE_TREE/kernel/dma/bounce"
REPO_ROOT=$(cd "$BOUNCE_LINUX_DIR/../.." && pwd)
# Kernel stacks are 16 KiB (THREAD_SIZE): one Rust frame of several KiB, typically a
# large value built on the stack before it is boxed, overflows them (silently without
# VMAP_STACK). Prints the largest frames ("bytes function", from `sub $N,%rsp`) and
# fails above BOUNCE_MAX_FRAME bytes (default 8192).
check_frames() {
    local max=${BOUNCE_MAX_FRAME:-8192} top
    # awk, not head: head exits early and sort then dies of SIGPIPE (pipefail).
    top=$(objdump -d --no-show-raw-insn "$1" | awk '
        /^[0-9a-f]+ <.*>:$/ { fn = substr($2, 2, length($2) - 3) }
        /\tsub +\$0x[0-9a-f]+,%rsp$/ { match($0, /\$0x[0-9a-f]+/); print substr($0, RSTART + 3, RLENGTH - 3), fn }' |
        while read -r hex fn; do echo "$((16#$hex)) $fn"; done | sort -rn | awk 'NR <= 3')
    info "largest stack frames (bytes): $(awk '{ printf "%s%s %.60s", (NR > 1 ? "; " : ""), $1, $2 }' <<<"$top")"
    if [ "$(head -n 1 <<<"$top" | cut -d' ' -f1)" -gt "$max" ]; then
        die "a function of $1 has a stack frame above $max bytes (BOUNCE_MAX_FRAME); kernel stacks are 16 KiB"
    fi
}
# install_file SRC DST: copies when the content differs (an unchanged file keeps its
# mtime, so kbuild does not relink).
install_file() {
    if cmp -s "$1" "$2"; then
        info "unchanged: $2"
    else
        cp "$1" "$2"
        info "copied: $1 -> $2"
    fi
}
if grep -q '^CONFIG_SWIOTLB_BOUNCE=y' "$OUT/.config"; then
    step "4/5 bounce static library (CONFIG_SWIOTLB_BOUNCE=y)"
    LIB="$OUT/libbounce_kernel.a"
    if [ -n "${BOUNCE_STATICLIB:-}" ]; then
        [ -f "$BOUNCE_STATICLIB" ] || die "BOUNCE_STATICLIB=$BOUNCE_STATICLIB does not exist"
        LIB=$BOUNCE_STATICLIB
        info "prebuilt: $LIB"
    else
        # The kernel's .config picks the codegen flags (retpoline, IBT, ...). One cargo
        # target dir per checkout: cargo names a workspace crate's artifacts without its
        # path but checks freshness against the source paths of the build that made
        # them, so a second checkout sharing the dir would link the first one's code.
        T_LIB=$(date +%s)
        RUST_TARGET="$BOUNCE_KERNEL_CACHE/rust-target/$(printf %s "$REPO_ROOT" | sha256sum | cut -c1-12)"
        if ! BOUNCE_KERNEL_CONFIG="$OUT/.config" BOUNCE_JOBS="$BOUNCE_JOBS" \
                BOUNCE_KERNEL_TARGET_DIR="$RUST_TARGET" \
                bash "$REPO_ROOT/.ci/nostd-build.sh" --staticlib bounce-kernel "$LIB" \
                > "$OUT/rust-build.log" 2>&1; then
            tail -n 40 "$OUT/rust-build.log" >&2
            die "building the bounce static library failed; full log in $OUT/rust-build.log"
        fi
        grep -E '^nostd-build: (exported|undefined|text size)' "$OUT/rust-build.log" | sed 's/^/    /' >&2 || true
        info "built $LIB in $(( $(date +%s) - T_LIB )) s (log: $OUT/rust-build.log)"
    fi
    check_frames "$LIB"
    mkdir -p "$BOUNCE_DIR"
    install_file "$LIB" "$BOUNCE_DIR/libbounce_kernel.a"
    install_file "$REPO_ROOT/kernel-binding/include/bounce.h" "$BOUNCE_DIR/bounce.h"
else
    step "4/5 bounce static library: not needed (no CONFIG_SWIOTLB_BOUNCE=y)"
    for f in libbounce_kernel.a bounce.h; do
        if [ -e "$BOUNCE_DIR/$f" ]; then
            rm -f "$BOUNCE_DIR/$f"
            info "removed the stale $BOUNCE_DIR/$f"
        fi
    done
fi

# ---------------------------------------------------------------- 5. build
step "5/5 make -j$BOUNCE_JOBS bzImage ($VARIANT)"
T_BUILD=$(date +%s)
LOG="$OUT/build.log"
info "log: $LOG"
if ! "${MAKE[@]}" -s bzImage > "$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    die "kernel build failed ($VARIANT); full log in $LOG"
fi
grep -E 'warning:' "$LOG" | head -n 20 >&2 || true
[ -f "$IMAGE" ] || die "build finished but $IMAGE is missing"
info "built $IMAGE ($(stat -c %s "$IMAGE") bytes) in $(( $(date +%s) - T_BUILD )) s"
info "build-kernel.sh total: $(( $(date +%s) - T_ALL )) s"
echo "$IMAGE"
