#!/usr/bin/env bash
# The C ABI tests of bounce-kernel (kernel-binding/):
#
#   1. bounce.h is what cbindgen generates from the Rust definitions (regenerate, diff),
#      and compiles on its own as C99 -pedantic and as C++;
#   2. the std-flavour static library (cargo build -p bounce-kernel) linked into the C
#      test program (kernel-binding/tests/c), run plainly, under AddressSanitizer +
#      UBSan, and under valgrind;
#   3. the kernel-flavour static library (no std: heap and panics through the
#      bounce_host_* hooks, panic=abort) linked into the same program, which then
#      provides those hooks and checks every allocation is freed;
#   4. the kernel object itself: .ci/nostd-build.sh --staticlib bounce-kernel (the
#      bare-metal target, code-model=kernel, soft-float, LTO, prelinked, checked)
#      linked into the same program (-no-pie) and run, so the exact object the kernel
#      links passes the same tests.
#
#   .ci/c-tests.sh                 everything above
#   .ci/c-tests.sh --regen-header  rewrite kernel-binding/include/bounce.h and exit
#
# Idempotent and fresh-machine safe: installs gcc, g++, valgrind (apt-get) and cbindgen
# (cargo install, pinned) when missing. Exits non-zero on the first failure.
#
# Environment (optional):
#   CARGO_TARGET_DIR        cargo's target dir (default: <repo>/target); C objects and
#                           the pinned cbindgen go under $CARGO_TARGET_DIR/c-tests
#   BOUNCE_C_TESTS_QUICK=1  fewer iterations in the threaded test (valgrind always
#                           runs the quick variant)
#   BOUNCE_NO_INSTALL=1     never install anything; fail if a tool is missing
#   BOUNCE_C_TESTS_SKIP_KERNEL_OBJECT=1  skip step 4 (it needs Debian's rustc-web, which
#                           .ci/nostd-build.sh installs when missing)
set -euo pipefail

