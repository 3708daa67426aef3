//! `bounce map-bench`: the kernel's `dma_map_benchmark` on the simulated guest.
//!
//! Same flags, defaults, validation messages and output lines as
//! `tools/testing/selftests/dma/dma_map_benchmark.c` (Linux 6.12) and the same
//! arithmetic as `kernel/dma/map_benchmark.c`: each thread maps and unmaps one buffer of
//! `granule` pages in a loop (memset to 0x66 first unless `FROM_DEVICE`, `-x`
//! nanoseconds of pretend transfer between map and unmap); latencies are summed in
//! units of 100 ns, and the average and standard deviation are computed with the
//! kernel's integer division and integer square root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bounce_framework::sim::set_current_cpu;
use bounce_framework::{BouncerOptions, Device, DmaAttrs, DmaDirection, Platform, Strategy, PAGE_SIZE};

use crate::engine::{boot, Ctor, Machine, RefillThread, RunError};
use crate::registry::StrategyVisitor;
use crate::workload::fixed_size_plan;

/// `DMA_MAP_MAX_THREADS`.
pub const MAX_THREADS: i64 = 1024;
/// `DMA_MAP_MAX_SECONDS`.
pub const MAX_SECONDS: i64 = 300;
/// `DMA_MAP_MAX_TRANS_DELAY` (10 ms in ns).
pub const MAX_TRANS_DELAY: i64 = 10 * 1_000_000;

/// The benchmark's parameters (`struct map_benchmark`'s inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// `-t`.
    pub threads: i64,
    /// `-s`.
    pub seconds: i64,
    /// `-n` (-1: `NUMA_NO_NODE`).
    pub node: i64,
    /// `-b`.
    pub bits: i64,
    /// `-d`: 0 bidirectional, 1 to device, 2 from device.
    pub dir: i64,
    /// `-x`: nanoseconds of pretend DMA between map and unmap.
    pub xdelay: i64,
    /// `-g`: pages per mapping.
    pub granule: i64,
}

impl Default for Params {
    /// The tool's defaults: one thread, 20 seconds, no node, 32-bit mask,
    /// bidirectional, no delay, one page.
    fn default() -> Self {
        Self { threads: 1, seconds: 20, node: -1, bits: 32, dir: 0, xdelay: 0, granule: 1 }
    }
}

/// Why the benchmark did not run, with the kernel tool's wording.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapBenchError {
    /// A parameter the user tool rejects before calling the kernel.
    #[error("{0}")]
    Invalid(String),
    /// What the kernel's ioctl would refuse (`-EINVAL`), e.g. a NUMA node the guest
    /// does not have or a mask the bounce pool cannot satisfy.
    #[error("ioctl: Invalid argument ({0})")]
    Einval(String),
    /// A mapping failed during the run (`-ENOMEM`).
    #[error("ioctl: Cannot allocate memory ({0})")]
    Enomem(String),
}

/// Validates like the user tool, in its order and with its messages.
///
/// # Errors
/// [`MapBenchError::Invalid`] with the tool's message.
pub fn validate(p: &Params) -> Result<(), MapBenchError> {
    let bad = |m: String| Err(MapBenchError::Invalid(m));
    if p.threads <= 0 || p.threads > MAX_THREADS {
        return bad(format!("invalid number of threads, must be in 1-{MAX_THREADS}"));
    }
    if p.seconds <= 0 || p.seconds > MAX_SECONDS {
        return bad(format!("invalid number of seconds, must be in 1-{MAX_SECONDS}"));
    }
    if p.xdelay < 0 || p.xdelay > MAX_TRANS_DELAY {
        return bad(format!("invalid transmit delay, must be in 0-{MAX_TRANS_DELAY}"));
    }
    if p.bits < 20 || p.bits > 64 {
        return bad("invalid dma mask bit, must be in 20-64".into());
    }
    if !(0..=2).contains(&p.dir) {
        return bad("invalid dma direction".into());
    }
    if p.granule < 1 || p.granule > 1024 {
        return bad("invalid granule size".into());
    }
    Ok(())
}

