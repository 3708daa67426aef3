//! legacy's audit: the invariants of Linux's slot layout, checked slot by slot.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use bounce_framework::{
    AuditError, AuditReport, IrqGuards, PhysAddr, Platform, IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE,
};

use crate::slot::SlotView;
use crate::{nr_slots, segment_end, FreeSlots, Geometry, SlotPool};

impl<P: Platform, F: FreeSlots> SlotPool<P, F> {
    /// Walks every slot under all area locks and checks: each mapping's slots are in
    /// use, inside one segment and one area, and carry Linux's `alloc_size` and
    /// `orig_addr` sequences; no two mappings overlap; every slot in use belongs to a
    /// mapping; every free slot's `list` is one more than its successor's in the
    /// segment (the exact free count to the segment end) and its other fields are
    /// cleared; each area's `used` is the sum of its mappings' slots and its `index`
    /// is in range; the global used counter is the sum; the pool's pages are all
    /// committed shared memory.
    pub(crate) fn check_invariants(&self) -> Result<AuditReport, AuditError> {
        let Geometry { nslabs, nareas, area_nslabs } = self.geometry;
        // Snapshot every slot and area under all area locks, then check with no lock
        // held: nothing allocates or formats while interrupts are off, and IrqGuards
        // releases the locks last-in first-out.
        let mut views: Vec<SlotView> = Vec::with_capacity(nslabs);
        let mut area_snap: Vec<(usize, usize)> = Vec::with_capacity(nareas);
        let mut owner: Vec<Option<usize>> = vec![None; nslabs];
        let mut area_used = vec![0usize; nareas];
        let (usage_used, usage_hiwater) = {
            let guards = IrqGuards::lock_all(self.areas.iter());
            views.extend(self.slots.iter().enumerate().map(|(i, s)| s.view(self.free.list(i))));
            area_snap.extend(guards.iter().map(|g| (g.used, g.index)));
            (self.usage.used(), self.usage.hiwater())
        };
        let fail = |s: alloc::string::String| Err(AuditError(s));
        let (mut live, mut used_slots) = (0usize, 0usize);
        for head in 0..nslabs {
            let hv = views[head];
            if hv.head_dist != Some(0) {
                continue;
            }
            let pad = usize::from(hv.pad_slots);
            let o = usize::from(hv.data_offset);
            let len = hv.mapping_len as usize;
            let Some(index) = head.checked_sub(pad) else {
                return fail(format!("slot {head}: {pad} padding slots reach before the pool"));
            };
            if o >= IO_TLB_SIZE {
                return fail(format!("slot {head}: data offset {o} is not inside the slot"));
            }
            let first = views[index];
            let nslots = nr_slots(first.alloc_size.wrapping_add(o as u32) as usize);
            if nslots == 0 || nslots > IO_TLB_SEGSIZE || index + nslots > nslabs || pad >= nslots {
                return fail(format!(
                    "mapping at slot {head}: {nslots} slots from slot {index} ({pad} padding) do not fit"
                ));
            }
            let last = index + nslots - 1;
            if index / IO_TLB_SEGSIZE != last / IO_TLB_SEGSIZE || index / area_nslabs != last / area_nslabs {
                return fail(format!("mapping at slots {index}..={last} crosses a segment or an area"));
            }
            if len == 0 || o + len > (nslots - pad) << IO_TLB_SHIFT {
                return fail(format!("mapping at slot {head}: {len} bytes at offset {o} overrun its slots"));
            }
            let Some(orig) = hv.orig_addr else {
                return fail(format!("mapping at slot {head} has no original address"));
            };
            for (i, own) in owner.iter_mut().enumerate().take(last + 1).skip(index) {
                if let Some(other) = *own {
                    return fail(format!("slot {i} belongs to the mappings at slots {other} and {head}"));
                }
                *own = Some(head);
                let v = views[i];
                if v.list != 0 {
                    return fail(format!("slot {i} of the mapping at slot {head} has free count {}", v.list));
                }
                let want_size = first.alloc_size.wrapping_sub(((i - index) << IO_TLB_SHIFT) as u32);
                if v.alloc_size != want_size {
                    return fail(format!("slot {i}: alloc_size {} != {want_size}", v.alloc_size));
                }
                if i < head {
                    if v.head_dist.is_some() || v.orig_addr.is_some() || v.pad_slots != 0 {
                        return fail(format!("padding slot {i} of the mapping at slot {head} carries data: {v:?}"));
                    }
                } else {
                    let k = i - head;
                    let want_orig = PhysAddr(orig.0.wrapping_add((k as u64) << IO_TLB_SHIFT));
                    if v.head_dist != Some(k as u16) || v.orig_addr != Some(want_orig) || (k > 0 && v.pad_slots != 0) {
                        return fail(format!("data slot {i} (#{k}) of the mapping at slot {head} is wrong: {v:?}"));
                    }
                }
            }
            area_used[index / area_nslabs] += nslots;
            used_slots += nslots;
            live += 1;
        }
        for (i, own) in owner.iter().enumerate() {
            let v = views[i];
            if v.list == 0 {
                if own.is_none() {
                    return fail(format!("slot {i} is marked in use but belongs to no mapping: {v:?}"));
                }
                continue;
            }
            if own.is_some() {
                return fail(format!("slot {i} is free but inside a mapping"));
            }
            let seg_end = segment_end(i, nslabs);
            let next = if i + 1 < seg_end { usize::from(views[i + 1].list) } else { 0 };
            if usize::from(v.list) != next + 1 {
                return fail(format!("slot {i}: free count {} but {} free slots follow in its segment", v.list, next));
            }
            let clean = SlotView {
                orig_addr: None,
                alloc_size: 0,
                list: v.list,
                pad_slots: 0,
                head_dist: None,
                data_offset: 0,
                mapping_len: 0,
            };
            if v != clean {
                return fail(format!("free slot {i} is not cleared: {v:?}"));
            }
        }
        for (a, &(used, index)) in area_snap.iter().enumerate() {
            if used != area_used[a] {
                return fail(format!("area {a}: used {used} but its mappings hold {} slots", area_used[a]));
            }
            if index >= area_nslabs {
                return fail(format!("area {a}: search index {index} outside its {area_nslabs} slots"));
            }
        }
        if usage_used != used_slots << IO_TLB_SHIFT {
            return fail(format!(
                "used counter {} bytes but mappings hold {used_slots} slots ({} bytes)",
                usage_used,
                used_slots << IO_TLB_SHIFT
            ));
        }
        if usage_hiwater < usage_used {
            return fail(format!("high-water mark {usage_hiwater} below use {usage_used}"));
        }
        let conv = self.shared.stats();
        if conv.shared_bytes != self.pages.bytes() as u64 {
            return fail(format!(
                "{} shared bytes committed, the pool spans {}",
                conv.shared_bytes,
                self.pages.bytes()
            ));
        }
        Ok(AuditReport {
            live_mappings: live,
            used_bytes: used_slots << IO_TLB_SHIFT,
            free_bytes: (nslabs - used_slots) << IO_TLB_SHIFT,
            owned_bytes: self.pages.bytes(),
            quarantined_pages: conv.quarantined_pages,
        })
    }
}
