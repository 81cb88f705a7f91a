//! The CIFAR readers against the miniature archives in `shared/fixtures`:
//! every pixel and label is checked against the formulas of the fixtures'
//! manifest, both encodings must give the same dataset, and every kind of
//! damaged input must give a clear error.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::report;

use fastnn::data::cifar::{self, Cifar100Labels, CifarKind};
use fastnn::data::pickle::{self, Pickle, Value};
use fastnn::data::{Features, RawDataset, RawSplit};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

// ---- the fixtures' formulas ------------------------------------------------

/// `count` images of the given seed, as the generator writes them.
fn pixels(seed: usize, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 3072);
    for n in 0..count {
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(((seed * 31 + n * 7 + c * 85 + y * 8 + x) & 0xff) as u8);
                }
            }
        }
    }
    out
}

fn labels10(seed: usize, count: usize) -> Vec<u8> {
    (0..count)
        .map(|n| ((seed * 3 + n * 7 + n / 10) % 10) as u8)
        .collect()
}

fn fine100(seed: usize, count: usize) -> Vec<u8> {
    (0..count)
        .map(|n| ((seed * 11 + n * 37) % 100) as u8)
        .collect()
}

fn coarse_of(fine: &[u8]) -> Vec<u8> {
    let table: Vec<u8> = manifest()["coarse_of_fine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(table.len(), 100);
    fine.iter().map(|&f| table[f as usize]).collect()
}

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Compares two byte vectors, reporting the first difference rather than
/// printing megabytes.
fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at index {i} (image {}, byte {}): got {}, want {}",
            i / 3072,
            i % 3072,
            got[i],
            want[i]
        );
    }
}

fn features(split: &RawSplit) -> &[u8] {
    match &split.features {
        Features::U8(v) => v,
        Features::F32(_) => panic!("CIFAR features must be bytes"),
    }
}

