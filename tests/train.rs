//! The fast f32 training path against the f64 `reference`, and the
//! training loop's promises: determinism, bit-exact resume, divergence.

use fastnn::buf::AlignedBuf;
use fastnn::gemm::Parallelism;
use fastnn::model::{Act, Loss, Mlp, MlpConfig};
use fastnn::net::Workspace;
use fastnn::optim::{OptimConfig, OptimKind, Optimizer};
use fastnn::reference::{RefMlp, RefOptim, RefOptimizer};
use fastnn::rng::Rng;

const DIMS: [usize; 4] = [13, 17, 9, 5];
const BATCH: usize = 7;

/// Largest |fast − reference| over one tensor, relative to the largest
/// |reference| value of that tensor.
fn rel_err(fast: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(fast.len(), reference.len());
    let scale = reference
        .iter()
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(1e-30);
    fast.iter()
        .zip(reference)
        .map(|(&a, b)| (a as f64 - b).abs())
        .fold(0.0, f64::max)
        / scale
}

fn to_ref(mlp: &Mlp) -> RefMlp {
    let layers = mlp.cfg.layers();
    RefMlp {
        dims: mlp.cfg.dims.clone(),
        weights: (0..layers)
            .map(|l| mlp.weight(l).iter().map(|&w| w as f64).collect())
            .collect(),
        biases: (0..layers)
            .map(|l| mlp.bias(l).iter().map(|&w| w as f64).collect())
            .collect(),
        act: mlp.cfg.act,
    }
}

/// A random network (with non-zero biases, so the bias paths are tested)
/// and a random batch already in its workspace.
fn problem(
    act: Act,
    loss: Loss,
    dropout: f32,
    seed: u64,
) -> (Mlp, Workspace, Vec<f64>, Vec<usize>) {
    let cfg = MlpConfig {
        dims: DIMS.to_vec(),
        act,
        loss,
        dropout,
    };
    let mut mlp = Mlp::init(cfg, seed);
    let mut rng = Rng::new(seed ^ 0xABCD);
    for slot in mlp.layout.layers.clone() {
        for b in &mut mlp.params[slot.b] {
            *b = (rng.normal() * 0.1) as f32;
        }
    }
    let mut ws = Workspace::new(&mlp, BATCH, Parallelism::Single);
    let x: Vec<f32> = (0..BATCH * DIMS[0]).map(|_| rng.normal() as f32).collect();
    ws.x[..x.len()].copy_from_slice(&x);
    let labels: Vec<usize> = (0..BATCH)
        .map(|_| rng.below(DIMS[3] as u64) as usize)
        .collect();
    for (l, &y) in ws.labels.iter_mut().zip(&labels) {
        *l = y as u8;
    }
    (mlp, ws, x.iter().map(|&v| v as f64).collect(), labels)
}

/// The dropout masks of the last forward pass, as the reference takes them.
fn masks(ws: &Workspace, layers: usize) -> Option<Vec<Vec<f64>>> {
    (0..layers - 1)
        .map(|l| {
            ws.dropout_mask(l)
                .map(|m| m[..BATCH * DIMS[l + 1]].iter().map(|&v| v as f64).collect())
        })
        .collect()
}

#[test]
fn gradients_match_the_reference_for_every_activation_and_loss() {
    for act in [Act::Relu, Act::LeakyRelu, Act::Tanh, Act::Sigmoid] {
        for loss in [Loss::Xent, Loss::Mse, Loss::Hinge] {
            for dropout in [0.0, 0.3] {
                let (mlp, mut ws, x, labels) = problem(act, loss, dropout, 11);
                let mut drop_rng = Rng::new(5);
                mlp.forward(&mut ws, BATCH, (dropout > 0.0).then_some(&mut drop_rng));
                let out = mlp.loss_and_dlogits(&mut ws, BATCH);
                let mut grads = AlignedBuf::<f32>::zeroed(mlp.layout.len);
                mlp.backward(&mut ws, &mut grads, BATCH);

                let r = to_ref(&mlp);
                let m = masks(&ws, mlp.cfg.layers());
                let (ref_loss, ref_logits, ref_grads) =
                    r.loss_and_grads(&x, &labels, loss, 0.0, m.as_deref());
                let what = format!("{act} {loss} dropout {dropout}");
                let loss_err =
                    (out.loss_sum / BATCH as f64 - ref_loss).abs() / ref_loss.abs().max(1e-30);
                assert!(
                    loss_err < 1e-5,
                    "{what}: loss {} vs {ref_loss}",
                    out.loss_sum / BATCH as f64
                );
                assert!(
                    rel_err(&ws.logits()[..BATCH * 5], &ref_logits) < 1e-5,
                    "{what}: logits"
                );
                for (l, slot) in mlp.layout.layers.iter().enumerate() {
                    let ew = rel_err(&grads[slot.w.clone()], &ref_grads.weights[l]);
                    let eb = rel_err(&grads[slot.b.clone()], &ref_grads.biases[l]);
                    assert!(
                        ew < 1e-4 && eb < 1e-4,
                        "{what}: layer {l} dW error {ew:e}, db error {eb:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn optimiser_steps_match_the_reference() {
    let cases = [
        (
            OptimKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.0,
            0.0,
        ),
        (
            OptimKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            0.01,
            0.0,
        ),
        (
            OptimKind::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            0.0,
            0.05,
        ),
        (
            OptimKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            0.0,
            0.0,
        ),
        (
            OptimKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            0.01,
            0.1,
        ),
    ];
    for (kind, l2, wd) in cases {
        let lr = match kind {
            OptimKind::Sgd { .. } => 0.1,
            OptimKind::Adam { .. } => 0.01,
        };
        let (mut mlp, mut ws, x, labels) = problem(Act::Tanh, Loss::Xent, 0.0, 3);
        let mut r = to_ref(&mlp);
        let mut opt = Optimizer::new(
            OptimConfig {
                kind,
                l2,
                weight_decay: wd,
            },
            &mlp.layout,
        );
        let ref_kind = match kind {
            OptimKind::Sgd { momentum, nesterov } => RefOptim::Sgd {
                lr,
                momentum: momentum as f64,
                nesterov,
                weight_decay: wd as f64,
            },
            OptimKind::Adam { beta1, beta2, eps } => RefOptim::Adam {
                lr,
                beta1: beta1 as f64,
                beta2: beta2 as f64,
                eps: eps as f64,
                weight_decay: wd as f64,
            },
        };
        let mut ref_opt = RefOptimizer::new(ref_kind, &r);
        let mut grads = AlignedBuf::<f32>::zeroed(mlp.layout.len);
        for step in 0..3 {
            fastnn::train::train_step(
                &mut mlp, &mut ws, &mut grads, &mut opt, BATCH, lr as f32, None,
            );
            let (_, _, g) = r.loss_and_grads(&x, &labels, Loss::Xent, l2 as f64, None);
            ref_opt.step(&mut r, &g);
            for (l, slot) in mlp.layout.layers.iter().enumerate() {
                let ew = rel_err(&mlp.params[slot.w.clone()], &r.weights[l]);
                let eb = rel_err(&mlp.params[slot.b.clone()], &r.biases[l]);
                assert!(ew < 1e-5 && eb < 1e-5, "{kind:?} l2 {l2} wd {wd} step {step}: layer {l} W error {ew:e}, b error {eb:e}");
            }
        }
    }
}
