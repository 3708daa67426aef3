#!/usr/bin/env bash
# Checks beyond the unit/integration tests, called by .ci/run. Each step is a script of
# its own so it can be run alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "--- loom models (magazine depot exchange, free racing refill, reap racing alloc; lock-free lookup: double unmap, cross-CPU unmap, recycle racing a lookup)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p bounce-magazine --release --locked --test loom
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p bounce-pools --release --locked --lib loom_models

echo "--- legacy vs Linux 6.12's own swiotlb.c: differential replay"
src_tar=/usr/src/linux-source-6.12.tar.xz
if [ ! -f "$src_tar" ]; then
  (apt-get install -y -q linux-source-6.12 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q linux-source-6.12 >/dev/null; })
fi
ref="$PWD/target/linux-ref"
mkdir -p "$ref"
tar -xJf "$src_tar" -C "$ref" linux-source-6.12/kernel/dma/swiotlb.c linux-source-6.12/include/linux/iommu-helper.h
# Every later step builds bounce-linux-ref with Linux's code: the differential test, the
# reference's own tests and the `linux` row of the compare smoke run below.
export BOUNCE_LINUX_SRC="$ref/linux-source-6.12"
cargo test -p bounce-legacy --locked --test linux_differential -- --ignored

echo "--- the linux reference row: conformance suite, same addresses as legacy, bad unmaps, two threads"
cargo nextest run -p bounce-linux-ref -p bounce-bench --locked --no-fail-fast

if [ -f .ci/fuzz-smoke.sh ]; then
  echo "--- fuzz smoke run (checked-in seeds)"
  bash .ci/fuzz-smoke.sh
fi

if [ -f .ci/miri.sh ]; then
  echo "--- miri over the unsafe code (framework, sim guest, C ABI layer), when a nightly with miri is installed"
  bash .ci/miri.sh
fi

echo "--- bounce compare smoke run (every strategy and the linux row, every workload, data verified by the device model)"
cargo run --release --locked -p bounce-bench -- compare --ops 4000 --verify --json target/ci-compare.json --out target/ci-report

echo "--- bounce stress smoke run (every strategy 5 s at full rate, faults injected, every byte checked, audited)"
cargo run --release --locked -p bounce-bench -- stress --duration 5 --faults --json target/ci-stress.json

if [ -f .ci/kernel-tests.sh ]; then
  echo "--- Linux guest: build, boot each strategy, O_DIRECT integrity, dma_map_benchmark"
  BOUNCE_KERNEL_DEBUG=1 bash .ci/kernel-tests.sh
fi
