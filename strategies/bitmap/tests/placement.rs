//! Same pool, same placements: the bitmap strategy and the legacy strategy, booted
//! alike and given the same random requests (sizes up to a segment, alignment masks,
//! `min_align_mask` offsets, CPUs, unmaps in random order), return the same address
//! or the same refusal for every one, and both audits pass throughout. The bitmap
//! changes the bookkeeping's cost, never where a mapping goes.

use bounce_bitmap::Bitmap;
use bounce_framework::sim::{PlatformKind, SimGuest};
use bounce_framework::{PhysAddr, Request, Strategy as _};
use bounce_legacy::{Legacy, LegacyConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Map { size: usize, align: u8, min_align: u8, offset: u64, cpu: usize },
    Unmap { which: usize },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..=120 * 2048, 0u8..4, 0u8..3, 0u64..8192, 0usize..4)
            .prop_map(|(size, align, min_align, offset, cpu)| Op::Map { size, align, min_align, offset, cpu }),
        2 => any::<usize>().prop_map(|which| Op::Unmap { which }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn bitmap_places_every_mapping_where_legacy_does(ops in proptest::collection::vec(op(), 1..300)) {
        // Two guests with the same layout, so both pools start at the same address.
        let boot = |_: &SimGuest| LegacyConfig { nareas: Some(2), ..LegacyConfig::with_bytes(1 << 20) };
        let (ga, gb) = (SimGuest::with(PlatformKind::Tdx, 16 << 20, 2), SimGuest::with(PlatformKind::Tdx, 16 << 20, 2));
        let a = Legacy::new(ga.clone(), boot(&ga)).unwrap();
        let b = Bitmap::new(gb.clone(), boot(&gb)).unwrap();
        prop_assert_eq!(a.pool_start(), b.pool_start());
        let mut live: Vec<PhysAddr> = Vec::new();
        for (k, op) in ops.into_iter().enumerate() {
            match op {
                Op::Map { size, align, min_align, offset, cpu } => {
                    let req = Request {
                        alloc_align_mask: [0, 0xfff, 0x1fff, 0x7fff][usize::from(align)],
                        min_align_mask: [0, 0x7ff, 0xfff][usize::from(min_align)],
                        ..Request::new(PhysAddr(0x40_0000 + offset), size, cpu)
                    };
                    let (ra, rb) = (a.reserve(&req), b.reserve(&req));
                    prop_assert_eq!(&ra, &rb, "op {}: {:?}", k, req);
                    if let Ok(r) = ra {
                        live.push(r.addr);
                    }
                }
                Op::Unmap { which } => {
                    if !live.is_empty() {
                        let addr = live.swap_remove(which % live.len());
                        prop_assert_eq!(a.release(addr), b.release(addr));
                    }
                }
            }
        }
        prop_assert!(a.audit().is_ok());
        prop_assert!(b.audit().is_ok(), "{:?}", b.audit());
        let (sa, sb) = (a.stats(), b.stats());
        prop_assert_eq!((sa.used_bytes, sa.used_hiwater_bytes), (sb.used_bytes, sb.used_hiwater_bytes));
    }
}