/// x86 `ZONE_DMA` covers the first 16 MiB (`zone_dma_limit`).
const ZONE_DMA_LIMIT: u64 = (1 << 24) - 1;

/// `dma_direct_supported()` (Linux 6.12), what `dma_set_mask()` checks: any mask of
/// 32 bits or more is accepted; a smaller one must cover `ZONE_DMA` (or all of RAM when
/// RAM is smaller). Where the bounce pool lies is not consulted: a pool the device
/// cannot reach makes the mappings fail instead.
pub fn dma_direct_supported(mask: u64, ram_end: u64) -> bool {
    if mask >= bounce_framework::addr::dma_bit_mask(32) {
        return true;
    }
    let min_mask = ram_end.saturating_sub(PAGE_SIZE as u64).min(ZONE_DMA_LIMIT);
    mask >= min_mask
}

/// The tool's direction names.
pub const DIRECTIONS: [&str; 3] = ["BIDIRECTIONAL", "TO_DEVICE", "FROM_DEVICE"];

/// Sums of one run, as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    /// Sum of map latencies in 100 ns units.
    pub map_100ns: u64,
    /// Sum of unmap latencies in 100 ns units.
    pub unmap_100ns: u64,
    /// Sum of squares of map latencies.
    pub sq_map: u64,
    /// Sum of squares of unmap latencies.
    pub sq_unmap: u64,
    /// Loops.
    pub loops: u64,
    /// Total map nanoseconds (extra precision, `--detail`).
    pub map_ns: u64,
    /// Total unmap nanoseconds.
    pub unmap_ns: u64,
}

impl Sums {
    fn add(&mut self, map_ns: u64, unmap_ns: u64) {
        let m = map_ns / 100;
        let u = unmap_ns / 100;
        self.map_100ns += m;
        self.unmap_100ns += u;
        self.sq_map += m * m;
        self.sq_unmap += u * u;
        self.loops += 1;
        self.map_ns += map_ns;
        self.unmap_ns += unmap_ns;
    }

    fn merge(&mut self, o: &Self) {
        self.map_100ns += o.map_100ns;
        self.unmap_100ns += o.unmap_100ns;
        self.sq_map += o.sq_map;
        self.sq_unmap += o.sq_unmap;
        self.loops += o.loops;
        self.map_ns += o.map_ns;
        self.unmap_ns += o.unmap_ns;
    }
}

/// The results `struct map_benchmark` carries back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `avg_map_100ns`.
    pub avg_map_100ns: u64,
    /// `map_stddev`.
    pub map_stddev: u64,
    /// `avg_unmap_100ns`.
    pub avg_unmap_100ns: u64,
    /// `unmap_stddev`.
    pub unmap_stddev: u64,
    /// The raw sums.
    pub sums: Sums,
}

/// `int_sqrt64`: the integer square root (floor).
pub fn int_sqrt64(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // Newton's method from above: converges to floor(sqrt(x)) without floats.
    let mut r = x;
    let mut y = x.div_ceil(2);
    while y < r {
        r = y;
        y = u64::midpoint(r, x / r);
    }
    while r.checked_mul(r).is_none_or(|s| s > x) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|s| s <= x) {
        r += 1;
    }
    r
}

impl Outcome {
    /// The kernel's arithmetic (`do_map_benchmark`).
    pub fn from_sums(s: Sums) -> Self {
        if s.loops == 0 {
            return Self { sums: s, ..Self::default() };
        }
        let avg_map = s.map_100ns / s.loops;
        let avg_unmap = s.unmap_100ns / s.loops;
        let map_var = (s.sq_map / s.loops).saturating_sub(avg_map * avg_map);
        let unmap_var = (s.sq_unmap / s.loops).saturating_sub(avg_unmap * avg_unmap);
        Self {
            avg_map_100ns: avg_map,
            map_stddev: int_sqrt64(map_var),
            avg_unmap_100ns: avg_unmap,
            unmap_stddev: int_sqrt64(unmap_var),
            sums: s,
        }
    }

