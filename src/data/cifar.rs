//! Readers for the four CIFAR tarballs of <https://www.cs.toronto.edu/~kriz/cifar.html>.
//!
//! # The archives
//!
//! | tarball | directory | train | test | class names |
//! |---|---|---|---|---|
//! | `cifar-10-python.tar.gz` | `cifar-10-batches-py/` | `data_batch_1`..`5` | `test_batch` | `batches.meta` |
//! | `cifar-10-binary.tar.gz` | `cifar-10-batches-bin/` | `data_batch_1.bin`..`5.bin` | `test_batch.bin` | `batches.meta.txt` |
//! | `cifar-100-python.tar.gz` | `cifar-100-python/` | `train` | `test` | `meta` |
//! | `cifar-100-binary.tar.gz` | `cifar-100-binary/` | `train.bin` | `test.bin` | `fine_label_names.txt`, `coarse_label_names.txt` |
//!
//! Every image is 32×32 pixels in three planes, all of R then all of G then
//! all of B, each plane row-major: byte `c·1024 + y·32 + x` is channel `c`,
//! row `y`, column `x`. Both encodings store exactly these 3072 bytes per
//! image, and the dataset keeps them as they are (shape `[3, 32, 32]`).
//!
//! - The **binary** version is a flat sequence of records,
//!   `<label><3072 pixels>` (3073 bytes) for CIFAR-10 and
//!   `<coarse label><fine label><3072 pixels>` (3074 bytes) for CIFAR-100.
//! - The **python** version holds Python 2 pickles of a dict with a `data`
//!   entry (a numpy `uint8` array of shape `(N, 3072)`) and a list of labels
//!   (`labels`, or `fine_labels` and `coarse_labels`); see [`super::pickle`].
//!
//! # Reading
//!
//! The tarball is streamed through a gzip decoder and a tar reader, never
//! extracted to disk. Members are found by their file name, whatever the
//! directory above them, because the order inside the archive is arbitrary
//! (`data_batch_4` comes first in the real CIFAR-10 archive). Unknown members
//! (`readme.html`, a stray `file.txt~`) are skipped; links and paths that are
//! absolute or contain `..` are refused, as an unpacking tool would. Each
//! needed member is read into memory once (a real batch is 31 MB) and parsed.
//! The train split is `data_batch_1` to `data_batch_5` in numeric order.
//!
//! Errors name the archive, or the member as `archive.tar.gz!member`, and
//! the problem. A truncated archive is always an error, never a shorter
//! dataset: the gzip stream is read to its end so its length and CRC are
//! checked, and every member must hold the bytes its header announces.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path};

use flate2::read::GzDecoder;

use super::error::{DataError, Result};
use super::pickle::{self, Pickle};
use super::{Features, RawDataset, RawSplit};

/// Bytes of one image: three 32×32 planes.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which of the four CIFAR tarballs a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10Python,
    Cifar10Binary,
    Cifar100Python,
    Cifar100Binary,
}

/// Which CIFAR-100 label set becomes the dataset's `labels`.
///
/// The dataset's `labels` and `classes` hold the selected set; its
/// `coarse_labels` and `coarse_classes` hold the other one. With the default,
/// `Fine`, those fields mean what their names say (the 20 superclasses);
/// with `Coarse` they hold the 100 fine labels and names instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cifar100Labels {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

impl CifarKind {
    /// Every kind, for detection.
    pub const ALL: [CifarKind; 4] = [
        CifarKind::Cifar10Python,
        CifarKind::Cifar10Binary,
        CifarKind::Cifar100Python,
        CifarKind::Cifar100Binary,
    ];

