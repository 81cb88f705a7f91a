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
//!     compare-burn --data ~/.cache/fastnn/fashion-mnist.safetensors --hidden 512,256 \
//!         --batch 128 --threads 2 --epochs 4 --seed 1 --lr 0.01

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::Linear;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

#[path = "../../rust_peer.rs"]
mod rust_peer;
use rust_peer::{exit_on_error, load, parse_args, Args, Dataset, Epochs, Rng};

/// Must match Cargo.lock.
const VERSION: &str = "burn 0.22.1";
/// burn-ndarray's matmul calls ndarray's general_mat_mul, which (without a
/// BLAS feature) is matrixmultiply's sgemm.
const BACKEND: &str = "burn-ndarray 0.22.1: ndarray 0.17.2 + matrixmultiply 0.3.11";

fn main() {
    exit_on_error("compare-burn", run);
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
    let mut epochs = Epochs::default();
    for _ in 0..args.epochs {
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
        epochs.push(n, start.elapsed().as_secs_f64(), total);
    }
    epochs.report("burn", VERSION, BACKEND, args, n);
    Ok(())
}
