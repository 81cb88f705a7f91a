//! The dataset file and the IDX and CSV readers, through the library API.

mod common;

use common::fixtures;
use std::path::{Path, PathBuf};

use fastnn::data::convert::{convert, convert_idx_bytes, ConvertOptions};
use fastnn::data::csv::{read_csv, CsvOptions, Header, LabelColumn};
use fastnn::data::embedded::{self, FILE_NAMES};
use fastnn::data::file::{write_dataset, TENSOR_ALIGN};
use fastnn::data::idx::{read_idx_bytes, read_idx_dir, read_maybe_gzip, IdxBytes, FASHION_CLASSES};
use fastnn::data::{
    Augment, Dataset, FeatureView, Features, Geometry, Holdout, Normalize, Normalizer, RawDataset,
    RawSplit, SourceInfo,
};
use fastnn::team::Team;
use md5::{Digest, Md5};

fn digits() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// A small dataset with awkward sizes: 7 training samples of 2×1×3
/// features (so neither the images nor the labels fill 64 bytes), 3 test
/// samples, and a feature that is constant on the training split.
fn awkward() -> RawDataset {
    let d = 6;
    let train: Vec<u8> = (0..7 * d)
        .map(|i| if i % d == 4 { 9 } else { (i * 37 % 251) as u8 })
        .collect();
    let test: Vec<u8> = (0..3 * d).map(|i| (i * 11 % 256) as u8).collect();
    RawDataset {
        format: "test".to_string(),
        classes: vec!["a".into(), "b".into(), "c".into()],
        coarse_classes: None,
        shape: vec![2, 1, 3],
        splits: vec![
            RawSplit {
                name: "train".into(),
                features: Features::U8(train),
                labels: vec![0, 1, 2, 0, 1, 2, 0],
                coarse_labels: None,
            },
            RawSplit {
                name: "test".into(),
                features: Features::U8(test),
                labels: vec![2, 1, 0],
                coarse_labels: None,
            },
        ],
    }
}

fn write_tmp(raw: &RawDataset) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.safetensors");
    let source = SourceInfo {
        name: "awkward".into(),
        files: vec![("awkward".into(), "00".into())],
    };
    write_dataset(raw, &source, &path, false).unwrap();
    (dir, path)
}

fn u8_features(view: FeatureView<'_>) -> &[u8] {
    match view {
        FeatureView::U8(v) => v,
        FeatureView::F32(_) => panic!("expected u8 features"),
    }
}

#[test]
fn round_trip_keeps_every_value_and_aligns_every_tensor() {
    let raw = awkward();
    let (_dir, path) = write_tmp(&raw);
    let ds = Dataset::open(&path).unwrap();
    assert_eq!(ds.classes(), raw.classes.as_slice());
    assert_eq!(ds.sample_shape(), &[2, 1, 3]);
    assert_eq!(ds.split_names(), &["train".to_string(), "test".to_string()]);
    for split in &raw.splits {
        let view = ds.split(&split.name).unwrap();
        let Features::U8(expected) = &split.features else {
            unreachable!()
        };
        assert_eq!(u8_features(view.features()), expected.as_slice());
        assert_eq!(view.labels(), split.labels.as_slice());
        assert_eq!(view.dim, 6);
    }

    // The file is valid safetensors, and every tensor starts 64-byte aligned
    // in the file (so in the page-aligned map).
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header_len) % TENSOR_ALIGN, 0);
    let base = bytes.as_ptr() as usize;
    let mut names = st.names();
    names.sort();
    assert!(names.contains(&"train.images") && names.contains(&"stats.channel_std"));
    // Every tensor but the `__pad.K` fillers, whose job is to end unaligned
    // runs, starts aligned.
    for name in names.into_iter().filter(|n| !n.starts_with("__pad.")) {
        let t = st.tensor(name).unwrap();
        let offset = t.data().as_ptr() as usize - base;
        assert_eq!(offset % TENSOR_ALIGN, 0, "{name} at file offset {offset}");
    }
    assert_eq!(st.tensor("train.images").unwrap().shape(), &[7, 6]);
}