    /// The tool's three output lines.
    pub fn lines(&self, p: &Params) -> [String; 3] {
        let dir = usize::try_from(p.dir).ok().and_then(|d| DIRECTIONS.get(d)).copied().unwrap_or("?");
        [
            format!(
                "dma mapping benchmark: threads:{} seconds:{} node:{} dir:{dir} granule: {}",
                p.threads, p.seconds, p.node, p.granule
            ),
            format!(
                "average map latency(us):{:.1} standard deviation:{:.1}",
                self.avg_map_100ns as f64 / 10.0,
                self.map_stddev as f64 / 10.0
            ),
            format!(
                "average unmap latency(us):{:.1} standard deviation:{:.1}",
                self.avg_unmap_100ns as f64 / 10.0,
                self.unmap_stddev as f64 / 10.0
            ),
        ]
    }
}

/// Runs the benchmark on one strategy.
pub struct MapBench<'a> {
    /// The machine.
    pub machine: &'a Machine,
    /// Validated parameters.
    pub params: Params,
    /// How long to run (`-s`, or a shorter override).
    pub duration: Duration,
}

fn spin_ns(ns: u64) {
    if ns == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_nanos(ns);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

impl StrategyVisitor<bounce_framework::sim::SimGuest> for MapBench<'_> {
    type Output = Result<Outcome, MapBenchError>;

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output {
        let p = self.params;
        if p.node != -1 && p.node != 0 {
            return Err(MapBenchError::Einval(format!(
                "invalid numa node {}: the simulated guest has node 0 only",
                p.node
            )));
        }
        let count = |v: i64| usize::try_from(v).map_err(|_| MapBenchError::Invalid(format!("{v} is out of range")));
        let threads = count(p.threads)?;
        let size = count(p.granule)? * PAGE_SIZE;
        let plan = fixed_size_plan(size as u32, threads, 1, true);
        let bouncer = boot(ctor, name, self.machine, &plan, BouncerOptions::default()).map_err(|e| match e {
            RunError::Init { .. } | RunError::NoMemory { .. } | RunError::Worker(_) => {
                MapBenchError::Einval(e.to_string())
            }
        })?;
        let mut dev = Device::new("dma_map_benchmark").with_dma_bits(u32::try_from(p.bits).unwrap_or(64));
        bouncer.attach(&mut dev);
        let guest = bouncer.platform().clone();
        if !dma_direct_supported(dev.dma_mask, guest.end().0) {
            return Err(MapBenchError::Einval(format!("failed to set dma_mask on device {}", dev.name())));
        }
        let dir = DmaDirection::from_raw(u32::try_from(p.dir).unwrap_or(u32::MAX))
            .map_err(|e| MapBenchError::Invalid(e.to_string()))?;
        let mut bufs = Vec::with_capacity(threads);
        for _ in 0..threads {
            bufs.push(guest.alloc_private(size).map_err(|e| MapBenchError::Enomem(e.to_string()))?);
        }
        let refill = RefillThread::start(bouncer.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = guest.cpu_count();
        let xdelay = p.xdelay.unsigned_abs();
        let handles: Vec<_> = bufs
            .into_iter()
            .enumerate()
            .map(|(t, buf)| {
                let (bouncer, stop) = (bouncer.clone(), stop.clone());
                thread::spawn(move || -> Result<Sums, String> {
                    set_current_cpu(Some(t % cpus));
                    let mut s = Sums::default();
                    let g = bouncer.platform().clone();
                    while !stop.load(Ordering::Relaxed) {
                        if dir != DmaDirection::FromDevice {
                            g.fill(buf, 0x66, size);
                        }
                        let t0 = Instant::now();
                        let dma = bouncer
                            .map_single(&dev, buf, size, dir, DmaAttrs::empty())
                            .map_err(|e| format!("dma_map_single failed on {}: {e}", dev.name()))?;
                        let map_ns = t0.elapsed().as_nanos() as u64;
                        spin_ns(xdelay);
                        let t1 = Instant::now();
                        bouncer
                            .unmap_single(&dev, dma, size, dir, DmaAttrs::empty())
                            .map_err(|e| format!("dma_unmap_single failed on {}: {e}", dev.name()))?;
                        s.add(map_ns, t1.elapsed().as_nanos() as u64);
                    }
                    Ok(s)
                })
            })
            .collect();
        let deadline = Instant::now() + self.duration;
        while Instant::now() < deadline && !handles.iter().all(thread::JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())));
        }
        stop.store(true, Ordering::Relaxed);
        let mut sums = Sums::default();
        let mut failure = None;
        for h in handles {
            match h.join() {
                Ok(Ok(s)) => sums.merge(&s),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some("a benchmark thread panicked".into()),
            }
        }
        refill.stop();
        if let Some(e) = failure {
            return Err(MapBenchError::Enomem(e));
        }
        Ok(Outcome::from_sums(sums))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_matches_the_tool() {
        let ok = Params::default();
        assert_eq!(validate(&ok), Ok(()));
        let msg = |p: Params| validate(&p).unwrap_err().to_string();
        assert_eq!(msg(Params { threads: 0, ..ok }), "invalid number of threads, must be in 1-1024");
        assert_eq!(msg(Params { threads: 1025, ..ok }), "invalid number of threads, must be in 1-1024");
        assert_eq!(msg(Params { seconds: 301, ..ok }), "invalid number of seconds, must be in 1-300");
        assert_eq!(msg(Params { xdelay: -1, ..ok }), "invalid transmit delay, must be in 0-10000000");
        assert_eq!(msg(Params { bits: 19, ..ok }), "invalid dma mask bit, must be in 20-64");
        assert_eq!(msg(Params { bits: 65, ..ok }), "invalid dma mask bit, must be in 20-64");
        assert_eq!(msg(Params { dir: 3, ..ok }), "invalid dma direction");
        assert_eq!(msg(Params { granule: 1025, ..ok }), "invalid granule size");
        // The tool checks threads first.
        assert_eq!(msg(Params { threads: 0, granule: 0, ..ok }), "invalid number of threads, must be in 1-1024");
        assert_eq!(
            validate(&Params {
                threads: 1024,
                seconds: 300,
                xdelay: MAX_TRANS_DELAY,
                bits: 64,
                dir: 2,
                granule: 1024,
                node: 5
            }),
            Ok(())
        );
    }

    #[test]
    fn kernel_arithmetic() {
        let mut s = Sums::default();
        // 250 ns and 450 ns maps → 2 and 4 units; unmaps 100 ns each → 1 unit.
        s.add(250, 100);
        s.add(450, 199);
        let o = Outcome::from_sums(s);
        assert_eq!((o.avg_map_100ns, o.map_stddev), (3, 1));
        assert_eq!((o.avg_unmap_100ns, o.unmap_stddev), (1, 0));
        let lines = o.lines(&Params { dir: 1, ..Params::default() });
        assert_eq!(lines[0], "dma mapping benchmark: threads:1 seconds:20 node:-1 dir:TO_DEVICE granule: 1");
        assert_eq!(lines[1], "average map latency(us):0.3 standard deviation:0.1");
        assert_eq!(lines[2], "average unmap latency(us):0.1 standard deviation:0.0");
        assert_eq!(Outcome::from_sums(Sums::default()).avg_map_100ns, 0);
        assert!(dma_direct_supported(u64::from(u32::MAX), 1 << 40));
        assert!(dma_direct_supported((1 << 24) - 1, 1 << 31));
        assert!(!dma_direct_supported((1 << 20) - 1, 1 << 31));
        assert!(dma_direct_supported((1 << 20) - 1, 1 << 20), "RAM smaller than ZONE_DMA");
        for x in [0u64, 1, 2, 3, 4, 15, 16, 17, 99, 100, u64::MAX] {
            let r = int_sqrt64(x);
            assert!(r * r <= x && (r + 1).checked_mul(r + 1).is_none_or(|s| s > x), "{x} -> {r}");
        }
    }
}
