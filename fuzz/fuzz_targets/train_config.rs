//! `train --config`: TOML into the command's own `TrainArgs` (its source
//! file is compiled in here, so the fuzzed type is the real one, not a
//! copy), then the validation of `resolve`.
#![no_main]
#![allow(dead_code)]
use libfuzzer_sys::fuzz_target;

#[path = "../../src/cli/train.rs"]
mod train;

/// The binary's `cli::open_data`, which `train.rs` calls as `super::open_data`
/// (the default dataset's files read from the source tree, not embedded).
fn open_data(path: Option<&std::path::Path>) -> anyhow::Result<fastnn::data::Dataset> {
    use fastnn::data::{embedded, idx::IdxBytes};
    Ok(match path {
        Some(p) => fastnn::data::Dataset::open(p)?,
        None => {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/fashion-mnist");
            let shipped = embedded::FILE_NAMES
                .iter()
                .map(|name| std::fs::read(format!("{dir}/{name}")))
                .collect::<std::io::Result<Vec<_>>>()?;
            let files: Vec<IdxBytes> = embedded::FILE_NAMES
                .iter()
                .zip(&shipped)
                .map(|(name, bytes)| IdxBytes { name, bytes })
                .collect();
            embedded::open_default(&files)?.0
        }
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
