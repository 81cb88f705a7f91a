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