    /// The file names of the members this kind needs. No name appears in two
    /// kinds, so any one of them identifies the kind.
    pub fn members(self) -> &'static [&'static str] {
        match self {
            CifarKind::Cifar10Python => &[
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
                "test_batch",
                "batches.meta",
            ],
            CifarKind::Cifar10Binary => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
                "batches.meta.txt",
            ],
            CifarKind::Cifar100Python => &["train", "test", "meta"],
            CifarKind::Cifar100Binary => &[
                "train.bin",
                "test.bin",
                "fine_label_names.txt",
                "coarse_label_names.txt",
            ],
        }
    }

    /// The name of the tarball as distributed, e.g. `cifar-10-python.tar.gz`.
    pub fn tarball_name(self) -> &'static str {
        match self {
            CifarKind::Cifar10Python => "cifar-10-python.tar.gz",
            CifarKind::Cifar10Binary => "cifar-10-binary.tar.gz",
            CifarKind::Cifar100Python => "cifar-100-python.tar.gz",
            CifarKind::Cifar100Binary => "cifar-100-binary.tar.gz",
        }
    }

    /// The dataset's `format`: `cifar10` or `cifar100`.
    pub fn format(self) -> &'static str {
        match self {
            CifarKind::Cifar10Python | CifarKind::Cifar10Binary => "cifar10",
            CifarKind::Cifar100Python | CifarKind::Cifar100Binary => "cifar100",
        }
    }

    /// The kind a member file name belongs to, if any.
    fn of_member(file_name: &str) -> Option<CifarKind> {
        CifarKind::ALL
            .into_iter()
            .find(|kind| kind.members().contains(&file_name))
    }
}

/// Tells which CIFAR tarball `path` is, from the name of its first member
/// that belongs to one of them; `None` if no member does. Only the archive
/// up to that member is decompressed, so this is cheap; the full check of
/// the archive happens when it is read.
pub fn detect_tarball(path: &Path) -> Result<Option<CifarKind>> {
    let mut archive = tar::Archive::new(GzDecoder::new(open_tarball(path)?));
    let entries = archive.entries().map_err(|e| corrupt(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(path, e))?;
        let member = checked_member(path, &entry)?;
        if entry.header().entry_type().is_file() {
            if let Some(kind) = CifarKind::of_member(file_name(&member)) {
                return Ok(Some(kind));
            }
        }
    }
    Ok(None)
}

/// Reads any of the four CIFAR tarballs, detected with [`detect_tarball`].
pub fn read(path: &Path, cifar100_labels: Cifar100Labels) -> Result<RawDataset> {
    match detect_tarball(path)? {
        Some(kind) => read_tarball(path, kind, cifar100_labels),
        None => Err(DataError::new(
            path,
            "not a CIFAR tarball: none of its members is a CIFAR batch or meta file",
        )),
    }
}

/// Reads the CIFAR tarball `path`, which must be of the given kind.
/// `cifar100_labels` is ignored for CIFAR-10.
pub fn read_tarball(
    path: &Path,
    kind: CifarKind,
    cifar100_labels: Cifar100Labels,
) -> Result<RawDataset> {
    read_tarball_from(path, open_tarball(path)?, kind, cifar100_labels)
}

/// [`read_tarball`] on a gzip'd tar stream from any reader (the bytes of a
/// tarball in memory, say); `path` names the archive in messages.
pub fn read_tarball_from<R: Read>(
    path: &Path,
    tar_gz: R,
    kind: CifarKind,
    cifar100_labels: Cifar100Labels,
) -> Result<RawDataset> {
    let archive = tar::Archive::new(GzDecoder::new(tar_gz));
    // Members are taken out of the map as they are used, so each raw batch
    // is freed once its pixels are copied into the split.
    let mut members = read_members(path, archive, kind)?;
    let mut member = |name: &str| {
        members
            .remove(name)
            .expect("read_members checks that every member is present")
    };
    let (train, test, names) = match kind {
        CifarKind::Cifar10Python => {
            let train = (1..=5)
                .map(|k| member(&format!("data_batch_{k}")))
                .collect::<Vec<_>>();
            let meta = member("batches.meta");
            let names = with_path(path, &meta, python_meta(&meta.bytes, &["label_names"]))?;
            (
                python_split(path, train, CIFAR10_KEYS)?,
                python_split(path, vec![member("test_batch")], CIFAR10_KEYS)?,
                names,
            )
        }
        CifarKind::Cifar100Python => {
            let meta = member("meta");
            let names = with_path(
                path,
                &meta,
                python_meta(&meta.bytes, &["fine_label_names", "coarse_label_names"]),
            )?;
            (
                python_split(path, vec![member("train")], CIFAR100_KEYS)?,
                python_split(path, vec![member("test")], CIFAR100_KEYS)?,
                names,
            )
        }
        CifarKind::Cifar10Binary => {
            let train = (1..=5)
                .map(|k| member(&format!("data_batch_{k}.bin")))
                .collect::<Vec<_>>();
            let meta = member("batches.meta.txt");
            let names = vec![with_path(path, &meta, text_names(&meta.bytes, 10))?];
            (
                binary_split(path, train, CIFAR10_RECORD)?,
                binary_split(path, vec![member("test_batch.bin")], CIFAR10_RECORD)?,
                names,
            )
        }
        CifarKind::Cifar100Binary => {
            let fine = member("fine_label_names.txt");
            let coarse = member("coarse_label_names.txt");
            let names = vec![
                with_path(path, &fine, text_names(&fine.bytes, 100))?,
                with_path(path, &coarse, text_names(&coarse.bytes, 20))?,
            ];
            (
                binary_split(path, vec![member("train.bin")], CIFAR100_RECORD)?,
                binary_split(path, vec![member("test.bin")], CIFAR100_RECORD)?,
                names,
            )
        }
    };
    Ok(assemble(kind, train, test, names, cifar100_labels))
}

