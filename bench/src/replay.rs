//! `swiotlb_bounced` traces: parsing ftrace output, turning it into a replay plan, and
//! recording sample traces on the simulator.
//!
//! The tracepoint prints `dev_name: %s dma_mask=%llx dev_addr=%llx size=%zu %s` (the
//! last field `FORCE` or `NORMAL`). In `/sys/kernel/tracing/trace` each event carries the
//! usual prefix, e.g.
//!
//! ```text
//!      kworker/0:1H-87      [000] ..... 12.345678: swiotlb_bounced: dev_name: nvme0 dma_mask=ffffffffffffffff dev_addr=10a3f200 size=4096 FORCE
//! ```
//!
//! Lines starting with `#` (the ftrace header) and blank lines are skipped; events of
//! other tracepoints in the same buffer are skipped and counted; bare tracepoint lines
//! without a prefix are accepted. Anything else is malformed: an error naming the line
//! number, or counted and skipped with `--skip-bad`. A `size=` above
//! [`MAX_EVENT_SIZE`] (1 GiB) is malformed too: no bounce pool holds such a mapping.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bounce_framework::sim::set_current_cpu;
use bounce_framework::{BouncerOptions, DmaAttrs, DmaDirection, Platform, Strategy};

use crate::engine::{boot, Ctor, Machine, RunError};
use crate::registry::StrategyVisitor;
use crate::workload::{DeviceSpec, Handoff, Op, Plan};

/// The largest `size=` an event may have: 1 GiB, the largest bounce pool Linux 6.12
/// sizes by default for a confidential guest (and the size-class strategies' largest
/// default cap); a mapping larger than its pool cannot be bounced, so such a line is
/// refused ([`LineError::TooLarge`]) instead of turned into a plan. Well below
/// `u32::MAX`, so sizes, in-page offsets and extents stay exact in a replay plan.
pub const MAX_EVENT_SIZE: usize = 1 << 30;

/// One `swiotlb_bounced` event.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEvent {
    /// 1-based line number in the file.
    pub line: usize,
    /// `dev_name`.
    pub dev_name: String,
    /// `dma_mask`.
    pub dma_mask: u64,
    /// `dev_addr`: the bus address of the original buffer.
    pub dev_addr: u64,
    /// `size`.
    pub size: usize,
    /// `FORCE` (true) or `NORMAL`.
    pub force: bool,
    /// The CPU from the ftrace prefix.
    pub cpu: Option<u32>,
    /// The timestamp from the ftrace prefix, seconds.
    pub timestamp: Option<f64>,
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// Neither a comment, an ftrace event line nor a bare tracepoint line.
    #[error("not a swiotlb_bounced event (expected `dev_name: <name> dma_mask=<hex> dev_addr=<hex> size=<n> FORCE|NORMAL`, optionally after an ftrace prefix)")]
    NotAnEvent,
    /// A field is missing.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// A field is not a hexadecimal number.
    #[error("`{field}={value}` is not a hexadecimal number")]
    BadHex {
        /// The field.
        field: &'static str,
        /// Its text.
        value: String,
    },
    /// `size=` is not a decimal number.
    #[error("`size={0}` is not a decimal byte count")]
    BadSize(String),
    /// A zero-byte mapping cannot be bounced.
    #[error("`size=0`: a zero-byte mapping cannot be replayed")]
    ZeroSize,
    /// `size=` is above [`MAX_EVENT_SIZE`].
    #[error("`size={0}` is larger than any bounce pool (at most 1073741824 bytes, 1 GiB)")]
    TooLarge(String),
    /// The last field is not `FORCE` or `NORMAL`.
    #[error("`{0}` where `FORCE` or `NORMAL` was expected")]
    BadMode(String),
    /// Text after the last field.
    #[error("unexpected text after the event: `{0}`")]
    Trailing(String),
    /// The device name is empty.
    #[error("empty device name")]
    EmptyName,
}

/// A malformed line, with its number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}: `{text}`")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub error: LineError,
    /// The line (cut to 120 characters).
    pub text: String,
}

