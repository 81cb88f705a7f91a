//! compare-candle: trains fastnn's benchmark MLP with candle on the CPU and
//! prints its training speed as one line of JSON.
//!
//! It mirrors tools/compare/torch_train.py and fastnn's `bench train`: the
//! normalised float32 training set held in memory as one tensor, an MLP
//! `F-hidden...-10` with ReLU, Kaiming-normal weights and zero biases, softmax
//! cross-entropy, SGD with momentum 0.9 (PyTorch's definition), a fresh
//! shuffle per epoch, and the median images/s of the epochs after the first.
//!
//!     compare-candle --data ~/.cache/fastnn/fashion-mnist.safetensors --hidden 512,256 \
//!         --batch 128 --threads 2 --epochs 4 --seed 1 --lr 0.01

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module};

#[path = "../../rust_peer.rs"]
mod rust_peer;
use rust_peer::{exit_on_error, load, parse_args, Args, Dataset, Epochs, Rng};

/// Must match Cargo.lock.
const VERSION: &str = "candle-nn 0.11.1";
/// candle's CPU matmul (without the mkl/accelerate features) calls `gemm::gemm`.
const BACKEND: &str = "gemm crate 0.19.0";

fn main() {
    exit_on_error("compare-candle", run);
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
    let mut epochs = Epochs::default();
    for _ in 0..args.epochs {
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
        epochs.push(n, start.elapsed().as_secs_f64(), total);
    }
    epochs.report("candle", VERSION, BACKEND, args, n);
    Ok(())
}
