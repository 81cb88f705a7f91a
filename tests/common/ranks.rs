//! Training on ranks that are threads of the test process
//! ([`ThreadRanks`]), as MPI ranks train.

use std::path::PathBuf;

use fastnn::checkpoint;
use fastnn::data::Dataset;
use fastnn::distributed::{Ranks, ThreadRanks};
use fastnn::model::Mlp;
use fastnn::train::{train_on, Observer, Silent, Summary, TrainConfig, TrainError};

/// Trains on `size` thread ranks (rank 0 writes into `out`), resuming from
/// `out`'s checkpoint when `resume`; every rank's model and summary.
pub fn train_ranks(
    data: &Dataset,
    cfg: &TrainConfig,
    size: usize,
    out: Option<&PathBuf>,
    resume: bool,
) -> Vec<Result<(Mlp, Summary), TrainError>> {
    train_observed(data, cfg, size, out, resume, |_| Box::new(Silent))
}

/// As [`train_ranks`], each rank with the observer `observer(rank)`.
pub fn train_observed(
    data: &Dataset,
    cfg: &TrainConfig,
    size: usize,
    out: Option<&PathBuf>,
    resume: bool,
    observer: impl Fn(usize) -> Box<dyn Observer + Send> + Sync,
) -> Vec<Result<(Mlp, Summary), TrainError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ThreadRanks::group(size)
            .into_iter()
            .map(|ranks| {
                let observer = &observer;
                s.spawn(move || {
                    let rank = ranks.rank();
                    let ck = resume.then(|| checkpoint::load(out.unwrap()).unwrap());
                    let out = out.filter(|_| rank == 0);
                    let mut obs = observer(rank);
                    train_on(data, cfg, out, ck, &mut *obs, Box::new(ranks))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The ranks' models, checked to hold the same bits on every rank.
pub fn agreed_model(runs: Vec<Result<(Mlp, Summary), TrainError>>) -> (Mlp, Summary) {
    let mut runs = runs.into_iter().map(Result::unwrap);
    let first = runs.next().unwrap();
    for (r, (mlp, _)) in runs.enumerate() {
        assert!(
            same_bits(&mlp.params, &first.0.params),
            "rank {} holds other parameters than rank 0",
            r + 1
        );
    }
    first
}

/// True when two parameter slabs hold the same bits.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// How far R ranks may drift from one process. Each step's summed gradient
/// differs from one process's only in the order of its sums over the
/// batch, (rows of rank 0) + (rows of rank 1) + … against one pass over all
/// rows, a few f32 roundings; over these runs' few dozen steps that moved
/// the largest difference to 8.7e-8 of the largest parameter (measured on
/// 2 and 3 ranks). A wrong share of the loss (1/shard for 1/batch), a
/// sample trained twice or another rank's dropout factors move it by 1e-3
/// and more.
pub const DRIFT: f64 = 1e-6;

/// The largest difference between two parameter slabs, relative to the
/// largest parameter.
pub fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}

/// Fails unless `many` (trained on ranks) is within [`DRIFT`] of `one`.
pub fn assert_follows(one: &Mlp, many: &Mlp, what: &str) {
    let d = relative_difference(&one.params, &many.params);
    assert!(
        d < DRIFT,
        "{what}: {d:e} of the largest parameter from one process"
    );
}
