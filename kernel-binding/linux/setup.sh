#!/usr/bin/env bash
# Installs what the Linux guest route needs from Debian (bookworm + bookworm-security):
# the pinned linux-source-6.12 (versions.env), kernel build tools, static busybox,
# qemu, and the Debian Rust toolchain used to build the strategy code as a kernel
# static library. Runs `apt-get update` only when a package or the pinned version is
# not known to apt yet. Idempotent: does nothing when everything is installed.
#
# usage: setup.sh [--no-rust] [--check]
#   --no-rust  skip rustc-web cargo-web rust-web-src
#   --check    only verify, install nothing (exit 1 if something is missing)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUST=1
CHECK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --no-rust) RUST=0 ;;
        --check) CHECK=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done

PKGS=(flex bison bc libelf-dev libssl-dev cpio busybox-static qemu-system-x86 xz-utils
      gcc make libc6-dev binutils patch)
RUST_PKGS=(rustc-web cargo-web rust-web-src)
[ "$RUST" = 1 ] && PKGS+=("${RUST_PKGS[@]}")

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: run setup.sh as root"
    SUDO=(sudo)
fi

# Prints nothing (and succeeds) for a package dpkg does not know: under pipefail a failing
# dpkg-query would otherwise end the script at the first unknown package.
installed_version() { { dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null || true; } | sed -n 's/^ii *//p'; }

step "check packages (pinned $LINUX_SOURCE_PACKAGE=$LINUX_SOURCE_VERSION)"
MISSING=()
for p in "${PKGS[@]}"; do
    [ -n "$(installed_version "$p")" ] || MISSING+=("$p")
done
HAVE_SRC=$(installed_version "$LINUX_SOURCE_PACKAGE")
if [ "$HAVE_SRC" != "$LINUX_SOURCE_VERSION" ]; then
    [ -n "$HAVE_SRC" ] && info "$LINUX_SOURCE_PACKAGE $HAVE_SRC installed, pinned $LINUX_SOURCE_VERSION"
    MISSING+=("$LINUX_SOURCE_PACKAGE=$LINUX_SOURCE_VERSION")
fi

if [ ${#MISSING[@]} = 0 ]; then
    info "all ${#PKGS[@]} packages and $LINUX_SOURCE_PACKAGE $LINUX_SOURCE_VERSION are installed"
else
    info "to install: ${MISSING[*]}"
    [ "$CHECK" = 0 ] || die "missing packages (run setup.sh without --check)"
    # Only refresh the package lists if apt does not know a package/version yet.
    need_update=0
    for p in "${MISSING[@]}"; do
        if ! apt-cache show "$p" >/dev/null 2>&1; then need_update=1; break; fi
    done
    if [ "$need_update" = 1 ]; then
        step "apt-get update (package lists do not know: ${p})"
        "${SUDO[@]}" apt-get update -q
        apt-cache show "$LINUX_SOURCE_PACKAGE=$LINUX_SOURCE_VERSION" >/dev/null 2>&1 || {
            apt-cache policy "$LINUX_SOURCE_PACKAGE" >&2 || true
            die "the archive does not offer $LINUX_SOURCE_PACKAGE=$LINUX_SOURCE_VERSION any more \
(is bookworm-security in the apt sources?); pick a listed version and update versions.env"
        }
    fi
    step "apt-get install ${MISSING[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends --allow-downgrades "${MISSING[@]}"
fi

step "verify"
HAVE_SRC=$(installed_version "$LINUX_SOURCE_PACKAGE")
[ "$HAVE_SRC" = "$LINUX_SOURCE_VERSION" ] \
    || die "$LINUX_SOURCE_PACKAGE ${HAVE_SRC:-<none>} installed, but versions.env pins $LINUX_SOURCE_VERSION"
[ -f "$LINUX_SOURCE_TARBALL" ] || die "$LINUX_SOURCE_TARBALL missing after install"
for p in "${PKGS[@]}"; do
    [ -n "$(installed_version "$p")" ] || die "$p is still not installed"
done
for t in qemu-system-x86_64 gcc make flex bison bc cpio xz patch; do
    command -v "$t" >/dev/null || die "$t not found in PATH after install"
done
info "$LINUX_SOURCE_PACKAGE $HAVE_SRC, $(qemu-system-x86_64 --version | sed -n 1p)"