/// The CIFAR-10 fixture, as the formulas say: train = data_batch_1 (1001
/// images, seed 1) then data_batch_2..5 (20 images each, seeds 2..5); test =
/// test_batch (20 images, seed 6).
fn check_cifar10(ds: &RawDataset) {
    assert_eq!(ds.format, "cifar10");
    assert_eq!(ds.shape, vec![3, 32, 32]);
    assert_eq!(ds.classes, CIFAR10_NAMES);
    assert_eq!(ds.coarse_classes, None);
    assert_eq!(ds.splits.len(), 2);

    let counts = [(1, 1001), (2, 20), (3, 20), (4, 20), (5, 20)];
    let mut want_pixels = Vec::new();
    let mut want_labels = Vec::new();
    for (seed, count) in counts {
        want_pixels.extend(pixels(seed, count));
        want_labels.extend(labels10(seed, count));
    }
    let train = &ds.splits[0];
    assert_eq!(train.name, "train");
    assert_eq!(train.len(), 1081);
    assert_bytes_eq("train pixels", features(train), &want_pixels);
    assert_eq!(train.labels, want_labels);
    assert_eq!(train.coarse_labels, None);

    // Cross-check the label formula with the manifest's own numbers.
    let m = manifest();
    let first: Vec<u8> = m["cifar10_first_labels"]["data_batch_1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(train.labels[..12], first[..]);
    let mut histogram = [0u64; 10];
    for &l in &train.labels {
        histogram[l as usize] += 1;
    }
    let want: Vec<u64> = m["cifar10_label_histogram_train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(histogram[..], want[..]);

    let test = &ds.splits[1];
    assert_eq!(test.name, "test");
    assert_bytes_eq("test pixels", features(test), &pixels(6, 20));
    assert_eq!(test.labels, labels10(6, 20));
    assert_eq!(test.coarse_labels, None);
}

/// The CIFAR-100 fixture with fine labels selected: train = 50 images of
/// seed 1, test = 20 images of seed 2.
fn check_cifar100_fine(ds: &RawDataset) {
    assert_eq!(ds.format, "cifar100");
    assert_eq!(ds.shape, vec![3, 32, 32]);
    assert_eq!(ds.classes.len(), 100);
    assert_eq!(ds.classes[..3], ["apple", "aquarium_fish", "baby"]);
    assert_eq!(ds.classes[99], "worm");
    let coarse = ds.coarse_classes.as_ref().unwrap();
    assert_eq!(coarse.len(), 20);
    assert_eq!(coarse[..3], ["aquatic_mammals", "fish", "flowers"]);
    assert_eq!(coarse[19], "vehicles_2");

    for (split, name, seed, count) in [
        (&ds.splits[0], "train", 1, 50),
        (&ds.splits[1], "test", 2, 20),
    ] {
        assert_eq!(split.name, name);
        assert_bytes_eq(name, features(split), &pixels(seed, count));
        let fine = fine100(seed, count);
        assert_eq!(split.coarse_labels.as_ref().unwrap(), &coarse_of(&fine));
        assert_eq!(split.labels, fine);
    }
}

// ---- the four fixture archives ---------------------------------------------

fn read(name: &str, kind: CifarKind) -> RawDataset {
    cifar::read_tarball(&fixture(name), kind, Cifar100Labels::Fine)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn cifar10_python_matches_the_formulas() {
    check_cifar10(&read("cifar-10-python.tar.gz", CifarKind::Cifar10Python));
}

#[test]
fn cifar10_binary_matches_the_formulas() {
    check_cifar10(&read("cifar-10-binary.tar.gz", CifarKind::Cifar10Binary));
}

#[test]
fn cifar100_python_matches_the_formulas() {
    check_cifar100_fine(&read("cifar-100-python.tar.gz", CifarKind::Cifar100Python));
}

#[test]
fn cifar100_binary_matches_the_formulas() {
    check_cifar100_fine(&read("cifar-100-binary.tar.gz", CifarKind::Cifar100Binary));
}

#[test]
fn python_and_binary_versions_are_identical() {
    let py = read("cifar-10-python.tar.gz", CifarKind::Cifar10Python);
    let bin = read("cifar-10-binary.tar.gz", CifarKind::Cifar10Binary);
    assert!(py == bin, "CIFAR-10: the two encodings differ");
    let py = read("cifar-100-python.tar.gz", CifarKind::Cifar100Python);
    let bin = read("cifar-100-binary.tar.gz", CifarKind::Cifar100Binary);
    assert!(py == bin, "CIFAR-100: the two encodings differ");
}

#[test]
fn cifar100_coarse_selection_swaps_the_label_sets() {
    for (name, kind) in [
        ("cifar-100-python.tar.gz", CifarKind::Cifar100Python),
        ("cifar-100-binary.tar.gz", CifarKind::Cifar100Binary),
    ] {
        let fine = read(name, kind);
        let coarse = cifar::read_tarball(&fixture(name), kind, Cifar100Labels::Coarse).unwrap();
        assert_eq!(coarse.classes.len(), 20);
        assert_eq!(Some(&coarse.classes), fine.coarse_classes.as_ref());
        assert_eq!(Some(&fine.classes), coarse.coarse_classes.as_ref());
        for (f, c) in fine.splits.iter().zip(&coarse.splits) {
            assert_eq!(Some(&c.labels), f.coarse_labels.as_ref());
            assert_eq!(Some(&f.labels), c.coarse_labels.as_ref());
            assert_eq!(c.features, f.features);
        }
    }
}

#[test]
fn detects_the_four_kinds() {
    let cases = [
        ("cifar-10-python.tar.gz", CifarKind::Cifar10Python),
        ("cifar-10-binary.tar.gz", CifarKind::Cifar10Binary),
        ("cifar-100-python.tar.gz", CifarKind::Cifar100Python),
        ("cifar-100-binary.tar.gz", CifarKind::Cifar100Binary),
    ];
    for (name, kind) in cases {
        assert_eq!(
            cifar::detect_tarball(&fixture(name)).unwrap(),
            Some(kind),
            "{name}"
        );
        assert_eq!(kind.tarball_name(), name);
    }
    // `read` detects, then reads.
    check_cifar10(&cifar::read(&fixture("cifar-10-binary.tar.gz"), Cifar100Labels::Fine).unwrap());

    // A tarball with no CIFAR member is recognised as none of them.
    let dir = tempfile::tempdir().unwrap();
    let other = write_tar_gz(&dir, "other.tar.gz", &[file("notes/readme.txt", b"hello")]);
    assert_eq!(cifar::detect_tarball(&other).unwrap(), None);
    let e = cifar::read(&other, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: not a CIFAR tarball: none of its members is a CIFAR batch or meta file",
            other.display()
        )
    );
}

#[test]
fn conversion_is_fast() {
    // Not a benchmark: a guard against an accidental quadratic loop.
    let start = std::time::Instant::now();
    for (name, kind) in [
        ("cifar-10-python.tar.gz", CifarKind::Cifar10Python),
        ("cifar-10-binary.tar.gz", CifarKind::Cifar10Binary),
        ("cifar-100-python.tar.gz", CifarKind::Cifar100Python),
        ("cifar-100-binary.tar.gz", CifarKind::Cifar100Binary),
    ] {
        read(name, kind);
    }
    let elapsed = start.elapsed();
    println!("the four fixture archives convert in {elapsed:?}");
    assert!(elapsed.as_secs() < 5, "{elapsed:?}");
}

// ---- standalone pickles ----------------------------------------------------

fn text_list(doc: &Pickle, v: Value) -> Vec<String> {
    doc.items(v)
        .unwrap()
        .iter()
        .map(|&s| doc.text(s).unwrap().to_string())
        .collect()
}

fn int_list(doc: &Pickle, v: Value) -> Vec<i64> {
    doc.items(v)
        .unwrap()
        .iter()
        .map(|v| match v {
            Value::Int(i) => *i,
            other => panic!("not an int: {other:?}"),
        })
        .collect()
}

/// Checks the three-image dict every standalone pickle fixture holds.
fn check_three_images(file: &str, names: [&str; 3]) {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let doc = pickle::parse(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let keys: Vec<&str> = doc
        .dict(doc.root)
        .unwrap()
        .iter()
        .map(|&(k, _)| doc.text(k).unwrap())
        .collect();
    assert_eq!(keys, ["batch_label", "labels", "data", "filenames"]);
    let label = doc.get(doc.root, "batch_label").unwrap();
    assert_eq!(doc.bytes(label), Some(&b"training batch 1 of 5"[..]));
    assert_eq!(
        int_list(&doc, doc.get(doc.root, "labels").unwrap()),
        [6, 9, 9]
    );
    let array = doc.array(doc.get(doc.root, "data").unwrap()).unwrap();
    assert_eq!(array.shape, [3, 3072]);
    assert_eq!(array.dtype.as_ref().unwrap().name, "u1");
    assert!(!array.fortran);
    assert_bytes_eq(file, doc.bytes(array.data.unwrap()).unwrap(), &pixels(1, 3));
    assert_eq!(
        text_list(&doc, doc.get(doc.root, "filenames").unwrap()),
        names
    );
}

#[test]
fn python2_cpickle_three_images() {
    check_three_images(
        "tiny_batch_3img.pkl",
        [
            "leptodactylus_pentadactylus_s_000004.png",
            "camion_s_000148.png",
            "tipper_truck_s_001250.png",
        ],
    );
}

#[test]
fn python3_protocol2_repickle_under_numpy2() {
    // bytes via _codecs.encode(text, 'latin1'), numpy._core module.
    check_three_images(
        "py3_proto2_np2.pkl",
        ["a_s_000001.png", "b_s_000002.png", "c_s_000003.png"],
    );
}

#[test]
fn python3_protocol4_repickle_under_numpy2() {
    // FRAME, STACK_GLOBAL, MEMOIZE, SHORT_BINBYTES, BINBYTES.
    check_three_images(
        "py3_proto4_np2.pkl",
        ["a_s_000001.png", "b_s_000002.png", "c_s_000003.png"],
    );
}

#[test]
fn python3_protocol5_is_refused() {
    let bytes = std::fs::read(fixture("py3_proto5_np1.pkl")).unwrap();
    let e = pickle::parse(&bytes).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pickle byte 0: unsupported pickle protocol 5 (this reader handles protocols 2 to 4; \
         re-pickle with protocol 4 or lower)"
    );
}

// ---- building archives for the bad-input tests -----------------------------

/// A member to put in a test archive.
struct Entry {
    path: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Option<&'static str>,
}

fn file(path: &str, data: &[u8]) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        link: None,
    }
}

