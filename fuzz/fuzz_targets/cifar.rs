//! CIFAR readers. The first byte picks the kind (2 bits) and the mode: a
//! single batch member (pickled batch or binary records, the record
//! readers) or a whole tarball, whose tar bytes are the rest of the input,
//! gzip'd here so that the fuzzer works on the tar layer rather than
//! against the gzip CRC.
#![no_main]
use std::io::Write;
use std::path::Path;

use fastnn::data::cifar::{self, Cifar100Labels, CifarKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let kind = CifarKind::ALL[usize::from(sel & 3)];
    if sel & 4 == 0 {
        let _ = cifar::parse_batch(kind, rest);
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        let tgz = gz.finish().unwrap();
        let _ = cifar::read_tarball_from(Path::new("f.tar.gz"), &tgz[..], kind, Cifar100Labels::Fine);
    }
});
