//! One module per subcommand: clap arguments → validated library calls.

pub mod bench;
pub mod data;