/// Writes a tar.gz of `entries`. Names are written into the header
/// directly, so that paths the `tar` builder would refuse (`..`) can be made.
fn write_tar_gz(dir: &tempfile::TempDir, name: &str, entries: &[Entry]) -> PathBuf {
    let path = dir.path().join(name);
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(gz);
    for e in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..e.path.len()].copy_from_slice(&e.path);
        header.set_entry_type(e.kind);
        header.set_size(e.data.len() as u64);
        header.set_mode(0o644);
        if let Some(target) = e.link {
            header.set_link_name(target).unwrap();
        }
        header.set_cksum();
        builder.append(&header, &e.data[..]).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    path
}

/// The members of a fixture archive, for rebuilding it with changes.
fn fixture_members(name: &str) -> Vec<Entry> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(fixture(name)).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(Entry {
            path: entry.path_bytes().into_owned(),
            kind: entry.header().entry_type(),
            data,
            link: None,
        });
    }
    out
}

/// A copy of a fixture archive with member `member` (a file name) changed
/// by `edit`, and the error reading it gives.
fn error_after_edit(
    fixture_name: &str,
    member: &str,
    edit: impl Fn(&mut Vec<u8>),
) -> (PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = fixture_members(fixture_name);
    let target = entries
        .iter_mut()
        .find(|e| e.path.ends_with(format!("/{member}").as_bytes()))
        .unwrap();
    edit(&mut target.data);
    let path = write_tar_gz(&dir, fixture_name, &entries);
    let e = cifar::read(&path, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    // Keep the file name only, so expected messages are short.
    let message = e.replace(&path.display().to_string(), fixture_name);
    (path, message)
}

/// Position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

// ---- bad inputs --------------------------------------------------------------

#[test]
fn truncated_tarball() {
    let full = std::fs::read(fixture("cifar-10-binary.tar.gz")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.tar.gz");
    // Inside the header, inside the deflate data, in the gzip trailer (the
    // CRC is in the last 8 bytes, after the tar end-of-archive blocks).
    for cut in [
        5,
        100,
        full.len() / 2,
        full.len() - 9,
        full.len() - 4,
        full.len() - 1,
    ] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = cifar::read_tarball(&path, CifarKind::Cifar10Binary, Cifar100Labels::Fine)
            .unwrap_err()
            .to_string();
        let prefix = format!("{}: truncated or corrupt tar.gz archive: ", path.display());
        assert!(e.starts_with(&prefix), "cut at {cut}: {e}");
    }
}

#[test]
fn truncated_tarball_cut_anywhere_is_an_error() {
    // Cuts all over the smallest archive (every byte of the gzip header and
    // of the tail, every 7th byte between): never a panic, never a dataset.
    let full = std::fs::read(fixture("cifar-100-binary.tar.gz")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.tar.gz");
    let tail = full.len() - 64;
    let cuts = (0..64).chain((64..tail).step_by(7)).chain(tail..full.len());
    for cut in cuts {
        std::fs::write(&path, &full[..cut]).unwrap();
        let r = cifar::read_tarball(&path, CifarKind::Cifar100Binary, Cifar100Labels::Fine);
        assert!(r.is_err(), "cut at {cut} of {} read fine", full.len());
    }
}

#[test]
fn truncated_member() {
    // A data batch one byte short of two records.
    let (_, e) = error_after_edit("cifar-10-binary.tar.gz", "data_batch_2.bin", |data| {
        data.truncate(2 * 3073 - 1)
    });
    assert_eq!(
        e,
        "cifar-10-binary.tar.gz!cifar-10-batches-bin/data_batch_2.bin: \
         truncated: 6145 bytes is not a whole number of 3073-byte records"
    );
    let (_, e) = error_after_edit("cifar-100-binary.tar.gz", "test.bin", |data| {
        data.truncate(3073)
    });
    assert_eq!(
        e,
        "cifar-100-binary.tar.gz!cifar-100-binary/test.bin: \
         truncated: 3073 bytes is not a whole number of 3074-byte records"
    );
}

#[test]
fn truncated_pickle_member() {
    let (_, e) = error_after_edit("cifar-10-python.tar.gz", "test_batch", |data| {
        data.truncate(1000)
    });
    assert_eq!(
        e,
        "cifar-10-python.tar.gz!cifar-10-batches-py/test_batch: pickle byte 233: \
         truncated: BINSTRING needs 61440 bytes, only 762 left in the input"
    );
}

#[test]
fn wrong_pickle_opcode() {
    // Byte 2 is EMPTY_DICT after PROTO 2; 0xff is no opcode.
    let (_, e) = error_after_edit("cifar-10-python.tar.gz", "data_batch_3", |data| {
        assert_eq!(data[2], b'}');
        data[2] = 0xff;
    });
    assert_eq!(
        e,
        "cifar-10-python.tar.gz!cifar-10-batches-py/data_batch_3: pickle byte 2: \
         unsupported opcode 0xff (not a known opcode)"
    );
}

#[test]
fn forbidden_global() {
    let (_, e) = error_after_edit("cifar-100-python.tar.gz", "train", |data| {
        let at = find(data, b"cnumpy\nndarray\n");
        data.splice(at..at + 15, b"cos\nsystem\n".iter().copied());
    });
    assert!(
        e.starts_with("cifar-100-python.tar.gz!cifar-100-python/train: pickle byte ")
            && e.contains(": forbidden global os.system (only numpy array reconstruction"),
        "{e}"
    );
}

#[test]
fn python_label_out_of_range() {
    // The first label of test_batch is BININT1 8 right after the list's MARK.
    let (_, e) = error_after_edit("cifar-10-python.tar.gz", "test_batch", |data| {
        let at = find(data, b"U\x06labels") + 8;
        let first = at + find(&data[at..], b"(K") + 2;
        assert_eq!(data[first], 8);
        data[first] = 12;
    });
    assert_eq!(
        e,
        "cifar-10-python.tar.gz!cifar-10-batches-py/test_batch: \
         labels[0] = 12 is out of range (there are 10 classes)"
    );
}

#[test]
fn binary_label_out_of_range() {
    let (_, e) = error_after_edit("cifar-10-binary.tar.gz", "test_batch.bin", |data| {
        data[3 * 3073] = 10
    });
    assert_eq!(
        e,
        "cifar-10-binary.tar.gz!cifar-10-batches-bin/test_batch.bin: \
         record 3: label 10 is out of range (there are 10 classes)"
    );
    // CIFAR-100 records: coarse label first, then fine.
    let (_, e) = error_after_edit("cifar-100-binary.tar.gz", "train.bin", |data| {
        data[3074] = 20
    });
    assert_eq!(
        e,
        "cifar-100-binary.tar.gz!cifar-100-binary/train.bin: \
         record 1: coarse label 20 is out of range (there are 20 classes)"
    );
    let (_, e) = error_after_edit("cifar-100-binary.tar.gz", "test.bin", |data| data[1] = 100);
    assert_eq!(
        e,
        "cifar-100-binary.tar.gz!cifar-100-binary/test.bin: \
         record 0: fine label 100 is out of range (there are 100 classes)"
    );
}

#[test]
fn image_and_label_counts_differ() {
    // Drop the first label (a 2-byte BININT1) of a 20-image batch.
    let (_, e) = error_after_edit("cifar-10-python.tar.gz", "data_batch_5", |data| {
        let at = find(data, b"U\x06labels") + 8;
        let first = at + find(&data[at..], b"(K") + 1;
        data.drain(first..first + 2);
    });
    assert_eq!(
        e,
        "cifar-10-python.tar.gz!cifar-10-batches-py/data_batch_5: \
         'labels' has 19 labels for 20 images"
    );
}

#[test]
fn missing_members() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = fixture_members("cifar-10-binary.tar.gz")
        .into_iter()
        .filter(|e| !e.path.ends_with(b"data_batch_5.bin") && !e.path.ends_with(b"test_batch.bin"))
        .collect();
    let path = write_tar_gz(&dir, "c.tar.gz", &entries);
    let e = cifar::read(&path, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: missing members for cifar-10-binary.tar.gz: data_batch_5.bin, test_batch.bin",
            path.display()
        )
    );
}

