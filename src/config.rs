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
