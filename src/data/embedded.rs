//! The embedded default dataset: Fashion-MNIST, shipped in the repository.
//!
//! The IDX files live in `data/fashion-mnist/`; the first use converts them
//! into `data/cache/fashion-mnist.safetensors`, and later uses map that
//! cache. A cache that no longer validates (truncated, corrupted, an older
//! format version) is converted again.

use std::path::PathBuf;

use super::convert::{convert, ConvertOptions, ConvertReport, SourceFormat};
use super::error::Result;
use super::file::Dataset;
use super::idx::FASHION_CLASSES;

/// The folder holding the shipped Fashion-MNIST IDX files.
pub fn embedded_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")
}

/// Where the converted default dataset is cached.
pub fn cache_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/cache/fashion-mnist.safetensors")
}

/// Opens the default dataset, converting it first when the cache is missing
/// or invalid. Returns the conversion report when a conversion ran.
pub fn open_default() -> Result<(Dataset, Option<ConvertReport>)> {
    let cache = cache_path();
    if let Ok(ds) = Dataset::open(&cache) {
        return Ok((ds, None));
    }
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| super::DataError::io(dir, "cannot create the cache folder", e))?;
    }
    let opts = ConvertOptions {
        format: SourceFormat::Idx,
        classes: Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
        overwrite: true,
        ..ConvertOptions::default()
    };
    let report = convert(&embedded_dir(), &cache, &opts)?;
    Ok((Dataset::open(&cache)?, Some(report)))
}
