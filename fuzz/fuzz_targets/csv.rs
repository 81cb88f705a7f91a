//! The CSV reader on in-memory tables; the first byte picks the options.
#![no_main]
use std::path::Path;

use fastnn::data::csv::{read_csv_from, CsvOptions, Header, LabelColumn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let opts = CsvOptions {
        label: match sel & 3 {
            0 => LabelColumn::Index(0),
            1 => LabelColumn::Index(1),
            2 => LabelColumn::Name("label".into()),
            _ => LabelColumn::Index(usize::from(sel >> 4)),
        },
        header: match (sel >> 2) & 3 {
            0 => Header::Auto,
            1 => Header::Yes,
            _ => Header::No,
        },
    };
    if let Ok(ds) = read_csv_from(Path::new("f.csv"), rest, &opts) {
        let d = ds.shape[0];
        for s in &ds.splits {
            assert_eq!(s.features.len(), s.labels.len() * d);
            assert!(s.labels.iter().all(|&l| usize::from(l) < ds.classes.len()));
        }
    }
});
