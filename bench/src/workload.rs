//! Workloads: which devices map what, how much is in flight, and the seeded operation
//! streams every strategy replays identically.
//!
//! A workload is turned into a [`Plan`]: a device table and one pre-generated stream of
//! [`Op`]s per thread, drawn from a seeded PCG generator. Every strategy of one `compare`
//! run receives the same plan, so the same seed gives the same operation sequence for
//! every strategy (only the interleaving between threads differs from run to run, as
//! on real hardware). In `--duration` mode a thread repeats its stream from the start
//! when it reaches the end.
//!
//! | workload | devices | sizes | in flight per thread | unmapped on |
//! |---|---|---|---|---|
//! | `net` | virtio-net | the cc-swiotlb seed's boot distribution (SPEC §5) | 256 | the next thread's CPU |
//! | `nvme` | NVMe, `min_align_mask` 4095 | 4 KiB – 252 KiB, block-I/O mix | 64 | the same CPU |
//! | `mixed` | virtio-net, NVMe, AHCI (32-bit), virtio-blk at once | per device | 256 + 64 + 32 + 128 | the same CPU |
//! | `burst` | virtio-net + NVMe | net + NVMe | 512 + 64, after an idle gap, all threads at once | the same CPU |

use bounce_framework::{Device, DmaDirection};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::fmt;
use std::time::Duration;

/// The largest mapping Linux's swiotlb allows for a device with `min_align_mask` 4095
/// (`IO_TLB_SIZE * IO_TLB_SEGSIZE - 4096`): Linux's NVMe driver caps its transfer size
/// at `dma_max_mapping_size()`, so no NVMe request is larger.
pub const NVME_MAX_TRANSFER: u32 = 258_048;

/// Ops per thread in a pre-generated stream (repeated in `--duration` mode).
pub const STREAM_LEN: usize = 1 << 16;

/// One mapping request of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Index into [`Plan::devices`].
    pub device: u8,
    /// The mapping direction.
    pub dir: DmaDirection,
    /// Bytes to map.
    pub size: u32,
    /// Offset of the original buffer inside its page-aligned slot (what `min_align_mask`
    /// must preserve).
    pub offset: u32,
    /// The CPU to map on (replayed traces); `None`: the thread's own CPU.
    pub cpu: Option<u16>,
}

/// One device of a plan and how deep its queue is.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    /// The device as the DMA API sees it.
    pub device: Device,
    /// Mappings in flight per thread before the oldest is unmapped (a ring).
    pub depth: usize,
    /// The largest `offset + size` an op of this device has (sizes its buffers).
    pub max_extent: usize,
    /// Whether the driver maps with `DMA_ATTR_MAY_BLOCK` (storage: a request may wait
    /// for a bounce buffer instead of failing, as in Michael Kelley's throttling RFC);
    /// network drivers map in atomic context and never wait.
    pub may_block: bool,
}

/// How threads hand mappings around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Each thread unmaps its own mappings, oldest first, on its own CPU (block devices:
    /// per-CPU submission and completion queues).
    SameCpu,
    /// Thread `t` maps, thread `t+1` unmaps on its CPU (a NIC whose completion
    /// interrupt lands on another CPU); with one thread the unmap runs on the next
    /// simulated CPU.
    NextCpu,
}

/// Idle, then everybody at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    /// How long every thread stays idle (nothing in flight) before a burst.
    pub idle: Duration,
    /// How long a burst lasts in `--duration` mode.
    pub active: Duration,
}

/// A workload made concrete: devices and per-thread op streams.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The workload's name (`net`, `replay:file` ...).
    pub name: String,
    /// The devices ops refer to.
    pub devices: Vec<DeviceSpec>,
    /// One stream per thread.
    pub streams: Vec<Vec<Op>>,
    /// Where unmaps run.
    pub handoff: Handoff,
    /// Idle/burst cycles, if any.
    pub burst: Option<Burst>,
    /// Whether a thread starts its stream again when it reaches the end (`--duration`).
    pub repeat: bool,
}

impl Plan {
    /// The plan with every map atomic: no device passes `DMA_ATTR_MAY_BLOCK`
    /// (`--atomic`, the harsher test of a pool's growth).
    #[must_use]
    pub fn atomic(mut self) -> Self {
        for d in &mut self.devices {
            d.may_block = false;
        }
        self
    }

