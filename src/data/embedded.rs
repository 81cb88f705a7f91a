//! The default dataset: Fashion-MNIST, shipped inside the `fastnn` binary.
//!
//! The binary embeds the four gzip'd IDX files of `data/fashion-mnist/` and
//! hands them to [`open_default`]. The first use converts them into
//! `fashion-mnist.safetensors` in the user's cache folder (see
//! [`cache`](super::cache)), and later uses map that file. A cache that no
//! longer validates (truncated, corrupted, an older format version) is
//! converted again.

use std::path::PathBuf;

use super::convert::{convert_idx_bytes, ConvertOptions, ConvertReport, SourceFormat};
use super::error::Result;
use super::file::Dataset;
use super::idx::{IdxBytes, FASHION_CLASSES};

/// The folder the shipped files come from, recorded as the dataset's source.
pub const SOURCE_NAME: &str = "fashion-mnist";

/// The names of the shipped files, in `data/fashion-mnist/`.
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// The name of the converted file in the cache folder.
pub const CACHE_FILE: &str = "fashion-mnist.safetensors";

/// Where the converted default dataset is cached (its folder created).
pub fn cache_path() -> Result<PathBuf> {
    super::cache::file(CACHE_FILE)
}

/// Opens the default dataset, converting `files` (the shipped IDX files,
/// named as in [`FILE_NAMES`]) first when the cache is missing or invalid.
/// Returns the conversion report when a conversion ran.
pub fn open_default(files: &[IdxBytes<'_>]) -> Result<(Dataset, Option<ConvertReport>)> {
    let cache = cache_path()?;
    if let Ok(ds) = Dataset::open(&cache) {
        return Ok((ds, None));
    }
    let opts = ConvertOptions {
        format: SourceFormat::Idx,
        classes: Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
        overwrite: true,
        ..ConvertOptions::default()
    };
    let report = convert_idx_bytes(SOURCE_NAME, files, &cache, &opts)?;
    Ok((Dataset::open(&cache)?, Some(report)))
}
