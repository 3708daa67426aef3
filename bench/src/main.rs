//! The `bounce` command line tool: compare DMA bounce-buffer strategies on a simulated
//! confidential guest (see `bounce --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = bounce_bench::cli::Cli::parse();
    bounce_bench::cli::run(&cli)
}