    /// Total ops in all streams.
    pub fn total_ops(&self) -> usize {
        self.streams.iter().map(Vec::len).sum()
    }

    /// The plan split between two strategy instances for an A/B run (`compare --ab`).
    ///
    /// Device `i` becomes two identical copies: index `2i`, named `<name>.a`, and index
    /// `2i + 1`, `<name>.b` ([`AB_SUFFIXES`]; a name too long for the suffix is cut
    /// first). Each copy has the original's queue depth halved (rounded up), so the two
    /// together keep as many mappings in flight as the original. In each stream a
    /// device's requests are taken in pairs, and the first request of each pair is issued
    /// to both copies, in the pair's two places, `.a` first in even pairs and `.b` first
    /// in odd ones: both copies get the same requests in the same order, each half as
    /// many as the original had, and the stream keeps its length and its mix of devices.
    /// A device's last request in a stream is dropped when it has no partner.
    ///
    /// # Panics
    /// When the plan has more than 128 devices (an op names its device in a byte).
    #[must_use]
    pub fn ab_split(&self) -> Self {
        let devices = self
            .devices
            .iter()
            .flat_map(|d| {
                AB_SUFFIXES.map(|suffix| {
                    let mut copy = d.clone();
                    copy.device.set_name(&ab_name(d.device.name(), suffix));
                    copy.depth = d.depth.div_ceil(2);
                    copy
                })
            })
            .collect();
        let streams = self.streams.iter().map(|s| ab_stream(s, self.devices.len())).collect();
        Self { devices, streams, ..self.clone() }
    }
}

/// The name suffixes of the two copies of a device in [`Plan::ab_split`]: the copy on
/// instance A, then the one on instance B.
pub const AB_SUFFIXES: [&str; 2] = [".a", ".b"];

/// `name` with `suffix`, cut on a char boundary so the whole fits a device name.
fn ab_name(name: &str, suffix: &str) -> String {
    let mut len = name.len().min(bounce_framework::DEVICE_NAME_MAX - suffix.len());
    while !name.is_char_boundary(len) {
        len -= 1;
    }
    format!("{}{suffix}", &name[..len])
}

/// One stream of [`Plan::ab_split`]: `devices` is the original plan's device count.
fn ab_stream(stream: &[Op], devices: usize) -> Vec<Op> {
    // Per original device: pairs begun so far, and where the open pair's first op went.
    let mut pairs = vec![0usize; devices];
    let mut open: Vec<Option<usize>> = vec![None; devices];
    let mut out: Vec<Op> = Vec::with_capacity(stream.len());
    for op in stream {
        let d = usize::from(op.device);
        let first = u8::try_from(2 * d + pairs[d] % 2).expect("at most 128 devices to split");
        let second = first ^ 1;
        match open[d].take() {
            None => {
                open[d] = Some(out.len());
                out.push(Op { device: first, ..*op });
            }
            Some(i) => {
                pairs[d] += 1;
                out.push(Op { device: second, ..out[i] });
            }
        }
    }
    let mut unpaired: Vec<usize> = open.into_iter().flatten().collect();
    unpaired.sort_unstable();
    for i in unpaired.into_iter().rev() {
        out.remove(i);
    }
    out
}

/// The built-in workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Small packets at a high rate: the cc-swiotlb seed's measured size distribution
    /// (≤512 B 3.5 %, ≤2 KiB 57.7 %, ≤4 KiB 91.3 %, ≤16 KiB 96.0 % cumulative, the rest up
    /// to 64 KiB), half TX half RX, 256 packets in flight per thread, each mapped on one
    /// CPU and unmapped on the next (Source: SPEC §5, the cc-swiotlb RFC's TDX boot measurements).
    Net,
    /// Block I/O on an NVMe device with `min_align_mask` 4095: 4 KiB random I/O dominates,
    /// large transfers up to the driver's 252 KiB cap, 70 % reads, a quarter of the
    /// buffers at a sector offset inside their page, 64 commands in flight per CPU queue.
    Nvme,
    /// Several devices at once on every thread: virtio-net (50 % of requests), NVMe
    /// (25 %), a 32-bit AHCI controller (15 %, 512 B – 64 KiB sectors), virtio-blk (10 %,
    /// 4 KiB – 128 KiB); each with its own queue depth.
    Mixed,
    /// Idle, then every thread at full rate at the same instant with deep queues (net
    /// packets, 512 in flight, and NVMe commands, 64 in flight), repeated: Andi Kleen's
    /// test for watermark refills ("it must be tested with all cores streaming at full
    /// bandwidth").
    Burst,
}

