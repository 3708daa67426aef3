#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target in fuzz/ and runs each for a short,
# bounded time starting from the checked-in corpus. Exits non-zero on a crash, a
# timeout, a leak or an out-of-memory in any target (the reproducer is left in
# $WORK/artifacts/<target>/ and named in the output).
#
#   .ci/fuzz-smoke.sh                 # all targets, default times
#   .ci/fuzz-smoke.sh cmdline trace   # only these targets (cmdline trace boot ops)
#
# Fresh-machine safe and idempotent: installs cargo-fuzz (crates.io) and a C++
# compiler (libFuzzer is C++) when missing; every run starts from the checked-in corpus
# in a clean scratch directory. Works on the stable toolchain: cargo-fuzz's -Z flags
# are accepted through RUSTC_BOOTSTRAP=1 (see fuzz/README.md, "Toolchain").
#
# Environment (all optional):
#   BOUNCE_FUZZ_SECONDS        seconds per target (default: cmdline 20, trace 20, boot 30,
#                              ops 40; two targets run side by side: cmdline with trace,
#                              then boot with ops, so about 60 s of fuzzing in all)
#   BOUNCE_FUZZ_TARGET_DIR     CARGO_TARGET_DIR for the fuzz build (default: target/fuzz)
#   BOUNCE_FUZZ_WORK           scratch directory (default: target/fuzz-smoke)
#   BOUNCE_FUZZ_SANITIZER      address (default) or none
#   BOUNCE_FUZZ_JOBS           cargo -j (default 2)
#   BOUNCE_FUZZ_CODEGEN_UNITS  codegen units of the fuzz build (default 16: a smoke run is
#                              mostly build time; cargo fuzz's own default is 1)
#   BOUNCE_CARGO_FUZZ_VERSION  cargo-fuzz version to install if missing (default 0.13.2)
#   BOUNCE_NO_INSTALL=1        never install anything; fail instead
set -euo pipefail