#[test]
fn statistics_come_from_the_training_split_only() {
    let raw = awkward();
    let (_dir, path) = write_tmp(&raw);
    let ds = Dataset::open(&path).unwrap();
    let stats = ds.stats();
    let Features::U8(train) = &raw.splits[0].features else {
        unreachable!()
    };
    let rows: Vec<&[u8]> = train.chunks(6).collect();
    for f in 0..6 {
        let xs: Vec<f64> = rows.iter().map(|r| r[f] as f64).collect();
        let mean = xs.iter().sum::<f64>() / 7.0;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 7.0;
        assert!(
            (stats.feature_mean[f] as f64 - mean).abs() < 1e-4,
            "mean {f}"
        );
        assert!(
            (stats.feature_std[f] as f64 - var.sqrt()).abs() < 1e-4,
            "std {f}"
        );
    }
    assert_eq!(stats.feature_std[4], 0.0, "feature 4 is constant on train");
    for c in 0..2 {
        let xs: Vec<f64> = rows
            .iter()
            .flat_map(|r| r[c * 3..c * 3 + 3].iter().map(|&x| x as f64))
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!((stats.channel_mean[c] as f64 - mean).abs() < 1e-4);
        assert!((stats.channel_std[c] as f64 - var.sqrt()).abs() < 1e-4);
    }
}