impl Workload {
    /// Every built-in workload, in report order.
    pub const ALL: [Self; 4] = [Self::Net, Self::Nvme, Self::Mixed, Self::Burst];

    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Net => "net",
            Self::Nvme => "nvme",
            Self::Mixed => "mixed",
            Self::Burst => "burst",
        }
    }

    /// A one-paragraph description for reports.
    pub const fn description(self) -> &'static str {
        match self {
            Self::Net => "virtio-net packets with the cc-swiotlb seed's size distribution (≤512 B 3.5 %, ≤2 KiB 57.7 %, ≤4 KiB 91.3 %, ≤16 KiB 96.0 % cumulative, the rest up to 64 KiB; SPEC §5), half TX half RX, 256 in flight per thread, mapped on one CPU and unmapped on the next.",
            Self::Nvme => "NVMe block I/O (min_align_mask 4095): 4 KiB to 252 KiB (the driver's cap at swiotlb_max_mapping_size), 4 KiB random I/O dominating, 70 % reads, a quarter of the buffers at a sector offset in their page, 64 in flight per thread.",
            Self::Mixed => "virtio-net (50 %), NVMe (25 %), a 32-bit AHCI controller (15 %) and virtio-blk (10 %) mapping at the same time on every thread, each with its own queue depth.",
            Self::Burst => "idle gaps, then every thread at full rate at once with deep queues (net packets 512 deep, NVMe 64 deep): the test Andi Kleen asked for, all cores streaming at full bandwidth right after a quiet period.",
        }
    }

    /// Builds the plan: the device table and `threads` streams of `len` ops each.
    pub fn plan(self, threads: usize, len: usize, seed: u64, repeat: bool) -> Plan {
        type Shape = (Vec<DeviceSpec>, Vec<(u8, f64, Dist)>, Handoff, Option<Burst>);
        let (devices, mix, handoff, burst): Shape = match self {
            Self::Net => (vec![net_device(256)], vec![(0, 1.0, Dist::Net)], Handoff::NextCpu, None),
            Self::Nvme => (vec![nvme_device(64)], vec![(0, 1.0, Dist::Nvme)], Handoff::SameCpu, None),
            Self::Mixed => (
                vec![net_device(256), nvme_device(64), ahci_device(32), vblk_device(128)],
                vec![(0, 0.50, Dist::Net), (1, 0.25, Dist::Nvme), (2, 0.15, Dist::Ahci), (3, 0.10, Dist::Vblk)],
                Handoff::SameCpu,
                None,
            ),
            Self::Burst => (
                vec![net_device(512), nvme_device(64)],
                vec![(0, 0.85, Dist::Net), (1, 0.15, Dist::Nvme)],
                Handoff::SameCpu,
                Some(Burst { idle: Duration::from_millis(150), active: Duration::from_millis(300) }),
            ),
        };
        let streams = (0..threads)
            .map(|t| {
                let mut rng = thread_rng(seed, self.name(), t);
                (0..len).map(|_| draw(&mut rng, &mix)).collect()
            })
            .collect();
        Plan { name: self.name().to_string(), devices, streams, handoff, burst, repeat }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The generator of thread `t` of a workload: independent streams per thread and
/// workload, all derived from one seed.
pub fn thread_rng(seed: u64, workload: &str, thread: usize) -> Pcg64Mcg {
    // FNV-1a over the workload name keeps streams of different workloads apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in workload.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mixed = seed ^ h.rotate_left(17) ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Pcg64Mcg::seed_from_u64(mixed)
}

fn net_device(depth: usize) -> DeviceSpec {
    DeviceSpec { device: Device::new("virtio-net"), depth, max_extent: 65_536, may_block: false }
}

fn nvme_device(depth: usize) -> DeviceSpec {
    DeviceSpec {
        device: Device::new("nvme0").with_min_align_mask(4095).with_max_segment_size(1 << 20),
        depth,
        max_extent: NVME_MAX_TRANSFER as usize + 4096,
        may_block: true,
    }
}

fn ahci_device(depth: usize) -> DeviceSpec {
    DeviceSpec { device: Device::new("ahci").with_dma_bits(32), depth, max_extent: 65_536, may_block: true }
}

fn vblk_device(depth: usize) -> DeviceSpec {
    DeviceSpec { device: Device::new("virtio-blk"), depth, max_extent: 131_072, may_block: true }
}

/// A size distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    /// The seed's network distribution.
    Net,
    /// NVMe block I/O.
    Nvme,
    /// AHCI sectors.
    Ahci,
    /// virtio-blk.
    Vblk,
}

