#!/usr/bin/env bash
# Build bounce crates as `no_std` code for the x86_64 Linux kernel target.
#
#   .ci/nostd-build.sh CRATE...                 # CI proof: these crates build no_std
#   .ci/nostd-build.sh --staticlib CRATE OUT    # kernel static library (OUT.a or OUT.o)
#   .ci/nostd-build.sh --check-object OBJ.o     # only run the object checks
#
# Uses Debian's Rust (rustc-web/cargo-web/rust-web-src, /usr/bin) with
# RUSTC_BOOTSTRAP=1 and -Zbuild-std=core,alloc for the custom target in
# kernel-binding/toolchain/. The rustup toolchain in ~/.cargo/bin is neither
# used nor touched; host builds never see the kernel cargo config.
# See kernel-binding/toolchain/README.md for every flag and why.
#
# Environment (all optional):
#   BOUNCE_WORKSPACE        cargo workspace to build (default: repo root)
#   BOUNCE_TOOLCHAIN_DIR    dir with the target JSON + kernel-target.toml
#                           (default: <repo>/kernel-binding/toolchain)
#   BOUNCE_KERNEL_TARGET_DIR  CARGO_TARGET_DIR (default: <workspace>/target/kernel)
#   BOUNCE_TARGET_NAME      target JSON stem (default: x86_64-bounce-kernel)
#   BOUNCE_KERNEL_PROFILE   cargo profile (default: kernel, defined in kernel-target.toml)
#   BOUNCE_KERNEL_CONFIG    path to the kernel's .config: adds the codegen flags
#                           that config needs (retpoline, rethunk, IBT, call
#                           padding, SLS) and allows the thunk symbols they
#                           reference. Without it: flags for a kernel with none
#                           of those (tinyconfig-based).
#   BOUNCE_KERNEL_RETPOLINE=1  shortcut: retpoline + rethunk flags only
#   BOUNCE_KERNEL_EXTRA_RUSTFLAGS  extra flags appended for the target crates
#   BOUNCE_EXPORT_PREFIX    exported symbol prefix (default: bounce_)
#   BOUNCE_HOST_PREFIX      kernel-provided hook prefix (default: bounce_host_)
#   BOUNCE_ALLOW_UNDEF      extra allowed undefined symbols (space separated, globs)
#   BOUNCE_NO_INSTALL=1     never apt-get install missing packages
#   BOUNCE_JOBS             cargo -j (default 2)
set -euo pipefail

die() { echo "nostd-build: ERROR: $*" >&2; exit 1; }
say() { echo "nostd-build: $*" >&2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
WORKSPACE=$(cd "${BOUNCE_WORKSPACE:-$repo_root}" && pwd)
TOOLCHAIN_DIR=$(cd "${BOUNCE_TOOLCHAIN_DIR:-$repo_root/kernel-binding/toolchain}" && pwd)
TARGET_NAME="${BOUNCE_TARGET_NAME:-x86_64-bounce-kernel}"   # = JSON file stem
TARGET_JSON="$TOOLCHAIN_DIR/$TARGET_NAME.json"
KERNEL_CONFIG="$TOOLCHAIN_DIR/kernel-target.toml"
TARGET_DIR="${BOUNCE_KERNEL_TARGET_DIR:-$WORKSPACE/target/kernel}"
PROFILE="${BOUNCE_KERNEL_PROFILE:-kernel}"
EXPORT_PREFIX="${BOUNCE_EXPORT_PREFIX:-bounce_}"
HOST_PREFIX="${BOUNCE_HOST_PREFIX:-bounce_host_}"
JOBS="${BOUNCE_JOBS:-2}"
MIN_RUSTC_MINOR=96   # 1.96 is the version this route was verified with

# Symbols the kernel provides and the object may reference.
ALLOWED_UNDEF=(memcpy memmove memset memcmp bcmp strlen "${HOST_PREFIX}*")
# Symbols the object must NOT define (the kernel's own must be used).
KERNEL_MEM_SYMS=(memcpy memmove memset memcmp bcmp strlen)

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- toolchain
rustc_ok() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || return 1
  local v minor
  v=$(/usr/bin/rustc -V 2>/dev/null) || return 1
  minor=$(echo "$v" | sed -n 's/^rustc 1\.\([0-9][0-9]*\)\..*/\1/p')
  [ -n "$minor" ] && [ "$minor" -ge "$MIN_RUSTC_MINOR" ] || return 1
  [ -f "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library/core/src/lib.rs" ]
}
binutils_ok() {
  local t
  for t in ld objcopy nm readelf objdump ar size; do command -v "$t" >/dev/null || return 1; done
}
ensure_toolchain() {
  if rustc_ok && binutils_ok; then return 0; fi
  [ "${BOUNCE_NO_INSTALL:-0}" = 1 ] && die "Debian Rust >= 1.$MIN_RUSTC_MINOR with rust-src (rustc-web cargo-web rust-web-src) or binutils missing, and BOUNCE_NO_INSTALL=1"
  command -v apt-get >/dev/null || die "Debian Rust toolchain missing and no apt-get: install rustc-web cargo-web rust-web-src binutils"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  local pkgs=(rustc-web cargo-web rust-web-src binutils)
  say "installing ${pkgs[*]} (Debian)"
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
  # A fresh machine's package lists may be stale: bookworm main alone has rustc-web
  # 1.85; 1.96 comes from bookworm-security. An install that fails, or that leaves a
  # too-old rustc, is retried after apt-get update.
  if ! "${apt[@]}" install "${pkgs[@]}" >&2 || ! rustc_ok; then
    say "install failed or gave $(/usr/bin/rustc -V 2>&1 || echo no rustc); running apt-get update and retrying"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -q update >&2
    "${apt[@]}" install "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
  fi
  rustc_ok || die "/usr/bin/rustc is not Rust >= 1.$MIN_RUSTC_MINOR with library source after install ($(/usr/bin/rustc -V 2>&1 || true))"
  binutils_ok || die "binutils (ld objcopy nm readelf objdump ar size) missing after install"
}

