//! A scripted workload through the full DMA API (Bouncer + simulated TDX guest + device
//! model), printing every mapping's bus address, slots and the free counts around it.
//! Run with `cargo test -p bounce-legacy --test scripted_workload -- --nocapture` to see
//! the table. The expected addresses are the ones worked out by hand from Linux 6.12's
//! `swiotlb_search_pool_area()` / `swiotlb_tbl_map_single()` / `swiotlb_release_slots()`
//! in the unit tests (`src/tests.rs`), which quote the C lines.

use bounce_framework::conformance::pattern;
use bounce_framework::sim::{set_current_cpu, PlatformKind, SimDevice, SimGuest};
use bounce_framework::{
    Bouncer, BouncerOptions, Device, DmaAddr, DmaAttrs, DmaDirection, PhysAddr, Platform, Strategy,
};
use bounce_legacy::{Legacy, LegacyConfig, SlotIndex};

const SHARED_BIT: u64 = 1 << 47;

struct Script {
    g: SimGuest,
    b: Bouncer<SimGuest, Legacy<SimGuest>>,
    step: usize,
}

impl Script {
    fn new(nslabs: usize, nareas: usize) -> Self {
        // The addresses below were pinned with bus addresses carrying the TDX shared
        // alias (bit 47); keep modelling it (the simulator's default has no bit).
        let mut cfg = bounce_framework::sim::SimConfig::new(PlatformKind::Tdx, 16 << 20, 2);
        cfg.model.shared_bit = Some(47);
        let g = SimGuest::new(cfg);
        // One page first, so the pool starts at 0x101000 as in the unit tests.
        g.alloc_private(4096).unwrap();
        let cfg = LegacyConfig { nslabs: Some(nslabs), nareas: Some(nareas), ..LegacyConfig::default() };
        let b = Bouncer::new(g.clone(), Legacy::new(g.clone(), cfg).unwrap(), BouncerOptions::default());
        assert_eq!(b.strategy().pool_start(), PhysAddr(0x10_1000));
        println!(
            "pool {:#x}..{:#x}: {nslabs} slots, {nareas} area(s); slot k at 0x101000 + k*0x800",
            b.strategy().pool_start().0,
            b.strategy().pool_end().0
        );
        println!(
            "{:>4} {:<42} {:>16} {:>10} {:>9} {:>5}  free counts (list) around",
            "step", "request", "bus address", "phys", "slots", "pad"
        );
        Self { g, b, step: 0 }
    }

    /// The `list` values of slots `from..to`, runs of one value written `value*count`.
    fn lists(&self, from: usize, to: usize) -> String {
        let l = self.b.strategy();
        let v: Vec<u16> = (from..to.min(l.geometry().nslabs)).map(|i| l.slot(SlotIndex(i)).unwrap().list).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < v.len() {
            let run = v[i..].iter().take_while(|&&x| x == v[i]).count();
            if run >= 4 {
                out.push(format!("{}*{run}", v[i]));
            } else {
                out.extend(v[i..i + run].iter().map(ToString::to_string));
            }
            i += run;
        }
        out.join(",")
    }

    /// Maps `len` bytes of a buffer at page offset `offset` and checks the device sees
    /// them at the expected bus address.
    #[allow(clippy::too_many_arguments)]
    fn map(&mut self, dev: &SimDevice, len: usize, offset: u64, align: u64, cpu: usize, want: u64) -> DmaAddr {
        self.step += 1;
        set_current_cpu(Some(cpu));
        let orig = self.g.alloc_private(len + 8192).unwrap() + offset;
        self.g.write(orig, &pattern(self.step as u64, len));
        let d = self
            .b
            .map_with_align(dev.device(), orig, len, align, DmaDirection::Bidirectional, DmaAttrs::empty())
            .unwrap();
        let phys = self.g.dma_to_phys(d);
        let l = self.b.strategy();
        let head = l.slot_of(phys).unwrap().0;
        let hv = l.slot(SlotIndex(head)).unwrap();
        let pad = usize::from(hv.pad_slots);
        // The allocation: nr_slots(slots[first].alloc_size + offset) slots from `first`.
        let first_alloc = l.slot(SlotIndex(head - pad)).unwrap().alloc_size;
        let nslots = (first_alloc.wrapping_add(u32::from(hv.data_offset)) as usize).div_ceil(2048);
        let last = head - pad + nslots - 1;
        assert!(l.slot_of(phys + (len - 1) as u64).unwrap().0 <= last);
        let req = format!("{len}B off {offset:#x} mam {:#x} aam {align:#x} cpu{cpu}", dev.device().min_align_mask);
        let first = head - pad;
        println!(
            "{:>4} {req:<42} {:#16x} {:#10x} {:>4}-{:<4} {pad:>5}  [{}..]: {}",
            self.step,
            d.0,
            phys.0,
            first,
            last,
            first.saturating_sub(2),
            self.lists(first.saturating_sub(2), last + 3)
        );
        assert_eq!(d.0, want | SHARED_BIT, "step {}", self.step);
        let mask = dev.device().min_align_mask;
        assert_eq!(phys.0 & mask, orig.0 & mask);
        let mut seen = vec![0; len];
        dev.read(&self.b, d, &mut seen).unwrap();
        assert_eq!(seen, pattern(self.step as u64, len));
        d
    }

