//! The IDX parser, as images (3 dimensions) and as labels (1).
#![no_main]
use std::path::Path;

use fastnn::data::idx::parse_idx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ndim in [1, 3] {
        if let Ok(a) = parse_idx(Path::new("f"), data, ndim) {
            assert_eq!(a.dims.len(), ndim);
            assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
        }
    }
});
