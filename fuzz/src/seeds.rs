//! The `ops` seeds, as readable operation lists. `tests/corpus.rs` checks that
//! `corpus/ops/<name>` holds exactly `encode()` of each (regenerate with
//! `BOUNCE_FUZZ_WRITE_CORPUS=1 cargo test --test corpus`).

use crate::ops::{Addr, FuzzOp, OpsInput, Size};

/// Net device, NVMe (`min_align_mask` 4095), `min_align_mask` 2047, 32-bit device.
const NET: u8 = 0;
const NVME: u8 = 1;
const MASK2K: u8 = 2;
const DEV32: u8 = 7;
/// Directions (modulo 3).
const BIDI: u8 = 0;
const TO_DEV: u8 = 1;
const FROM_DEV: u8 = 2;

/// A size of exactly `n` bytes (`n` at most 4096), or of a boundary-table entry.
fn bytes(n: u32) -> Size {
    assert!((1..=4096).contains(&n));
    Size { kind: 0, raw: n - 1 }
}

/// `max_mapping_size` of the device.
const MAX: Size = Size { kind: 7, raw: 16 };

/// `n` bytes for `n` up to 64 KiB.
fn kib64(n: u32) -> Size {
    assert!((1..=65536).contains(&n));
    Size { kind: 4, raw: n - 1 }
}

fn map(size: Size, offset: u16, dir: u8, dev: u8) -> FuzzOp {
    FuzzOp::Map { size, offset, dir, dev, align: 0, skip: false, cpu: 0 }
}

fn unmap(idx: u8) -> FuzzOp {
    FuzzOp::Unmap { idx, len: None, dir: None, skip: false, cpu: 0 }
}

fn sync(idx: u8, for_cpu: bool, at: u16, len: u32) -> FuzzOp {
    FuzzOp::Sync { idx, for_cpu, at, len, dir: None }
}

fn write(idx: u8, seed: u8) -> FuzzOp {
    FuzzOp::DeviceWrite { idx, at: 0, len: u16::MAX, seed }
}

fn input(strategy: u8, config: u8, scrub: bool, ops: Vec<FuzzOp>) -> OpsInput {
    OpsInput { strategy, config, scrub, ops }
}

/// The copy rules on one strategy: every direction, device writes, partial syncs
/// with sizes running past the end, unmaps.
fn copy_rules(strategy: u8, config: u8) -> OpsInput {
    let mut ops = Vec::new();
    for (i, dir) in [BIDI, TO_DEV, FROM_DEV].into_iter().enumerate() {
        ops.push(map(kib64(6000 + 1000 * i as u32), 0x100, dir, NET));
    }
    for i in 0..3 {
        ops.push(FuzzOp::DeviceWrite { idx: i, at: 0x4000, len: 0x8000, seed: i });
        ops.push(sync(i, true, 0x2000, 3000));
        ops.push(FuzzOp::CpuWrite { idx: i, seed: 10 + i });
        ops.push(sync(i, false, 0xc000, 100_000));
        ops.push(sync(i, true, 0, 0));
    }
    ops.push(FuzzOp::Unmap { idx: 0, len: Some(3), dir: None, skip: false, cpu: 1 });
    ops.push(FuzzOp::Unmap { idx: 0, len: None, dir: None, skip: true, cpu: 0 });
    ops.push(write(0, 7));
    ops.push(FuzzOp::Unmap { idx: 0, len: Some(1), dir: None, skip: false, cpu: 0 });
    input(strategy, config, false, ops)
}

/// Fill the pool with 64 KiB mappings until it refuses, unmap everything, map again.
fn exhaust(strategy: u8, config: u8) -> OpsInput {
    let mut ops = Vec::new();
    for i in 0..40u8 {
        ops.push(FuzzOp::Map { size: kib64(65536), offset: 0, dir: TO_DEV, dev: NET, align: 0, skip: false, cpu: i });
    }
    ops.push(FuzzOp::Background { rounds: 7 });
    for _ in 0..40 {
        ops.push(unmap(0));
    }
    ops.push(FuzzOp::Background { rounds: 7 });
    ops.push(map(MAX, 0, BIDI, NET));
    ops.push(map(MAX, 0xfff, BIDI, NVME));
    input(strategy, config, false, ops)
}

/// `min_align_mask` and `alloc_align_mask` combinations at class and slot boundaries.
fn alignment(strategy: u8, config: u8) -> OpsInput {
    let mut ops = Vec::new();
    for (k, offset) in [0u16, 0x234, 0x7ff, 0x800, 0xfff].into_iter().enumerate() {
        for (j, dev) in [NVME, MASK2K, NET].into_iter().enumerate() {
            let align = ((k + j) % 4) as u8;
            let size = Size { kind: 7, raw: (k * 3 + j) as u32 };
            ops.push(FuzzOp::Map { size, offset, dir: BIDI, dev, align, skip: false, cpu: 0 });
        }
        ops.push(sync(0, true, 0x7fff, 5000));
        ops.push(unmap(0));
    }
    ops.push(map(MAX, 0xfff, FROM_DEV, NVME));
    ops.push(write(0, 3));
    ops.push(unmap(0));
    input(strategy, config, true, ops)
}