#[test]
fn parent_dir_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = fixture_members("cifar-10-binary.tar.gz");
    entries.insert(1, file("cifar-10-batches-bin/../../evil.bin", b"x"));
    let path = write_tar_gz(&dir, "c.tar.gz", &entries);
    let e = cifar::read_tarball(&path, CifarKind::Cifar10Binary, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}!cifar-10-batches-bin/../../evil.bin: member path contains '..'",
            path.display()
        )
    );
}

#[test]
fn absolute_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = fixture_members("cifar-100-binary.tar.gz");
    entries.push(file("/tmp/evil", b"x"));
    let path = write_tar_gz(&dir, "c.tar.gz", &entries);
    let e = cifar::read_tarball(&path, CifarKind::Cifar100Binary, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{}!/tmp/evil: member path is absolute", path.display())
    );
}

#[test]
fn symlink_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries: Vec<Entry> = fixture_members("cifar-10-binary.tar.gz")
        .into_iter()
        .filter(|e| !e.path.ends_with(b"test_batch.bin"))
        .collect();
    entries.push(Entry {
        path: b"cifar-10-batches-bin/test_batch.bin".to_vec(),
        kind: tar::EntryType::Symlink,
        data: Vec::new(),
        link: Some("/etc/passwd"),
    });
    let path = write_tar_gz(&dir, "c.tar.gz", &entries);
    let e = cifar::read_tarball(&path, CifarKind::Cifar10Binary, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}!cifar-10-batches-bin/test_batch.bin: links are not allowed in a CIFAR \
             archive (symlink or hard link member)",
            path.display()
        )
    );
}

