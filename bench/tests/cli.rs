//! The `bounce` binary end to end: parsing, errors, a short verified compare of every
//! strategy, replay of the shipped sample trace, and `map-bench`.

mod common;

use std::path::Path;

use common::{bounce, json, text};

#[track_caller]
fn ok(args: &[&str]) -> (String, String) {
    let o = bounce(args);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "bounce {args:?} failed ({:?}):\n{out}\n{err}", o.status);
    (out, err)
}

#[track_caller]
fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let o = bounce(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "bounce {args:?}: {err}\n{}", text(&o.stdout));
    assert!(err.contains(needle), "bounce {args:?}: stderr lacks {needle:?}:\n{err}");
    err
}

/// Every strategy of the registry, in its order.
const STRATEGIES: &[&str] = bounce_strategies::KNOWN_STRATEGIES;

/// What a default run covers: the registry's strategies, and the `linux` reference row
/// when this build has the Linux source.
fn default_rows() -> Vec<&'static str> {
    let mut rows = STRATEGIES.to_vec();
    if bounce_linux_ref::available().is_ok() {
        rows.push(bounce_linux_ref::NAME);
    }
    rows
}

#[test]
fn help_on_every_subcommand() {
    let (out, _) = ok(&["--help"]);
    for sub in ["compare", "replay", "map-bench", "record", "stress", "list"] {
        assert!(out.contains(sub), "top-level help lists {sub}");
        let (h, _) = ok(&[sub, "--help"]);
        assert!(h.contains("Usage: bounce"), "{sub} --help:\n{h}");
    }
    let (h, _) = ok(&["map-bench", "--help"]);
    for flag in ["-t <THREADS>", "-s <SECONDS>", "-n <NODE>", "-b <BITS>", "-d <DIR>", "-x <XDELAY>", "-g <GRANULE>"] {
        assert!(h.contains(flag), "map-bench --help lacks {flag}:\n{h}");
    }
    let (l, _) = ok(&["list"]);
    for s in STRATEGIES.iter().chain(&["net", "nvme", "mixed", "burst"]) {
        assert!(l.contains(s), "list lacks {s}");
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    fails(&["compare", "--strategies", "legacy,fancy"], 2, "unknown strategy `fancy`");
    fails(&["compare", "--workload", "disk"], 2, "invalid value 'disk'");
    fails(&["compare", "--ops", "10", "--duration", "1s"], 2, "cannot be used with");
    fails(&["compare", "--duration", "0s"], 2, "more than zero");
    fails(&["compare", "--duration", "5parsecs"], 2, "unknown unit");
    fails(&["compare", "--threads", "0"], 2, "threads must be");
    fails(&["compare", "--platform", "sgx"], 2, "invalid value 'sgx'");
    fails(&["compare", "--memory", "1M"], 2, "at least 64M");
    fails(&["compare", "--cmdline", "swiotlb.fancy.x=1"], 2, "unknown strategy `fancy`");
    fails(&["replay"], 2, "<FILE>");
    fails(&["replay", "x.trace", "--min-align-mask", "nvme0=4096"], 2, "2^n - 1");
    fails(&["map-bench", "-q", "1"], 2, "unexpected argument '-q'");
    fails(&["map-bench", "-t", "abc"], 2, "invalid value 'abc'");
    fails(&["frobnicate"], 2, "unrecognized subcommand");
}

#[test]
fn a_strategy_parameter_it_does_not_know_is_an_error() {
    fails(
        &[
            "compare",
            "--ops",
            "10",
            "-s",
            "legacy",
            "-w",
            "net",
            "--cmdline",
            "swiotlb.legacy.bogus=1",
            "--no-progress",
        ],
        1,
        "swiotlb.legacy.bogus=1",
    );
}

#[test]
fn map_bench_prints_the_kernel_tools_lines() {
    for s in default_rows() {
        let (out, _) = ok(&[
            "map-bench",
            "-t",
            "2",
            "-s",
            "1",
            "-g",
            "2",
            "-d",
            "1",
            "-x",
            "100",
            "-b",
            "32",
            "-n",
            "-1",
            "--strategy",
            s,
            "--duration",
            "150ms",
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], "dma mapping benchmark: threads:2 seconds:1 node:-1 dir:TO_DEVICE granule: 2");
        for (line, what) in [(lines[1], "map"), (lines[2], "unmap")] {
            let rest = line.strip_prefix(&format!("average {what} latency(us):")).unwrap_or_else(|| panic!("{line}"));
            let (avg, sd) = rest.split_once(" standard deviation:").unwrap_or_else(|| panic!("{line}"));
            for v in [avg, sd] {
                let (i, f) = v.split_once('.').unwrap_or_else(|| panic!("{line}: %.1f expected"));
                assert!(i.parse::<u64>().is_ok() && f.len() == 1, "{line}");
            }
        }
    }
    // getopt style: attached values and the defaults.
    let (out, _) = ok(&["map-bench", "-t1", "-d2", "--duration", "50ms", "--detail"]);
    assert!(
        out.starts_with("dma mapping benchmark: threads:1 seconds:20 node:-1 dir:FROM_DEVICE granule: 1\n"),
        "{out}"
    );
    assert!(out.contains("bounce: strategy:legacy loops:"), "{out}");
}

#[test]
fn map_bench_validates_like_the_kernel_tool() {
    fails(&["map-bench", "-t", "0"], 1, "invalid number of threads, must be in 1-1024");
    fails(&["map-bench", "-t", "1025"], 1, "invalid number of threads, must be in 1-1024");
    fails(&["map-bench", "-s", "0"], 1, "invalid number of seconds, must be in 1-300");
    fails(&["map-bench", "-x", "-5"], 1, "invalid transmit delay, must be in 0-10000000");
    fails(&["map-bench", "-b", "19"], 1, "invalid dma mask bit, must be in 20-64");
    fails(&["map-bench", "-d", "3"], 1, "invalid dma direction");
    fails(&["map-bench", "-g", "0"], 1, "invalid granule size");
    fails(&["map-bench", "-n", "3", "--duration", "50ms"], 1, "ioctl: Invalid argument");
    // dma_set_mask() refuses a mask below ZONE_DMA (16 MiB).
    fails(&["map-bench", "-b", "20", "--duration", "50ms"], 1, "ioctl: Invalid argument");
}

const KEYS: [&str; 14] = [
    "strategy",
    "workload",
    "threads",
    "ops",
    "maps_per_sec",
    "map_unmap_ns_p50",
    "map_unmap_ns_p99",
    "metadata_ns_per_op",
    "copy_ns_per_op",
    "shared_bytes_peak",
    "inflight_bytes_peak",
    "conversion_calls",
    "conversion_pages",
    "failures",
];

#[test]
fn short_verified_compare_of_every_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("r.json");
    let (out, _) = ok(&[
        "compare",
        "--ops",
        "1200",
        "--threads",
        "2",
        "--verify",
        "--memory",
        "256M",
        "--no-copy-limit",
        "--no-progress",
        "--json",
        js.to_str().unwrap(),
    ]);
    for w in ["net", "nvme", "mixed", "burst"] {
        assert!(out.contains(&format!("== {w} ==")), "table for {w}:\n{out}");
    }
    assert!(out.contains("== targets =="));
    let doc = json(&js);
    let results = doc["results"].as_array().expect("results array");
    let rows = default_rows();
    assert_eq!(results.len(), rows.len() * 4, "one record per (strategy, workload, threads)");
    if let Err(why) = bounce_linux_ref::available() {
        assert!(out.contains(&format!("note: the linux reference row is skipped: {why}")), "{out}");
    }
    for r in results {
        for k in KEYS {
            assert!(r.get(k).is_some(), "record lacks {k}: {r}");
        }
        assert_eq!(r["threads"], 2);
        assert_eq!(r["verified"], true);
        assert_eq!(r["violations"], 0, "{r}");
        assert_eq!(r["data_errors"], 0, "{r}");
        assert_eq!(r["unmap_errors"], 0, "{r}");
        assert!(r["problem"].is_null(), "{}", r["problem"]);
        assert_eq!(r["attempted"], 1200);
        assert_eq!(r["ops"], r["maps"], "every map unmapped");
        assert!(r["maps"].as_u64().unwrap() + r["failures"].as_u64().unwrap() == 1200, "{r}");
        assert!(r["shared_bytes_peak"].as_u64().unwrap() > 0);
    }
    for s in rows {
        assert!(results.iter().any(|r| r["strategy"] == s), "{s} missing");
    }
    let legacy_net = results.iter().find(|r| r["strategy"] == "legacy" && r["workload"] == "net").unwrap();
    assert_eq!(legacy_net["maps_per_sec_vs_legacy"], 1.0);
    assert!(doc["targets"].as_array().is_some_and(|t| t.len() >= 7));
}

