//! compare-burn: trains fastnn's benchmark MLP with burn on the CPU (the
//! NdArray backend with autodiff) and prints its training speed as one line
//! of JSON.
//!
//! It mirrors tools/compare/torch_train.py and fastnn's `bench train`: the
//! normalised float32 training set held in memory as one tensor, an MLP
//! `F-hidden...-10` with ReLU, Kaiming-normal weights and zero biases, softmax
//! cross-entropy, SGD with momentum 0.9 (PyTorch's definition), a fresh
//! shuffle per epoch, and the median images/s of the epochs after the first.
//!
//!     compare-burn --data data/cache/fashion-mnist.safetensors --hidden 512,256 \
//!         --batch 128 --threads 2 --epochs 4 --seed 1 --lr 0.01

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::Linear;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use safetensors::{Dtype, SafeTensors};

/// Must match Cargo.lock.
const VERSION: &str = "burn 0.22.1";
/// burn-ndarray's matmul calls ndarray's general_mat_mul, which (without a
/// BLAS feature) is matrixmultiply's sgemm.
const BACKEND: &str = "burn-ndarray 0.22.1: ndarray 0.17.2 + matrixmultiply 0.3.11";

struct Args {
    data: String,
    hidden: Vec<usize>,
    batch: usize,
    threads: usize,
    epochs: usize,
    seed: u64,
    lr: f64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        data: String::new(),
        hidden: vec![1024, 512],
        batch: 128,
        threads: 2,
        epochs: 4,
        seed: 1,
        lr: 0.01,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--data" => a.data = value.clone(),
            "--hidden" => {
                a.hidden = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(bad)?
            }
            "--batch" => a.batch = value.parse().with_context(bad)?,
            "--threads" => a.threads = value.parse().with_context(bad)?,
            "--epochs" => a.epochs = value.parse().with_context(bad)?,
            "--seed" => a.seed = value.parse().with_context(bad)?,
            "--lr" => a.lr = value.parse().with_context(bad)?,
            _ => bail!("unknown argument {flag}"),
        }
    }
    if a.data.is_empty() {
        bail!("--data PATH is required");
    }
    if a.epochs < 2 {
        bail!("--epochs must be at least 2 (the first epoch is a warm-up)");
    }
    if a.batch == 0 || a.threads == 0 || a.hidden.contains(&0) {
        bail!("--batch, --threads and the --hidden widths must be positive");
    }
    Ok(a)
}

/// SplitMix64: small and seedable; bitwise equality with fastnn is not a goal.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

/// The normalised training images [N, F] and labels [N].
struct Dataset {
    x: Vec<f32>,
    y: Vec<u32>,
    n: usize,
    f: usize,
}

fn load(path: &str) -> Result<Dataset> {
    let bytes = std::fs::read(path).context("cannot read the file")?;
    let st = SafeTensors::deserialize(&bytes).context("not a safetensors file")?;
    let get = |name: &str, dtype: Dtype| -> Result<_> {
        let t = st.tensor(name).map_err(|_| anyhow!("no tensor {name}"))?;
        if t.dtype() != dtype {
            bail!("tensor {name} is {:?}, expected {dtype:?}", t.dtype());
        }
        Ok(t)
    };
    let images = get("train.images", Dtype::U8)?;
    let labels = get("train.labels", Dtype::U8)?;
    let mean = get("stats.feature_mean", Dtype::F32)?;
    let std = get("stats.feature_std", Dtype::F32)?;
    let &[n, f] = images.shape() else {
        bail!(
            "train.images has shape {:?}, expected [N, F]",
            images.shape()
        );
    };
    if n == 0 || f == 0 {
        bail!("train.images is empty");
    }
    for (name, t, len) in [
        ("train.labels", &labels, n),
        ("stats.feature_mean", &mean, f),
        ("stats.feature_std", &std, f),
    ] {
        if t.shape() != [len] {
            bail!("{name} has shape {:?}, expected [{len}]", t.shape());
        }
    }
    let floats = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (mean, std) = (floats(mean.data()), floats(std.data()));
    // A constant feature (std 0) carries nothing: 0, as fastnn normalises it.
    let scale: Vec<f32> = std
        .iter()
        .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
        .collect();
    let x = images
        .data()
        .chunks_exact(f)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&scale)
                .map(|((&p, &m), &s)| (p as f32 - m) * s)
        })
        .collect();
    let y: Vec<u32> = labels.data().iter().map(|&l| l as u32).collect();
    if let Some(l) = y.iter().find(|&&l| l >= 10) {
        bail!("train.labels holds {l}, expected a class below 10");
    }
    Ok(Dataset { x, y, n, f })
}

