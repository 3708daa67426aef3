//! The inverse of `arbitrary`'s decoding for the `ops` input, so meaningful seed files
//! can be written from readable operation lists (`tests/corpus.rs` generates the
//! checked-in `corpus/ops/` files and checks they still decode to what they say).
//!
//! `arbitrary` 1.x reads: integers little-endian, `bool` as `byte & 1`, `Option` as a
//! `bool` then the value, a collection as (`true`, element)* then `false` (the last
//! field of the top-level struct: no terminator), and an enum variant as a `u32` `v`
//! selecting `(v × variants) >> 32`.

use crate::ops::{Addr, FuzzOp, OpsInput, Size};

/// Appends the bytes `arbitrary` decodes into `self`.
pub trait Encode {
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le!(u8, u16, u32, u64, i16, i32);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(v) = self {
            v.encode(out);
        }
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for e in self {
            true.encode(out);
            e.encode(out);
        }
        false.encode(out);
    }
}

/// The `u32` that makes `arbitrary` pick variant `k` of `n`.
pub fn variant(k: u32, n: u32) -> u32 {
    assert!(k < n);
    ((u64::from(k) << 32).div_ceil(u64::from(n))) as u32
}

impl Encode for Size {
    fn encode(&self, out: &mut Vec<u8>) {
        self.kind.encode(out);
        self.raw.encode(out);
    }
}

/// Variants of [`Addr`].
const ADDR_VARIANTS: u32 = 4;

impl Encode for Addr {
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Addr::Live { idx, delta } => {
                variant(0, ADDR_VARIANTS).encode(out);
                (idx, delta).encode(out);
            }
            Addr::Stale { idx, delta } => {
                variant(1, ADDR_VARIANTS).encode(out);
                (idx, delta).encode(out);
            }
            Addr::Guest { page, offset } => {
                variant(2, ADDR_VARIANTS).encode(out);
                (page, offset).encode(out);
            }
            Addr::Raw(a) => {
                variant(3, ADDR_VARIANTS).encode(out);
                a.encode(out);
            }
        }
    }
}

/// Variants of [`FuzzOp`].
const OP_VARIANTS: u32 = 13;

impl Encode for FuzzOp {
    fn encode(&self, out: &mut Vec<u8>) {
        let v = |k: u32, out: &mut Vec<u8>| variant(k, OP_VARIANTS).encode(out);
        match self {
            FuzzOp::Map { size, offset, dir, dev, align, skip, cpu } => {
                v(0, out);
                size.encode(out);
                (*offset, *dir).encode(out);
                (*dev, *align).encode(out);
                (*skip, *cpu).encode(out);
            }
            FuzzOp::MapSg { entries, bad, dir, dev } => {
                v(1, out);
                entries.encode(out);
                bad.encode(out);
                (*dir, *dev).encode(out);
            }
            FuzzOp::DeviceWrite { idx, at, len, seed } => {
                v(2, out);
                (*idx, *at).encode(out);
                (*len, *seed).encode(out);
            }
            FuzzOp::CpuWrite { idx, seed } => {
                v(3, out);
                (*idx, *seed).encode(out);
            }
            FuzzOp::Sync { idx, for_cpu, at, len, dir } => {
                v(4, out);
                (*idx, *for_cpu).encode(out);
                (*at, *len).encode(out);
                dir.encode(out);
            }
            FuzzOp::Unmap { idx, len, dir, skip, cpu } => {
                v(5, out);
                idx.encode(out);
                (*len, *dir).encode(out);
                (*skip, *cpu).encode(out);
            }
            FuzzOp::UnmapAt { addr, dir } => {
                v(6, out);
                (*addr, *dir).encode(out);
            }
            FuzzOp::SyncAt { addr, for_cpu, len } => {
                v(7, out);
                (*addr, *for_cpu).encode(out);
                len.encode(out);
            }
            FuzzOp::HostWriteStale { idx, seed } => {
                v(8, out);
                (*idx, *seed).encode(out);
            }
            FuzzOp::MapBad { kind, extra, dev } => {
                v(9, out);
                (*kind, *extra).encode(out);
                dev.encode(out);
            }
            FuzzOp::Background { rounds } => {
                v(10, out);
                rounds.encode(out);
            }
            FuzzOp::ResetHiwater => v(11, out),
            FuzzOp::Fault { kind, nth } => {
                v(12, out);
                (*kind, *nth).encode(out);
            }
        }
    }
}

impl OpsInput {
    /// The bytes the `ops` target decodes into `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        (self.strategy, self.config).encode(&mut out);
        self.scrub.encode(&mut out);
        for op in &self.ops {
            true.encode(&mut out);
            op.encode(&mut out);
        }
        out
    }
}