#[test]
fn report_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("report");
    ok(&[
        "compare",
        "--ops",
        "600",
        "-w",
        "mixed",
        "-s",
        "magazine,legacy",
        "--threads",
        "1,2",
        "--memory",
        "256M",
        "--no-progress",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains("## Targets")
            && report.contains("## mixed (2 threads)")
            && report.contains("## mixed (1 threads)")
    );
    assert!(report.contains("## Copy limit"));
    let plots = [
        "throughput_vs_size.svg",
        "latency_cdf_mixed_1t.svg",
        "shared_memory_mixed_1t.svg",
        "latency_cdf_mixed_2t.svg",
    ];
    for plot in plots {
        let svg = std::fs::read_to_string(out_dir.join(plot)).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{plot}");
        assert!(report.contains(plot), "report links {plot}");
        for s in ["legacy", "magazine"] {
            assert!(svg.contains(s), "{plot} has a {s} series");
        }
    }
    // Legacy first: the baseline leads every table.
    let mixed = &report[report.find("## mixed (2 threads)").unwrap()..];
    assert!(mixed.find("| legacy |").unwrap() < mixed.find("| magazine |").unwrap());
}

#[test]
fn rounds_alternate_strategies_and_report_the_median() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("r.json");
    let (out, _) = ok(&[
        "compare",
        "--ops",
        "300",
        "-w",
        "net",
        "-s",
        "magazine,legacy",
        "--rounds",
        "3",
        "--memory",
        "256M",
        "--no-copy-limit",
        "--no-progress",
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(out.contains("median of 3 rounds"), "{out}");
    let doc = json(&js);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "one record per strategy, rounds combined");
    assert_eq!(results[0]["strategy"], "legacy", "baseline first");
    for r in results {
        assert_eq!(r["rounds"], 3);
        let (lo, mid, hi) = (
            r["maps_per_sec_min"].as_f64().unwrap(),
            r["maps_per_sec"].as_f64().unwrap(),
            r["maps_per_sec_max"].as_f64().unwrap(),
        );
        assert!(lo <= mid && mid <= hi, "{lo} {mid} {hi}");
    }
}

