//! compare-candle: trains fastnn's benchmark MLP with candle on the CPU and
//! prints its training speed as one line of JSON.
//!
//! It mirrors tools/compare/torch_train.py and fastnn's `bench train`: the
//! normalised float32 training set held in memory as one tensor, an MLP
//! `F-hidden...-10` with ReLU, Kaiming-normal weights and zero biases, softmax
//! cross-entropy, SGD with momentum 0.9 (PyTorch's definition), a fresh
//! shuffle per epoch, and the median images/s of the epochs after the first.
//!
//!     compare-candle --data data/cache/fashion-mnist.safetensors --hidden 512,256 \
//!         --batch 128 --threads 2 --epochs 4 --seed 1 --lr 0.01

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module};
use safetensors::{Dtype, SafeTensors};

/// Must match Cargo.lock.
const VERSION: &str = "candle-nn 0.11.1";
/// candle's CPU matmul (without the mkl/accelerate features) calls `gemm::gemm`.
const BACKEND: &str = "gemm crate 0.19.0";

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
        eprintln!("compare-candle: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    // Threads, before anything starts a pool. In candle 0.11 three pools can
    // work, and each must run T threads:
    // - matmul: `Parallelism::Rayon(n)` is passed to gemm, with n read from
    //   RAYON_NUM_THREADS (candle_core::utils::get_num_threads); gemm runs its
    //   n tasks on the rayon pool it is called from. Here that is candle's
    //   private pool (`Device::with_context`, which keeps its workers warm
    //   between the many short parallel sections), also sized from
    //   RAYON_NUM_THREADS.
    // - element-wise ops of 64K elements and more (the weight updates): a
    //   "barrier pool" of CANDLE_NUM_THREADS - 1 workers plus the caller, the
    //   variable falling back to RAYON_NUM_THREADS; set it so that an
    //   inherited value cannot change the count.
    // - the global rayon pool, unused by the loop, gets the same size anyway.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", args.threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;

    let data = load(&args.data).with_context(|| args.data.clone())?;
    eprintln!("{}: {} samples x {} features", args.data, data.n, data.f);
    let dev = Device::Cpu;
    dev.with_context(|| train(&args, data, &dev))
}

fn train(args: &Args, data: Dataset, dev: &Device) -> Result<()> {
    let (n, f) = (data.n, data.f);
    let x = Tensor::from_vec(data.x, (n, f), dev)?;
    let y = Tensor::from_vec(data.y, n, dev)?;

    let mut rng = Rng(args.seed);
    let dims: Vec<usize> = [f]
        .into_iter()
        .chain(args.hidden.iter().copied())
        .chain([10])
        .collect();
    let mut vars = Vec::new();
    let mut layers = Vec::new();
    for d in dims.windows(2) {
        let (fan_in, fan_out) = (d[0], d[1]);
        let std = (2.0 / fan_in as f64).sqrt();
        let w: Vec<f32> = (0..fan_in * fan_out)
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        // candle's Linear holds the weight as [out, in], like PyTorch.
        let w = Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), dev)?)?;
        let b = Var::zeros(fan_out, DType::F32, dev)?;
        layers.push(Linear::new(
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
        ));
        vars.push(w);
        vars.push(b);
    }
    let forward = |xb: &Tensor| -> candle_core::Result<Tensor> {
        let mut h = xb.clone();
        for (i, layer) in layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    };
    // candle-nn's SGD has no momentum, so PyTorch's is written out:
    // v = 0.9 v + g; w -= lr v (no dampening, no Nesterov).
    let mut velocity: Vec<Tensor> = vars
        .iter()
        .map(|v| v.zeros_like())
        .collect::<candle_core::Result<_>>()?;

    let mut order: Vec<u32> = (0..n as u32).collect();
    let (mut rates, mut losses) = (Vec::new(), Vec::new());
    for epoch in 0..args.epochs {
        let start = Instant::now();
        rng.shuffle(&mut order);
        let mut total = 0.0f64;
        for idx in order.chunks(args.batch) {
            let idx = Tensor::from_slice(idx, idx.len(), dev)?;
            let (xb, yb) = (x.index_select(&idx, 0)?, y.index_select(&idx, 0)?);
            let loss = candle_nn::loss::cross_entropy(&forward(&xb)?, &yb)?;
            let grads = loss.backward()?;
            for (var, v) in vars.iter().zip(velocity.iter_mut()) {
                let g = grads.get(var).context("a parameter got no gradient")?;
                *v = ((&*v * 0.9)? + g)?;
                var.set(&(var.as_tensor().detach() - (&*v * args.lr)?)?)?;
            }
            // Read back every step, as the PyTorch peer does with loss.item().
            total += loss.to_scalar::<f32>()? as f64 * idx.dim(0)? as f64;
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
        "peer": "candle",
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