/// A parsed trace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// The events, in file order.
    pub events: Vec<TraceEvent>,
    /// Malformed lines skipped (`--skip-bad`).
    pub bad: Vec<ParseError>,
    /// Events of other tracepoints skipped.
    pub other_events: usize,
    /// Comment and blank lines.
    pub comments: usize,
}

fn parse_hex(field: &'static str, v: &str) -> Result<u64, LineError> {
    let digits = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    if digits.is_empty() || digits.len() > 16 {
        return Err(LineError::BadHex { field, value: v.into() });
    }
    u64::from_str_radix(digits, 16).map_err(|_| LineError::BadHex { field, value: v.into() })
}

/// Parses the tracepoint text (`dev_name: ...`).
fn parse_body(body: &str) -> Result<(String, u64, u64, usize, bool), LineError> {
    let rest = body.trim().strip_prefix("dev_name:").ok_or(LineError::Missing("dev_name:"))?;
    let at = rest.rfind(" dma_mask=").ok_or(LineError::Missing("dma_mask="))?;
    let name = rest[..at].trim();
    if name.is_empty() {
        return Err(LineError::EmptyName);
    }
    let mut it = rest[at..].split_whitespace();
    let field = |tok: Option<&str>, key: &'static str| -> Result<String, LineError> {
        tok.and_then(|t| t.strip_prefix(key)).map(str::to_string).ok_or(LineError::Missing(key))
    };
    let mask = parse_hex("dma_mask", &field(it.next(), "dma_mask=")?)?;
    let addr = parse_hex("dev_addr", &field(it.next(), "dev_addr=")?)?;
    let size_s = field(it.next(), "size=")?;
    let size: usize = match size_s.parse::<u64>() {
        Ok(0) => return Err(LineError::ZeroSize),
        Ok(n) if n <= MAX_EVENT_SIZE as u64 => n as usize,
        Ok(_) => return Err(LineError::TooLarge(size_s)),
        // Digits that overflow even 64 bits: a decimal count, just an impossible one.
        Err(_) if !size_s.is_empty() && size_s.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(LineError::TooLarge(size_s))
        }
        Err(_) => return Err(LineError::BadSize(size_s)),
    };
    let force = match it.next() {
        Some("FORCE") => true,
        Some("NORMAL") => false,
        Some(other) => return Err(LineError::BadMode(other.into())),
        None => return Err(LineError::Missing("FORCE|NORMAL")),
    };
    let trailing: Vec<&str> = it.collect();
    if !trailing.is_empty() {
        return Err(LineError::Trailing(trailing.join(" ")));
    }
    Ok((name.to_string(), mask, addr, size, force))
}

/// The CPU (`[001]`) and timestamp (`12.345678:`) of an ftrace prefix, if it is one.
fn parse_prefix(prefix: &str) -> Option<(Option<u32>, Option<f64>)> {
    let mut cpu = None;
    let mut s = prefix;
    while let Some(open) = s.find('[') {
        let after = &s[open + 1..];
        let close = after.find(']')?;
        let inner = &after[..close];
        if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
            cpu = inner.parse().ok();
            break;
        }
        s = &after[close + 1..];
    }
    let ts = prefix.trim_end().strip_suffix(':')?.split_whitespace().last()?;
    let ts: Option<f64> = ts.parse().ok();
    (cpu.is_some() || ts.is_some()).then_some((cpu, ts))
}

/// What one line is.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A `swiotlb_bounced` event.
    Event(TraceEvent),
    /// A comment or blank line.
    Comment,
    /// An event of another tracepoint.
    Other,
}

