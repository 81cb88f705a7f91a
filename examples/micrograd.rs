//! micrograd's demo, twice: the same tiny MLP trained on the two-moons toy
//! problem by the scalar autograd engine (`fastnn::autograd`, f64, one node
//! per scalar) and by the fused engine (`fastnn::net`, f32, GEMMs), from the
//! same initial weights, with the same plain SGD. The losses agree step by
//! step; the time per step does not.
//!
//! ```text
//! cargo run --release --example micrograd
//! ```

use std::time::{Duration, Instant};

use fastnn::autograd::{self, Graph};
use fastnn::buf::AlignedBuf;
use fastnn::gemm::Parallelism;
use fastnn::model::{Act, Loss, Mlp, MlpConfig};
use fastnn::net::Workspace;
use fastnn::optim::{OptimConfig, OptimKind, Optimizer};
use fastnn::reference::SplitMix64;
use fastnn::train::train_step;

const SAMPLES: usize = 100;
const STEPS: usize = 60;
const LR: f32 = 0.5;
/// The L2 term λ‖W‖² (micrograd's demo uses 1e-4 too).
const L2: f32 = 1e-4;

/// Two interleaving half circles with Gaussian noise (scikit-learn's
/// `make_moons`): `(x [n, 2], labels [n])`.
fn moons(n: usize, noise: f64, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed);
    let half = n / 2;
    let mut x = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let (class, k) = if i < half { (0, i) } else { (1, i - half) };
        let t = std::f64::consts::PI * k as f64 / (half - 1) as f64;
        let (px, py) = if class == 0 {
            (t.cos(), t.sin())
        } else {
            (1.0 - t.cos(), 0.5 - t.sin())
        };
        let e = rng.normals(2);
        x.extend([px + noise * e[0], py + noise * e[1]]);
        labels.push(class);
    }
    (x, labels)
}

fn main() {
    let (x64, labels) = moons(SAMPLES, 0.1, 1337);
    // Both engines see the same f32 inputs (every f32 is exact in f64).
    let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
    let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();

    // The fused engine's network, and the autograd one from its weights.
    let cfg = MlpConfig {
        dims: vec![2, 16, 16, 2],
        act: Act::Relu,
        loss: Loss::Hinge,
        dropout: 0.0,
        label_smoothing: 0.0,
        norm: Default::default(),
    };
    let mut fast = Mlp::init(cfg.clone(), 42);
    let graph = Graph::new();
    let scalar = autograd::Mlp::from_fast(&graph, &fast);
    let params = graph.len();

    let mut ws = Workspace::new(&fast, SAMPLES, Parallelism::Single);
    ws.x[..x32.len()].copy_from_slice(&x32);
    for (dst, &y) in ws.labels.iter_mut().zip(&labels) {
        *dst = y as u8;
    }
    let mut grads = AlignedBuf::<f32>::zeroed(fast.layout.len);
    let sgd = OptimKind::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    let optim = OptimConfig {
        kind: sgd,
        l2: L2,
        weight_decay: 0.0,
    };
    let mut opt = Optimizer::new(optim, &fast.layout);

    println!(
        "two moons, {SAMPLES} points, MLP {:?} {} {} + {L2}·‖W‖², SGD lr {LR}, full batch",
        cfg.dims, cfg.act, cfg.loss
    );
    println!(
        "{:>4}  {:>12}  {:>12}  {:>9}  {:>8}",
        "step", "autograd", "fused", "|Δ|", "nodes"
    );
    let (mut t_scalar, mut t_fast) = (Duration::ZERO, Duration::ZERO);
    let mut worst = 0f64;
    let mut correct = 0;
    for step in 0..STEPS {
        // Autograd: build the loss's graph on top of the parameters,
        // backward, update, then drop everything but the parameters.
        let t = Instant::now();
        scalar.zero_grad();
        let loss = scalar.loss(&x64, &labels, cfg.loss, L2 as f64);
        loss.backward();
        scalar.sgd_step(LR as f64);
        let (value, nodes) = (loss.data(), graph.len());
        graph.truncate(params);
        t_scalar += t.elapsed();

        // Fused: forward, loss, backward, update (the loss it returns is
        // the data term; the L2 term is added here, before the update).
        let penalty = L2 as f64 * fast.weight_norm_sq();
        let t = Instant::now();
        let out = train_step(
            &mut fast, &mut ws, &mut grads, &mut opt, SAMPLES, LR, None, None, None,
        );
        t_fast += t.elapsed();
        let fused = out.loss_sum / SAMPLES as f64 + penalty;
        correct = out.correct;

        let diff = (value - fused).abs();
        worst = worst.max(diff / value.abs());
        println!("{step:>4}  {value:>12.8}  {fused:>12.8}  {diff:>9.2e}  {nodes:>8}");
    }
    let (per_scalar, per_fast) = (t_scalar / STEPS as u32, t_fast / STEPS as u32);
    println!("largest relative loss difference: {worst:.2e}; accuracy at the last step {correct}/{SAMPLES}");
    println!(
        "time per step: autograd {per_scalar:.2?}, fused {per_fast:.2?}: the fused engine is {:.0}× faster",
        per_scalar.as_secs_f64() / per_fast.as_secs_f64()
    );
}
