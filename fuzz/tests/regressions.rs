//! Minimized inputs of findings, replayed with every check on (strict mode:
//! `BOUNCE_FUZZ_STRICT=1` lifts the guards of open findings, see `bounce_fuzz::strict`).
//!
//! `regressions/<target>/<name>` holds the input. Findings still open are listed in
//! [`OPEN`]: for them the test asserts the bug still reproduces, so whoever fixes one is
//! told to move it out of the list (and to delete the guard in the target that steps
//! around it). Every other file must pass: it is an ordinary regression test.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use bounce_fuzz::ops::{self, OpsInput};
use bounce_fuzz::{boot, cmdline, trace};

/// Reported, not yet fixed: `target/name`. (All findings so far are fixed; see the
/// table in `fuzz/README.md`.)
const OPEN: &[&str] = &[];

fn replay(target: &str, data: &[u8]) {
    match target {
        "cmdline" => cmdline::check(cmdline::text(data)),
        "trace" => trace::check(cmdline::text(data)),
        "boot" => boot::check(cmdline::text(data)),
        "ops" => {
            let Ok(input) = OpsInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
            ops::run_input(&input);
        }
        other => panic!("regressions/{other}: no such target"),
    }
}

#[test]
fn regressions() {
    // Strict mode before anything reads it (`strict()` caches the first answer; this
    // binary has no other test).
    std::env::set_var("BOUNCE_FUZZ_STRICT", "1");
    assert!(bounce_fuzz::strict());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut seen = Vec::new();
    for target in ["cmdline", "trace", "boot", "ops"] {
        let Ok(rd) = std::fs::read_dir(root.join(target)) else { continue };
        let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        for path in files {
            let name = format!("{target}/{}", path.file_name().unwrap().to_string_lossy());
            let data = std::fs::read(&path).unwrap();
            let result = catch_unwind(AssertUnwindSafe(|| replay(target, &data)));
            if OPEN.contains(&name.as_str()) {
                assert!(
                    result.is_err(),
                    "{name} passes now: the finding is fixed; move it out of OPEN and drop its guard"
                );
            } else if let Err(e) = result {
                std::panic::resume_unwind(e);
            }
            seen.push(name);
        }
    }
    assert!(seen.len() >= 3, "regressions/ lost its files: {seen:?}");
    for o in OPEN {
        assert!(seen.iter().any(|s| s == o), "OPEN lists {o}, which has no file in regressions/");
    }
}