# Codegen flags and extra allowed undefined symbols for the kernel .config
# (mirrors arch/x86/Makefile and the top Makefile of Linux 6.12).
KCONFIG_FLAGS=()
kconfig_has() { grep -Eq "^CONFIG_($1)=y" "$BOUNCE_KERNEL_CONFIG"; }
apply_kernel_config() {
  local retpoline=0 rethunk=0
  if [ -n "${BOUNCE_KERNEL_CONFIG:-}" ]; then
    [ -f "$BOUNCE_KERNEL_CONFIG" ] || die "BOUNCE_KERNEL_CONFIG=$BOUNCE_KERNEL_CONFIG: no such file"
    kconfig_has 'MITIGATION_RETPOLINE|RETPOLINE' && retpoline=1
    kconfig_has 'MITIGATION_RETHUNK|RETHUNK' && rethunk=1
    if kconfig_has X86_KERNEL_IBT; then
      KCONFIG_FLAGS+=(-Zcf-protection=branch -Cjump-tables=n)
    fi
    if kconfig_has CALL_PADDING; then
      local pad
      pad=$(sed -n 's/^CONFIG_FUNCTION_PADDING_BYTES=\([0-9]*\)$/\1/p' "$BOUNCE_KERNEL_CONFIG")
      [ -n "$pad" ] && KCONFIG_FLAGS+=("-Zpatchable-function-entry=$pad,$pad")
    fi
    if kconfig_has 'MITIGATION_SLS|SLS'; then
      KCONFIG_FLAGS+=(-Ctarget-feature=+harden-sls-ijmp,+harden-sls-ret)
    fi
  fi
  if [ "${BOUNCE_KERNEL_RETPOLINE:-0}" = 1 ]; then retpoline=1; rethunk=1; fi
  if [ "$retpoline" = 1 ]; then
    KCONFIG_FLAGS+=(-Zretpoline-external-thunk -Zindirect-branch-cs-prefix)
    ALLOWED_UNDEF+=("__x86_indirect_thunk_*" "__x86_indirect_jump_thunk_*" "__x86_indirect_call_thunk_*")
  fi
  if [ "$rethunk" = 1 ]; then
    KCONFIG_FLAGS+=(-Zfunction-return=thunk-extern)
    ALLOWED_UNDEF+=("__x86_return_thunk")
  fi
  if [ ${#KCONFIG_FLAGS[@]} -gt 0 ]; then say "kernel-config codegen flags: ${KCONFIG_FLAGS[*]}"; fi
}

# Run Debian's cargo for the kernel target: kcargo build|rustc ARGS...
kcargo() {
  local sub=$1; shift
  local extra_flags=("${KCONFIG_FLAGS[@]}")
  # shellcheck disable=SC2206
  [ -n "${BOUNCE_KERNEL_EXTRA_RUSTFLAGS:-}" ] && extra_flags+=(${BOUNCE_KERNEL_EXTRA_RUSTFLAGS})
  local cfg_extra=()
  if [ ${#extra_flags[@]} -gt 0 ]; then
    # Merge into target.<name>.rustflags (arrays from several --config are joined).
    local toml="[" f
    for f in "${extra_flags[@]}"; do toml+="\"$f\","; done
    toml="${toml%,}]"
    cfg_extra=(--config "target.$TARGET_NAME.rustflags=$toml")
  fi
  (
    cd "$WORKSPACE"
    # Anything that would override the config file's rustflags, or redirect
    # the compiler, is dropped: this build must be self-contained.
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTC_WRAPPER \
          RUSTC_WORKSPACE_WRAPPER CARGO_BUILD_TARGET CARGO_BUILD_RUSTC_WRAPPER \
          RUSTUP_TOOLCHAIN CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
    export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
           RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$TARGET_DIR"
    /usr/bin/cargo --config "$KERNEL_CONFIG" "${cfg_extra[@]}" "$sub" \
      -j "$JOBS" --target "$TARGET_JSON" --profile "$PROFILE" --no-default-features "$@"
  )
}

explain_build_failure() {
  local log=$1
  if grep -q "can't find crate for \`std\`" "$log"; then
    echo "nostd-build: ERROR: something in the dependency graph links \`std\`:" >&2
    grep -A2 "can't find crate for \`std\`" "$log" | grep -E '^\s*-->' | sort -u | sed 's/^/    /' >&2 || true
    grep -E "^error: could not compile" "$log" | sed 's/^error: could not compile/    culprit: could not compile/' >&2 || true
    echo "    find who enables std with:  cargo tree -e features -i <culprit> (with the same -p list)" >&2
    echo "    (a crate, or a dependency pulled with default features/std feature on," >&2
    echo "     uses std; check default-features = false and feature unification)" >&2
  fi
  if grep -q "requires \`std\`\|unwinding panics are not supported\|#\[panic_handler\]" "$log"; then
    grep -E "error(\[E[0-9]+\])?:" "$log" | sort -u | sed 's/^/    /' >&2 || true
  fi
}

# The target spec, as rustc normalises it, must have every kernel property.
# (rustc omits fields equal to their defaults: plt-by-default true, PIE off,
# stack-probes none, os "none".)
verify_target_spec() {
  local spec bad=0
  spec=$(cd / && RUSTC_BOOTSTRAP=1 /usr/bin/rustc -Zunstable-options --print target-spec-json \
         --target "$TARGET_JSON" 2>&1) || die "rustc rejects $TARGET_JSON: $spec"
  local want
  for want in '"relocation-model": "static"' '"code-model": "kernel"' '"disable-redzone": true' \
              '"panic-strategy": "abort"' '"rustc-abi": "softfloat"' '+soft-float' '-sse,' '-sse2,' '-avx,' '-mmx,'; do
    grep -qF -- "$want" <<<"$spec" || { say "target spec lacks $want"; bad=1; }
  done
  local unwanted
  for unwanted in '"plt-by-default": false' '"position-independent-executables": true' \
                  '"static-position-independent-executables": true' '"os": "linux"'; do
    grep -qF -- "$unwanted" <<<"$spec" && { say "target spec has $unwanted"; bad=1; }
  done
  # compiler_builtins' build.rs turns on its weak memcpy & co for any target
  # name containing "-none" (also wasm/uefi/nvptx/sgx/xous).
  case "$TARGET_NAME" in *-none*|*uefi*|*nvptx*|*wasm*|*sgx*|*xous*)
    say "target name '$TARGET_NAME' makes compiler_builtins define memcpy & co"; bad=1 ;;
  esac
  [ "$bad" = 0 ] || die "target spec $TARGET_JSON is not fit for the kernel"
}

# Every named crate must be a workspace member (cargo's own error for a
# non-member with --no-default-features is the cryptic "cannot specify
# features for packages outside of workspace").
check_members() {
  local members c
  members=$(cd "$WORKSPACE" && RUSTC=/usr/bin/rustc /usr/bin/cargo metadata --no-deps --format-version 1 2>/dev/null \
            | grep -o '"name":"[^"]*","version":"' | sed 's/"name":"\([^"]*\)".*/\1/') \
    || die "cargo metadata failed in $WORKSPACE"
  for c in "$@"; do
    grep -qx -- "$c" <<<"$members" || die "'$c' is not a package of the workspace $WORKSPACE (members: $(tr '\n' ' ' <<<"$members"))"
  done
}

# ---------------------------------------------------------------- rlib mode
build_rlibs() {
  local sub=build
  [ $# -ge 1 ] || usage
  check_members "$@"
  local pkgs=() c
  for c in "$@"; do pkgs+=(-p "$c"); done
  local log
  log=$(mktemp)
  say "building no_std for $TARGET_NAME: $*"
  say "toolchain: $(/usr/bin/rustc -V)"
  if ! kcargo "$sub" "${pkgs[@]}" 2>&1 | tee "$log" >&2; then
    explain_build_failure "$log"
    rm -f "$log"
    die "no_std build of: $* failed"
  fi
  rm -f "$log"
  # build-std only builds core/alloc/compiler_builtins; a libstd here would
  # mean someone smuggled std in (e.g. a prebuilt sysroot for this target).
  local deps="$TARGET_DIR/$TARGET_NAME/$PROFILE/deps"
  if ls "$deps"/libstd-*.rlib "$deps"/libstd-*.rmeta >/dev/null 2>&1; then
    die "libstd was built for $TARGET_NAME in $deps"
  fi
  say "OK: $* ${sub} as no_std (core+alloc only) for $TARGET_NAME"
}

# ---------------------------------------------------------------- staticlib mode
check_failed=0
fail_check() { echo "nostd-build: CHECK FAILED: $*" >&2; check_failed=1; }

# glob match helper: match NAME against the allowed undefined list
is_allowed_undef() {
  local s=$1 p
  for p in "${ALLOWED_UNDEF[@]}"; do
    # shellcheck disable=SC2053
    [[ $s == $p ]] && return 0
  done
  return 1
}

check_object() {
  local obj=$1 keep=$2
  local tmp
  tmp=$(mktemp -d)

  # 1. undefined symbols: only what the kernel provides
  nm -u "$obj" | awk '{print $NF}' | sort -u > "$tmp/undef"
  local bad=() s
  while read -r s; do
    [ -n "$s" ] || continue
    is_allowed_undef "$s" || bad+=("$s")
  done < "$tmp/undef"
  if [ ${#bad[@]} -gt 0 ]; then
    fail_check "undefined symbols the kernel does not provide (allowed: ${ALLOWED_UNDEF[*]}):"
    printf '    %s\n' "${bad[@]}" >&2
  fi

  # 2. global definitions: exactly the exported bounce_* entry points
  nm -g --defined-only "$obj" | awk '{print $NF}' | sort -u > "$tmp/globals"
  local extra
  extra=$(comm -23 "$tmp/globals" <(sort -u "$keep"))
  if [ -n "$extra" ]; then
    fail_check "global symbols other than the exported ${EXPORT_PREFIX}* entry points:"
    sed 's/^/    /' <<<"$extra" >&2
  fi
  # memcpy & co must come from the kernel: not defined here at all (not even
  # local: LLVM-emitted calls would bind to a local copy).
  nm --defined-only "$obj" | awk '{print $NF}' | sort -u > "$tmp/defs"
  for s in "${KERNEL_MEM_SYMS[@]}"; do
    if grep -qx "$s" "$tmp/defs"; then
      fail_check "object defines '$s' (compiler_builtins 'mem' feature?); the kernel's must be used"
    fi
  done

  # 3. relocations: no GOT/PLT-table or TLS relocations (kernel: static, no TLS)
  readelf -rW "$obj" | awk '/^[0-9a-f]+ +[0-9a-f]+ R_X86_64_/{print $3}' | sort | uniq -c > "$tmp/reltypes"
  if grep -Eq 'GOT|TPOFF|TLS|DTPMOD|DTPOFF' "$tmp/reltypes"; then
    fail_check "GOT/TLS relocations present (need relocation-model=static, plt-by-default/-Zplt=yes):"
    grep -E 'GOT|TPOFF|TLS|DTPMOD|DTPOFF' "$tmp/reltypes" | sed 's/^/    /' >&2
    readelf -rW "$obj" | grep -E 'GOT|TPOFF|TLS' | head -5 | sed 's/^/      e.g. /' >&2
  fi

  # 4. no SSE/AVX/MMX/x87 instructions (kernel code must not touch FPU state)
  objdump -d --no-show-raw-insn "$obj" > "$tmp/disasm"
  # Instruction lines look like "  1a2b:\tmnemonic operands". Flag x87
  # (every x87 mnemonic starts with 'f'), MMX/SSE/AVX register operands, and
  # FPU/vector state instructions. GPR-only SSE2 ops (movnti, lfence...) are fine.
  awk -F'\t' '/^ *[0-9a-f]+:\t/ {
      insn = $NF; n = split(insn, w, " "); i = 1
      while (i < n && w[i] ~ /^(rep|repz|repnz|repe|repne|lock|cs|ds|ss|es|fs|gs|notrack|bnd|data16|addr32)$/) i++
      m = w[i]
      if (m ~ /^f/ || insn ~ /%(x|y|z)mm[0-9]|%mm[0-7]|%st(\(|$|,)|%k[0-7]/ ||
          m ~ /^(ldmxcsr|stmxcsr|vldmxcsr|vstmxcsr|emms|femms|fxsave|fxrstor|xsave|xsaveopt|xsavec|xsaves|xrstor|xrstors|vzeroupper|vzeroall)/)
        print
    }' "$tmp/disasm" > "$tmp/fpu"
  if [ -s "$tmp/fpu" ]; then
    fail_check "SSE/AVX/MMX/x87 instructions found ($(wc -l < "$tmp/fpu") lines), e.g.:"
    head -5 "$tmp/fpu" | sed 's/^/    /' >&2
  fi

  # 5. sections: only what the kernel's vmlinux.lds places without
  #    CONFIG_LD_DEAD_CODE_DATA_ELIMINATION (anything else is an orphan section,
  #    an error with CONFIG_LD_ORPHAN_WARN + WERROR); no ctors/TLS/GOT/unwind.
  readelf -SW "$obj" | sed -n 's/^ *\[ *[0-9]*\] \([^ ]*\) .*/\1/p' > "$tmp/sections"
  local sec
  while read -r sec; do
    case "$sec" in
      ''|.text|.text.unlikely|.text.unlikely.*|.text.hot|.text.hot.*) ;;
      .rodata|.rodata.*|.data.rel.ro|.data.rel.ro.*|.data|.bss) ;;
      .rela.text|.rela.text.unlikely*|.rela.text.hot*|.rela.rodata*|.rela.data.rel.ro*|.rela.data) ;;
      .note.GNU-stack|.comment|.symtab|.strtab|.shstrtab|.debug_*|.rela.debug_*) ;;
      .note.gnu.property|__patchable_function_entries|.rela__patchable_function_entries) ;;  # discarded by vmlinux.lds
      *) fail_check "section '$sec' would be an orphan in the kernel link (or is unsupported: ctors/TLS/GOT/unwind)" ;;
    esac
  done < "$tmp/sections"

  # 6. informational: kallsyms silently drops names >= KSYM_NAME_LEN (512)
  local longest
  longest=$(nm "$obj" | awk '{ if (length($NF) > m) m = length($NF) } END { print m + 0 }')
  if [ "$longest" -ge 512 ]; then
    say "warning: longest symbol name is $longest chars (>= 512 = KSYM_NAME_LEN; kallsyms will skip it)"
  fi

  say "exported: $(tr '\n' ' ' < "$keep")"
  say "undefined: $(tr '\n' ' ' < "$tmp/undef")"
  say "relocation types: $(awk '{printf "%s(%s) ", $2, $1}' "$tmp/reltypes")"
  say "text size: $(size -A "$obj" 2>/dev/null | awk '$1 ~ /^\.text/ {t += $2} END {print t + 0}') bytes; longest symbol: $longest chars"
  rm -rf "$tmp"
}

