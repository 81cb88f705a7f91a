//! Datasets held in memory (`Dataset::from_memory`): checked as files are,
//! read in place, and trained exactly as the dataset file written from the
//! same samples.

mod common;

use fastnn::data::file::write_dataset;
use fastnn::data::{
    Dataset, FeatureSource, FeatureView, Features, Holdout, MemorySplit, RawDataset, RawSplit,
    SourceInfo, SplitView, Stats,
};
use fastnn::optim::{OptimConfig, OptimKind};
use fastnn::rng::Rng;
use fastnn::train::{train, Silent, TrainConfig};

const DIM: usize = 12;
const CLASSES: usize = 3;

fn config() -> TrainConfig {
    TrainConfig {
        optim: OptimConfig {
            kind: OptimKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            l2: 0.0,
            weight_decay: 0.0,
        },
        lr: 0.05,
        epochs: 3,
        batch: 16,
        threads: 2,
        holdout: Holdout::Fraction(0.1),
        ..common::small_run()
    }
}

/// `n` samples of `DIM` f32 features around one prototype per class.
fn samples(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let protos: Vec<f64> = (0..CLASSES * DIM).map(|_| rng.normal() * 3.0).collect();
    let mut x = Vec::with_capacity(n * DIM);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.below(CLASSES as u64) as usize;
        y.push(c as u8);
        x.extend((0..DIM).map(|f| (protos[c * DIM + f] + rng.normal()) as f32));
    }
    (x, y)
}

fn classes() -> Vec<String> {
    (0..CLASSES).map(|c| c.to_string()).collect()
}

fn split(name: &str, features: Features, labels: Vec<u8>) -> MemorySplit {
    MemorySplit {
        name: name.into(),
        features: Box::new(features),
        labels,
    }
}

