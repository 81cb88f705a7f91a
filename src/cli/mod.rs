//! One module per subcommand: clap arguments → validated library calls.

pub mod bench;
pub mod bench_scaling;
pub mod bench_train;
pub mod data;
pub mod eval;
pub mod fashion;
pub mod gradcheck;
pub mod plot;
pub mod train;
#[cfg(test)]
mod train_props;

use std::path::Path;

use anyhow::{bail, Result};
use fastnn::data::{embedded, Dataset};
use fastnn::model::Loss;

/// Why `--distributed` refuses to run in a build without the `mpi` feature.
#[cfg_attr(feature = "mpi", allow(dead_code))]
pub const NEEDS_MPI: &str = "this needs a fastnn built with MPI: cargo build --release --features mpi (with an MPI library, e.g. Debian's libopenmpi-dev and openmpi-bin, and libclang-dev)";

/// Opens the dataset file `path`, or the embedded Fashion-MNIST (converted
/// into the user's cache folder on first use, which is said on stderr).
pub fn open_data(path: Option<&Path>) -> Result<Dataset> {
    Ok(match path {
        Some(p) => Dataset::open(p)?,
        None => {
            let (ds, report) = embedded::open_default(&fashion::FASHION_MNIST)?;
            if let Some(r) = report {
                eprintln!(
                    "fastnn: converted the embedded Fashion-MNIST into {} ({:.2} s)",
                    ds.path().display(),
                    r.seconds
                );
            }
            ds
        }
    })
}

/// Label smoothing applies to the cross-entropy only, with ε in [0, 1).
pub fn check_label_smoothing(eps: f64, loss: Loss) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&eps) {
        bail!("--label-smoothing must be in [0, 1), got {eps}");
    }
    if eps > 0.0 && loss != Loss::Xent {
        bail!("--label-smoothing applies to the xent loss only, not {loss}");
    }
    Ok(())
}