die() { echo "c-tests: ERROR: $*" >&2; exit 1; }
say() { echo "c-tests: $*" >&2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
kb="$repo/kernel-binding"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
out="$target/c-tests"
CBINDGEN_VERSION=0.29.4
mkdir -p "$out"
cd "$repo"

# ---------------------------------------------------------------- tools
apt_install() {
  [ "${BOUNCE_NO_INSTALL:-0}" = 1 ] && die "missing $*, and BOUNCE_NO_INSTALL=1"
  command -v apt-get >/dev/null || die "missing $* and no apt-get to install them"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
  say "installing $* (apt-get)"
  if ! "${apt[@]}" install "$@" >&2; then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -q update >&2
    "${apt[@]}" install "$@" >&2 || die "apt-get install $* failed"
  fi
}

pkgs=()
command -v gcc >/dev/null || pkgs+=(gcc libc6-dev)
command -v g++ >/dev/null || pkgs+=(g++)
command -v valgrind >/dev/null || pkgs+=(valgrind)
[ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"

# cbindgen, pinned: another version may lay the header out differently.
cbindgen=""
for c in "$(command -v cbindgen || true)" "$out/tools/bin/cbindgen"; do
  if [ -n "$c" ] && [ -x "$c" ] && [ "$("$c" --version 2>/dev/null)" = "cbindgen $CBINDGEN_VERSION" ]; then
    cbindgen=$c
    break
  fi
done
if [ -z "$cbindgen" ]; then
  [ "${BOUNCE_NO_INSTALL:-0}" = 1 ] && die "cbindgen $CBINDGEN_VERSION missing, and BOUNCE_NO_INSTALL=1"
  say "installing cbindgen $CBINDGEN_VERSION into $out/tools"
  cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --root "$out/tools" >&2 \
    || die "cargo install cbindgen failed"
  cbindgen="$out/tools/bin/cbindgen"
fi

# ---------------------------------------------------------------- 1. the header
gen_header() {
  "$cbindgen" -q --config "$kb/cbindgen.toml" --crate bounce-kernel --output "$1" \
    || die "cbindgen failed"
}
if [ "${1:-}" = "--regen-header" ]; then
  gen_header "$kb/include/bounce.h"
  say "wrote kernel-binding/include/bounce.h"
  exit 0
fi
[ $# -eq 0 ] || die "unknown argument $1 (only --regen-header)"

say "header: regenerating with cbindgen $CBINDGEN_VERSION and comparing"
gen_header "$out/bounce.h"
if ! diff -u "$kb/include/bounce.h" "$out/bounce.h" >&2; then
  die "kernel-binding/include/bounce.h differs from the Rust definitions; run .ci/c-tests.sh --regen-header"
fi
printf '#include "bounce.h"\nint bounce_header_compiles;\n' > "$out/header_only.c"
gcc -std=c99 -pedantic -Wall -Wextra -Werror -I "$kb/include" -c "$out/header_only.c" -o "$out/header_c99.o" \
  || die "bounce.h does not compile as C99"
g++ -x c++ -std=c++11 -Wall -Wextra -Werror -I "$kb/include" -c "$out/header_only.c" -o "$out/header_cxx.o" \
  || die "bounce.h does not compile as C++"

# ---------------------------------------------------------------- 2. std flavour
cflags=(-std=c11 -g -O1 -Wall -Wextra -Werror -pthread -I "$kb/include" -I "$kb/tests/c")
sources=("$kb/tests/c/bounce_abi_test.c" "$kb/tests/c/guest.c")

say "building the std-flavour staticlib"
cargo build -p bounce-kernel --lib >&2 || die "cargo build -p bounce-kernel failed"
lib_std="$target/debug/libbounce_kernel.a"
[ -f "$lib_std" ] || die "no $lib_std"
# What the Rust std needs from the system when linked statically.
native=$(cargo rustc -p bounce-kernel --lib --crate-type staticlib -- --print native-static-libs 2>&1 \
  | sed -n 's/.*native-static-libs: //p' | tail -1)
[ -n "$native" ] || native="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
# shellcheck disable=SC2206
native_libs=($native)

quick=()
[ "${BOUNCE_C_TESTS_QUICK:-0}" = 1 ] && quick=(--quick)

run_test() {
  local name=$1
  shift
  local log="$out/$name.log"
  say "running $name"
  if ! "$@" > "$log" 2>&1; then
    tail -n 60 "$log" >&2
    die "$name failed (full log: $log)"
  fi
  local last
  last=$(tail -n 1 "$log")
  grep -q '^c-abi: [0-9]* passed, 0 failed$' <<<"$last" || { tail -n 60 "$log" >&2; die "$name: unexpected last line: $last"; }
  grep -E '^c-abi: ' "$log" >&2
}

gcc "${cflags[@]}" "${sources[@]}" "$lib_std" "${native_libs[@]}" -o "$out/abi_test" || die "compiling the C test failed"
run_test "c-abi (std flavour)" "$out/abi_test" "${quick[@]}"

gcc "${cflags[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
  "${sources[@]}" "$lib_std" "${native_libs[@]}" -o "$out/abi_test_asan" || die "compiling the ASan test failed"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  run_test "c-abi (AddressSanitizer + UBSan)" "$out/abi_test_asan" "${quick[@]}"

run_test "c-abi (valgrind)" valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite "$out/abi_test" --quick

# ---------------------------------------------------------------- 3. kernel flavour
say "building the kernel-flavour staticlib (no std, panic=abort, bounce_host_* hooks)"
CARGO_PROFILE_DEV_PANIC=abort cargo build -p bounce-kernel --lib --no-default-features --features kernel \
  --target-dir "$out/kernel-flavour" >&2 || die "kernel-flavour build failed"
lib_kernel="$out/kernel-flavour/debug/libbounce_kernel.a"
[ -f "$lib_kernel" ] || die "no $lib_kernel"
gcc "${cflags[@]}" -DBOUNCE_KERNEL_FLAVOUR "${sources[@]}" "$lib_kernel" -o "$out/abi_test_kernel" \
  || die "compiling the kernel-flavour test failed"
run_test "c-abi (kernel flavour)" "$out/abi_test_kernel" "${quick[@]}"

# ---------------------------------------------------------------- 4. the kernel object
if [ "${BOUNCE_C_TESTS_SKIP_KERNEL_OBJECT:-0}" = 1 ]; then
  say "skipping the kernel object (BOUNCE_C_TESTS_SKIP_KERNEL_OBJECT=1)"
else
  say "building the kernel object (.ci/nostd-build.sh --staticlib bounce-kernel)"
  bash "$script_dir/nostd-build.sh" --staticlib bounce-kernel "$out/bounce-kernel.a" \
    || die "nostd-build.sh --staticlib bounce-kernel failed"
  # code-model=kernel code is position-dependent with 32-bit sign-extended absolute
  # addresses: it links into a non-PIE executable (loaded below 2 GiB) unchanged.
  gcc "${cflags[@]}" -no-pie -DBOUNCE_KERNEL_FLAVOUR "${sources[@]}" "$out/bounce-kernel.a" \
    -o "$out/abi_test_kernel_object" || die "linking the kernel object into the C test failed"
  run_test "c-abi (kernel object)" "$out/abi_test_kernel_object" "${quick[@]}"
fi

say "OK"
