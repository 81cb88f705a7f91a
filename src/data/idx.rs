//! MNIST and Fashion-MNIST: IDX files.
//!
//! An IDX file is a 4-byte magic `00 00 <type> <ndim>`, then `ndim`
//! big-endian u32 dimensions, then the data, row-major. Images are type 0x08
//! (u8) with dimensions `(n, 28, 28)`, labels type 0x08 with `(n)`. The files
//! usually ship gzip'd; gzip is recognised by its own magic (`1f 8b`), not by
//! the file name.
//!
//! A folder holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte` and,
//! optionally, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each
//! with or without `.gz`.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};
use super::{Features, RawDataset, RawSplit};

/// Fashion-MNIST's class names, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Number of classes of MNIST and Fashion-MNIST.
const CLASSES: usize = 10;

/// Element type codes of the IDX format.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "u8",
        0x09 => "i8",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// A decoded IDX file holding u8 values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads the whole file at `path`, decompressing it if it is gzip'd.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, "cannot read", e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip(path, &raw)
    } else {
        Ok(raw)
    }
}

/// `bytes` decompressed if they are gzip'd, as they are otherwise. `path`
/// names them in errors.
pub fn decompress_maybe_gzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        gunzip(path, bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

fn gunzip(path: &Path, gz: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(gz.len() * 2);
    flate2::read::MultiGzDecoder::new(gz)
        .read_to_end(&mut out)
        .map_err(|e| DataError::new(path, format!("truncated or corrupt gzip data: {e}")))?;
    Ok(out)
}

/// An IDX file held in memory: its file name as it would be in a folder
/// (`train-images-idx3-ubyte.gz`, with or without `.gz`) and its bytes,
/// gzip'd or not.
#[derive(Debug, Clone, Copy)]
pub struct IdxBytes<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

/// Finds `stem` or `stem.gz` among `files`.
fn find_bytes<'a, 'b>(files: &'b [IdxBytes<'a>], stem: &str) -> Option<&'b IdxBytes<'a>> {
    let gz = format!("{stem}.gz");
    let found = [stem, gz.as_str()]
        .into_iter()
        .find_map(|name| files.iter().find(|f| f.name == name));
    found
}