/// The seed's cumulative distribution of mapping sizes (SPEC §5): `(upper bound,
/// cumulative fraction)`; sizes are uniform inside each bucket, the first bucket starts
/// at 64 bytes (a minimal Ethernet frame) and the last ends at 64 KiB (TSO/GSO).
pub const NET_CDF: [(u32, f64); 5] = [(512, 0.035), (2048, 0.577), (4096, 0.913), (16_384, 0.960), (65_536, 1.0)];

/// NVMe transfer sizes and their probabilities.
pub const NVME_SIZES: [(u32, f64); 7] = [
    (4096, 0.45),
    (8192, 0.10),
    (16_384, 0.10),
    (32_768, 0.10),
    (65_536, 0.10),
    (131_072, 0.08),
    (NVME_MAX_TRANSFER, 0.07),
];

impl Dist {
    /// Draws `(size, offset, direction)`.
    pub fn draw(self, rng: &mut Pcg64Mcg) -> (u32, u32, DmaDirection) {
        match self {
            Self::Net => {
                let u: f64 = rng.random();
                let mut lo = 64;
                let mut size = 65_536;
                for &(hi, cum) in &NET_CDF {
                    if u < cum {
                        size = rng.random_range(lo..=hi);
                        break;
                    }
                    lo = hi + 1;
                }
                let dir = if rng.random_bool(0.5) { DmaDirection::ToDevice } else { DmaDirection::FromDevice };
                // Packet buffers start at a 64-byte aligned offset inside their page.
                let offset = if size <= 2048 { rng.random_range(0..32u32) * 64 } else { 0 };
                (size, offset, dir)
            }
            Self::Nvme => {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut size = NVME_MAX_TRANSFER;
                for &(s, p) in &NVME_SIZES {
                    acc += p;
                    if u < acc {
                        size = s;
                        break;
                    }
                }
                let dir = if rng.random_bool(0.7) { DmaDirection::FromDevice } else { DmaDirection::ToDevice };
                let offset = if rng.random_bool(0.25) { rng.random_range(1..8u32) * 512 } else { 0 };
                (size, offset, dir)
            }
            Self::Ahci => {
                let size = if rng.random_bool(0.5) { 4096 } else { rng.random_range(1..=128u32) * 512 };
                let dir = if rng.random_bool(0.6) { DmaDirection::FromDevice } else { DmaDirection::ToDevice };
                (size, 0, dir)
            }
            Self::Vblk => {
                let size = 4096u32 << rng.random_range(0..=5u32);
                let dir = match rng.random_range(0..10u32) {
                    0..=5 => DmaDirection::FromDevice,
                    6..=8 => DmaDirection::ToDevice,
                    _ => DmaDirection::Bidirectional,
                };
                (size, 0, dir)
            }
        }
    }
}

fn draw(rng: &mut Pcg64Mcg, mix: &[(u8, f64, Dist)]) -> Op {
    let (device, dist) = if mix.len() == 1 {
        (mix[0].0, mix[0].2)
    } else {
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut pick = (mix[mix.len() - 1].0, mix[mix.len() - 1].2);
        for &(d, p, dist) in mix {
            acc += p;
            if u < acc {
                pick = (d, dist);
                break;
            }
        }
        pick
    };
    let (size, offset, dir) = dist.draw(rng);
    Op { device, dir, size, offset, cpu: None }
}

