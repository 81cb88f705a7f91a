//! What defines a training run: the network, the optimiser, the data
//! pipeline and the schedule. Shared by the training loop, which runs it,
//! and checkpoints, which record it so that `--resume` continues the same
//! run.

use serde::{Deserialize, Serialize};

use crate::data::{Holdout, Normalize};
use crate::model::{Act, Loss, MlpConfig, Norm};
use crate::optim::{OptimConfig, Schedule};

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Hidden layer sizes (inputs and classes come from the dataset).
    pub hidden: Vec<usize>,
    pub act: Act,
    pub loss: Loss,
    pub dropout: f32,
    /// Label smoothing ε of the cross-entropy (0 = off).
    #[serde(default)]
    pub label_smoothing: f32,
    /// Normalisation after each hidden Linear.
    #[serde(default)]
    pub norm: Norm,
    /// Arithmetic of the training step's matrix products.
    #[serde(default)]
    pub precision: Precision,
    pub optim: OptimConfig,
    /// Scale each step's gradient down to this global L2 norm when it is
    /// longer (`None`: never).
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
    /// Stop after this many epochs in a row without a lower validation
    /// loss, and end with the parameters of the lowest (`None`: never).
    #[serde(default)]
    pub early_stop: Option<usize>,
    /// Base learning rate.
    pub lr: f32,
    pub schedule: Schedule,
    /// Steps of linear learning-rate warm-up.
    pub warmup: usize,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    /// Threads of the training step (1 = no other thread at all).
    pub threads: usize,
    pub normalize: Normalize,
    /// Validation samples held out of the end of the training split.
    pub holdout: Holdout,
    /// Write a checkpoint every this many epochs (and after the last).
    pub checkpoint_every: usize,
    /// Also evaluate the test split after every epoch (for learning curves
    /// against time; the model is never selected on it).
    #[serde(default)]
    pub test_every_epoch: bool,
    /// Mirror each training image left to right with probability 1/2
    /// (data augmentation for images whose classes are mirror-symmetric).
    #[serde(default)]
    pub flip: bool,
    /// Translate each training image by a random whole number of pixels in
    /// −k..=k, independently along each axis, filling with zeros (data
    /// augmentation; 0 = off).
    #[serde(default)]
    pub translate: usize,
}

/// The arithmetic of a training step's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// Mixed precision as PyTorch's autocast defines it: bf16 operands,
    /// f32 sums; the master weights, the optimiser's state, the loss and
    /// the elementwise passes in f32. Evaluation runs in f32, and model
    /// files hold the f32 weights.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?} (f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl TrainConfig {
    /// The network this configuration asks for, on `inputs` features and
    /// `classes` classes (not yet validated).
    pub fn network(&self, inputs: usize, classes: usize) -> MlpConfig {
        let mut dims = vec![inputs];
        dims.extend(&self.hidden);
        dims.push(classes);
        MlpConfig {
            dims,
            act: self.act,
            loss: self.loss,
            dropout: self.dropout,
            label_smoothing: self.label_smoothing,
            norm: self.norm,
        }
    }
}