/// Parses IDX bytes that must hold u8 values in `ndim` dimensions.
pub fn parse_idx(path: &Path, bytes: &[u8], ndim: usize) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::new(
            path,
            format!("not an IDX file: only {} bytes", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::new(
            path,
            format!(
                "not an IDX file: bad magic {:02x} {:02x} {:02x} {:02x} (expected 00 00 08 {ndim:02x})",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let (code, file_ndim) = (bytes[2], bytes[3] as usize);
    if code != 0x08 {
        return Err(DataError::new(
            path,
            format!(
                "IDX element type 0x{code:02x} ({}) is not supported: expected 0x08 (u8)",
                type_name(code)
            ),
        ));
    }
    if file_ndim != ndim {
        return Err(DataError::new(
            path,
            format!("IDX file has {file_ndim} dimensions, expected {ndim}"),
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::new(
            path,
            format!(
                "truncated: {} bytes, shorter than its {header}-byte header",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect();
    // Checked, so that a header claiming 10^12 images fails here instead of
    // overflowing.
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &x| acc.checked_mul(x))
        .and_then(|n| n.checked_add(header));
    if expected != Some(bytes.len()) {
        let dims_text: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(DataError::new(
            path,
            format!(
                "sizes disagree with the file length: dimensions {} need {} bytes, the file has {}",
                dims_text.join("×"),
                expected.map_or("more than 2^64".to_string(), |e| e.to_string()),
                bytes.len()
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Finds `stem` or `stem.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// File names (stems) of one split's images and labels.
const SPLIT_FILES: [(&str, &str, &str); 2] = [
    (
        "train",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
];

/// True when `dir` holds MNIST-style training files.
pub fn is_idx_dir(dir: &Path) -> bool {
    dir.is_dir() && find(dir, SPLIT_FILES[0].1).is_some()
}

/// The IDX files of `dir` that a conversion reads, in order.
pub fn source_files(dir: &Path) -> Vec<PathBuf> {
    SPLIT_FILES
        .iter()
        .flat_map(|(_, images, labels)| [find(dir, images), find(dir, labels)])
        .flatten()
        .collect()
}

/// The files among `files` that a conversion reads, in the order
/// [`source_files`] gives for a folder holding them.
pub fn source_bytes<'a>(files: &[IdxBytes<'a>]) -> Vec<IdxBytes<'a>> {
    SPLIT_FILES
        .iter()
        .flat_map(|(_, images, labels)| [find_bytes(files, images), find_bytes(files, labels)])
        .flatten()
        .copied()
        .collect()
}

/// Reads an MNIST-style folder. `classes` names the ten classes (digits
/// `0`–`9` for MNIST, [`FASHION_CLASSES`] for Fashion-MNIST).
pub fn read_idx_dir(dir: &Path, classes: Vec<String>) -> Result<RawDataset> {
    if !dir.is_dir() {
        return Err(DataError::new(dir, "is not a folder of IDX files"));
    }
    read_idx(
        dir,
        classes,
        |stem| find(dir, stem).map(|path| (path, ())),
        |path, ()| read_maybe_gzip(path),
    )
}

/// Reads MNIST-style IDX files held in memory, as [`read_idx_dir`] reads a
/// folder holding them. `dir` stands for that folder in errors, which name
/// `dir/<file name>`.
pub fn read_idx_bytes(
    dir: &Path,
    files: &[IdxBytes<'_>],
    classes: Vec<String>,
) -> Result<RawDataset> {
    read_idx(
        dir,
        classes,
        |stem| find_bytes(files, stem).map(|f| (dir.join(f.name), f.bytes)),
        decompress_maybe_gzip,
    )
}

/// Reads the splits of an MNIST-style dataset: `find` locates a file by
/// its stem (its path, for errors, and what `read` needs), `read` gives its
/// content, decompressed.
fn read_idx<T>(
    dir: &Path,
    classes: Vec<String>,
    find: impl Fn(&str) -> Option<(PathBuf, T)>,
    read: impl Fn(&Path, T) -> Result<Vec<u8>>,
) -> Result<RawDataset> {
    let mut splits = Vec::new();
    for (name, images_stem, labels_stem) in SPLIT_FILES {
        let ((images_path, images), (labels_path, labels)) =
            match (find(images_stem), find(labels_stem)) {
                (Some(i), Some(l)) => (i, l),
                (None, None) if name == "test" => continue,
                (i, _) => {
                    let missing = if i.is_none() {
                        images_stem
                    } else {
                        labels_stem
                    };
                    return Err(DataError::new(
                        dir,
                        format!("missing {missing} (or {missing}.gz)"),
                    ));
                }
            };
        let images = parse_idx(&images_path, &read(&images_path, images)?, 3)?;
        let labels = parse_idx(&labels_path, &read(&labels_path, labels)?, 1)?;
        if images.dims[0] != labels.dims[0] {
            return Err(DataError::new(
                &labels_path,
                format!(
                    "{} labels for {} images in {}",
                    labels.dims[0],
                    images.dims[0],
                    images_path.display()
                ),
            ));
        }
        if let Some((i, &bad)) = labels
            .data
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= CLASSES)
        {
            return Err(DataError::new(
                &labels_path,
                format!("label {i} is {bad}, out of range for {CLASSES} classes"),
            ));
        }
        splits.push((
            images,
            RawSplit {
                name: name.to_string(),
                features: Features::U8(Vec::new()),
                labels: labels.data,
                coarse_labels: None,
            },
        ));
    }
    let shape = vec![1, splits[0].0.dims[1], splits[0].0.dims[2]];
    let mut out = Vec::new();
    for (images, mut split) in splits {
        if images.dims[1..] != shape[1..] {
            return Err(DataError::new(
                dir,
                format!(
                    "test images are {}×{}, training images {}×{}",
                    images.dims[1], images.dims[2], shape[1], shape[2]
                ),
            ));
        }
        split.features = Features::U8(images.data);
        out.push(split);
    }
    Ok(RawDataset {
        format: "idx".to_string(),
        classes,
        coarse_classes: None,
        shape,
        splits: out,
    })
}

/// Class names for an IDX folder: Fashion-MNIST's when the folder's path
/// says "fashion", the digits otherwise.
pub fn default_classes(dir: &Path) -> Vec<String> {
    classes_for_name(
        &dir.canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .to_string_lossy(),
    )
}

/// Class names for IDX files that came from a folder called `name`:
/// Fashion-MNIST's when it says "fashion", the digits otherwise.
pub fn classes_for_name(name: &str) -> Vec<String> {
    if name.to_lowercase().contains("fashion") {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..CLASSES).map(|d| d.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, code, dims.len() as u8];
        dims.iter()
            .for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_a_well_formed_file() {
        let bytes = idx(8, &[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let a = parse_idx(Path::new("x"), &bytes, 3).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data, (1..=12).collect::<Vec<u8>>());
    }

    #[test]
    fn refuses_bad_magic_type_and_length() {
        let p = Path::new("f.idx");
        let e = parse_idx(p, &[1, 0, 8, 1, 0, 0, 0, 0], 1).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
        let e = parse_idx(p, &idx(0x0D, &[1], &[0; 4]), 1).unwrap_err();
        assert!(e.to_string().contains("0x0d (f32) is not supported"), "{e}");
        let e = parse_idx(p, &idx(8, &[3], &[0, 1]), 1).unwrap_err();
        assert!(
            e.to_string().contains("need 11 bytes, the file has 10"),
            "{e}"
        );
        let e = parse_idx(p, &idx(8, &[u32::MAX, u32::MAX, u32::MAX], &[]), 3).unwrap_err();
        assert!(e.to_string().contains("more than 2^64"), "{e}");
        let e = parse_idx(p, &idx(8, &[1, 1], &[0]), 1).unwrap_err();
        assert!(e.to_string().contains("2 dimensions, expected 1"), "{e}");
    }
}