#[test]
fn gather_normalises_the_requested_rows() {
    let raw = awkward();
    let (_dir, path) = write_tmp(&raw);
    let ds = Dataset::open(&path).unwrap();
    let stats = ds.stats();
    let test = ds.split("test").unwrap();
    let indices = [2usize, 0, 2];
    let mut out = vec![f32::NAN; 3 * 6];
    let mut labels = vec![99u8; 3];
    for mode in [Normalize::Feature, Normalize::Channel, Normalize::None] {
        Normalizer::new(mode, &stats, 6).gather(&test, &indices, &mut out, &mut labels, None);
        assert_eq!(labels, vec![0, 2, 0]);
        for (r, &i) in indices.iter().enumerate() {
            for f in 0..6 {
                let x = u8_features(test.features())[i * 6 + f] as f64;
                let (mean, std) = match mode {
                    Normalize::Feature => {
                        (stats.feature_mean[f] as f64, stats.feature_std[f] as f64)
                    }
                    Normalize::Channel => (
                        stats.channel_mean[f / 3] as f64,
                        stats.channel_std[f / 3] as f64,
                    ),
                    Normalize::None => (0.0, 1.0),
                };
                let expected = if std == 0.0 { 0.0 } else { (x - mean) / std };
                let got = out[r * 6 + f] as f64;
                assert!(
                    (got - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                    "{mode:?} row {r} feature {f}: {got} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn validation_is_cut_from_the_end_of_the_training_split() {
    let (_dir, path) = write_tmp(&awkward());
    let ds = Dataset::open(&path).unwrap();
    let (train, val) = ds.train_validation(Holdout::Count(2)).unwrap();
    assert_eq!((train.len(), val.len()), (5, 2));
    assert_eq!(val.labels(), &[2, 0]);
    assert_eq!(
        u8_features(val.features()),
        &u8_features(ds.split("train").unwrap().features())[5 * 6..]
    );
    let (train, val) = ds.train_validation(Holdout::Fraction(0.3)).unwrap();
    assert_eq!((train.len(), val.len()), (5, 2));
    let (train, val) = ds.train_validation(Holdout::Count(0)).unwrap();
    assert_eq!((train.len(), val.len()), (7, 0));
    let err = ds
        .train_validation(Holdout::Count(7))
        .unwrap_err()
        .to_string();
    assert!(err.contains("leaves no training sample"), "{err}");
}

#[test]
fn truncated_or_corrupted_files_are_refused_at_open() {
    let (dir, path) = write_tmp(&awkward());
    let bytes = std::fs::read(&path).unwrap();

    let cut = dir.path().join("cut.safetensors");
    for len in [0, 5, 8, 100, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let err = Dataset::open(&cut).unwrap_err().to_string();
        assert!(err.starts_with(&cut.display().to_string()), "{err}");
        assert!(
            err.contains("truncated") || err.contains("shorter") || err.contains("does not match"),
            "length {len}: {err}"
        );
    }

    let mut flipped = bytes.clone();
    let last = flipped.len() - 200;
    flipped[last] ^= 0x55;
    let bad = dir.path().join("flipped.safetensors");
    std::fs::write(&bad, &flipped).unwrap();
    let err = Dataset::open(&bad).unwrap_err().to_string();
    assert!(err.contains("corrupted: the data checksum"), "{err}");

    let mut appended = bytes.clone();
    appended.extend_from_slice(&[0; 64]);
    std::fs::write(&bad, &appended).unwrap();
    let err = Dataset::open(&bad).unwrap_err().to_string();
    assert!(err.contains("does not match its header"), "{err}");

    let mut huge = bytes;
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&bad, &huge).unwrap();
    let err = Dataset::open(&bad).unwrap_err().to_string();
    assert!(err.contains("header claims 1099511627776 bytes"), "{err}");
}

#[test]
fn an_existing_output_is_kept_unless_overwrite() {
    let raw = awkward();
    let (_dir, path) = write_tmp(&raw);
    let before = std::fs::read(&path).unwrap();
    let err = write_dataset(&raw, &SourceInfo::default(), &path, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    write_dataset(&raw, &SourceInfo::default(), &path, true).unwrap();
    assert_ne!(
        std::fs::read(&path).unwrap(),
        before,
        "metadata differs, so the file was rewritten"
    );
}

#[test]
fn idx_fixture_decodes_to_its_formulas() {
    let raw = read_idx_dir(&fixtures().join("mnist-tiny"), digits()).unwrap();
    assert_eq!(raw.shape, vec![1, 28, 28]);
    assert_eq!(raw.splits.len(), 1, "the fixture has no t10k files");
    let train = &raw.splits[0];
    let Features::U8(pixels) = &train.features else {
        panic!("u8")
    };
    for n in 0..12 {
        assert_eq!(train.labels[n] as usize, (n * 3) % 10);
        for y in 0..28 {
            for x in 0..28 {
                assert_eq!(
                    pixels[n * 784 + y * 28 + x] as usize,
                    (n * 5 + y * 3 + x) & 0xFF
                );
            }
        }
    }
}

#[test]
fn csv_fixtures_with_and_without_header_match_the_idx_fixture() {
    let idx = read_idx_dir(&fixtures().join("mnist-tiny"), digits()).unwrap();
    let Features::U8(pixels) = &idx.splits[0].features else {
        panic!("u8")
    };
    let expected: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
    for (file, header) in [
        ("fashion-mnist_train_tiny.csv", Header::Auto),
        ("fashion-mnist_train_tiny.csv", Header::Yes),
        ("mnist_train_tiny_noheader.csv", Header::Auto),
        ("mnist_train_tiny_noheader.csv", Header::No),
    ] {
        let opts = CsvOptions {
            label: LabelColumn::Index(0),
            header,
        };
        let raw = read_csv(&fixtures().join("mnist-tiny").join(file), None, &opts).unwrap();
        assert_eq!(raw.shape, vec![784], "{file}");
        assert_eq!(raw.splits[0].labels, idx.splits[0].labels, "{file}");
        assert_eq!(
            raw.splits[0].features,
            Features::F32(expected.clone()),
            "{file}"
        );
    }
    let by_name = CsvOptions {
        label: LabelColumn::Name("label".into()),
        header: Header::Auto,
    };
    let raw = read_csv(
        &fixtures().join("mnist-tiny/fashion-mnist_train_tiny.csv"),
        None,
        &by_name,
    )
    .unwrap();
    assert_eq!(raw.splits[0].labels, idx.splits[0].labels);
}

fn write_text(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn csv_string_labels_become_sorted_classes_and_test_tables_share_them() {
    let dir = tempfile::tempdir().unwrap();
    let train = write_text(
        dir.path(),
        "train.csv",
        "a,b,species\n1,2,virginica\n3,4.5,setosa\n-1,0,setosa\n",
    );
    let test = write_text(dir.path(), "test.csv", "a,b,species\n0,0,virginica\n");
    let opts = CsvOptions {
        label: "species".parse().unwrap(),
        header: Header::Auto,
    };
    let raw = read_csv(&train, Some(&test), &opts).unwrap();
    assert_eq!(
        raw.classes,
        vec!["setosa".to_string(), "virginica".to_string()]
    );
    assert_eq!(raw.splits[0].labels, vec![1, 0, 0]);
    assert_eq!(
        raw.splits[0].features,
        Features::F32(vec![1.0, 2.0, 3.0, 4.5, -1.0, 0.0])
    );
    assert_eq!(raw.splits[1].labels, vec![1]);

    let unseen = write_text(dir.path(), "unseen.csv", "a,b,species\n0,0,versicolor\n");
    let err = read_csv(&train, Some(&unseen), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unseen.csv") && err.contains("\"versicolor\" does not occur"),
        "{err}"
    );
}

#[test]
fn csv_bad_cells_and_rows_are_named_by_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CsvOptions::default();
    let cases = [
        (
            "cell.csv",
            "label,x,y\n1,2,3\n0,4,oops\n",
            "line 3, column 3 (y): \"oops\" is not a number",
        ),
        (
            "width.csv",
            "label,x,y\n1,2,3\n0,4\n",
            "line 3: 2 columns, expected 3",
        ),
        (
            "nan.csv",
            "1,2,3\n0,NaN,3\n",
            "line 2, column 2 (column 2): \"NaN\" is not a finite number",
        ),
        (
            "inf.csv",
            "1,2,3\n0,2,-inf\n",
            "line 2, column 3 (column 3): \"-inf\" is not a finite number",
        ),
        ("empty.csv", "", "empty CSV file"),
    ];
    for (name, text, expected) in cases {
        let p = write_text(dir.path(), name, text);
        let err = read_csv(&p, None, &opts).unwrap_err().to_string();
        assert!(err.starts_with(&p.display().to_string()), "{err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    let p = write_text(dir.path(), "named.csv", "a,b\n1,2\n");
    let opts = CsvOptions {
        label: LabelColumn::Name("label".into()),
        header: Header::Auto,
    };
    let err = read_csv(&p, None, &opts).unwrap_err().to_string();
    assert!(err.contains("no column named \"label\""), "{err}");
}

/// Writes a gzip'd IDX file.
fn idx_gz(dir: &Path, name: &str, dims: &[u32], data: &[u8]) {
    use std::io::Write;
    let mut raw = vec![0, 0, 8, dims.len() as u8];
    dims.iter()
        .for_each(|d| raw.extend_from_slice(&d.to_be_bytes()));
    raw.extend_from_slice(data);
    let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap();
}

#[test]
fn idx_folders_with_inconsistent_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    idx_gz(d, "train-images-idx3-ubyte", &[3, 2, 2], &[0; 12]);
    idx_gz(d, "train-labels-idx1-ubyte", &[2], &[0, 1]);
    let err = read_idx_dir(d, digits()).unwrap_err().to_string();
    assert!(
        err.contains("train-labels-idx1-ubyte.gz: 2 labels for 3 images"),
        "{err}"
    );

    idx_gz(d, "train-labels-idx1-ubyte", &[3], &[0, 10, 1]);
    let err = read_idx_dir(d, digits()).unwrap_err().to_string();
    assert!(
        err.contains("label 1 is 10, out of range for 10 classes"),
        "{err}"
    );

    idx_gz(d, "train-labels-idx1-ubyte", &[3], &[0, 9, 1]);
    idx_gz(d, "t10k-images-idx3-ubyte", &[1, 2, 2], &[0; 4]);
    let err = read_idx_dir(d, digits()).unwrap_err().to_string();
    assert!(err.contains("missing t10k-labels-idx1-ubyte"), "{err}");

    idx_gz(d, "t10k-labels-idx1-ubyte", &[1], &[3]);
    let raw = read_idx_dir(d, digits()).unwrap();
    assert_eq!(raw.splits[1].labels, vec![3]);

    // A gzip stream cut short is an error, not a short file.
    let path = d.join("train-images-idx3-ubyte.gz");
    let gz = std::fs::read(&path).unwrap();
    std::fs::write(&path, &gz[..gz.len() - 10]).unwrap();
    let err = read_idx_dir(d, digits()).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte.gz: truncated or corrupt gzip data"),
        "{err}"
    );
}

/// The real Fashion-MNIST shipped in `data/fashion-mnist` (and embedded in the binary).
#[test]
fn embedded_fashion_mnist_converts_with_its_published_content() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    // The uncompressed content is upstream's (FORMATS.md §2).
    for (file, md5) in [
        (
            "train-images-idx3-ubyte.gz",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    ] {
        let raw = read_maybe_gzip(&dir.join(file)).unwrap();
        let digest: String = Md5::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, md5, "{file}");
    }
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("fashion.safetensors");
    let report = convert(&dir, &path, &ConvertOptions::default()).unwrap();
    assert_eq!(
        report.splits,
        vec![("train".to_string(), 60_000), ("test".to_string(), 10_000)]
    );
    let ds = Dataset::open(&path).unwrap();
    assert_eq!(
        ds.classes()[0],
        "T-shirt/top",
        "the folder name says fashion"
    );
    for (split, per_class) in [("train", 6000), ("test", 1000)] {
        let mut counts = [0usize; 10];
        ds.split(split)
            .unwrap()
            .labels()
            .iter()
            .for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [per_class; 10], "{split}");
    }
    // The classic Fashion-MNIST statistics: mean 0.2860, std 0.3530 in [0, 1].
    let stats = ds.stats();
    assert!(
        (stats.channel_mean[0] / 255.0 - 0.2860).abs() < 1e-4,
        "{}",
        stats.channel_mean[0]
    );
    assert!(
        (stats.channel_std[0] / 255.0 - 0.3530).abs() < 1e-4,
        "{}",
        stats.channel_std[0]
    );
}

/// Gathers training samples 1 and 4 of `awkward()` with `augments`, the six
/// features read as `geometry`, and checks every value of sample 4 against
/// `source`: for each destination feature, the source feature it must hold
/// (`None`: a pixel moved in from outside, raw 0). Sample 1 is never moved.
fn check_augmented(geometry: Geometry, augment: Augment, source: [Option<usize>; 6]) {
    let raw = awkward();
    let (_dir, path) = write_tmp(&raw);
    let ds = Dataset::open(&path).unwrap();
    let norm = Normalizer::new(Normalize::Feature, &ds.stats(), 6);
    let train = ds.split("train").unwrap();
    let indices = [1usize, 4];
    let (mut plain, mut moved) = (vec![0f32; 12], vec![0f32; 12]);
    let mut labels = vec![0u8; 2];
    norm.gather(&train, &indices, &mut plain, &mut labels, None);
    let augments = [Augment::default(), augment];
    norm.gather_augmented(
        &train,
        &indices,
        &augments,
        geometry,
        &mut moved,
        &mut labels,
        None,
    );
    assert_eq!(labels, vec![1, 1]);
    assert_eq!(&moved[..6], &plain[..6], "sample 0 is not moved");
    let src = &u8_features(train.features())[4 * 6..5 * 6];
    let stats = ds.stats();
    for f in 0..6 {
        let x = source[f].map_or(0.0, |s| src[s] as f64);
        let (mean, std) = (stats.feature_mean[f] as f64, stats.feature_std[f] as f64);
        let expected = if std == 0.0 { 0.0 } else { (x - mean) / std };
        assert!(
            (moved[6 + f] as f64 - expected).abs() < 1e-5,
            "{augment:?} feature {f}: {} vs {expected}",
            moved[6 + f]
        );
    }
}

#[test]
fn flipped_gather_mirrors_each_row_and_normalises_by_destination() {
    // Two channels of one 3-pixel row: each row is read backwards.
    let g = Geometry::of_shape(&[2, 1, 3]).unwrap();
    let flip = Augment {
        flip: true,
        ..Augment::default()
    };
    check_augmented(
        g,
        flip,
        [Some(2), Some(1), Some(0), Some(5), Some(4), Some(3)],
    );
}

#[test]
fn translated_gather_moves_pixels_and_fills_with_zeros() {
    // The six features as one 2×3 plane:  s0 s1 s2 / s3 s4 s5.
    let g = Geometry::of_shape(&[2, 3]).unwrap();
    let right = Augment {
        dx: 1,
        ..Augment::default()
    };
    check_augmented(g, right, [None, Some(0), Some(1), None, Some(3), Some(4)]);
    let up_left = Augment {
        dx: -2,
        dy: -1,
        ..Augment::default()
    };
    check_augmented(g, up_left, [Some(5), None, None, None, None, None]);
    let down = Augment {
        dy: 1,
        ..Augment::default()
    };
    check_augmented(g, down, [None, None, None, Some(0), Some(1), Some(2)]);
    // Mirrored first (s2 s1 s0 / s5 s4 s3), then moved right by one.
    let flip_right = Augment {
        flip: true,
        dx: 1,
        dy: 0,
    };
    check_augmented(
        g,
        flip_right,
        [None, Some(2), Some(1), None, Some(5), Some(4)],
    );
}

/// The files of `dir` named `names`, read into memory.
fn read_files(dir: &Path, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    names
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
        .collect()
}

fn as_idx_bytes(files: &[(String, Vec<u8>)]) -> Vec<IdxBytes<'_>> {
    files
        .iter()
        .map(|(name, bytes)| IdxBytes { name, bytes })
        .collect()
}

/// Asserts two files hold the same bytes (without printing megabytes).
fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let first_difference = x.iter().zip(&y).position(|(p, q)| p != q);
    assert!(
        x == y,
        "{} ({} bytes) and {} ({} bytes) differ, first at byte {first_difference:?}",
        a.display(),
        x.len(),
        b.display(),
        y.len()
    );
}