build_staticlib() {
  [ $# -eq 2 ] || usage
  local crate=$1 out=$2
  case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
  check_members "$crate"
  local log
  log=$(mktemp)
  say "building staticlib $crate for $TARGET_NAME (profile $PROFILE)"
  say "toolchain: $(/usr/bin/rustc -V)"
  # `cargo rustc --crate-type staticlib`: the crate's Cargo.toml need not list
  # staticlib (host builds keep their own crate types).
  if ! kcargo rustc -p "$crate" --lib --crate-type staticlib \
         --message-format=json-render-diagnostics > "$log"; then
    explain_build_failure "$log"
    rm -f "$log"
    die "staticlib build of $crate failed"
  fi
  local archive
  archive=$(grep '"reason":"compiler-artifact"' "$log" | grep -o '"[^"]*\.a"' | tr -d '"' | tail -1 || true)
  rm -f "$log"
  [ -n "$archive" ] && [ -f "$archive" ] || die "cargo produced no .a for $crate"
  say "archive: $archive ($(stat -c %s "$archive") bytes)"

  local tmp
  tmp=$(mktemp -d)
  # exported entry points = global definitions with the export prefix.
  # readelf, not nm: nm goes through binutils' LLVM plugin, which fails on
  # members carrying embedded bitcode and then reports "no symbols".
  readelf -sW "$archive" 2>/dev/null \
    | awk '$5 == "GLOBAL" && $7 != "UND" && $6 == "DEFAULT" {print $8}' \
    | grep "^${EXPORT_PREFIX}" | grep -v "^${HOST_PREFIX}" | sort -u > "$tmp/keep" || true
  [ -s "$tmp/keep" ] || die "$crate exports no ${EXPORT_PREFIX}* symbols (#[no_mangle] pub extern \"C\" fn ${EXPORT_PREFIX}...)"

  # prelink: pull only the archive members the entry points need (-u roots),
  # resolve everything internal, leave kernel symbols undefined.
  local uargs=() s
  while read -r s; do uargs+=(-u "$s"); done < "$tmp/keep"
  ld -r -m elf_x86_64 "${uargs[@]}" -o "$tmp/prelink.o" "$archive" \
    || die "ld -r prelink of $archive failed"
  # only the exported symbols stay global; compiler_builtins' weak intrinsics
  # and every Rust symbol become local, so nothing can clash with the kernel.
  # Also drop: embedded LLVM bitcode (.llvmbc/.llvmcmd from LTO-ready
  # compiler_builtins; binutils' LLVM-14 plugin chokes on it and nm then sees
  # "no symbols"), .eh_frame (the kernel has no DWARF unwinder and does not
  # discard it: orphan section), .comment.
  objcopy --keep-global-symbols="$tmp/keep" \
    --remove-section=.comment --remove-section=.llvmbc --remove-section=.llvmcmd \
    --remove-section=.eh_frame --remove-section=.rela.eh_frame \
    "$tmp/prelink.o" "$tmp/final.o" || die "objcopy failed"

  check_object "$tmp/final.o" "$tmp/keep"
  if [ "$check_failed" != 0 ]; then
    die "checks failed for $crate; $out not written (object kept at $tmp/final.o)"
  fi

  mkdir -p "$(dirname "$out")"
  case "$out" in
    *.o) cp "$tmp/final.o" "$out" ;;
    *)   rm -f "$out"; mv "$tmp/final.o" "$tmp/${crate//-/_}.o"
         ar rcsD "$out" "$tmp/${crate//-/_}.o" ;;
  esac
  rm -rf "$tmp"
  say "OK: wrote $out"
}