/// Parses one batch member of a `kind` tarball (a pickled batch for the
/// python versions, fixed-size records for the binary ones) and returns its
/// pixels and label sets (fine then coarse for CIFAR-100). For tests and
/// fuzzing of the record readers without building a whole tarball.
#[doc(hidden)]
pub fn parse_batch(
    kind: CifarKind,
    bytes: &[u8],
) -> std::result::Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let (keys, layout) = match kind {
        CifarKind::Cifar10Python => (CIFAR10_KEYS, None),
        CifarKind::Cifar100Python => (CIFAR100_KEYS, None),
        CifarKind::Cifar10Binary => (CIFAR10_KEYS, Some(CIFAR10_RECORD)),
        CifarKind::Cifar100Binary => (CIFAR100_KEYS, Some(CIFAR100_RECORD)),
    };
    let mut split = Split {
        pixels: Vec::new(),
        labels: vec![Vec::new(); keys.len()],
    };
    match layout {
        Some(layout) => binary_batch(bytes, layout, &mut split)?,
        None => python_batch(bytes, keys, &mut split)?,
    };
    Ok((split.pixels, split.labels))
}

// ---------------------------------------------------------------------------
// Label sets
// ---------------------------------------------------------------------------

/// One label set of a batch: its pickle key, its name in messages and the
/// number of classes.
struct LabelKey {
    key: &'static str,
    what: &'static str,
    classes: u8,
}

/// CIFAR-10 has one label set.
const CIFAR10_KEYS: &[LabelKey] = &[LabelKey {
    key: "labels",
    what: "label",
    classes: 10,
}];

/// CIFAR-100 has two, kept in this order everywhere below: fine, coarse.
const CIFAR100_KEYS: &[LabelKey] = &[
    LabelKey {
        key: "fine_labels",
        what: "fine label",
        classes: 100,
    },
    LabelKey {
        key: "coarse_labels",
        what: "coarse label",
        classes: 20,
    },
];

/// A binary record: which label sets its leading bytes hold, in file order,
/// as indices into the key lists above.
struct RecordLayout {
    /// `label_slots[i]` = which label set byte `i` of the record belongs to.
    label_slots: &'static [usize],
    keys: &'static [LabelKey],
}

impl RecordLayout {
    fn size(&self) -> usize {
        self.label_slots.len() + IMAGE_BYTES
    }
}

/// `<label><pixels>`.
const CIFAR10_RECORD: &RecordLayout = &RecordLayout {
    label_slots: &[0],
    keys: CIFAR10_KEYS,
};

/// `<coarse><fine><pixels>`: the coarse label comes first in the file.
const CIFAR100_RECORD: &RecordLayout = &RecordLayout {
    label_slots: &[1, 0],
    keys: CIFAR100_KEYS,
};

/// The images and label sets of one split, label sets in key order.
#[derive(Debug, Default)]
struct Split {
    pixels: Vec<u8>,
    labels: Vec<Vec<u8>>,
}

impl Split {
    /// An empty split with room for the images of `members`: their total
    /// size bounds the pixel count, so the pixels are never moved while the
    /// split grows (pages reserved but never written cost no memory).
    fn for_members(members: &[Member], label_sets: usize) -> Split {
        let bytes = members.iter().map(|m| m.bytes.len()).sum();
        Split {
            pixels: Vec::with_capacity(bytes),
            labels: vec![Vec::new(); label_sets],
        }
    }
}

