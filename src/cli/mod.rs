//! One module per subcommand: clap arguments → validated library calls.

pub mod bench;
pub mod bench_train;
pub mod data;
pub mod eval;
pub mod gradcheck;
pub mod plot;
pub mod train;
#[cfg(test)]
mod train_props;
