# shellcheck shell=bash disable=SC2034  # variables are used by the scripts sourcing this file
# Common helpers for the Linux guest route. Sourced, never executed.

BOUNCE_LINUX_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$BOUNCE_LINUX_DIR/versions.env"

BOUNCE_KERNEL_CACHE="${BOUNCE_KERNEL_CACHE:-/var/cache/bounce-kernel}"
BOUNCE_JOBS="${BOUNCE_JOBS:-2}"

# Cache layout (see README.md):
CACHE_SRC="$BOUNCE_KERNEL_CACHE/src"                 # unpacked tree, patched in place
CACHE_TREE="$CACHE_SRC/$LINUX_TREE_NAME"
CACHE_STATE="$BOUNCE_KERNEL_CACHE/state"             # markers, applied patch copies
CACHE_BUILD="$BOUNCE_KERNEL_CACHE/build"             # O= build dirs: baseline/, debug/
CACHE_INITRAMFS="$BOUNCE_KERNEL_CACHE/initramfs"     # staging root + initramfs.cpio
CACHE_RUNS="$BOUNCE_KERNEL_CACHE/runs"               # disk images and console logs

_step_t0=$(date +%s)
step() { printf '\n==> [%s +%ss] %s\n' "$(basename "$0")" "$(( $(date +%s) - _step_t0 ))" "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command and prints how long it took.
timed() {
    local t0 rc=0
    t0=$(date +%s)
    "$@" || rc=$?
    info "($(( $(date +%s) - t0 )) s: $1 ...)"
    return "$rc"
}

# Checks that the pinned linux-source package is the installed one.
check_linux_source() {
    local have
    have=$(dpkg-query -W -f='${Version}' "$LINUX_SOURCE_PACKAGE" 2>/dev/null || true)
    [ -n "$have" ] || die "$LINUX_SOURCE_PACKAGE is not installed; run $BOUNCE_LINUX_DIR/setup.sh"
    [ "$have" = "$LINUX_SOURCE_VERSION" ] || die "$LINUX_SOURCE_PACKAGE $have is installed but \
versions.env pins $LINUX_SOURCE_VERSION; run setup.sh (it installs the pinned version) or bump the pin"
    [ -f "$LINUX_SOURCE_TARBALL" ] || die "$LINUX_SOURCE_TARBALL is missing (reinstall $LINUX_SOURCE_PACKAGE)"
}

ensure_cache_dir() {
    mkdir -p "$BOUNCE_KERNEL_CACHE" 2>/dev/null || die "cannot create cache dir $BOUNCE_KERNEL_CACHE \
(set BOUNCE_KERNEL_CACHE to a writable directory)"
    [ -w "$BOUNCE_KERNEL_CACHE" ] || die "cache dir $BOUNCE_KERNEL_CACHE is not writable"
}

# The PCI addresses of the two scratch disks of an A/B boot (boot.sh --disks 2):
# /dev/vda and /dev/vdb, the device names swiotlb.strategy= routes name.
AB_PCI_A="0000:00:04.0"
AB_PCI_B="0000:00:05.0"

# Build variant -> O= directory.
build_dir_for() { echo "$CACHE_BUILD/$1"; }

# The strategies built into the bounce library, space-separated: the registry in
# strategies/src/lib.rs (the one list), as `bounce list --names` prints it.
strategy_names() {
    local names
    names=$(cd "$BOUNCE_LINUX_DIR/../.." && cargo run -q --locked -p bounce-bench -- list --names) \
        || die "cannot list the strategies (cargo run -p bounce-bench -- list --names)"
    echo $names
}
