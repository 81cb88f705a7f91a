//! The safetensors header validation, and for headers that pass, the
//! dataset file checks of `Dataset::open` (from a temporary file, as it maps
//! its file).
#![no_main]
use std::io::Write;

use fastnn::data::Dataset;
use fastnn::tensorfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = tensorfile::parse(data) else {
        return;
    };
    for t in header.tensors.values() {
        assert!(t.bytes.end <= data.len());
        assert!(t.bytes.start >= header.data_start);
    }
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(data).unwrap();
    tmp.flush().unwrap();
    if let Ok(ds) = Dataset::open(tmp.path()) {
        let _ = ds.stats();
        for name in ds.split_names().to_vec() {
            let _ = ds.split(&name);
        }
    }
});
