//! `train --config`: TOML into the command's own `TrainArgs` (its source
//! file is compiled in here, so the fuzzed type is the real one, not a
//! copy), then the validation of `resolve`.
#![no_main]
#![allow(dead_code)]
use libfuzzer_sys::fuzz_target;

#[path = "../../src/cli/train.rs"]
mod train;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(args) = toml::from_str::<train::TrainArgs>(text) {
        let _ = train::resolve(&args);
    }
});