/// The shipped Fashion-MNIST converted from memory (as the binary does with
/// its embedded copy) gives the very file converting the folder gives, with
/// the class names decided by the name or given, in any order of the files.
#[test]
fn idx_files_in_memory_convert_to_the_same_file_as_their_folder() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let files = read_files(&dir, &FILE_NAMES);
    let mut shuffled = as_idx_bytes(&files);
    shuffled.reverse();
    let out = tempfile::tempdir().unwrap();
    let fashion = ConvertOptions {
        classes: Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
        ..ConvertOptions::default()
    };
    for (case, opts) in [("named", ConvertOptions::default()), ("given", fashion)] {
        let from_dir = out.path().join(format!("{case}-dir.safetensors"));
        let from_mem = out.path().join(format!("{case}-mem.safetensors"));
        convert(&dir, &from_dir, &opts).unwrap();
        let report = convert_idx_bytes(embedded::SOURCE_NAME, &shuffled, &from_mem, &opts).unwrap();
        assert_eq!(
            report.splits,
            vec![("train".to_string(), 60_000), ("test".to_string(), 10_000)]
        );
        assert_same_file(&from_dir, &from_mem);
        assert_eq!(
            Dataset::open(&from_mem).unwrap().classes()[0],
            "T-shirt/top"
        );
    }
    // Uncompressed files, a training split alone and a name without
    // "fashion" (digit classes) also give the folder's file.
    let tiny = fixtures().join("mnist-tiny");
    let plain: Vec<(String, Vec<u8>)> =
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
            .iter()
            .map(|n| {
                let name = n.trim_end_matches(".gz").to_string();
                (name, read_maybe_gzip(&tiny.join(n)).unwrap())
            })
            .collect();
    let copy = out.path().join("digits");
    std::fs::create_dir(&copy).unwrap();
    for (name, bytes) in &plain {
        std::fs::write(copy.join(name), bytes).unwrap();
    }
    let (from_dir, from_mem) = (out.path().join("d.st"), out.path().join("m.st"));
    let opts = ConvertOptions::default();
    convert(&copy, &from_dir, &opts).unwrap();
    convert_idx_bytes("digits", &as_idx_bytes(&plain), &from_mem, &opts).unwrap();
    assert_same_file(&from_dir, &from_mem);
    assert_eq!(Dataset::open(&from_mem).unwrap().classes()[0], "0");
}