# ---------------------------------------------------------------- main
main() {
  [ $# -ge 1 ] || usage
  [ -f "$TARGET_JSON" ] || die "missing $TARGET_JSON"
  [ -f "$KERNEL_CONFIG" ] || die "missing $KERNEL_CONFIG"
  [ -f "$WORKSPACE/Cargo.toml" ] || die "no Cargo.toml in $WORKSPACE"
  apply_kernel_config
  # shellcheck disable=SC2206
  [ -n "${BOUNCE_ALLOW_UNDEF:-}" ] && ALLOWED_UNDEF+=(${BOUNCE_ALLOW_UNDEF})
  ensure_toolchain
  [ "$1" = --check-object ] || verify_target_spec

  case "$1" in
    -h|--help) usage ;;
    --staticlib) shift; build_staticlib "$@" ;;
    --check-object)
      # Run only the checks on an already prelinked object (for debugging).
      shift; [ $# -eq 1 ] || usage
      local keep
      keep=$(mktemp)
      nm -g --defined-only "$1" | awk 'NF == 3 {print $3}' | grep "^${EXPORT_PREFIX}" | sort -u > "$keep" || true
      check_object "$1" "$keep"; rm -f "$keep"
      [ "$check_failed" = 0 ] || die "checks failed for $1"
      say "OK: $1 passes the checks" ;;
    -*) usage ;;
    *) build_rlibs "$@" ;;
  esac
}

# Whole file is parsed before anything runs (safe against edits mid-run).
main "$@"; exit $?