/// Parses one line (`line` is its 1-based number).
///
/// # Errors
/// [`LineError`] for a malformed line.
pub fn parse_line(line: usize, text: &str) -> Result<Line, LineError> {
    let t = text.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(Line::Comment);
    }
    let (body, cpu, timestamp) = if let Some(at) = t.find("swiotlb_bounced:") {
        let prefix = &t[..at];
        let (cpu, ts) =
            if prefix.trim().is_empty() { (None, None) } else { parse_prefix(prefix).ok_or(LineError::NotAnEvent)? };
        (&t[at + "swiotlb_bounced:".len()..], cpu, ts)
    } else if t.starts_with("dev_name:") {
        (t, None, None)
    } else {
        // Another tracepoint's event: an ftrace prefix followed by `name: `.
        let is_other = t
            .match_indices(": ")
            .any(|(i, _)| parse_prefix(&t[..=i]).is_some_and(|(cpu, ts)| cpu.is_some() && ts.is_some()));
        return if is_other { Ok(Line::Other) } else { Err(LineError::NotAnEvent) };
    };
    let (dev_name, dma_mask, dev_addr, size, force) = parse_body(body)?;
    Ok(Line::Event(TraceEvent { line, dev_name, dma_mask, dev_addr, size, force, cpu, timestamp }))
}

/// Parses a whole trace. With `skip_bad` malformed lines are collected in
/// [`Trace::bad`]; otherwise the first one is the error.
///
/// # Errors
/// The first [`ParseError`] when `skip_bad` is off.
pub fn parse_trace(text: &str, skip_bad: bool) -> Result<Trace, ParseError> {
    let mut tr = Trace::default();
    for (i, l) in text.lines().enumerate() {
        match parse_line(i + 1, l) {
            Ok(Line::Event(e)) => tr.events.push(e),
            Ok(Line::Comment) => tr.comments += 1,
            Ok(Line::Other) => tr.other_events += 1,
            Err(error) => {
                let e = ParseError { line: i + 1, error, text: l.chars().take(120).collect() };
                if !skip_bad {
                    return Err(e);
                }
                tr.bad.push(e);
            }
        }
    }
    Ok(tr)
}

/// How a trace becomes a plan.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Worker threads; events go to thread `cpu % threads` (line order without CPUs).
    pub threads: usize,
    /// Mappings in flight per device and thread.
    pub inflight: usize,
    /// Direction of every mapping (the tracepoint does not record it).
    pub dir: DmaDirection,
    /// Times the trace is replayed.
    pub repeat: usize,
    /// `min_align_mask` per device name; devices named `nvme*` default to 4095 (what
    /// Linux's NVMe driver sets).
    pub min_align: Vec<(String, u64)>,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dev_name: {} dma_mask={:x} dev_addr={:x} size={} {}",
            self.dev_name,
            self.dma_mask,
            self.dev_addr,
            self.size,
            if self.force { "FORCE" } else { "NORMAL" }
        )
    }
}

/// The most distinct (device name, DMA mask) pairs a replayed trace may have: a plan's
/// operations name their device with a `u8`.
pub const MAX_TRACE_DEVICES: usize = 1 << u8::BITS;

/// A trace [`plan_from_trace`] cannot replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: device `{dev_name}` (dma_mask {dma_mask:#x}) is the trace's device number {count}; at most {max} distinct (name, mask) pairs can be replayed", count = MAX_TRACE_DEVICES + 1, max = MAX_TRACE_DEVICES)]
pub struct TooManyDevices {
    /// Line of the first event naming a device beyond the limit.
    pub line: usize,
    /// Its device name.
    pub dev_name: String,
    /// Its DMA mask.
    pub dma_mask: u64,
}