/// Files in memory fail as a folder holding them does, named under the
/// folder they stand for, and an existing output is kept without
/// `overwrite`.
#[test]
fn idx_files_in_memory_name_their_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let files = read_files(&dir, &FILE_NAMES[1..]);
    let err = read_idx_bytes(Path::new("fashion-mnist"), &as_idx_bytes(&files), vec![])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "fashion-mnist: missing train-images-idx3-ubyte (or train-images-idx3-ubyte.gz)"
    );
    let mut files = read_files(&dir, &FILE_NAMES);
    let cut = files[2].1.len() - 10;
    files[2].1.truncate(cut);
    let err = read_idx_bytes(Path::new("fashion-mnist"), &as_idx_bytes(&files), vec![])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("fashion-mnist/t10k-images-idx3-ubyte.gz: truncated or corrupt gzip data"),
        "{err}"
    );
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("kept.safetensors");
    std::fs::write(&path, b"mine").unwrap();
    let err = convert_idx_bytes("x", &[], &path, &ConvertOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"mine");
}

/// A batch large enough is gathered by every thread of a team, a run of
/// rows each, or by whichever threads take up its job, a few rows at a
/// time: the same bits and labels as on one thread, augmented or not.
#[test]
fn gathering_on_several_threads_gives_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::synthetic_with_shape(dir.path(), 300, 10, &[1, 12, 12], 10, 4);
    let ds = Dataset::open(&path).unwrap();
    let norm = Normalizer::new(Normalize::Feature, &ds.stats(), 144);
    let train = ds.split("train").unwrap();
    let indices: Vec<usize> = (0..199).map(|i| (i * 37) % 300).collect();
    let geometry = Geometry::of_shape(&[1, 12, 12]).unwrap();
    let augments: Vec<Augment> = (0..199)
        .map(|i| Augment {
            flip: i % 3 == 0,
            dx: (i % 5) as i8 - 2,
            dy: (i % 7) as i8 - 3,
        })
        .collect();
    let gather = |moved: bool, team: Option<&mut Team>| {
        let (mut out, mut labels) = (vec![f32::NAN; 199 * 144], vec![0u8; 199]);
        if moved {
            norm.gather_augmented(
                &train,
                &indices,
                &augments,
                geometry,
                &mut out,
                &mut labels,
                team,
            );
        } else {
            norm.gather(&train, &indices, &mut out, &mut labels, team);
        }
        (out, labels)
    };
    // The same batch as a job the training step hands to the threads of a
    // product: taken up by three threads at different moments, then
    // finished by the caller (with nothing left, or all of it).
    let job = |moved: bool, threads: usize| {
        let (mut out, mut labels) = (vec![f32::NAN; 199 * 144], vec![0u8; 199]);
        {
            let moves = moved.then_some((&augments[..], geometry));
            let job = norm.gather_job(&train, &indices, moves, &mut out, &mut labels);
            std::thread::scope(|s| {
                for t in 0..threads {
                    let job = &job;
                    s.spawn(move || {
                        std::thread::sleep(std::time::Duration::from_micros(50 * t as u64));
                        job.work()
                    });
                }
            });
            job.finish(None);
        }
        (out, labels)
    };
    let mut team = Team::new(3);
    for moved in [false, true] {
        let (one, one_labels) = gather(moved, None);
        assert!(one.iter().all(|v| v.is_finite()), "every value written");
        let runs = [gather(moved, Some(&mut team)), job(moved, 3), job(moved, 0)];
        for (run, (other, other_labels)) in runs.iter().enumerate() {
            assert_eq!(&one_labels, other_labels, "run {run}, augmented: {moved}");
            assert!(
                one.iter()
                    .zip(other)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "run {run}, augmented: {moved}"
            );
        }
    }
}