/// `-s linux` runs Linux's own swiotlb.c as one more row (in the tables, the JSON and the
/// copy-limit check) when this build has the Linux source, and is a clear usage error
/// when it has not; it is never a boot choice.
#[test]
fn linux_reference_row_or_a_clear_error() {
    let (names, _) = ok(&["list", "--names"]);
    assert!(!names.lines().any(|l| l == "linux"), "linux is no boot strategy:\n{names}");
    let (list, _) = ok(&["list"]);
    assert!(list.contains("reference rows") && list.contains("linux"), "{list}");
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("r.json");
    let args = [
        "compare",
        "--ops",
        "400",
        "-w",
        "net",
        "-s",
        "linux,legacy",
        "--threads",
        "2",
        "--verify",
        "--memory",
        "256M",
        "--no-progress",
        "--json",
        js.to_str().unwrap(),
    ];
    let Err(why) = bounce_linux_ref::available() else {
        let (out, _) = ok(&args);
        let doc = json(&js);
        let results = doc["results"].as_array().unwrap();
        let names: Vec<&str> = results.iter().map(|r| r["strategy"].as_str().unwrap()).collect();
        assert_eq!(names, ["legacy", "linux"], "baseline first, then the reference row");
        for r in results {
            assert_eq!((r["violations"].as_u64(), r["data_errors"].as_u64()), (Some(0), Some(0)), "{r}");
            assert!(r["problem"].is_null(), "{}", r["problem"]);
            assert_eq!(r["ops"], r["maps"], "every map unmapped");
        }
        assert!(out.lines().any(|l| l.trim_start().starts_with("linux ") && l.contains("vs memcpy")), "{out}");
        return;
    };
    let err = fails(&args, 2, "the linux reference row is unavailable in this build");
    assert!(err.contains(&why), "{err}");
    fails(&["map-bench", "--strategy", "linux", "--duration", "50ms"], 2, "BOUNCE_LINUX_SRC");
}