/// Turns a trace into a plan: one device per (name, mask), the original buffer at the
/// traced address's page offset, each event mapped on its traced CPU. Event sizes are
/// at most [`MAX_EVENT_SIZE`] as [`parse_line`] returns them; a hand-built event above it
/// is replayed at that size.
///
/// # Errors
/// [`TooManyDevices`] when the trace has more than [`MAX_TRACE_DEVICES`] distinct
/// (name, mask) pairs.
pub fn plan_from_trace(name: &str, trace: &Trace, o: &ReplayOptions) -> Result<Plan, TooManyDevices> {
    let threads = o.threads.max(1);
    let mut index: HashMap<(String, u64), u8> = HashMap::new();
    let mut devices: Vec<DeviceSpec> = Vec::new();
    let mut streams = vec![Vec::new(); threads];
    for (i, e) in trace.events.iter().enumerate() {
        let key = (e.dev_name.clone(), e.dma_mask);
        let d = if let Some(&d) = index.get(&key) {
            d
        } else {
            let Ok(d) = u8::try_from(devices.len()) else {
                return Err(TooManyDevices { line: e.line, dev_name: e.dev_name.clone(), dma_mask: e.dma_mask });
            };
            let mask = o
                .min_align
                .iter()
                .find(|(n, _)| *n == e.dev_name)
                .map_or(if e.dev_name.starts_with("nvme") { 4095 } else { 0 }, |(_, m)| *m);
            let dev = bounce_framework::Device::new(&e.dev_name).with_dma_mask(e.dma_mask).with_min_align_mask(mask);
            devices.push(DeviceSpec { device: dev, depth: o.inflight.max(1), max_extent: 0, may_block: false });
            index.insert(key, d);
            d
        };
        let offset = (e.dev_addr & 0xfff) as u32;
        let size = e.size.min(MAX_EVENT_SIZE);
        let spec = &mut devices[usize::from(d)];
        // At most 1 GiB + 4095: no overflow, and the size below converts exactly.
        spec.max_extent = spec.max_extent.max(offset as usize + size);
        let t = e.cpu.map_or(i % threads, |c| c as usize % threads);
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        streams[t].push(Op { device: d, dir: o.dir, size, offset, cpu: e.cpu.map(|c| c as u16) });
    }
    for s in &mut streams {
        let one = s.clone();
        for _ in 1..o.repeat.max(1) {
            s.extend_from_slice(&one);
        }
    }
    Ok(Plan { name: name.to_string(), devices, streams, handoff: Handoff::SameCpu, burst: None, repeat: false })
}

/// Records a sample trace: runs `plan` on one thread, interleaving its per-thread
/// streams as if each ran on its own CPU, and returns ftrace-formatted
/// `swiotlb_bounced` lines (header included).
pub struct Recorder<'a> {
    /// The machine.
    pub machine: &'a Machine,
    /// The workload plan (its threads become CPUs).
    pub plan: Arc<Plan>,
    /// Maps to record.
    pub ops: usize,
}

