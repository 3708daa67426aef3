#!/usr/bin/env bash
# CI: bounce inside a real Linux guest (kernel-binding/linux/README.md).
#
# Installs what the route needs (setup.sh: pinned linux-source-6.12, build tools,
# qemu, Debian's Rust for the no_std library), builds the bounce static library and
# the patched guest kernel, boots it under qemu once per configuration -- Linux's own
# swiotlb ("linux"), swiotlb.strategy=<each strategy of `bounce list --names`>, and a bad value
# ("bogus": must be rejected with a console message and fall back to Linux's
# swiotlb) -- and prints the integrity table and the ratio table against "linux".
# Exits non-zero if anything fails: build, boot, data integrity, a kernel splat, a
# strategy that did not activate or a bad value that was not rejected.
#
# Fresh-machine safe: runs as root (or with sudo) on Debian 12. Everything it builds
# is cached under /var/cache/bounce-kernel (or $TMPDIR/bounce-kernel when /var/cache
# is not writable); a second run rebuilds only what changed.
#
# usage: .ci/kernel-tests.sh [run-guest-tests.sh options, e.g. --configs "linux legacy"]
# Environment:
#   BOUNCE_KERNEL_CACHE   cache root (default above)
#   BOUNCE_KERNEL_DEBUG=1 also build the debug kernel (lockdep, DEBUG_ATOMIC_SLEEP,
#                         DMA_API_DEBUG) and boot it with every strategy (no splat
#                         allowed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)

if [ -z "${BOUNCE_KERNEL_CACHE:-}" ]; then
  if mkdir -p /var/cache/bounce-kernel 2>/dev/null && [ -w /var/cache/bounce-kernel ]; then
    BOUNCE_KERNEL_CACHE=/var/cache/bounce-kernel
  else
    BOUNCE_KERNEL_CACHE="${TMPDIR:-/tmp}/bounce-kernel"
  fi
fi
export BOUNCE_KERNEL_CACHE
echo "kernel-tests: cache $BOUNCE_KERNEL_CACHE"

rc=0
kernel-binding/linux/run-guest-tests.sh --quiet "$@" || rc=$?

if [ "${BOUNCE_KERNEL_DEBUG:-0}" = 1 ] && [ "$rc" = 0 ]; then
  echo
  echo "kernel-tests: debug kernel (lockdep, DEBUG_ATOMIC_SLEEP, DMA_API_DEBUG)"
  kernel-binding/linux/run-guest-tests.sh --skip-setup --quiet --debug \
    --configs "$(cargo run -q --locked -p bounce-bench -- list --names | tr '\n' ' ')" \
    --append "bouncetest.skip=bench bouncetest.iops_reps=1" || rc=$?
fi

echo "kernel-tests: $([ "$rc" = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
exit "$rc"