fn sample_trace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/sample.trace")
}

#[test]
fn replay_of_the_sample_trace() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("replay.json");
    let trace = sample_trace();
    let (out, _) = ok(&[
        "replay",
        trace.to_str().unwrap(),
        "--inflight",
        "16",
        "--memory",
        "256M",
        "--verify",
        "--no-progress",
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(out.contains("800 events on 4 device(s) (12 comment lines, 0 other events, 0 malformed skipped)"), "{out}");
    let doc = json(&js);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), default_rows().len());
    for r in results {
        for k in KEYS {
            assert!(r.get(k).is_some(), "record lacks {k}");
        }
        assert_eq!(r["workload"], "replay:sample");
        assert_eq!(r["attempted"], 800, "every event replayed once");
        assert_eq!(r["violations"], 0);
        assert_eq!(r["data_errors"], 0);
        assert!(r["problem"].is_null(), "{}", r["problem"]);
    }
}

#[test]
fn replay_reports_malformed_lines_or_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.trace");
    let good = "  kworker/0:1H-87 [000] ..... 1.000001: swiotlb_bounced: dev_name: nvme0 dma_mask=ffffffffffffffff dev_addr=10200 size=8192 FORCE";
    std::fs::write(&f, format!("# tracer: nop\n{good}\n{good} trailing\n{good}\nnot a trace line\n")).unwrap();
    let p = f.to_str().unwrap();
    let err = fails(&["replay", p, "-s", "legacy", "--no-progress"], 1, "line 3: unexpected text after the event");
    assert!(err.contains("bad.trace"), "{err}");
    let o = bounce(&["replay", p, "-s", "legacy", "--skip-bad", "--no-progress", "--memory", "256M"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("2 events on 1 device(s) (1 comment lines, 0 other events, 2 malformed skipped)"));
    assert!(text(&o.stderr).contains("skipped 2 malformed line(s); first: line 3:"), "{}", text(&o.stderr));
    fails(&["replay", dir.path().join("missing.trace").to_str().unwrap()], 1, "missing.trace");
}

#[test]
fn record_writes_a_trace_that_replays() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rec.trace");
    ok(&["record", "-w", "net", "--ops", "50", "--cpus", "3", "-o", f.to_str().unwrap()]);
    let t = std::fs::read_to_string(&f).unwrap();
    let events: Vec<&str> = t.lines().filter(|l| l.contains("swiotlb_bounced:")).collect();
    assert_eq!(events.len(), 50);
    for cpu in ["[000]", "[001]", "[002]"] {
        assert!(events.iter().any(|l| l.contains(cpu)), "no event on {cpu}");
    }
    assert!(events
        .iter()
        .all(|l| l.contains("dev_name: virtio-net dma_mask=ffffffffffffffff") && l.ends_with("FORCE")));
    let (out, _) = ok(&["replay", f.to_str().unwrap(), "-s", "magazine", "--no-progress", "--memory", "256M"]);
    assert!(out.contains("50 events on 1 device(s)"), "{out}");
}