/// Builds the dataset from the splits and the names (both in key order).
fn assemble(
    kind: CifarKind,
    train: Split,
    test: Split,
    mut names: Vec<Vec<String>>,
    cifar100_labels: Cifar100Labels,
) -> RawDataset {
    // For CIFAR-100, sets are stored fine first; swap to put the selected
    // one first.
    let swap = kind.format() == "cifar100" && cifar100_labels == Cifar100Labels::Coarse;
    if swap {
        names.swap(0, 1);
    }
    let make = |name: &str, mut split: Split| {
        if swap {
            split.labels.swap(0, 1);
        }
        let mut sets = split.labels.into_iter();
        let labels = sets.next().expect("every CIFAR split has labels");
        RawSplit {
            name: name.to_string(),
            features: Features::U8(split.pixels),
            labels,
            coarse_labels: sets.next(),
        }
    };
    let mut names = names.into_iter();
    RawDataset {
        format: kind.format().to_string(),
        classes: names.next().expect("every CIFAR dataset has class names"),
        coarse_classes: names.next(),
        shape: vec![3, 32, 32],
        splits: vec![make("train", train), make("test", test)],
    }
}

// ---------------------------------------------------------------------------
// Python version
// ---------------------------------------------------------------------------

/// Concatenates python batches into one split, freeing each batch once read.
fn python_split(archive: &Path, batches: Vec<Member>, keys: &[LabelKey]) -> Result<Split> {
    let mut split = Split::for_members(&batches, keys.len());
    for member in batches {
        with_path(
            archive,
            &member,
            python_batch(&member.bytes, keys, &mut split),
        )?;
    }
    Ok(split)
}

/// Parses one pickled batch and appends its images and labels to `split`.
/// Returns the number of images; errors are the problem, without a path.
fn python_batch(
    bytes: &[u8],
    keys: &[LabelKey],
    split: &mut Split,
) -> std::result::Result<usize, String> {
    let doc = pickle::parse(bytes).map_err(|e| e.to_string())?;
    let entry = |key: &str| {
        doc.get(doc.root, key)
            .ok_or_else(|| format!("the batch has no '{key}' entry"))
    };

    let array = doc
        .array(entry("data")?)
        .ok_or("'data' is not a numpy array")?;
    let dtype = array.dtype.as_ref().map_or("(none)", |d| d.name.as_str());
    if dtype != "u1" {
        return Err(format!("'data' has dtype {dtype}, expected u1"));
    }
    if array.fortran {
        return Err("'data' is in Fortran (column-major) order".into());
    }
    let n = match array.shape[..] {
        [n, IMAGE_BYTES] => n,
        _ => {
            return Err(format!(
                "'data' has shape {:?}, expected (N, {IMAGE_BYTES})",
                array.shape
            ))
        }
    };
    let pixels = array
        .data
        .and_then(|d| doc.bytes(d))
        .ok_or("'data' holds no bytes")?;
    if Some(pixels.len()) != n.checked_mul(IMAGE_BYTES) {
        return Err(format!(
            "'data' holds {} bytes, expected {n}·{IMAGE_BYTES}",
            pixels.len()
        ));
    }
    if n == 0 {
        return Err("the batch holds no image".into());
    }

    // Check every label set before appending anything.
    let mut label_sets = Vec::with_capacity(keys.len());
    for k in keys {
        label_sets.push(python_labels(&doc, entry(k.key)?, k, n)?);
    }
    split.pixels.extend_from_slice(pixels);
    for (out, labels) in split.labels.iter_mut().zip(label_sets) {
        out.extend(labels);
    }
    Ok(n)
}