say() { echo "fuzz-smoke: $*" >&2; }
die() { echo "fuzz-smoke: ERROR: $*" >&2; exit 2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

ALL_TARGETS=(cmdline trace boot ops)
declare -A SECONDS_FOR=([cmdline]=20 [trace]=20 [boot]=30 [ops]=40)
declare -A DICT_FOR=([cmdline]=fuzz/dict/cmdline.dict [trace]=fuzz/dict/trace.dict [boot]=fuzz/dict/cmdline.dict)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
  [ -n "${SECONDS_FOR[$t]:-}" ] || die "unknown target '$t' (known: ${ALL_TARGETS[*]})"
done

TARGET_DIR=${BOUNCE_FUZZ_TARGET_DIR:-$repo/target/fuzz}
WORK=${BOUNCE_FUZZ_WORK:-$repo/target/fuzz-smoke}
SANITIZER=${BOUNCE_FUZZ_SANITIZER:-address}
JOBS=${BOUNCE_FUZZ_JOBS:-2}
CGU=${BOUNCE_FUZZ_CODEGEN_UNITS:-16}
CARGO_FUZZ_VERSION=${BOUNCE_CARGO_FUZZ_VERSION:-0.13.2}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

# ---------------------------------------------------------------- tools
command -v cargo >/dev/null || die "cargo not found (install Rust with rustup first)"
install_pkgs() {
  [ "${BOUNCE_NO_INSTALL:-0}" = 1 ] && die "missing: $*, and BOUNCE_NO_INSTALL=1"
  command -v apt-get >/dev/null || die "missing: $* (no apt-get to install them)"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  say "installing $* (Debian)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q \
    --no-install-recommends install "$@" >/dev/null \
    || { "${sudo[@]}" apt-get -q update >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends install "$@" >/dev/null; }
}
if ! command -v c++ >/dev/null || ! command -v cc >/dev/null; then install_pkgs g++; fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  [ "${BOUNCE_NO_INSTALL:-0}" = 1 ] && die "cargo-fuzz missing and BOUNCE_NO_INSTALL=1"
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" -j "$JOBS"
fi
say "$(rustc --version); $(cargo fuzz --version)"

# Stable Rust: cargo-fuzz passes -Zsanitizer=... and -Cpasses=sancov-module; the stable
# compiler accepts the -Z flags with RUSTC_BOOTSTRAP=1 and ships the sanitizer runtimes.
export RUSTC_BOOTSTRAP=1
host=$(rustc -vV | sed -n 's/^host: //p')
sysroot_lib="$(rustc --print sysroot)/lib/rustlib/$host/lib"
if [ "$SANITIZER" = address ] && ! ls "$sysroot_lib"/librustc-*_rt.asan.a >/dev/null 2>&1; then
  say "no AddressSanitizer runtime in $sysroot_lib: building without a sanitizer"
  SANITIZER=none
fi

# ---------------------------------------------------------------- build
say "[$(elapsed)s] building ${TARGETS[*]} (sanitizer: $SANITIZER, target dir: $TARGET_DIR)"
export CARGO_TARGET_DIR="$TARGET_DIR"
export CARGO_BUILD_JOBS="$JOBS"
# `cargo fuzz build` has no --locked: check fuzz/Cargo.lock first (fails when it is
# out of date instead of letting the build rewrite it) and fetch what it pins.
cargo fetch --locked --manifest-path fuzz/Cargo.toml
build=(cargo fuzz build --fuzz-dir fuzz -s "$SANITIZER" --codegen-units "$CGU")
if [ ${#TARGETS[@]} -eq ${#ALL_TARGETS[@]} ]; then
  "${build[@]}"                                             # all at once: one dependency build
else
  for t in "${TARGETS[@]}"; do "${build[@]}" "$t"; done
fi
bin_dir="$TARGET_DIR/$host/release"
say "[$(elapsed)s] built"

# ---------------------------------------------------------------- run
rm -rf "$WORK"
mkdir -p "$WORK"

# run_target T: replays fuzz/regressions/T, then fuzzes T from fuzz/corpus/T; writes a
# one-line result to $WORK/T/result; returns non-zero on any failure.
run_target() {
  local t=$1 secs corpus dict rc runs cov corp art
  secs=${BOUNCE_FUZZ_SECONDS:-${SECONDS_FOR[$t]}}
  corpus="fuzz/corpus/$t"
  mkdir -p "$WORK/$t/new" "$WORK/artifacts/$t"
  if [ ! -d "$corpus" ] || [ -z "$(ls -A "$corpus")" ]; then
    echo "$t: no checked-in corpus in $corpus" >"$WORK/$t/result"
    return 1
  fi
  # Fixed findings must stay fixed (open ones are stepped around by guards unless
  # BOUNCE_FUZZ_STRICT=1; `cargo test` in fuzz/ checks those strictly).
  if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls -A "fuzz/regressions/$t")" ]; then
    say "[$(elapsed)s] $t: replaying fuzz/regressions/$t"
    if ! "$bin_dir/$t" -artifact_prefix="$WORK/artifacts/$t/" "fuzz/regressions/$t"/* \
         >"$WORK/$t/regressions.log" 2>&1; then
      grep -m1 -A3 "panicked at" "$WORK/$t/regressions.log" >&2 || tail -n 40 "$WORK/$t/regressions.log" >&2
      echo "$t: REGRESSION: an input in fuzz/regressions/$t fails again (log: $WORK/$t/regressions.log)" \
        >"$WORK/$t/result"
      return 1
    fi
  fi
  local args=(-max_total_time="$secs" -timeout=60 -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$t/")
  dict=${DICT_FOR[$t]:-}
  if [ -n "$dict" ] && [ -f "$dict" ]; then args+=(-dict="$dict"); fi
  say "[$(elapsed)s] $t: fuzzing for ${secs}s from $corpus"
  rc=0
  "$bin_dir/$t" "${args[@]}" "$WORK/$t/new" "$corpus" >"$WORK/$t/fuzz.log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$t/fuzz.log" | tail -n 1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$WORK/$t/fuzz.log" | tail -n 1 | cut -d' ' -f2 || true)
  corp=$(grep -o 'corp: [0-9]*' "$WORK/$t/fuzz.log" | tail -n 1 | cut -d' ' -f2 || true)
  if [ "$rc" -ne 0 ]; then
    grep -m1 -A3 "panicked at" "$WORK/$t/fuzz.log" >&2 || tail -n 40 "$WORK/$t/fuzz.log" >&2
    art=$(find "$WORK/artifacts/$t" -maxdepth 1 -type f -printf '%f\n' 2>/dev/null | head -n 1 || true)
    {
      echo "$t: FAILED (exit $rc) after ${runs:-?} executions; log: $WORK/$t/fuzz.log"
      echo "  reproducer: $WORK/artifacts/$t/$art"
      echo "  reproduce:  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $t $WORK/artifacts/$t/$art"
      echo "  minimize:   RUSTC_BOOTSTRAP=1 cargo fuzz tmin --fuzz-dir fuzz $t $WORK/artifacts/$t/$art"
    } >"$WORK/$t/result"
    return 1
  fi
  echo "$t: ${runs:-?} executions in ${secs}s, coverage ${cov:-?} edges, corpus ${corp:-?} inputs" >"$WORK/$t/result"
}

# Two at a time (two cores), in the order of ALL_TARGETS: the parsers first, then the
# two that boot strategies on the simulator.
failed=0
for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
  pids=()
  for t in "${TARGETS[@]:i:2}"; do run_target "$t" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
done

say "[$(elapsed)s] done"
for t in "${TARGETS[@]}"; do echo "fuzz-smoke: $(cat "$WORK/$t/result" 2>/dev/null || echo "$t: no result")"; done
exit "$failed"