/// Invalid calls: every one must be refused and change nothing.
fn invalid(strategy: u8, config: u8) -> OpsInput {
    let ops = vec![
        map(bytes(4096), 0x10, BIDI, NET),
        map(bytes(2049), 0xfff, FROM_DEV, NVME),
        FuzzOp::MapBad { kind: 0, extra: 0, dev: NET },
        FuzzOp::MapBad { kind: 1, extra: 0, dev: NVME },
        FuzzOp::MapBad { kind: 2, extra: 9, dev: NET },
        FuzzOp::MapBad { kind: 3, extra: 1, dev: NVME },
        FuzzOp::MapBad { kind: 4, extra: 10, dev: NET },
        map(bytes(100), 0, TO_DEV, DEV32),
        // Inner addresses, padding before, the byte after the end.
        FuzzOp::UnmapAt { addr: Addr::Live { idx: 0, delta: 16 }, dir: 0 },
        FuzzOp::UnmapAt { addr: Addr::Live { idx: 1, delta: -1 }, dir: 2 },
        FuzzOp::UnmapAt { addr: Addr::Live { idx: 1, delta: 2049 }, dir: 1 },
        FuzzOp::SyncAt { addr: Addr::Live { idx: 1, delta: -2048 }, for_cpu: true, len: 4096 },
        FuzzOp::SyncAt { addr: Addr::Live { idx: 1, delta: 2049 }, for_cpu: false, len: 1 },
        // DMA_NONE and a junk direction on a live mapping's start.
        FuzzOp::UnmapAt { addr: Addr::Live { idx: 0, delta: 0 }, dir: 3 },
        FuzzOp::UnmapAt { addr: Addr::Live { idx: 0, delta: 0 }, dir: 6 },
        // Double unmap, stale syncs, a host write after unmap.
        write(1, 1),
        unmap(1),
        FuzzOp::UnmapAt { addr: Addr::Stale { idx: 0, delta: 0 }, dir: 0 },
        FuzzOp::SyncAt { addr: Addr::Stale { idx: 0, delta: 0 }, for_cpu: true, len: 2049 },
        FuzzOp::SyncAt { addr: Addr::Stale { idx: 0, delta: 100 }, for_cpu: false, len: 10 },
        FuzzOp::HostWriteStale { idx: 0, seed: 9 },
        // Foreign: private guest pages, random bus addresses.
        FuzzOp::UnmapAt { addr: Addr::Guest { page: 3, offset: 0 }, dir: 1 },
        FuzzOp::SyncAt { addr: Addr::Guest { page: 9000, offset: 77 }, for_cpu: true, len: 64 },
        FuzzOp::UnmapAt { addr: Addr::Raw(u64::MAX), dir: 0 },
        FuzzOp::UnmapAt { addr: Addr::Raw(0), dir: 2 },
        FuzzOp::SyncAt { addr: Addr::Raw(1 << 47), for_cpu: false, len: 1 },
        unmap(0),
        FuzzOp::UnmapAt { addr: Addr::Stale { idx: 1, delta: 0 }, dir: 0 },
    ];
    input(strategy, config, false, ops)
}

/// Growth and shrinking interleaved with mappings, and failing conversions.
fn grow_shrink(strategy: u8, config: u8) -> OpsInput {
    let mut ops = Vec::new();
    for round in 0..3u8 {
        for i in 0..12u8 {
            let size = [bytes(512), bytes(2048), bytes(4096), kib64(16384), kib64(65536)][usize::from(i % 5)];
            ops.push(FuzzOp::Map { size, offset: 0, dir: BIDI, dev: NET, align: 0, skip: false, cpu: i });
            if i % 4 == 3 {
                ops.push(FuzzOp::Background { rounds: 1 });
            }
        }
        ops.push(FuzzOp::Fault { kind: round, nth: 1 });
        for _ in 0..12 {
            ops.push(FuzzOp::Unmap { idx: 0, len: None, dir: None, skip: false, cpu: round });
        }
        ops.push(FuzzOp::Background { rounds: 7 });
        ops.push(FuzzOp::ResetHiwater);
    }
    input(strategy, config, false, ops)
}

/// Scatter-gather: a good list, a list with a zero-length entry, one with an oversize
/// entry.
fn scatter_gather(strategy: u8, config: u8) -> OpsInput {
    let entries = vec![(bytes(1500), 0), (bytes(4096), 0x800), (kib64(9000), 0xfff)];
    let ops = vec![
        FuzzOp::MapSg { entries: entries.clone(), bad: None, dir: BIDI, dev: NVME },
        FuzzOp::MapSg { entries: entries.clone(), bad: Some((1, false)), dir: TO_DEV, dev: NET },
        FuzzOp::MapSg { entries, bad: Some((2, true)), dir: FROM_DEV, dev: MASK2K },
        write(2, 5),
        sync(2, true, 0, 20_000),
        unmap(0),
        unmap(0),
        unmap(0),
    ];
    input(strategy, config, false, ops)
}

/// Every seed: a name and the input.
pub fn ops_seeds() -> Vec<(String, OpsInput)> {
    let mut v = Vec::new();
    for (s, name) in [(0u8, "legacy"), (1, "dynamic"), (2, "magazine")] {
        v.push((format!("{name}-copy-rules"), copy_rules(s, 0)));
        v.push((format!("{name}-exhaust"), exhaust(s, 2)));
        v.push((format!("{name}-alignment"), alignment(s, 1)));
        v.push((format!("{name}-invalid"), invalid(s, 3)));
        // Config bit 2: bus addresses carry the shared alias; the 32-bit device is refused.
        v.push((format!("{name}-invalid-alias"), invalid(s, 4 + 2)));
        v.push((format!("{name}-grow-shrink"), grow_shrink(s, 1)));
        v.push((format!("{name}-scatter-gather"), scatter_gather(s, 0)));
    }
    v
}