/// A list of `n` small ints below `key.classes`, as bytes.
fn python_labels(
    doc: &Pickle,
    list: pickle::Value,
    key: &LabelKey,
    n: usize,
) -> std::result::Result<Vec<u8>, String> {
    let name = key.key;
    let items = doc
        .items(list)
        .ok_or_else(|| format!("'{name}' is not a list"))?;
    if items.len() != n {
        return Err(format!(
            "'{name}' has {} labels for {n} images",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match *v {
            pickle::Value::Int(x) if (0..i64::from(key.classes)).contains(&x) => Ok(x as u8),
            pickle::Value::Int(x) => Err(format!(
                "{name}[{i}] = {x} is out of range (there are {} classes)",
                key.classes
            )),
            other => Err(format!("{name}[{i}] is {other:?}, not an int")),
        })
        .collect()
}

/// The class-name lists stored under `keys` in a pickled meta dict.
fn python_meta(bytes: &[u8], keys: &[&str]) -> std::result::Result<Vec<Vec<String>>, String> {
    let doc = pickle::parse(bytes).map_err(|e| e.to_string())?;
    let expected = |key: &str| match key {
        "coarse_label_names" => 20,
        "fine_label_names" => 100,
        _ => 10,
    };
    keys.iter()
        .map(|&key| {
            let list = doc
                .get(doc.root, key)
                .ok_or_else(|| format!("the meta dict has no '{key}' entry"))?;
            let items = doc
                .items(list)
                .ok_or_else(|| format!("'{key}' is not a list"))?;
            let names = items
                .iter()
                .map(|&v| doc.text(v).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("'{key}' holds something other than text"))?;
            if names.len() != expected(key) {
                return Err(format!(
                    "'{key}' has {} names, expected {}",
                    names.len(),
                    expected(key)
                ));
            }
            Ok(names)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Binary version
// ---------------------------------------------------------------------------

/// Concatenates binary batches into one split, freeing each batch once read.
fn binary_split(archive: &Path, batches: Vec<Member>, layout: &RecordLayout) -> Result<Split> {
    let mut split = Split::for_members(&batches, layout.keys.len());
    for member in batches {
        with_path(
            archive,
            &member,
            binary_batch(&member.bytes, layout, &mut split),
        )?;
    }
    Ok(split)
}

/// Splits the records of one binary batch into pixels and labels, appended
/// to `split`. Returns the number of images.
fn binary_batch(
    bytes: &[u8],
    layout: &RecordLayout,
    split: &mut Split,
) -> std::result::Result<usize, String> {
    let record = layout.size();
    if !bytes.len().is_multiple_of(record) {
        return Err(format!(
            "truncated: {} bytes is not a whole number of {record}-byte records",
            bytes.len()
        ));
    }
    let n = bytes.len() / record;
    if n == 0 {
        return Err("the batch holds no image".into());
    }
    // Check every label first, so a bad batch leaves `split` untouched.
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        for (&slot, &label) in layout.label_slots.iter().zip(rec) {
            let key = &layout.keys[slot];
            if label >= key.classes {
                return Err(format!(
                    "record {i}: {} {label} is out of range (there are {} classes)",
                    key.what, key.classes
                ));
            }
        }
    }
    split.pixels.reserve(n * IMAGE_BYTES);
    for rec in bytes.chunks_exact(record) {
        let (labels, pixels) = rec.split_at(layout.label_slots.len());
        for (&slot, &label) in layout.label_slots.iter().zip(labels) {
            split.labels[slot].push(label);
        }
        split.pixels.extend_from_slice(pixels);
    }
    Ok(n)
}

/// Class names from a text file: one per line, trimmed, blank lines dropped
/// (`batches.meta.txt` ends with an empty line).
fn text_names(bytes: &[u8], expected: usize) -> std::result::Result<Vec<String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != expected {
        return Err(format!("{} class names, expected {expected}", names.len()));
    }
    Ok(names)
}

// ---------------------------------------------------------------------------
// The tarball
// ---------------------------------------------------------------------------

/// A member read into memory.
struct Member {
    /// Its path inside the archive, for messages.
    path: String,
    bytes: Vec<u8>,
}

/// Attaches `archive!member` to a problem found in a member.
fn with_path<T>(
    archive: &Path,
    member: &Member,
    result: std::result::Result<T, String>,
) -> Result<T> {
    result.map_err(|problem| DataError::new(member_path(archive, &member.path), problem))
}

/// `archive.tar.gz!member`, the path of a member in messages.
fn member_path(archive: &Path, member: &str) -> String {
    format!("{}!{member}", archive.display())
}

fn open_tarball(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|e| DataError::io(path, "opening", e))?;
    Ok(BufReader::new(file))
}

/// Largest tar member read, in bytes: CIFAR-100's `train.bin` is 150 MB.
pub const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// An error of the gzip or tar stream: in practice a truncated or damaged
/// download.
fn corrupt(path: &Path, e: io::Error) -> DataError {
    DataError::new(path, format!("truncated or corrupt tar.gz archive: {e}"))
}

/// The path of an entry, refused if it is a link or could escape the
/// directory it would be unpacked in.
fn checked_member<R: Read>(archive: &Path, entry: &tar::Entry<R>) -> Result<String> {
    let raw = entry.path_bytes();
    let name = String::from_utf8_lossy(&raw).into_owned();
    let kind = entry.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        return Err(DataError::new(
            member_path(archive, &name),
            "links are not allowed in a CIFAR archive (symlink or hard link member)",
        ));
    }
    let path = entry.path().map_err(|e| corrupt(archive, e))?;
    for component in path.components() {
        match component {
            Component::ParentDir => {
                return Err(DataError::new(
                    member_path(archive, &name),
                    "member path contains '..'",
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(DataError::new(
                    member_path(archive, &name),
                    "member path is absolute",
                ))
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(name)
}

/// The last component of a member path.
fn file_name(member: &str) -> &str {
    member
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
}

/// Streams the archive and keeps the members `kind` needs, by file name.
fn read_members<R: Read>(
    path: &Path,
    mut archive: tar::Archive<GzDecoder<R>>,
    kind: CifarKind,
) -> Result<HashMap<&'static str, Member>> {
    let wanted = kind.members();
    let mut found: HashMap<&'static str, Member> = HashMap::new();
    {
        let entries = archive.entries().map_err(|e| corrupt(path, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(path, e))?;
            let member = checked_member(path, &entry)?;
            let Some(&name) = wanted.iter().find(|&&w| w == file_name(&member)) else {
                continue; // readme.html, directories, ...
            };
            if !entry.header().entry_type().is_file() {
                return Err(DataError::new(
                    member_path(path, &member),
                    "not a regular file",
                ));
            }
            if let Some(first) = found.get(name) {
                return Err(DataError::new(
                    path,
                    format!("two members named {name}: {} and {member}", first.path),
                ));
            }
            // The largest CIFAR member is 150 MB: a header claiming more is
            // refused before anything is read or allocated.
            let size = entry.size();
            if size > MAX_MEMBER_BYTES {
                return Err(DataError::new(
                    member_path(path, &member),
                    format!(
                        "the tar header claims {size} bytes, more than any CIFAR file \
                         (at most {MAX_MEMBER_BYTES})"
                    ),
                ));
            }
            // The header's size is only a hint for the allocation: cap it
            // so a corrupt header cannot ask for terabytes up front.
            let mut bytes = Vec::with_capacity(size.min(64 << 20) as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| corrupt(path, e))?;
            if bytes.len() as u64 != size {
                return Err(DataError::new(
                    member_path(path, &member),
                    format!(
                        "truncated: the archive ends after {} of its {size} bytes",
                        bytes.len()
                    ),
                ));
            }
            found.insert(
                name,
                Member {
                    path: member,
                    bytes,
                },
            );
        }
    }
    // The tar reader stops at the end-of-archive blocks; read the gzip stream
    // to its end too, so that a cut in the padding or in the gzip trailer
    // (length and CRC) is noticed.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| corrupt(path, e))?;

    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !found.contains_key(w))
        .collect();
    if !missing.is_empty() {
        return Err(DataError::new(
            path,
            format!(
                "missing members for {}: {}",
                kind.tarball_name(),
                missing.join(", ")
            ),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `{'data': array, 'labels': labels}` in the
    /// opcodes Python 2 writes, with the array's fields given.
    fn batch_pickle(
        dtype: &str,
        fortran: bool,
        shape: (u16, u16),
        data: &[u8],
        labels: &[u8],
    ) -> Vec<u8> {
        let mut p = b"\x80\x02}q\x01(U\x04data".to_vec();
        p.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R");
        p.extend(b"(K\x01M");
        p.extend(shape.0.to_le_bytes());
        p.push(b'M');
        p.extend(shape.1.to_le_bytes());
        p.extend(b"\x86cnumpy\ndtype\nU");
        p.push(dtype.len() as u8);
        p.extend(dtype.as_bytes());
        p.extend(b"K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.push(if fortran { 0x88 } else { 0x89 });
        p.push(b'T');
        p.extend((data.len() as u32).to_le_bytes());
        p.extend(data);
        p.extend(b"tbU\x06labels](");
        for &l in labels {
            p.extend([b'K', l]);
        }
        p.extend(b"eu.");
        p
    }

    fn python10(bytes: &[u8]) -> std::result::Result<Split, String> {
        let mut split = Split {
            pixels: Vec::new(),
            labels: vec![Vec::new()],
        };
        python_batch(bytes, CIFAR10_KEYS, &mut split)?;
        Ok(split)
    }

    #[test]
    fn python_batch_reads_data_and_labels() {
        let data: Vec<u8> = (0..2 * IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
        let split = python10(&batch_pickle("u1", false, (2, 3072), &data, &[3, 9])).unwrap();
        assert_eq!(split.pixels, data);
        assert_eq!(split.labels, vec![vec![3, 9]]);
    }

    #[test]
    fn python_batch_validation() {
        let data = vec![0u8; 2 * IMAGE_BYTES];
        let cases = [
            (
                batch_pickle("i2", false, (2, 3072), &data, &[0, 0]),
                "'data' has dtype i2, expected u1",
            ),
            (
                batch_pickle("u1", true, (2, 3072), &data, &[0, 0]),
                "'data' is in Fortran (column-major) order",
            ),
            (
                batch_pickle("u1", false, (3072, 2), &data, &[0, 0]),
                "'data' has shape [3072, 2], expected (N, 3072)",
            ),
            (
                batch_pickle("u1", false, (2, 3072), &data[1..], &[0, 0]),
                "'data' holds 6143 bytes, expected 2·3072",
            ),
            (
                batch_pickle("u1", false, (0, 3072), &[], &[]),
                "the batch holds no image",
            ),
            (
                batch_pickle("u1", false, (2, 3072), &data, &[0, 0, 0]),
                "'labels' has 3 labels for 2 images",
            ),
            (
                batch_pickle("u1", false, (2, 3072), &data, &[0, 10]),
                "labels[1] = 10 is out of range (there are 10 classes)",
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(python10(&bytes).unwrap_err(), want);
        }
        // A dict without 'labels'.
        let mut no_labels = batch_pickle("u1", false, (2, 3072), &data, &[0, 0]);
        let at = no_labels
            .windows(8)
            .position(|w| w == b"U\x06labels")
            .unwrap();
        no_labels[at + 2] = b'L';
        assert_eq!(
            python10(&no_labels).unwrap_err(),
            "the batch has no 'labels' entry"
        );
    }

    #[test]
    fn binary_batch_splits_records() {
        // Two CIFAR-100 records: coarse label first, then fine.
        let mut bytes = vec![19, 99];
        bytes.extend(vec![7u8; IMAGE_BYTES]);
        bytes.extend([0, 5]);
        bytes.extend(vec![8u8; IMAGE_BYTES]);
        let mut split = Split {
            pixels: Vec::new(),
            labels: vec![Vec::new(), Vec::new()],
        };
        assert_eq!(binary_batch(&bytes, CIFAR100_RECORD, &mut split), Ok(2));
        assert_eq!(split.labels, vec![vec![99, 5], vec![19, 0]]);
        assert_eq!(split.pixels.len(), 2 * IMAGE_BYTES);
        assert_eq!(split.pixels[IMAGE_BYTES - 1], 7);
        assert_eq!(split.pixels[IMAGE_BYTES], 8);

        assert_eq!(
            binary_batch(&[], CIFAR10_RECORD, &mut split),
            Err("the batch holds no image".to_string())
        );
    }

    #[test]
    fn text_names_trims_and_counts() {
        assert_eq!(text_names(b" a \r\nb\n\n", 2).unwrap(), ["a", "b"]);
        assert_eq!(
            text_names(b"a\nb\n", 3).unwrap_err(),
            "2 class names, expected 3"
        );
        assert_eq!(text_names(b"\xff\n", 1).unwrap_err(), "not UTF-8 text");
    }

    #[test]
    fn member_file_names() {
        assert_eq!(
            file_name("cifar-10-batches-py/data_batch_1"),
            "data_batch_1"
        );
        assert_eq!(file_name("data_batch_1"), "data_batch_1");
        assert_eq!(file_name("cifar-10-batches-py/"), "cifar-10-batches-py");
        assert_eq!(
            CifarKind::of_member("data_batch_1"),
            Some(CifarKind::Cifar10Python)
        );
        assert_eq!(
            CifarKind::of_member("test.bin"),
            Some(CifarKind::Cifar100Binary)
        );
        assert_eq!(CifarKind::of_member("readme.html"), None);
    }
}
