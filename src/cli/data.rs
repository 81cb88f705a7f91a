//! `fastnn data`: (being written) convert, info, fetch.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DataCommand {}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {}
}
