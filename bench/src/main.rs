//! The `bounce` command line tool.

fn main() {}