    fn unmap(&mut self, dev: &SimDevice, d: DmaAddr, len: usize) {
        self.step += 1;
        let phys = self.g.dma_to_phys(d);
        let first = self.b.strategy().slot_of(phys).unwrap().0;
        self.b.unmap_single(dev.device(), d, len, DmaDirection::Bidirectional, DmaAttrs::empty()).unwrap();
        println!(
            "{:>4} {:<42} {:#16x} {:#10x} {:>9} {:>5}  [{}..]: {}",
            self.step,
            format!("unmap {len}B"),
            d.0,
            phys.0,
            "",
            "",
            first.saturating_sub(3),
            self.lists(first.saturating_sub(3), first + 6)
        );
    }

    fn debugfs(&self) {
        let d = self.b.debugfs();
        let areas: Vec<_> = (0..self.b.strategy().geometry().nareas)
            .map(|a| {
                let v = self.b.strategy().area(a).unwrap();
                format!("area{a} used {} index {}", v.used, v.index)
            })
            .collect();
        println!(
            "     debugfs: io_tlb_nslabs {} io_tlb_used {} io_tlb_used_hiwater {}; {}",
            d.io_tlb_nslabs,
            d.io_tlb_used,
            d.io_tlb_used_hiwater,
            areas.join(", ")
        );
        self.b.strategy().audit().unwrap();
        self.g.assert_no_violations();
    }
}

#[test]
fn scripted_alignment_padding_and_release() {
    let mut s = Script::new(1024, 1);
    let net = SimDevice::new(&s.g, Device::new("virtio-net"));
    let nvme = SimDevice::new(&s.g, Device::new("nvme0").with_min_align_mask(0xfff));
    s.map(&net, 100, 0, 0, 0, 0x10_1000);
    let d2 = s.map(&net, 4096, 0, 0, 0, 0x10_2000);
    s.map(&net, 100, 0, 0x3fff, 0, 0x10_4000);
    s.map(&nvme, 512, 0xa00, 0, 0, 0x10_8a00);
    let d5 = s.map(&nvme, 3000, 0xe00, 0xfff, 0, 0x10_9e00);
    s.map(&nvme, 5000, 0x345, 0, 0, 0x10_b345);
    s.debugfs();
    s.unmap(&net, d2, 4096);
    s.unmap(&nvme, d5, 3000);
    s.debugfs();
    assert_eq!(s.b.debugfs().io_tlb_used, 13);
    assert_eq!(s.b.debugfs().io_tlb_used_hiwater, 19);
}

#[test]
fn scripted_wrap_around_and_area_fallback() {
    let mut s = Script::new(512, 2);
    let net = SimDevice::new(&s.g, Device::new("virtio-net"));
    let d1 = s.map(&net, 100 * 2048, 0, 0, 1, 0x18_1000);
    s.map(&net, 100 * 2048, 0, 0, 1, 0x1c_1000);
    // Area 1 wraps from index 254 to 0 and finds nothing: area 0 serves CPU 1.
    s.map(&net, 40 * 2048, 0, 0, 1, 0x10_1000);
    s.debugfs();
    s.unmap(&net, d1, 100 * 2048);
    // Now the wrapped search finds the freed run at the start of area 1.
    s.map(&net, 40 * 2048, 0, 0, 1, 0x18_1000);
    s.debugfs();
}