#[test]
fn duplicate_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = fixture_members("cifar-100-binary.tar.gz");
    entries.push(file("other/test.bin", &[0u8; 3074]));
    let path = write_tar_gz(&dir, "c.tar.gz", &entries);
    let e = cifar::read_tarball(&path, CifarKind::Cifar100Binary, Cifar100Labels::Fine)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: two members named test.bin: cifar-100-binary/test.bin and other/test.bin",
            path.display()
        )
    );
}

#[test]
fn wrong_number_of_class_names() {
    let (_, e) = error_after_edit("cifar-10-binary.tar.gz", "batches.meta.txt", |data| {
        data.extend_from_slice(b"  unicorn \n")
    });
    assert_eq!(
        e,
        "cifar-10-binary.tar.gz!cifar-10-batches-bin/batches.meta.txt: \
         11 class names, expected 10"
    );
}

#[test]
fn archive_that_is_not_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.tar.gz");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"this is not a gzip file at all")
        .unwrap();
    let e = cifar::detect_tarball(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: truncated or corrupt tar.gz archive: ",
            path.display()
        )),
        "{e}"
    );
}

// ---- real archives, when a user has them ------------------------------------

/// Reads whichever of the four real archives sit in `$FASTNN_CIFAR_DIR` and
/// checks what the CIFAR page promises: 50,000 training and 10,000 test
/// images, classes balanced. Ignored by default (the archives are 170 MB
/// each and never downloaded by tests):
///
/// ```text
/// FASTNN_CIFAR_DIR=~/data cargo test --test cifar -- --ignored --nocapture
/// ```
#[test]
#[ignore]
fn real_archives() {
    let dir = PathBuf::from(std::env::var("FASTNN_CIFAR_DIR").expect("set FASTNN_CIFAR_DIR"));
    let mut seen = 0;
    for kind in CifarKind::ALL {
        let path = dir.join(kind.tarball_name());
        let what = format!("real CIFAR archive {}", kind.tarball_name());
        if !path.exists() {
            report::skipped(&what, &format!("not in {}", dir.display()));
            continue;
        }
        seen += 1;
        let start = std::time::Instant::now();
        let ds = cifar::read_tarball(&path, kind, Cifar100Labels::Fine).unwrap();
        println!("{}: read in {:?}", path.display(), start.elapsed());
        let classes = ds.classes.len();
        for (split, n) in ds.splits.iter().zip([50_000, 10_000]) {
            assert_eq!(split.len(), n);
            assert_eq!(features(split).len(), n * 3072);
            let mut histogram = vec![0; classes];
            for &l in &split.labels {
                histogram[l as usize] += 1;
            }
            assert_eq!(histogram, vec![n / classes; classes], "{}", split.name);
        }
        report::ran(&what);
    }
    assert!(seen > 0, "no CIFAR tarball in {}", dir.display());
}
