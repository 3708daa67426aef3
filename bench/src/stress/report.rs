//! The one-screen report and the JSON document.

use super::*;

/// The one-screen report of a run.
pub fn text(r: &StressReport) -> String {
    let c = &r.counts;
    let mut s = String::new();
    let faults = if r.faults { ", faults injected" } else { "" };
    let _ = writeln!(
        s,
        "== stress: {} == {} guest, {} threads, {:.1} s, seed {}{faults}",
        r.strategy, r.platform, r.threads, r.wall_secs, r.seed
    );
    let _ = writeln!(
        s,
        "  ops         {} ({:.0}/s): {} maps ({} single, {} entries in {} sg lists), {} unmaps ({} on another CPU)",
        r.ops, r.ops_per_sec, c.maps, c.singles, c.sg_entries, c.sg_lists, c.unmaps, c.remote_unmaps
    );
    let _ = writeln!(
        s,
        "  syncs       {} for the CPU, {} for the device ({} partial, {} clamped overflows)",
        c.syncs_for_cpu, c.syncs_for_device, c.partial_syncs, c.overflows_clamped
    );
    let _ = writeln!(
        s,
        "  bytes       {} copied in, {} copied out; {} device reads and {} device writes checked",
        bytes(c.bytes_to_bounce),
        bytes(c.bytes_from_bounce),
        c.device_reads,
        c.device_writes
    );
    let failures = if r.failures.is_empty() {
        "none".to_string()
    } else {
        r.failures.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(s, "  failures    {failures} (of {} map requests)", c.requests);
    let _ = writeln!(
        s,
        "  pressure    {} checks (a too-large map, then the largest maps until one is refused): {} maps",
        c.pressure_checks, c.pressure_maps
    );
    if r.faults {
        let _ = writeln!(
            s,
            "  faults      {} armed: {} conversion failures, {} allocation failures; {} pages quarantined",
            r.faults_injected, r.conversion_failures, r.alloc_failures, r.quarantined_pages
        );
    } else {
        let _ = writeln!(s, "  faults      off; {} pages quarantined", r.quarantined_pages);
    }
    let _ = writeln!(
        s,
        "  memory      peak shared {}, peak in flight {}, {} conversion calls, {} refill runs",
        bytes(r.shared_bytes_peak),
        bytes(r.inflight_bytes_peak),
        r.conversion_calls,
        r.refill_runs
    );
    let _ = writeln!(s, "  audit       {}", r.audit);
    let _ = writeln!(
        s,
        "  violations  {} ({} found by the checker, {} recorded by the simulated guest)",
        r.problems + r.sim_violations,
        r.problems,
        r.sim_violations
    );
    for v in &r.violations {
        let _ = writeln!(s, "    - {v}");
    }
    let _ = writeln!(s, "  result      {}", if r.pass { "PASS" } else { "FAIL" });
    s
}

/// The `--json` document.
#[derive(Debug, serde::Serialize)]
pub struct StressDoc<'a> {
    /// The command line.
    pub command: &'a str,
    /// Seconds each strategy was asked to run.
    pub duration_secs: f64,
    /// Whether every run passed.
    pub pass: bool,
    /// One report per strategy.
    pub results: &'a [StressReport],
}