#[test]
fn ab_runs_two_instances_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("ab.json");
    let (out, _) = ok(&[
        "compare",
        "--ab",
        "magazine,magazine",
        "-w",
        "net",
        "--threads",
        "1",
        "--ops",
        "400",
        "--rounds",
        "2",
        "--memory",
        "256M",
        "--no-progress",
        "--json",
        js.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.contains("## net (1 threads): A/B in one guest"), "{report}");
    assert!(report.contains("| metric | A median | B median | B/A median | B/A spread |"), "{report}");
    for needle in
        ["A = magazine, B = magazine, each on its own copy of virtio-net", "B/A median", "maps/s", "shared peak"]
    {
        assert!(out.contains(needle), "lacks {needle:?}:\n{out}");
    }
    assert!(!out.contains("== targets =="), "no per-strategy targets in an A/B run:\n{out}");
    let doc = json(&js);
    assert_eq!(doc["results"].as_array().unwrap().len(), 0, "A/B results only");
    let ab = doc["ab"].as_array().unwrap();
    assert_eq!(ab.len(), 1);
    let r = &ab[0];
    assert_eq!(
        (r["a"].as_str(), r["b"].as_str(), r["workload"].as_str()),
        (Some("magazine"), Some("magazine"), Some("net"))
    );
    let rounds = r["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    // The sides swap lanes every other round: A is lane 0 in the first, lane 1 in the
    // second.
    for (i, round) in rounds.iter().enumerate() {
        for (s, side) in round.as_array().unwrap().iter().enumerate() {
            assert_eq!(side["lane"], (s + i) % 2, "round {i}, side {s}");
            assert_eq!(side["strategy"], "magazine");
            assert!(side["maps"].as_u64().unwrap() > 0, "{side}");
        }
    }
    let metrics: Vec<&str> = r["metrics"].as_array().unwrap().iter().map(|m| m["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["maps/s", "metadata ns/pair", "copy ns/pair", "failures", "in-flight peak", "shared peak"]);
    let devices: Vec<(&str, u64)> = r["record"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap(), d["lane"].as_u64().unwrap()))
        .collect();
    assert_eq!(devices.len(), 2);
    assert_eq!((devices[0].0, devices[1].0), ("virtio-net.a", "virtio-net.b"));
    assert_eq!(devices[0].1 + devices[1].1, 1, "the copies on different lanes: {devices:?}");
    assert!(r["record"]["problem"].is_null(), "{}", r["record"]["problem"]);
}

#[test]
fn ab_usage_errors_exit_2() {
    let run = |extra: &[&str]| {
        let mut args = vec!["compare", "--ops", "10", "-w", "net", "--no-progress"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let cases: [(&[&str], &str); 7] = [
        (&["--ab", "legacy,fancy"], "unknown strategy `fancy`"),
        (&["--ab", "linux,legacy"], "unknown strategy `linux`"),
        (&["--ab", "magazine"], "exactly two strategy names"),
        (&["--ab", "legacy,magazine,dynamic"], "exactly two strategy names"),
        (&["--ab", "legacy,magazine", "-s", "legacy"], "cannot be used with"),
        (&["--ab", "legacy,magazine", "--cmdline", "swiotlb.strategy=legacy,nvme0:magazine"], "drop the device routes"),
        (&["--ab", "legacy,magazine", "--cmdline", "swiotlb.strategy=legacy"], "drop swiotlb.strategy=legacy"),
    ];
    for (extra, needle) in cases {
        let args = run(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, 2, needle);
    }
}

#[test]
fn cmdline_routes_run_in_the_routed_row_beside_unrouted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("routed.json");
    let cmdline = "swiotlb.strategy=legacy,nvme0:magazine,virtio-blk:dynamic";
    let common =
        ["-w", "mixed", "--threads", "1", "--ops", "2000", "--memory", "512M", "--no-progress", "--no-copy-limit"];
    // With routes and no rows named: the routed row alone, with its per-device table.
    let mut args = vec!["compare", "--cmdline", cmdline, "--json", js.to_str().unwrap()];
    args.extend(common);
    let (out, _) = ok(&args);
    assert!(out.lines().any(|l| l.starts_with("routed ")), "{out}");
    assert!(out.contains("per device:"), "{out}");
    let doc = json(&js);
    let rows = doc["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let devices = rows[0]["devices"].as_array().unwrap();
    let strategy_of =
        |name: &str| devices.iter().find(|d| d["device"] == name).map(|d| d["strategy"].as_str().unwrap().to_string());
    assert_eq!(strategy_of("nvme0").as_deref(), Some("magazine"));
    assert_eq!(strategy_of("virtio-blk").as_deref(), Some("dynamic"));
    assert_eq!(strategy_of("virtio-net").as_deref(), Some("legacy"));
    assert!(devices.iter().all(|d| d["maps"].as_u64().unwrap() > 0), "every device mapped: {devices:?}");
    // Named rows: the strategy rows run unrouted beside the routed one.
    let mut args = vec!["compare", "--cmdline", cmdline, "--strategies", "legacy,routed"];
    args.extend(common);
    let (out, _) = ok(&args);
    assert!(out.lines().any(|l| l.starts_with("legacy ")) && out.lines().any(|l| l.starts_with("routed ")), "{out}");
    fails(&["compare", "--strategies", "rooted"], 2, "routed");
}
