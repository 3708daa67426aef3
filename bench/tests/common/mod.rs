//! Helpers the `bounce` binary's test files share.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `bounce` binary with `args`.
pub fn bounce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bounce")).args(args).output().expect("running bounce")
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A JSON file the binary wrote.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json written")).expect("valid JSON")
}
