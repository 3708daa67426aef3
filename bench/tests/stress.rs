//! `bounce stress` end to end: every strategy passes a short run with every kind of
//! operation counted, fault injection quarantines pages, and each deliberate bug
//! (`--sabotage`, hidden) turns the run into a FAIL with exit status 1.

mod common;

use common::{bounce, json, text};

/// Counters every run must have moved.
const NON_ZERO: [&str; 17] = [
    "ops",
    "ops_per_sec",
    "requests",
    "maps",
    "unmaps",
    "singles",
    "sg_lists",
    "sg_entries",
    "syncs_for_cpu",
    "syncs_for_device",
    "partial_syncs",
    "bytes_to_bounce",
    "bytes_from_bounce",
    "device_reads",
    "device_writes",
    "pressure_checks",
    "shared_bytes_peak",
];

#[test]
fn every_strategy_passes_with_every_operation_counted() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("stress.json");
    let o =
        bounce(&["stress", "--duration", "1", "--threads", "2", "--memory", "256M", "--json", js.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    let strategies = bounce_strategies::KNOWN_STRATEGIES;
    for s in strategies {
        assert!(out.contains(&format!("== stress: {s} == tdx guest, 2 threads")), "{s} report missing:\n{out}");
    }
    assert_eq!(out.matches("  result      PASS").count(), strategies.len(), "{out}");
    assert!(out.contains(&format!("stress: PASS ({} strategies, no violations)", strategies.len())), "{out}");
    let doc = json(&js);
    assert_eq!(doc["pass"], true);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["strategy"].as_str().unwrap()).collect::<Vec<_>>(), strategies);
    for r in results {
        for k in NON_ZERO {
            assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{}: {k} = {}", r["strategy"], r[k]);
        }
        assert_eq!(r["pass"], true, "{r}");
        assert_eq!(r["problems"], 0, "{r}");
        assert_eq!(r["sim_violations"], 0, "{r}");
        assert_eq!(r["maps"], r["unmaps"], "{r}");
        assert!(r["audit"].as_str().unwrap().starts_with("ok: nothing live or used"), "{r}");
        // Each pressure check maps one buffer over the maximum, refused as too large.
        assert_eq!(r["failures"]["too_large"], r["pressure_checks"], "{r}");
        assert_eq!(r["faults"], false);
        assert_eq!(r["quarantined_pages"], 0, "{r}");
    }
}

#[test]
fn faults_quarantine_pages_and_the_strategy_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("faults.json");
    // The boot command line picks the strategy and makes it shrink in the idle gaps, so
    // conversions run both ways while faults are armed.
    let o = bounce(&[
        "stress",
        "--faults",
        "--duration",
        "1",
        "--threads",
        "2",
        "--memory",
        "256M",
        "--cmdline",
        "swiotlb.strategy=dynamic swiotlb.dynamic.idle_ms=20",
        "--json",
        js.to_str().unwrap(),
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("== stress: dynamic ==") && !out.contains("== stress: legacy =="), "{out}");
    let doc = json(&js);
    let r = &doc["results"][0];
    assert_eq!(r["faults"], true);
    assert_eq!(r["pass"], true, "{r}");
    for k in ["faults_injected", "conversion_failures", "quarantined_pages"] {
        assert!(r[k].as_u64().is_some_and(|v| v > 0), "{k} = {}:\n{out}", r[k]);
    }
    assert!(out.contains(&format!("failures; {} pages quarantined\n", r["quarantined_pages"])), "{out}");
    assert!(r["audit"].as_str().unwrap().contains(&format!("{} pages quarantined", r["quarantined_pages"])), "{r}");
}

#[track_caller]
fn sabotaged(kind: &str, strategy: &str, needle: &str) {
    let o = bounce(&[
        "stress",
        "--sabotage",
        kind,
        "-s",
        strategy,
        "--duration",
        "0.4",
        "--threads",
        "2",
        "--memory",
        "256M",
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "--sabotage {kind} went unnoticed:\n{out}\n{err}");
    assert!(out.contains("  result      FAIL") && out.contains("stress: FAIL (1 of 1)"), "{out}");
    assert!(err.contains(&format!("stress found violations in: {strategy}")), "{err}");
    assert!(out.contains(needle), "--sabotage {kind}: the report lacks {needle:?}:\n{out}");
}

#[test]
fn a_strategy_that_leaks_a_buffer_fails_the_audit() {
    sabotaged("leak", "dynamic", "live mappings");
}

#[test]
fn a_copy_back_to_the_wrong_address_is_caught_by_the_data_model() {
    sabotaged("locate", "legacy", "the model says");
}

#[test]
fn a_stray_write_into_an_idle_original_buffer_is_caught() {
    sabotaged("corrupt", "magazine", "nothing maps it");
}

#[test]
fn stress_usage_errors() {
    for (args, needle) in [
        (&["stress", "--strategy", "fancy"][..], "unknown strategy `fancy`"),
        (&["stress", "--duration", "0"], "more than zero"),
        (&["stress", "--threads", "0"], "threads must be"),
        (&["stress", "--cmdline", "swiotlb.strategy=fancy"], "unknown strategy `fancy`"),
        (&["stress", "--sabotage", "gremlins"], "invalid value 'gremlins'"),
    ] {
        let o = bounce(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(needle), "{args:?}: {}", text(&o.stderr));
    }
    let help = text(&bounce(&["stress", "--help"]).stdout);
    for flag in ["--strategy", "--duration", "--threads", "--platform", "--seed", "--faults", "--cmdline", "--json"] {
        assert!(help.contains(flag), "stress --help lacks {flag}:\n{help}");
    }
    assert!(!help.contains("--sabotage"), "the test hook stays hidden:\n{help}");
}
