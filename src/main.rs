//! The `fastnn` command: argument parsing and printing around the library.
//!
//! Exit codes: 0 success, 1 runtime error (bad input, failed I/O, an unknown
//! or unsupported `FASTNN_ISA`), 2 usage error (clap's own). A closed stdout
//! (`fastnn data info f | head`) exits 0 quietly.

mod cli;

use std::process::ExitCode;

use clap::{ColorChoice, CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::Shell;

/// Train multi-layer perceptrons on the CPU, as fast as the machine allows.
#[derive(Parser)]
#[command(
    name = "fastnn",
    version,
    about,
    propagate_version = true,
    after_help = "Examples:
  fastnn data info                               # the embedded Fashion-MNIST
  fastnn train --out run --metrics run/metrics.jsonl
  fastnn eval --model run/model.safetensors --plot confusion.png
  fastnn plot run/metrics.jsonl -o curves.svg
  fastnn <command> --help                        # each command's options and examples

Environment: NO_COLOR turns colour off; FASTNN_ISA forces a gemm kernel
(avx512|avx2|scalar|matrixmultiply), a bf16 kernel (bf16-portable|avx512-bf16) or one
of each, comma-separated, e.g. FASTNN_ISA=avx2,bf16-portable (refused if this CPU
lacks one); FASTNN_CACHE is the folder the embedded Fashion-MNIST is converted into
on first use (default: $XDG_CACHE_HOME/fastnn, else ~/.cache/fastnn). Exit codes: 0
success, 1 error, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert, inspect and fetch datasets.
    #[command(
        subcommand,
        after_help = "Examples:
  fastnn data info
  fastnn data convert cifar-10-binary.tar.gz -o cifar10.safetensors
  fastnn data fetch mnist"
    )]
    Data(cli::data::DataCommand),
    /// Train an MLP on a dataset file (default: the embedded Fashion-MNIST).
    #[command(after_help = "Examples:
  fastnn train                                   # Fashion-MNIST, 784-512-256-10, SGD + momentum
  fastnn train --data cifar10.safetensors --hidden 1024,512 --epochs 20 --lr 0.02 --out run
  fastnn train --config run.toml --epochs 30     # flags override the file
  fastnn train --resume run                      # continue from run/checkpoint.safetensors")]
    Train(Box<cli::train::TrainArgs>),
    /// Evaluate a trained model on a dataset split.
    Eval(cli::eval::EvalArgs),
    /// Show a model's most likely classes for chosen samples.
    Predict(cli::eval::PredictArgs),
    /// Check the f64 reference gradients against central finite differences.
    #[command(after_help = "Example:
  fastnn gradcheck --hidden 32,16 --activation tanh --loss hinge --l2 0.01 --dropout 0.5")]
    Gradcheck(cli::gradcheck::GradcheckArgs),
    /// Measure this machine: matrix products and training throughput.
    #[command(
        subcommand,
        after_help = "Example:
  fastnn bench gemm --threads 2"
    )]
    Bench(cli::bench::BenchCommand),
    /// Draw loss and accuracy curves from a `train --metrics` file.
    Plot(cli::plot::PlotArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    #[command(after_help = "Examples:
  fastnn completions bash > ~/.local/share/bash-completion/completions/fastnn
  fastnn completions zsh > ~/.zfunc/_fastnn
  fastnn completions fish > ~/.config/fish/completions/fastnn.fish")]
    Completions {
        /// bash, zsh or fish.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
}

fn main() -> ExitCode {
    // NO_COLOR (https://no-color.org): any non-empty value turns colour off.
    let mut command = Cli::command();
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        command = command.color(ColorChoice::Never);
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    // A bad FASTNN_ISA is refused before any command runs, the same way for
    // every command (even those that multiply no matrices).
    if let Err(err) = fastnn::cpu::check_env() {
        eprintln!("fastnn: error: {err}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Data(cmd) => cli::data::run(cmd),
        Command::Train(args) => cli::train::run(*args),
        Command::Eval(args) => cli::eval::run_eval(args),
        Command::Predict(args) => cli::eval::run_predict(args),
        Command::Gradcheck(args) => cli::gradcheck::run(args),
        Command::Bench(cmd) => cli::bench::run(cmd),
        Command::Plot(args) => cli::plot::run(args),
        Command::Completions { shell } => completions(&shell),
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

/// Writes the completion script for `shell` to stdout.
fn completions(shell: &str) -> anyhow::Result<()> {
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        _ => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fastnn", &mut script);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, &script)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// True when the error comes from writing to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
