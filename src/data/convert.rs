//! `fastnn data convert`: any supported source in, one dataset file out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cifar::{self, Cifar100Labels};
use super::csv::CsvOptions;
use super::error::{DataError, Result};
use super::fetch::{md5_bytes, md5_file};
use super::file::{refuse_existing, write_dataset, SourceInfo};
use super::{idx, RawDataset};

/// Source formats `convert` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceFormat {
    /// Decide from the input: a folder of IDX files, a `.csv` file, or a
    /// CIFAR tarball recognised by its member names.
    #[default]
    Auto,
    Cifar10,
    Cifar100,
    Idx,
    Csv,
}

impl std::str::FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(SourceFormat::Auto),
            "cifar10" => Ok(SourceFormat::Cifar10),
            "cifar100" => Ok(SourceFormat::Cifar100),
            "idx" => Ok(SourceFormat::Idx),
            "csv" => Ok(SourceFormat::Csv),
            _ => Err(format!(
                "unknown format {s:?} (auto, cifar10, cifar100, idx or csv)"
            )),
        }
    }
}

/// Options of a conversion.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub format: SourceFormat,
    /// CIFAR-100: which label set becomes `labels` (the other is stored as
    /// `coarse_labels`).
    pub cifar100_labels: Cifar100Labels,
    pub csv: CsvOptions,
    /// CSV: a second table to store as the test split.
    pub csv_test: Option<PathBuf>,
    /// Class names overriding the source's (IDX folders carry none).
    pub classes: Option<Vec<String>>,
    /// Replace an existing output file.
    pub overwrite: bool,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The format actually read.
    pub format: SourceFormat,
    /// `(split, samples)` in file order.
    pub splits: Vec<(String, usize)>,
    /// Wall time of the whole conversion, in seconds.
    pub seconds: f64,
}

/// Converts `input` into the dataset file `out` (written atomically).
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let start = Instant::now();
    if !input.exists() {
        return Err(DataError::new(input, "no such file or folder"));
    }
    refuse_existing(out, opts.overwrite)?;
    let format = match opts.format {
        SourceFormat::Auto => detect(input)?,
        f => f,
    };
    let mut sources: Vec<PathBuf> = match format {
        SourceFormat::Idx => idx::source_files(input),
        _ => vec![input.to_path_buf()],
    };
    sources.extend(opts.csv_test.iter().cloned());
    // The checksums of the sources are computed on the second core while the
    // first one decodes.
    let (raw, md5s) = rayon::join(
        || read_source(input, format, opts),
        || {
            sources
                .iter()
                .map(|p| Ok((file_name(p), md5_file(p)?)))
                .collect::<Result<Vec<_>>>()
        },
    );
    let source = SourceInfo {
        name: file_name(input),
        files: md5s?,
    };
    finish(raw?, source, input, out, opts, format, start)
}

/// Converts MNIST-style IDX files held in memory into the dataset file `out`
/// (written atomically). `name` is the folder they stand for: it is recorded
/// as the source, names the files in errors and, unless `opts.classes` is
/// given, decides the class names as a folder's name does. The file written
/// is byte for byte the one [`convert`] writes from a folder `name` holding
/// the same files. `opts.format` must be `Auto` or `Idx`; the CSV and CIFAR
/// options do not apply.
pub fn convert_idx_bytes(
    name: &str,
    files: &[idx::IdxBytes<'_>],
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    let start = Instant::now();
    let dir = Path::new(name);
    if !matches!(opts.format, SourceFormat::Auto | SourceFormat::Idx) {
        return Err(DataError::new(
            dir,
            format!("in-memory sources are IDX files, not {:?}", opts.format),
        ));
    }
    refuse_existing(out, opts.overwrite)?;
    let sources = idx::source_bytes(files);
    let (raw, md5s) = rayon::join(
        || idx::read_idx_bytes(dir, files, idx::classes_for_name(name)),
        || {
            sources
                .iter()
                .map(|f| (f.name.to_string(), md5_bytes(f.bytes)))
                .collect()
        },
    );
    let source = SourceInfo {
        name: file_name(dir),
        files: md5s,
    };
    finish(raw?, source, dir, out, opts, SourceFormat::Idx, start)
}

/// The common end of a conversion: the class names of `opts`, then the
/// file.
fn finish(
    mut raw: RawDataset,
    source: SourceInfo,
    input: &Path,
    out: &Path,
    opts: &ConvertOptions,
    format: SourceFormat,
    start: Instant,
) -> Result<ConvertReport> {
    if let Some(classes) = &opts.classes {
        if classes.len() != raw.classes.len() {
            return Err(DataError::new(
                input,
                format!(
                    "{} class names given, the data has {} classes",
                    classes.len(),
                    raw.classes.len()
                ),
            ));
        }
        raw.classes = classes.clone();
    }
    write_dataset(&raw, &source, out, opts.overwrite)?;
    Ok(ConvertReport {
        format,
        splits: raw
            .splits
            .iter()
            .map(|s| (s.name.clone(), s.len()))
            .collect(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn read_source(input: &Path, format: SourceFormat, opts: &ConvertOptions) -> Result<RawDataset> {
    match format {
        SourceFormat::Idx => idx::read_idx_dir(input, idx::default_classes(input)),
        SourceFormat::Csv => super::csv::read_csv(input, opts.csv_test.as_deref(), &opts.csv),
        SourceFormat::Cifar10 | SourceFormat::Cifar100 => {
            let kind = cifar::detect_tarball(input)?.ok_or_else(|| {
                DataError::new(
                    input,
                    "not a CIFAR tarball: none of the known CIFAR members was found",
                )
            })?;
            let wanted_100 = format == SourceFormat::Cifar100;
            let wanted = if wanted_100 { "cifar100" } else { "cifar10" };
            if kind.format() != wanted {
                return Err(DataError::new(
                    input,
                    format!(
                        "--format {wanted} was given, but this is a {} tarball",
                        kind.tarball_name()
                    ),
                ));
            }
            cifar::read_tarball(input, kind, opts.cifar100_labels)
        }
        SourceFormat::Auto => unreachable!("detect() resolves Auto"),
    }
}

/// Decides the format of `input` from what it is and holds.
pub fn detect(input: &Path) -> Result<SourceFormat> {
    if input.is_dir() {
        return if idx::is_idx_dir(input) {
            Ok(SourceFormat::Idx)
        } else {
            Err(DataError::new(
                input,
                "folder holds no IDX files (train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])",
            ))
        };
    }
    let name = file_name(input).to_ascii_lowercase();
    if name.ends_with(".csv") {
        return Ok(SourceFormat::Csv);
    }
    if !starts_with_gzip_magic(input)? {
        return Err(DataError::new(
            input,
            "cannot tell the format: not a gzip'd CIFAR tarball, a folder of IDX files or a .csv file (see --format)",
        ));
    }
    match cifar::detect_tarball(input)? {
        Some(kind) if kind.format() == "cifar100" => Ok(SourceFormat::Cifar100),
        Some(_) => Ok(SourceFormat::Cifar10),
        None => Err(DataError::new(
            input,
            "cannot tell the format: not a CIFAR tarball, a folder of IDX files or a .csv file (see --format)",
        )),
    }
}

fn starts_with_gzip_magic(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let n = file
        .read(&mut magic)
        .map_err(|e| DataError::io(path, "cannot read", e))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