/// Median of the epochs after the first, which is a warm-up.
fn median_after_first(rates: &[f64]) -> f64 {
    let mut r = rates[1..].to_vec();
    r.sort_by(f64::total_cmp);
    let m = r.len() / 2;
    if r.len() % 2 == 1 {
        r[m]
    } else {
        (r[m - 1] + r[m]) / 2.0
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("compare-burn: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    // Threads, before anything starts a pool. burn-ndarray (features
    // multi-threads and simd) runs its matmul through ndarray's
    // general_mat_mul, i.e. matrixmultiply's sgemm with its "threading"
    // feature: a pool of its own, sized once from MATMUL_NUM_THREADS (the
    // physical core count when unset). Its element-wise kernels and the loop
    // over matmul batches run on the global rayon pool, hence both are T.
    let t = args.threads.to_string();
    std::env::set_var("MATMUL_NUM_THREADS", &t);
    std::env::set_var("RAYON_NUM_THREADS", &t);
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;

    let data = load(&args.data).with_context(|| args.data.clone())?;
    eprintln!("{}: {} samples x {} features", args.data, data.n, data.f);
    train(&args, data)
}

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i + 1 < self.layers.len() {
                h = relu(h);
            }
        }
        h
    }
}

fn train(args: &Args, data: Dataset) -> Result<()> {
    // NdArray is deprecated since burn 0.22 in favour of the newer Flex
    // backend (feature "flex", `Device::flex()`), which this peer does not
    // measure.
    #[allow(deprecated)]
    let device = Device::ndarray().autodiff();
    let (n, f) = (data.n, data.f);
    let x = Tensor::<2>::from_data(TensorData::new(data.x, [n, f]), &device);
    let labels: Vec<i64> = data.y.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);

    let mut rng = Rng(args.seed);
    let dims: Vec<usize> = [f]
        .into_iter()
        .chain(args.hidden.iter().copied())
        .chain([10])
        .collect();
    let layers = dims
        .windows(2)
        .map(|d| {
            let (fan_in, fan_out) = (d[0], d[1]);
            let std = (2.0 / fan_in as f64).sqrt();
            let w: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| (rng.normal() * std) as f32)
                .collect();
            // burn's Linear holds the weight as [in, out].
            let w = Tensor::<2>::from_data(TensorData::new(w, [fan_in, fan_out]), &device);
            Linear {
                weight: Param::from_tensor(w),
                bias: Some(Param::from_tensor(Tensor::zeros([fan_out], &device))),
            }
        })
        .collect();
    let mut model = Mlp { layers };
    let ce = CrossEntropyLossConfig::new().init(&device);
    // burn's momentum is v = momentum v + (1 - dampening) g, the first step
    // v = g: PyTorch's definition once dampening is 0 (its default is 0.1).
    let momentum = MomentumConfig::new()
        .with_momentum(0.9)
        .with_dampening(0.0)
        .with_nesterov(false);
    let mut optim = SgdConfig::new().with_momentum(Some(momentum)).init();

    let mut order: Vec<i64> = (0..n as i64).collect();
    let (mut rates, mut losses) = (Vec::new(), Vec::new());
    for epoch in 0..args.epochs {
        let start = Instant::now();
        rng.shuffle(&mut order);
        let mut total = 0.0f64;
        for idx in order.chunks(args.batch) {
            let len = idx.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx.to_vec(), [len]), &device);
            let (xb, yb) = (x.clone().select(0, idx.clone()), y.clone().select(0, idx));
            let loss = ce.forward(model.forward(xb), yb);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(args.lr, model, grads);
            // Read back every step, as the PyTorch peer does with loss.item().
            total += loss.into_scalar::<f32>() as f64 * len as f64;
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(n as f64 / secs);
        losses.push(total / n as f64);
        eprintln!(
            "epoch {}: {:.0} images/s, loss {:.4}",
            epoch + 1,
            n as f64 / secs,
            total / n as f64
        );
    }

    let out = serde_json::json!({
        "peer": "burn",
        "version": VERSION,
        "backend": BACKEND,
        "threads": args.threads,
        "batch": args.batch,
        "hidden": args.hidden,
        "samples": n,
        "epochs_images_per_sec": rates,
        "images_per_sec": median_after_first(&rates),
        "loss_first": losses[0],
        "loss_last": losses[losses.len() - 1],
    });
    println!("{out}");
    Ok(())
}