#[test]
fn a_dataset_in_memory_trains_to_the_same_bits_as_its_file() {
    let (x, y) = samples(300, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let raw = RawDataset {
        format: "arrays".into(),
        classes: classes(),
        coarse_classes: None,
        shape: vec![DIM],
        splits: vec![RawSplit {
            name: "train".into(),
            features: Features::F32(x.clone()),
            labels: y.clone(),
            coarse_labels: None,
        }],
    };
    write_dataset(&raw, &SourceInfo::default(), &path, false).unwrap();
    let file = Dataset::open(&path).unwrap();
    let memory = Dataset::from_memory(
        vec![DIM],
        classes(),
        vec![split("train", Features::F32(x), y)],
        None,
    )
    .unwrap();
    assert_eq!(file.stats(), memory.stats());
    let (a, sa) = train(&file, &config(), None, None, &mut Silent).unwrap();
    let (b, sb) = train(&memory, &config(), None, None, &mut Silent).unwrap();
    assert_eq!(a.params.len(), b.params.len());
    assert!(
        a.params
            .iter()
            .zip(b.params.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits()),
        "the file and the arrays trained to different weights"
    );
    assert_eq!(sa.best_val_accuracy, sb.best_val_accuracy);
    // It learned something: the check above is not about two untrained nets.
    assert!(sb.best_val_accuracy.unwrap() > 0.9, "{sb:?}");
}

/// Features that live elsewhere (another runtime's array): the dataset must
/// read them where they are.
struct Borrowed(&'static [f32]);

impl FeatureSource for Borrowed {
    fn view(&self) -> FeatureView<'_> {
        FeatureView::F32(self.0)
    }
}

#[test]
fn features_lent_to_the_dataset_are_read_in_place() {
    let (x, y) = samples(40, 2);
    let x: &'static [f32] = Box::leak(x.into_boxed_slice());
    let ds = Dataset::from_memory(
        vec![DIM],
        classes(),
        vec![MemorySplit {
            name: "train".into(),
            features: Box::new(Borrowed(x)),
            labels: y.clone(),
        }],
        None,
    )
    .unwrap();
    let train = ds.split("train").unwrap();
    let FeatureView::F32(seen) = train.features() else {
        panic!("f32 features became bytes")
    };
    assert_eq!(seen.as_ptr(), x.as_ptr(), "the features were copied");
    assert_eq!(train.labels(), &y[..]);
    assert_eq!(ds.dim(), DIM);
    assert_eq!(ds.split_names(), ["train"]);
    assert!(ds.split("test").is_err());
}

#[test]
fn given_statistics_are_kept_and_checked() {
    let (x, y) = samples(30, 3);
    let stats = Stats {
        feature_mean: vec![1.5; DIM],
        feature_std: vec![2.0; DIM],
        channel_mean: vec![1.5],
        channel_std: vec![2.0],
    };
    let ds = Dataset::from_memory(
        vec![DIM],
        classes(),
        vec![split("train", Features::F32(x.clone()), y.clone())],
        Some(stats.clone()),
    )
    .unwrap();
    assert_eq!(ds.stats(), stats);
    let short = Stats {
        feature_mean: vec![0.0; DIM - 1],
        ..stats
    };
    let err = Dataset::from_memory(
        vec![DIM],
        classes(),
        vec![split("train", Features::F32(x), y)],
        Some(short),
    )
    .unwrap_err();
    assert!(err.to_string().contains("statistics of lengths"), "{err}");
}

#[test]
fn bad_arrays_are_refused_with_what_is_wrong() {
    let (x, y) = samples(10, 4);
    let refuse = |splits: Vec<MemorySplit>, classes: Vec<String>, want: &str| {
        let err = Dataset::from_memory(vec![DIM], classes, splits, None).unwrap_err();
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
    };
    refuse(
        vec![split("train", Features::F32(x[1..].to_vec()), y.clone())],
        classes(),
        "feature values for 10 labels",
    );
    let mut bad = y.clone();
    bad[4] = CLASSES as u8;
    refuse(
        vec![split("train", Features::F32(x.clone()), bad)],
        classes(),
        "train.labels[4] = 3 is out of range for 3 classes",
    );
    refuse(
        vec![split("test", Features::F32(x.clone()), y.clone())],
        classes(),
        "no train split",
    );
    refuse(
        vec![
            split("train", Features::F32(x.clone()), y.clone()),
            split("train", Features::F32(x.clone()), y.clone()),
        ],
        classes(),
        "two splits are named",
    );
    refuse(
        vec![split("train", Features::F32(x), y)],
        vec![],
        "0 classes",
    );
}

#[test]
fn byte_features_in_memory_match_their_statistics_on_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::synthetic_dataset(dir.path(), 64, 8, DIM, CLASSES, 5);
    let file = Dataset::open(&path).unwrap();
    let train = file.split("train").unwrap();
    let FeatureView::U8(bytes) = train.features() else {
        panic!("synthetic features are bytes")
    };
    let memory = Dataset::from_memory(
        vec![DIM],
        file.classes().to_vec(),
        vec![split(
            "train",
            Features::U8(bytes.to_vec()),
            train.labels().to_vec(),
        )],
        None,
    )
    .unwrap();
    assert_eq!(memory.stats(), file.stats());
}

#[test]
fn a_split_view_over_caller_arrays_slices_like_a_dataset_split() {
    let (x, y) = samples(6, 6);
    let view = SplitView::new("X", DIM, FeatureView::F32(&x), &y);
    assert_eq!(view.len(), 6);
    let tail = view.slice(4..6);
    let FeatureView::F32(values) = tail.features() else {
        panic!("f32 features became bytes")
    };
    assert_eq!(values, &x[4 * DIM..]);
    assert_eq!(tail.labels(), &y[4..]);
}

#[test]
#[should_panic(expected = "feature values for 6 samples of 12 features")]
fn a_split_view_refuses_features_that_do_not_fill_its_samples() {
    let (x, y) = samples(6, 7);
    SplitView::new("X", DIM, FeatureView::F32(&x[1..]), &y);
}