impl StrategyVisitor<bounce_framework::sim::SimGuest> for Recorder<'_> {
    type Output = Result<Vec<String>, RunError>;

    fn visit<S: Strategy + 'static>(&mut self, name: &'static str, ctor: Ctor<S>) -> Self::Output {
        let opts = BouncerOptions { trace: true, ..BouncerOptions::default() };
        let bouncer = boot(ctor, name, self.machine, &self.plan, opts)?;
        let guest = bouncer.platform().clone();
        let cpus = self.plan.streams.len();
        let mut regions = Vec::new();
        for _ in 0..cpus {
            let mut per = Vec::new();
            for d in &self.plan.devices {
                let bytes = d.depth.saturating_mul(d.max_extent.next_multiple_of(4096));
                per.push(
                    guest
                        .alloc_private(bytes)
                        .map_err(|_| RunError::NoMemory { memory: guest.config().memory_bytes, need: bytes })?,
                );
            }
            regions.push(per);
        }
        let mut rings: Vec<Vec<std::collections::VecDeque<_>>> =
            (0..cpus).map(|_| self.plan.devices.iter().map(|_| std::collections::VecDeque::new()).collect()).collect();
        let mut seqs = vec![vec![0usize; self.plan.devices.len()]; cpus];
        let mut stamps = Vec::new();
        guest.record_trace(true);
        for i in 0..self.ops {
            let cpu = i % cpus;
            let stream = &self.plan.streams[cpu];
            let op = stream[(i / cpus) % stream.len()];
            let d = usize::from(op.device);
            let spec = &self.plan.devices[d];
            set_current_cpu(Some(cpu));
            if rings[cpu][d].len() >= spec.depth {
                if let Some((dma, size, dir)) = rings[cpu][d].pop_front() {
                    let _ = bouncer.unmap_single(&spec.device, dma, size, dir, DmaAttrs::empty());
                }
            }
            let slot = seqs[cpu][d] % spec.depth;
            let orig = regions[cpu][d] + (slot * spec.max_extent.next_multiple_of(4096)) as u64 + u64::from(op.offset);
            if let Ok(dma) = bouncer.map_single(&spec.device, orig, op.size as usize, op.dir, DmaAttrs::NO_WARN) {
                seqs[cpu][d] += 1;
                rings[cpu][d].push_back((dma, op.size as usize, op.dir));
                stamps.push((cpu, guest.now_ns(), spec.device.name().to_string()));
            }
        }
        for (cpu, per) in rings.iter_mut().enumerate() {
            set_current_cpu(Some(cpu));
            for (d, ring) in per.iter_mut().enumerate() {
                for (dma, size, dir) in ring.drain(..) {
                    let _ = bouncer.unmap_single(&self.plan.devices[d].device, dma, size, dir, DmaAttrs::empty());
                }
            }
        }
        set_current_cpu(None);
        let lines = guest.trace_lines();
        let mut out = vec![
            "# tracer: nop".to_string(),
            "#".into(),
            format!("# entries-in-buffer/entries-written: {0}/{0}   #P:{cpus}", lines.len()),
            "#".into(),
            "#                                _-----=> irqs-off/BH-disabled".into(),
            "#                               / _----=> need-resched".into(),
            "#                              | / _---=> hardirq/softirq".into(),
            "#                              || / _--=> preempt-depth".into(),
            "#                              ||| / _-=> migrate-disable".into(),
            "#                              |||| /     delay".into(),
            "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION".into(),
            "#              | |         |   |||||     |         |".into(),
        ];
        for (line, (cpu, ns, dev)) in lines.iter().zip(stamps) {
            let (task, pid, flags) = if dev.starts_with("virtio-net") {
                (format!("ksoftirqd/{cpu}"), 15 + 8 * cpu, "..s1.")
            } else {
                (format!("kworker/{cpu}:1H"), 87 + cpu, ".....")
            };
            let ts = 12.0 + ns as f64 / 1e9;
            out.push(format!("{task:>16}-{pid:<7} [{cpu:03}] {flags} {ts:>12.6}: swiotlb_bounced: {line}"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARE: &str = "dev_name: nvme0 dma_mask=ffffffffffffffff dev_addr=10a3f200 size=4096 FORCE";

    #[test]
    fn bare_line() {
        let Line::Event(e) = parse_line(3, BARE).unwrap() else { panic!("not an event") };
        assert_eq!(e.line, 3);
        assert_eq!(e.dev_name, "nvme0");
        assert_eq!(e.dma_mask, u64::MAX);
        assert_eq!(e.dev_addr, 0x10a3_f200);
        assert_eq!(e.size, 4096);
        assert!(e.force);
        assert_eq!((e.cpu, e.timestamp), (None, None));
        assert_eq!(e.to_string(), BARE, "Display round-trips the tracepoint format");
    }

    #[test]
    fn ftrace_prefixes() {
        let cases = [
            ("     kworker/0:1H-87      [000] ..... 12.345678: swiotlb_bounced: ", Some(0), Some(12.345_678)),
            ("          <idle>-0       [003] d.s2. 4031.000001: swiotlb_bounced: ", Some(3), Some(4_031.000_001)),
            ("  bash-1234  [001]  123.456: swiotlb_bounced: ", Some(1), Some(123.456)),
            ("  irq/24-virtio0-311 [012] d..1. 99.5: swiotlb_bounced: ", Some(12), Some(99.5)),
            ("swiotlb_bounced: ", None, None),
        ];
        for (prefix, cpu, ts) in cases {
            let line = format!("{prefix}{BARE}");
            let Line::Event(e) = parse_line(1, &line).unwrap() else { panic!("{line}") };
            assert_eq!((e.cpu, e.timestamp), (cpu, ts), "{line}");
            assert_eq!(e.size, 4096);
        }
        // NORMAL, names with spaces and 0x-prefixed numbers.
        let Line::Event(e) =
            parse_line(1, "dev_name: 0000:00:04.0 my dev dma_mask=0xffffffff dev_addr=0x1000 size=1500 NORMAL")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (e.dev_name.as_str(), e.dma_mask, e.dev_addr, e.size, e.force),
            ("0000:00:04.0 my dev", 0xffff_ffff, 0x1000, 1500, false)
        );
    }

    #[test]
    fn comments_and_other_events() {
        assert_eq!(parse_line(1, "# tracer: nop"), Ok(Line::Comment));
        assert_eq!(parse_line(1, "   "), Ok(Line::Comment));
        assert_eq!(parse_line(1, "  kworker/0:1-5  [000] ..... 1.000000: sched_switch: prev_comm=a"), Ok(Line::Other));
    }

    #[test]
    fn malformed_lines_name_the_problem() {
        let cases: [(&str, LineError); 9] = [
            ("hello world", LineError::NotAnEvent),
            (
                "dev_name: nvme0 dma_mask=zz dev_addr=1 size=1 FORCE",
                LineError::BadHex { field: "dma_mask", value: "zz".into() },
            ),
            (
                "dev_name: nvme0 dma_mask=ff dev_addr=1g size=1 FORCE",
                LineError::BadHex { field: "dev_addr", value: "1g".into() },
            ),
            ("dev_name: nvme0 dma_mask=ff dev_addr=1 size=-4 FORCE", LineError::BadSize("-4".into())),
            ("dev_name: nvme0 dma_mask=ff dev_addr=1 size=0 FORCE", LineError::ZeroSize),
            ("dev_name: nvme0 dma_mask=ff dev_addr=1 size=8 FORCED", LineError::BadMode("FORCED".into())),
            ("dev_name: nvme0 dma_mask=ff dev_addr=1 size=8", LineError::Missing("FORCE|NORMAL")),
            ("dev_name: nvme0 dma_mask=ff dev_addr=1 size=8 FORCE extra", LineError::Trailing("extra".into())),
            ("dev_name:  dma_mask=ff dev_addr=1 size=8 FORCE", LineError::EmptyName),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(1, line), Err(want), "{line}");
        }
        assert_eq!(parse_line(1, "dev_name: nvme0 size=8 FORCE"), Err(LineError::Missing("dma_mask=")));
        assert_eq!(parse_line(1, "dev_name: x dma_mask=ff size=8 FORCE"), Err(LineError::Missing("dev_addr=")));
        assert_eq!(
            parse_line(1, "dev_name: x dma_mask=11111111111111111 dev_addr=1 size=8 FORCE"),
            Err(LineError::BadHex { field: "dma_mask", value: "11111111111111111".into() })
        );
    }

    /// Regression (fuzz finding `fuzz/regressions/trace/plan-extent-overflow`): a
    /// `size=` up to `usize::MAX` was accepted, and `offset + size` overflowed in
    /// [`plan_from_trace`]. Sizes above [`MAX_EVENT_SIZE`] are refused when parsed.
    #[test]
    fn impossible_sizes_are_refused_and_the_largest_plans_exactly() {
        let line = |size: &str| format!("dev_name: e dma_mask=0 dev_addr=fff size={size} FORCE");
        for size in ["18446744073709551615", "99999999999999999999999", "4294967296", "1073741825"] {
            assert_eq!(parse_line(1, &line(size)), Err(LineError::TooLarge(size.into())), "{size}");
        }
        let e = parse_trace(&line("18446744073709551615"), false).unwrap_err();
        assert!(e.to_string().contains("larger than any bounce pool"), "{e}");
        assert_eq!(parse_line(1, &line("12x")), Err(LineError::BadSize("12x".into())));
        let t = parse_trace(&line("1073741824"), false).unwrap();
        assert_eq!(t.events[0].size, MAX_EVENT_SIZE);
        let o = ReplayOptions { threads: 1, inflight: 2, dir: DmaDirection::ToDevice, repeat: 1, min_align: vec![] };
        let p = plan_from_trace("big", &t, &o).unwrap();
        assert_eq!(p.devices[0].max_extent, MAX_EVENT_SIZE + 0xfff);
        assert_eq!((p.streams[0][0].size, p.streams[0][0].offset), (1 << 30, 0xfff));
        // A hand-built event beyond the limit (not from the parser) plans at the limit.
        let mut huge = t.clone();
        huge.events[0].size = usize::MAX;
        assert_eq!(plan_from_trace("huge", &huge, &o).unwrap().devices[0].max_extent, MAX_EVENT_SIZE + 0xfff);
    }

    /// Device numbers were `u8` casts: device 257 silently became device 1.
    #[test]
    fn a_trace_with_more_devices_than_a_plan_can_name_is_refused() {
        let text = |n: usize| {
            (0..n)
                .fold(String::new(), |t, i| t + &format!("dev_name: d{i} dma_mask=ffffffff dev_addr=1 size=8 FORCE\n"))
        };
        let o = ReplayOptions { threads: 2, inflight: 1, dir: DmaDirection::ToDevice, repeat: 1, min_align: vec![] };
        let p = plan_from_trace("max", &parse_trace(&text(MAX_TRACE_DEVICES), false).unwrap(), &o).unwrap();
        assert_eq!(p.devices.len(), MAX_TRACE_DEVICES);
        let mut named: Vec<u8> = p.streams.iter().flatten().map(|op| op.device).collect();
        named.sort_unstable();
        named.dedup();
        assert_eq!(named.len(), MAX_TRACE_DEVICES, "every device keeps its own number");
        let e = plan_from_trace("over", &parse_trace(&text(MAX_TRACE_DEVICES + 1), false).unwrap(), &o).unwrap_err();
        assert_eq!((e.line, e.dev_name.as_str()), (MAX_TRACE_DEVICES + 1, "d256"));
        assert!(e.to_string().contains("at most 256"), "{e}");
    }

    #[test]
    fn whole_trace_errors_carry_line_numbers_and_skip_bad_counts() {
        let text =
            format!("# tracer: nop\n{BARE}\ngarbage here\n\n{BARE}\ndev_name: x dma_mask=1 dev_addr=1 size=0 FORCE\n");
        let e = parse_trace(&text, false).unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.error, LineError::NotAnEvent);
        assert!(e.to_string().starts_with("line 3: not a swiotlb_bounced event"), "{e}");
        let t = parse_trace(&text, true).unwrap();
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.events[1].line, 5);
        assert_eq!(t.bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![3, 6]);
        assert_eq!(t.comments, 2);
    }

    #[test]
    fn plan_keeps_devices_offsets_and_cpus() {
        let text = format!(
            "  a-1 [001] ..... 1.0: swiotlb_bounced: {BARE}\n  a-1 [000] ..... 1.1: swiotlb_bounced: dev_name: eth0 dma_mask=ffffffff dev_addr=2040 size=1500 NORMAL\n  a-1 [003] ..... 1.2: swiotlb_bounced: {BARE}\n"
        );
        let t = parse_trace(&text, false).unwrap();
        let o = ReplayOptions { threads: 2, inflight: 8, dir: DmaDirection::ToDevice, repeat: 2, min_align: vec![] };
        let p = plan_from_trace("replay:t", &t, &o).unwrap();
        assert_eq!(p.devices.len(), 2);
        assert_eq!(p.devices[0].device.min_align_mask, 4095, "nvme devices get min_align_mask 4095");
        assert_eq!(p.devices[1].device.min_align_mask, 0);
        assert_eq!(p.devices[1].device.dma_mask, 0xffff_ffff);
        // CPU 1 and 3 → thread 1, CPU 0 → thread 0; repeated twice.
        assert_eq!(p.streams[0].len(), 2);
        assert_eq!(p.streams[1].len(), 4);
        assert_eq!(p.streams[0][0].offset, 0x40);
        assert_eq!(p.streams[0][0].cpu, Some(0));
        assert_eq!(p.streams[1][0].offset, 0x200);
        assert_eq!(p.devices[0].max_extent, 0x200 + 4096);
        let o2 = ReplayOptions { min_align: vec![("nvme0".into(), 0)], ..o };
        assert_eq!(plan_from_trace("r", &t, &o2).unwrap().devices[0].device.min_align_mask, 0);
    }
}
