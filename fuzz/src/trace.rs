//! The `trace` oracle: the `bounce replay` trace parser
//! (`bounce_bench::replay::{parse_line, parse_trace, plan_from_trace}`) on arbitrary
//! text.
//!
//! Properties checked:
//! - nothing panics, including turning the parsed trace into a replay plan;
//! - `parse_trace(text, false)` fails exactly when some line is malformed, and its error
//!   carries the 1-based number of the *first* malformed line (counted here
//!   independently), that line's text (cut to 120 characters) and `parse_line`'s error;
//! - with `skip_bad` it never fails, every line is counted exactly once (event, other
//!   tracepoint, comment or malformed), and the malformed ones are the lines
//!   `parse_line` refuses, with their numbers;
//! - every event carries its own line number, a non-empty trimmed device name and a size
//!   in `1..=MAX_EVENT_SIZE`, and its `Display` form parses back to the same event;
//! - the plan has one device per (name, mask), one operation per event and repeat, and
//!   every operation's offset and size within its device's `max_extent`.

use bounce_bench::replay::{
    parse_line, parse_trace, plan_from_trace, Line, ReplayOptions, TraceEvent, MAX_EVENT_SIZE, MAX_TRACE_DEVICES,
};
use bounce_framework::DmaDirection;

/// The lines `parse_trace` sees, numbered from 1 (as `str::lines` splits them).
fn numbered(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

/// Runs every check on `text`.
///
/// # Panics
/// When a property does not hold.
pub fn check(text: &str) {
    let first_bad = numbered(text).find_map(|(n, l)| parse_line(n, l).err().map(|e| (n, l, e)));
    match (parse_trace(text, false), &first_bad) {
        (Ok(_), Some((n, l, e))) => panic!("parse_trace accepted a trace whose line {n} ({l:?}) is malformed: {e}"),
        (Err(e), None) => panic!("parse_trace refused a trace without malformed lines: {e}"),
        (Err(e), Some((n, l, le))) => {
            assert_eq!(e.line, *n, "the error names line {}, the first malformed line is {n}: {l:?}", e.line);
            assert_eq!(&e.error, le, "line {n}: the error differs from parse_line's");
            assert_eq!(e.text, l.chars().take(120).collect::<String>(), "line {n}: the error quotes other text");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("line {n}: ")), "the message does not lead with the line: {msg:?}");
        }
        (Ok(tr), None) => check_trace(text, &tr),
    }
    let tr = parse_trace(text, true).unwrap_or_else(|e| panic!("parse_trace with skip_bad failed: {e}"));
    check_trace(text, &tr);
    let bad: Vec<usize> = numbered(text).filter(|(n, l)| parse_line(*n, l).is_err()).map(|(n, _)| n).collect();
    let got: Vec<usize> = tr.bad.iter().map(|e| e.line).collect();
    assert_eq!(got, bad, "skip_bad: the malformed lines reported are not the malformed lines");
    if let Some(b) = tr.bad.first() {
        assert_eq!(Some(b.line), first_bad.map(|(n, _, _)| n));
    }
    check_plan(&tr);
}

fn check_trace(text: &str, tr: &bounce_bench::replay::Trace) {
    let lines = numbered(text).count();
    assert_eq!(
        tr.events.len() + tr.other_events + tr.comments + tr.bad.len(),
        lines,
        "every line is counted once: {} events, {} other, {} comments, {} bad of {lines} lines",
        tr.events.len(),
        tr.other_events,
        tr.comments,
        tr.bad.len()
    );
    let texts: Vec<&str> = text.lines().collect();
    let mut last = 0;
    for e in &tr.events {
        assert!(e.line > last && e.line <= lines, "event line numbers out of order: {} after {last}", e.line);
        last = e.line;
        match parse_line(e.line, texts[e.line - 1]) {
            Ok(Line::Event(again)) => {
                assert!(same(&again, e), "line {}: parses to {again:?}, the trace holds {e:?}", e.line);
            }
            other => panic!("line {}: parse_line now says {other:?}", e.line),
        }
        check_event(e);
    }
}

fn check_event(e: &TraceEvent) {
    assert!((1..=MAX_EVENT_SIZE).contains(&e.size), "line {}: size {} out of range", e.line, e.size);
    assert!(!e.dev_name.is_empty() && e.dev_name.trim() == e.dev_name, "line {}: device name {:?}", e.line, e.dev_name);
    // The bare tracepoint text parses back to the same event (no ftrace prefix, so no CPU
    // or timestamp). A device name that itself contains the tracepoint marker cannot
    // round-trip as a bare line and is left out.
    if !e.dev_name.contains("swiotlb_bounced:") {
        let bare = e.to_string();
        let want = TraceEvent { cpu: None, timestamp: None, ..e.clone() };
        match parse_line(e.line, &bare) {
            Ok(Line::Event(back)) => assert!(same(&back, &want), "line {}: {bare:?} parses to {back:?}", e.line),
            other => panic!("line {}: the event's own text {bare:?} parses to {other:?}", e.line),
        }
    }
}

/// Event equality with the timestamp compared bit for bit (the parser accepts `NaN`,
/// which is not equal to itself).
fn same(a: &TraceEvent, b: &TraceEvent) -> bool {
    let ts = |e: &TraceEvent| e.timestamp.map(f64::to_bits);
    TraceEvent { timestamp: None, ..a.clone() } == TraceEvent { timestamp: None, ..b.clone() } && ts(a) == ts(b)
}

fn check_plan(tr: &bounce_bench::replay::Trace) {
    for (threads, repeat) in [(1, 1), (3, 2)] {
        let o = ReplayOptions {
            threads,
            inflight: 4,
            dir: DmaDirection::Bidirectional,
            repeat,
            min_align: vec![("nvme0".into(), 0xfff)],
        };
        let mut keys: Vec<(&str, u64)> = tr.events.iter().map(|e| (e.dev_name.as_str(), e.dma_mask)).collect();
        keys.sort_unstable();
        keys.dedup();
        let plan = match plan_from_trace("fuzz", tr, &o) {
            Ok(plan) => plan,
            Err(e) => {
                assert!(keys.len() > MAX_TRACE_DEVICES, "refused with {} devices: {e}", keys.len());
                return;
            }
        };
        assert_eq!(plan.devices.len(), keys.len(), "one device per (name, mask)");
        let ops: usize = plan.streams.iter().map(Vec::len).sum();
        assert_eq!(ops, tr.events.len() * repeat, "one operation per event and repeat");
        assert_eq!(plan.streams.len(), threads);
        for op in plan.streams.iter().flatten() {
            let extent = plan.devices[usize::from(op.device)].max_extent;
            assert!(op.offset as usize + op.size as usize <= extent, "{op:?} beyond its device's extent {extent}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        check("");
        check("# tracer: nop\n#\n  kworker/0:1H-87 [000] ..... 12.345678: swiotlb_bounced: dev_name: nvme0 dma_mask=ffffffffffffffff dev_addr=10a3f200 size=4096 FORCE\n");
        check("dev_name: eth0 dma_mask=ffffffff dev_addr=1000 size=1500 NORMAL\r\nbogus\nalso bogus\n");
        check("  <idle>-0 [001] d.h.. 5.000001: irq_handler_entry: irq=24 name=virtio0\n");
        check("dev_name: e dma_mask=0 dev_addr=1 size=18446744073709551615 FORCE\ndev_name: e dma_mask=0 dev_addr=fff size=1073741824 FORCE\n");
    }
}
