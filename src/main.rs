//! The `fastnn` command: argument parsing and printing around the library.
//!
//! Exit codes: 0 success, 1 runtime error (bad input, failed I/O), 2 usage
//! error (clap's own). A closed stdout (`fastnn data info f | head`) exits 0
//! quietly.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train multi-layer perceptrons on the CPU, as fast as the machine allows.
#[derive(Parser)]
#[command(name = "fastnn", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert, inspect and fetch datasets.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
    /// Measure this machine: matrix products and training throughput.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(cmd) => cli::data::run(cmd),
        Command::Bench(cmd) => cli::bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fastnn: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// True when the error comes from writing to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
