//! Model files and checkpoints, both safetensors files written atomically.
//!
//! - `model.safetensors`: the weights under PyTorch `nn.Sequential` names
//!   (`0.weight` `[out, in]`, `0.bias`, `2.weight`, …; a normalisation after
//!   layer `0.` is module `1.`, with `1.weight`, `1.bias` and, for BatchNorm,
//!   `1.running_mean`, `1.running_var`, `1.num_batches_tracked`), so
//!   `model.load_state_dict(safetensors.torch.load_file(path))` works, plus
//!   metadata that makes the file self-sufficient: layer sizes, activation,
//!   class names, and the input normalisation as per-feature
//!   `x·scale + shift` applied to the stored values (bytes 0–255 for images).
//! - `checkpoint.safetensors`: the parameter slab, the optimiser's moment
//!   slabs and step count, the epochs done and the run's configuration, so
//!   `--resume` continues exactly where the run stopped.
//!
//! Each file carries a CRC-32 of its data, checked when it is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::data::{DataError, Normalizer};
use crate::model::{Act, Loss, Mlp, MlpConfig, Norm};
use crate::ops::LossOut;
use crate::optim::Optimizer;
use crate::tensorfile::{self, Dtype, TensorOut};

/// File name of the model inside an output folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the checkpoint inside an output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const VERSION: &str = "1";

/// What a checkpoint is written from (borrowed from the running trainer).
pub struct CheckpointRef<'a> {
    pub mlp: &'a Mlp,
    pub optimizer: &'a Optimizer,
    pub epochs_done: usize,
    /// Steps of the next epoch already done (a run stopped inside an epoch).
    pub steps_in_epoch: usize,
    /// Loss sum and correct count of those steps.
    pub partial: LossOut,
    /// `(1-based epoch, accuracy)` of the best validation so far.
    pub best: Option<(usize, f64)>,
    /// Early stopping's state and the parameters of its best epoch (in the
    /// network's layout).
    pub early_stop: Option<(EarlyStopState, &'a [f32])>,
    pub config: &'a TrainConfig,
    pub classes: &'a [String],
    pub normalizer: &'a Normalizer,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub mlp: Mlp,
    pub optimizer: Optimizer,
    pub epochs_done: usize,
    pub steps_in_epoch: usize,
    pub partial: LossOut,
    pub best: Option<(usize, f64)>,
    /// As in [`CheckpointRef`], the parameters in the network's layout.
    pub early_stop: Option<(EarlyStopState, Vec<f32>)>,
    pub config: TrainConfig,
}

/// Where early stopping stands.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EarlyStopState {
    /// The lowest validation loss so far, and its 1-based epoch.
    pub best_loss: f64,
    pub best_epoch: usize,
    /// Epochs since then without a lower one.
    pub bad_epochs: usize,
}

