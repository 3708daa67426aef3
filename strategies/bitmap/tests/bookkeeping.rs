//! The bitmap against Linux's free counts: after any sequence of takes and gives, every
//! slot's `list` is the same, a probe succeeds exactly where Linux's does, and a
//! refusal never rules out a candidate Linux would take.

use bounce_bitmap::BitmapSlots;
use bounce_legacy::{segment_end, FreeSlots, LinuxLists};
use proptest::prelude::*;

/// One step: take a run at a random free position (if one fits), or give back one of
/// the runs taken.
#[derive(Clone, Debug)]
enum Step {
    Take { at: usize, n: usize },
    Give { which: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..1024, 1usize..=128).prop_map(|(at, n)| Step::Take { at, n }),
        2 => any::<usize>().prop_map(|which| Step::Give { which }),
    ]
}

/// Checks every slot and every run length from every slot.
fn same(nslabs: usize, linux: &LinuxLists, bits: &BitmapSlots) {
    for i in 0..nslabs {
        assert_eq!(bits.list(i), linux.list(i), "list of slot {i}");
        assert_eq!(bits.is_used(i), linux.list(i) == 0, "slot {i} in use");
        for n in [1, 2, 3, 8, 31, 64, 65, 127, 128] {
            match bits.probe(i, n) {
                Ok(()) => assert!(linux.probe(i, n).is_ok(), "bitmap fits {n} at {i}, Linux does not"),
                Err(last) => {
                    assert!(linux.probe(i, n).is_err(), "Linux fits {n} at {i}, the bitmap does not");
                    assert!(last >= i, "probe({i}, {n}) rules out {last}, before the candidate");
                    for c in i..=last.min(nslabs - 1) {
                        assert!(linux.list(c) < n, "probe({i}, {n}) ruled out {c}, where {n} slots are free");
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A pool of 8 segments plus a partial one (1 000 slots), as the CVE-2023-52790
    /// regression pools have.
    #[test]
    fn bitmap_and_linux_lists_agree(steps in proptest::collection::vec(step(), 1..120)) {
        let nslabs = 1000;
        let linux = LinuxLists::new(nslabs);
        let bits = BitmapSlots::new(nslabs);
        let mut taken: Vec<(usize, usize)> = Vec::new();
        for s in steps {
            match s {
                Step::Take { at, n } => {
                    let at = at % nslabs;
                    let n = n.min(segment_end(at, nslabs) - at);
                    if linux.probe(at, n).is_ok() {
                        linux.take(at, n);
                        bits.take(at, n);
                        taken.push((at, n));
                    }
                }
                Step::Give { which } => {
                    if !taken.is_empty() {
                        let (at, n) = taken.swap_remove(which % taken.len());
                        linux.give(at, n);
                        bits.give(at, n);
                    }
                }
            }
        }
        same(nslabs, &linux, &bits);
    }
}
