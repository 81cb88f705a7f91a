//! `train --config`: TOML into the command's own `TrainArgs` (its source
//! file is compiled in here, so the fuzzed type is the real one, not a
//! copy), then the validation of `resolve`.
#![no_main]
#![allow(dead_code)]
use libfuzzer_sys::fuzz_target;

#[path = "../../src/cli/train.rs"]
mod train;

/// The binary's `cli::open_data`, which `train.rs` calls as `super::open_data`.
fn open_data(path: Option<&std::path::Path>) -> anyhow::Result<fastnn::data::Dataset> {
    Ok(match path {
        Some(p) => fastnn::data::Dataset::open(p)?,
        None => fastnn::data::embedded::open_default()?.0,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(args) = toml::from_str::<train::TrainArgs>(text) {
        let _ = train::resolve(&args);
    }
});