/// A loaded model file.
pub struct ModelFile {
    pub mlp: Mlp,
    pub classes: Vec<String>,
    pub normalizer: Normalizer,
    pub metadata: BTreeMap<String, String>,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// Metadata describing the network, shared by both files.
fn network_metadata(mlp: &Mlp, kind: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("fastnn.format".into(), kind.into());
    m.insert("fastnn.version".into(), VERSION.into());
    m.insert("dims".into(), json(&mlp.cfg.dims));
    m.insert("activation".into(), mlp.cfg.act.to_string());
    m.insert("loss".into(), mlp.cfg.loss.to_string());
    m.insert("dropout".into(), mlp.cfg.dropout.to_string());
    m.insert(
        "label_smoothing".into(),
        mlp.cfg.label_smoothing.to_string(),
    );
    m.insert("norm".into(), mlp.cfg.norm.to_string());
    m
}

/// Writes `dir/model.safetensors` and `dir/checkpoint.safetensors`.
pub fn save(dir: &Path, ck: &CheckpointRef<'_>) -> Result<(), DataError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::io(dir, "cannot create the output folder", e))?;
    save_model(&dir.join(MODEL_FILE), ck.mlp, ck.classes, ck.normalizer)?;

    let mut meta = network_metadata(ck.mlp, "checkpoint");
    meta.insert("epochs_done".into(), ck.epochs_done.to_string());
    meta.insert("steps_in_epoch".into(), ck.steps_in_epoch.to_string());
    // f64 Display is the shortest string that parses back to the same value.
    meta.insert("partial_loss_sum".into(), ck.partial.loss_sum.to_string());
    meta.insert("partial_correct".into(), ck.partial.correct.to_string());
    meta.insert("optimizer_steps".into(), ck.optimizer.t.to_string());
    meta.insert("batches_tracked".into(), ck.mlp.batches_tracked.to_string());
    meta.insert("best".into(), json(&ck.best));
    meta.insert("config".into(), json(ck.config));
    // The slabs in the file layout: weights row-major [out, in].
    let layout = &ck.mlp.layout;
    let mut slabs = vec![
        ("params", layout.to_row_major(&ck.mlp.params)),
        ("optimizer.m", layout.to_row_major(&ck.optimizer.m)),
        ("optimizer.v", layout.to_row_major(&ck.optimizer.v)),
    ];
    if let Some((state, best)) = ck.early_stop {
        meta.insert("early_stop".into(), json(&state));
        slabs.push(("early_stop.best_params", layout.to_row_major(best)));
    }
    let tensors = slabs
        .iter()
        .map(|(name, slab)| TensorOut::f32(*name, vec![slab.len()], slab))
        .collect();
    write_with_crc(
        &dir.join(CHECKPOINT_FILE),
        tensorfile::with_padding(tensors),
        meta,
    )
}

/// Writes a model file (see the module documentation).
pub fn save_model(
    path: &Path,
    mlp: &Mlp,
    classes: &[String],
    norm: &Normalizer,
) -> Result<(), DataError> {
    let mut meta = network_metadata(mlp, "model");
    meta.insert("classes".into(), json(&classes));
    meta.insert("input_scale".into(), json(&norm.scale()));
    meta.insert("input_shift".into(), json(&norm.shift()));
    meta.insert(
        "input_units".into(),
        "the dataset file's stored values (bytes 0-255 for images); input = x * input_scale + input_shift".into(),
    );
    let weights: Vec<Vec<f32>> = (0..mlp.cfg.layers()).map(|l| mlp.weight(l)).collect();
    let mut tensors = Vec::new();
    for (l, slot) in mlp.layout.layers.iter().enumerate() {
        let idx = mlp.sequential_index(l);
        tensors.push(TensorOut::f32(
            format!("{idx}.weight"),
            vec![slot.fan_out, slot.fan_in],
            &weights[l],
        ));
        if !slot.b.is_empty() {
            tensors.push(TensorOut::f32(
                format!("{idx}.bias"),
                vec![slot.fan_out],
                mlp.bias(l),
            ));
        }
        if let Some(n) = &slot.norm {
            for (name, range) in n.tensors() {
                let v = &mlp.params[range];
                tensors.push(TensorOut::f32(
                    format!("{}.{name}", idx + 1),
                    vec![v.len()],
                    v,
                ));
            }
            if mlp.cfg.norm == Norm::Batch {
                tensors.push(TensorOut::i64(
                    format!("{}.num_batches_tracked", idx + 1),
                    vec![],
                    &[mlp.batches_tracked as i64],
                ));
            }
        }
    }
    // No `__pad.K` tensors here: PyTorch's strict `load_state_dict` would
    // reject them. All tensors are f32, so each still starts 4-byte aligned.
    write_with_crc(path, tensors, meta)
}

fn write_with_crc(
    path: &Path,
    tensors: Vec<TensorOut<'_>>,
    mut meta: BTreeMap<String, String>,
) -> Result<(), DataError> {
    meta.insert(
        "data_crc32".into(),
        format!("{:08x}", tensorfile::data_crc(&tensors)),
    );
    tensorfile::write_atomic(path, &tensors, &meta, true)
}

/// A file read whole and validated: header, CRC, fastnn kind.
struct Loaded {
    path: PathBuf,
    bytes: Vec<u8>,
    header: tensorfile::Header,
}

impl Loaded {
    fn read(path: &Path, kind: &str) -> Result<Loaded, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, "cannot read", e))?;
        Loaded::from_bytes(path, bytes, kind)
    }

    fn from_bytes(path: &Path, bytes: Vec<u8>, kind: &str) -> Result<Loaded, DataError> {
        let header = tensorfile::parse(&bytes).map_err(|p| DataError::new(path, p))?;
        let l = Loaded {
            path: path.to_path_buf(),
            bytes,
            header,
        };
        let found = l.meta("fastnn.format")?;
        if found != kind {
            return Err(l.err(format!("is a fastnn {found} file, not a {kind} file")));
        }
        if l.meta("fastnn.version")? != VERSION {
            return Err(l.err("was written by a newer fastnn (unknown version)"));
        }
        let expected = l.meta("data_crc32")?;
        let actual = format!("{:08x}", crc32fast::hash(&l.bytes[l.header.data_start..]));
        if actual != expected {
            return Err(l.err(format!(
                "corrupted: the data checksum is {actual}, the header recorded {expected}"
            )));
        }
        Ok(l)
    }

    fn err(&self, problem: impl Into<String>) -> DataError {
        DataError::new(&self.path, problem)
    }

    fn meta(&self, key: &str) -> Result<&str, DataError> {
        self.header_meta(key)
            .ok_or_else(|| self.err(format!("metadata has no {key}")))
    }

    /// A metadata entry that older files may lack.
    fn header_meta(&self, key: &str) -> Option<&str> {
        self.header.metadata.get(key).map(String::as_str)
    }

    fn parse_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, DataError> {
        serde_json::from_str(self.meta(key)?)
            .map_err(|e| self.err(format!("metadata {key} is malformed: {e}")))
    }

    fn config(&self) -> Result<MlpConfig, DataError> {
        let cfg = MlpConfig {
            dims: self.parse_meta("dims")?,
            act: self
                .meta("activation")?
                .parse::<Act>()
                .map_err(|e| self.err(e))?,
            loss: self
                .meta("loss")?
                .parse::<Loss>()
                .map_err(|e| self.err(e))?,
            dropout: self
                .meta("dropout")?
                .parse()
                .map_err(|_| self.err("metadata dropout is not a number"))?,
            // Files written before label smoothing existed have none.
            label_smoothing: match self.header_meta("label_smoothing") {
                None => 0.0,
                Some(v) => v
                    .parse()
                    .map_err(|_| self.err("metadata label_smoothing is not a number"))?,
            },
            // Files written before normalisation existed have none.
            norm: match self.header_meta("norm") {
                None => Norm::None,
                Some(v) => v.parse::<Norm>().map_err(|e| self.err(e))?,
            },
        };
        cfg.validate().map_err(|e| self.err(e))?;
        // The file must hold the parameters its sizes describe: checked
        // before the network (and the optimiser state) is allocated, so a
        // small file claiming a huge network fails here.
        let params = cfg.parameter_count();
        let data = self.bytes.len() - self.header.data_start;
        if params.saturating_mul(4) > data {
            return Err(self.err(format!(
                "layer sizes {:?} need {params} parameters ({} bytes) but the file holds only {data} bytes of tensors",
                cfg.dims,
                params.saturating_mul(4)
            )));
        }
        Ok(cfg)
    }

    /// The non-negative i64 scalar `name` (shape `[]`).
    fn i64_scalar(&self, name: &str) -> Result<u64, DataError> {
        let t = self
            .header
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))?;
        if t.dtype != Dtype::I64 || !t.shape.is_empty() {
            return Err(self.err(format!(
                "tensor {name} is {:?} {:?}, expected an I64 scalar",
                t.dtype, t.shape
            )));
        }
        let bytes: [u8; 8] = self.bytes[t.bytes.clone()].try_into().expect("8 bytes");
        u64::try_from(i64::from_le_bytes(bytes))
            .map_err(|_| self.err(format!("tensor {name} is negative")))
    }

    /// Copies the f32 tensor `name`, which must have `len` values (and the
    /// shape `shape`, when given).
    fn f32_into(
        &self,
        name: &str,
        out: &mut [f32],
        shape: Option<&[usize]>,
    ) -> Result<(), DataError> {
        let t = self
            .header
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))?;
        let count: usize = t.shape.iter().product();
        if t.dtype != Dtype::F32 || count != out.len() {
            return Err(self.err(format!(
                "tensor {name} is {:?} {:?}, expected F32 with {} values",
                t.dtype,
                t.shape,
                out.len()
            )));
        }
        if let Some(shape) = shape.filter(|&s| s != t.shape.as_slice()) {
            return Err(self.err(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        tensorfile::read_f32_into(out, &self.bytes[t.bytes.clone()]);
        Ok(())
    }
}

/// Loads a model file written by [`save_model`].
pub fn load_model(path: &Path) -> Result<ModelFile, DataError> {
    model_from(Loaded::read(path, "model")?)
}

/// [`load_model`] on the bytes of a model file; `path` names it in messages.
pub fn load_model_bytes(path: &Path, bytes: Vec<u8>) -> Result<ModelFile, DataError> {
    model_from(Loaded::from_bytes(path, bytes, "model")?)
}

fn model_from(f: Loaded) -> Result<ModelFile, DataError> {
    let mut mlp = Mlp::zeros(f.config()?);
    for l in 0..mlp.cfg.layers() {
        let idx = mlp.sequential_index(l);
        let slot = mlp.layout.layers[l].clone();
        let mut rows = vec![0.0; slot.fan_out * slot.fan_in];
        f.f32_into(
            &format!("{idx}.weight"),
            &mut rows,
            Some(&[slot.fan_out, slot.fan_in]),
        )?;
        mlp.set_weight(l, &rows);
        if !slot.b.is_empty() {
            f.f32_into(
                &format!("{idx}.bias"),
                &mut mlp.params[slot.b],
                Some(&[slot.fan_out]),
            )?;
        }
        if let Some(n) = &slot.norm {
            for (name, range) in n.tensors() {
                let out = &mut mlp.params[range];
                f.f32_into(&format!("{}.{name}", idx + 1), out, Some(&[slot.fan_out]))?;
            }
        }
    }
    if mlp.cfg.norm == Norm::Batch {
        // Every BatchNorm counts the same batches: the first one's count.
        let name = format!("{}.num_batches_tracked", mlp.sequential_index(0) + 1);
        mlp.batches_tracked = f.i64_scalar(&name)?;
    }
    let classes: Vec<String> = f.parse_meta("classes")?;
    let scale: Vec<f32> = f.parse_meta("input_scale")?;
    let shift: Vec<f32> = f.parse_meta("input_shift")?;
    if classes.len() != mlp.cfg.classes()
        || scale.len() != mlp.cfg.inputs()
        || shift.len() != scale.len()
    {
        return Err(f.err("metadata classes or input normalisation do not match the layer sizes"));
    }
    Ok(ModelFile {
        mlp,
        classes,
        normalizer: Normalizer::from_affine(scale, shift),
        metadata: f.header.metadata.clone(),
    })
}

/// Loads `dir/checkpoint.safetensors`.
pub fn load(dir: &Path) -> Result<Checkpoint, DataError> {
    checkpoint_from(Loaded::read(&dir.join(CHECKPOINT_FILE), "checkpoint")?)
}

/// [`load`] on the bytes of a checkpoint file; `path` names it in messages.
pub fn load_bytes(path: &Path, bytes: Vec<u8>) -> Result<Checkpoint, DataError> {
    checkpoint_from(Loaded::from_bytes(path, bytes, "checkpoint")?)
}

fn checkpoint_from(f: Loaded) -> Result<Checkpoint, DataError> {
    let config: TrainConfig = f.parse_meta("config")?;
    let mut mlp = Mlp::zeros(f.config()?);
    let mut optimizer = Optimizer::new(config.optim, &mlp.layout);
    // The file holds the slabs in the row-major file layout.
    let file_len = mlp.layout.file().len;
    for (name, slab) in [
        ("params", &mut mlp.params[..]),
        ("optimizer.m", &mut optimizer.m[..]),
        ("optimizer.v", &mut optimizer.v[..]),
    ] {
        let mut file = vec![0.0; if slab.is_empty() { 0 } else { file_len }];
        f.f32_into(name, &mut file, None)?;
        if !slab.is_empty() {
            let converted = mlp.layout.from_row_major(&file, slab);
            converted.expect("a slab of the file layout's length converts");
        }
    }
    optimizer.t = f.parse_meta("optimizer_steps")?;
    // Checkpoints written before normalisation existed have no count.
    if f.header_meta("batches_tracked").is_some() {
        mlp.batches_tracked = f.parse_meta("batches_tracked")?;
    }
    // Checkpoints of runs without early stopping (or older) have none.
    let early_stop = match f.header_meta("early_stop") {
        None => None,
        Some(_) => {
            let state: EarlyStopState = f.parse_meta("early_stop")?;
            let mut file = vec![0.0; file_len];
            f.f32_into("early_stop.best_params", &mut file, None)?;
            let mut best = vec![0.0; mlp.layout.len];
            let converted = mlp.layout.from_row_major(&file, &mut best);
            converted.expect("a slab of the file layout's length converts");
            Some((state, best))
        }
    };
    Ok(Checkpoint {
        mlp,
        optimizer,
        epochs_done: f.parse_meta("epochs_done")?,
        steps_in_epoch: f.parse_meta("steps_in_epoch")?,
        partial: LossOut {
            loss_sum: f.parse_meta("partial_loss_sum")?,
            correct: f.parse_meta("partial_correct")?,
        },
        best: f.parse_meta("best")?,
        early_stop,
        config,
    })
}
