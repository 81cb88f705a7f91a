//! The default dataset's files, compiled into the `fastnn` binary so that it
//! works from wherever it is installed. They are the gzip'd IDX files of
//! `data/fashion-mnist/` (30 MB); only this binary carries them, not the
//! library.

use fastnn::data::idx::IdxBytes;

/// One shipped file of `data/fashion-mnist/`, named as there.
macro_rules! shipped {
    ($name:literal) => {
        IdxBytes {
            name: $name,
            bytes: include_bytes!(concat!("../../data/fashion-mnist/", $name)),
        }
    };
}

/// Fashion-MNIST's four IDX files, named as in
/// [`fastnn::data::embedded::FILE_NAMES`].
pub static FASHION_MNIST: [IdxBytes<'static>; 4] = [
    shipped!("train-images-idx3-ubyte.gz"),
    shipped!("train-labels-idx1-ubyte.gz"),
    shipped!("t10k-images-idx3-ubyte.gz"),
    shipped!("t10k-labels-idx1-ubyte.gz"),
];