/// One fixed request size for every op (the throughput-versus-size sweep).
pub fn fixed_size_plan(size: u32, threads: usize, depth: usize, repeat: bool) -> Plan {
    let device = DeviceSpec {
        device: Device::new("sweep"),
        depth,
        max_extent: (size as usize).next_multiple_of(4096),
        may_block: false,
    };
    let op = Op { device: 0, dir: DmaDirection::ToDevice, size, offset: 0, cpu: None };
    Plan {
        name: format!("size-{size}"),
        devices: vec![device],
        streams: vec![vec![op; 1024]; threads],
        handoff: Handoff::SameCpu,
        burst: None,
        repeat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_sizes_match_the_seed_distribution() {
        let plan = Workload::Net.plan(2, 100_000, 42, true);
        let sizes: Vec<u32> = plan.streams.iter().flatten().map(|o| o.size).collect();
        let n = sizes.len() as f64;
        for &(bound, cum) in &NET_CDF {
            let frac = sizes.iter().filter(|&&s| s <= bound).count() as f64 / n;
            // 200 000 samples: the standard error is below 0.12 %; allow 0.5 %.
            assert!((frac - cum).abs() < 0.005, "≤{bound}: {frac:.4} vs the seed's {cum}");
        }
        assert!(sizes.iter().all(|&s| (64..=65_536).contains(&s)));
        let tx = plan.streams.iter().flatten().filter(|o| o.dir == DmaDirection::ToDevice).count() as f64 / n;
        assert!((tx - 0.5).abs() < 0.01, "TX share {tx}");
    }

    #[test]
    fn nvme_sizes_offsets_and_directions() {
        let plan = Workload::Nvme.plan(1, 100_000, 7, true);
        let ops = &plan.streams[0];
        let n = ops.len() as f64;
        let mut acc = 0.0;
        for &(s, p) in &NVME_SIZES {
            acc += p;
            let frac = ops.iter().filter(|o| o.size <= s).count() as f64 / n;
            assert!((frac - acc).abs() < 0.006, "≤{s}: {frac:.4} vs {acc}");
        }
        assert!(ops.iter().all(|o| (4096..=NVME_MAX_TRANSFER).contains(&o.size)));
        assert!(ops.iter().all(|o| o.offset % 512 == 0 && o.offset < 4096));
        assert!(ops.iter().all(|o| (o.offset + o.size) as usize <= plan.devices[0].max_extent));
        let reads = ops.iter().filter(|o| o.dir == DmaDirection::FromDevice).count() as f64 / n;
        assert!((reads - 0.7).abs() < 0.01, "reads {reads}");
        let offset = ops.iter().filter(|o| o.offset != 0).count() as f64 / n;
        assert!((offset - 0.25).abs() < 0.01, "offset share {offset}");
        assert_eq!(plan.devices[0].device.min_align_mask, 4095);
    }

    #[test]
    fn mixed_uses_every_device_in_proportion() {
        let plan = Workload::Mixed.plan(1, 100_000, 3, true);
        assert_eq!(plan.devices[2].device.dma_mask, u64::from(u32::MAX));
        let ops = &plan.streams[0];
        let n = ops.len() as f64;
        for (d, want) in [(0u8, 0.50), (1, 0.25), (2, 0.15), (3, 0.10)] {
            let got = ops.iter().filter(|o| o.device == d).count() as f64 / n;
            assert!((got - want).abs() < 0.01, "device {d}: {got} vs {want}");
        }
        for o in ops {
            let spec = &plan.devices[usize::from(o.device)];
            assert!((o.offset + o.size) as usize <= spec.max_extent, "{o:?} exceeds {}", spec.max_extent);
        }
    }

    #[test]
    fn same_seed_same_stream_and_different_seed_differs() {
        for w in Workload::ALL {
            let a = w.plan(3, 5000, 99, true);
            let b = w.plan(3, 5000, 99, true);
            assert_eq!(a.streams, b.streams, "{w}");
            let c = w.plan(3, 5000, 100, true);
            assert_ne!(a.streams, c.streams, "{w}");
            // Threads get different streams.
            assert_ne!(a.streams[0], a.streams[1], "{w}");
        }
        // Workloads sharing a distribution still get different streams.
        assert_ne!(Workload::Net.plan(1, 100, 1, true).streams, Workload::Burst.plan(1, 100, 1, true).streams);
    }

    #[test]
    fn ab_split_gives_each_copy_half_of_its_device_and_the_same_requests() {
        for w in Workload::ALL {
            let plan = w.plan(3, 5001, 11, true);
            let ab = plan.ab_split();
            assert_eq!(ab.devices.len(), 2 * plan.devices.len(), "{w}");
            assert_eq!((ab.handoff, ab.burst, ab.repeat), (plan.handoff, plan.burst, plan.repeat));
            for (i, d) in plan.devices.iter().enumerate() {
                let (a, b) = (&ab.devices[2 * i], &ab.devices[2 * i + 1]);
                assert_eq!(a.device.name(), format!("{}.a", d.device.name()));
                assert_eq!(b.device.name(), format!("{}.b", d.device.name()));
                for c in [a, b] {
                    assert_eq!(c.depth, d.depth.div_ceil(2));
                    assert_eq!((c.max_extent, c.may_block), (d.max_extent, d.may_block));
                    let (x, y) = (c.device, d.device);
                    assert_eq!(
                        (x.dma_mask, x.min_align_mask, x.max_segment_size),
                        (y.dma_mask, y.min_align_mask, y.max_segment_size)
                    );
                }
            }
            for (orig, split) in plan.streams.iter().zip(&ab.streams) {
                let mut dropped = 0;
                for i in 0..plan.devices.len() {
                    let n = orig.iter().filter(|o| usize::from(o.device) == i).count();
                    let side = |c: usize| -> Vec<(u32, u32, DmaDirection, Option<u16>)> {
                        split
                            .iter()
                            .filter(|o| usize::from(o.device) == c)
                            .map(|o| (o.size, o.offset, o.dir, o.cpu))
                            .collect()
                    };
                    let (a, b) = (side(2 * i), side(2 * i + 1));
                    assert_eq!((a.len(), b.len()), (n / 2, n / 2), "{w}: device {i} has {n} requests");
                    // The same requests in the same order, hence the same multiset of
                    // sizes, offsets and directions.
                    assert_eq!(a, b, "{w}: device {i}");
                    // Each one drawn from the original device's requests.
                    let drawn: Vec<_> = orig
                        .iter()
                        .filter(|o| usize::from(o.device) == i)
                        .map(|o| (o.size, o.offset, o.dir, o.cpu))
                        .collect();
                    assert!(a.iter().all(|r| drawn.contains(r)));
                    dropped += n % 2;
                }
                // The total load is the original's, but for unpaired last requests.
                assert_eq!(split.len() + dropped, orig.len(), "{w}");
            }
        }
    }

    #[test]
    fn ab_split_alternates_which_copy_goes_first_and_keeps_names_short() {
        let op = |device, size| Op { device, dir: DmaDirection::ToDevice, size, offset: 0, cpu: None };
        let mut plan = fixed_size_plan(4096, 1, 1, true);
        plan.devices[0].device.set_name(&"x".repeat(bounce_framework::DEVICE_NAME_MAX));
        plan.streams = vec![vec![op(0, 1), op(0, 2), op(0, 3), op(0, 4), op(0, 5)]];
        let ab = plan.ab_split();
        let got: Vec<(u8, u32)> = ab.streams[0].iter().map(|o| (o.device, o.size)).collect();
        assert_eq!(got, [(0, 1), (1, 1), (1, 3), (0, 3)], "the fifth request has no partner");
        let names: Vec<&str> = ab.devices.iter().map(|d| d.device.name()).collect();
        assert!(names.iter().all(|n| n.len() == bounce_framework::DEVICE_NAME_MAX), "{names:?}");
        assert!(names[0].ends_with(AB_SUFFIXES[0]) && names[1].ends_with(AB_SUFFIXES[1]), "{names:?}");
    }

    #[test]
    fn burst_has_idle_gaps() {
        let plan = Workload::Burst.plan(2, 10, 1, true);
        let b = plan.burst.expect("burst cycles");
        assert!(b.idle > Duration::ZERO && b.active > Duration::ZERO);
        assert!(Workload::Net.plan(2, 10, 1, true).burst.is_none());
        assert_eq!(Workload::Net.plan(2, 10, 1, true).handoff, Handoff::NextCpu);
    }
}
