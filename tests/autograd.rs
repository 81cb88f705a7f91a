//! The scalar autograd engine as a third gradient oracle: each op against
//! central finite differences, and whole networks against the f64
//! reference (to 1e-10) and the fused f32 engine (to 1e-4).

use fastnn::autograd::{self, Graph, Value};
use fastnn::buf::AlignedBuf;
use fastnn::gemm::Parallelism;
use fastnn::model::{Act, Loss};
use fastnn::net::Workspace;
use fastnn::reference::{random_problem, relative_error, KINK_MARGIN};

const ACTS: [Act; 4] = [Act::Relu, Act::LeakyRelu, Act::Tanh, Act::Sigmoid];
const LOSSES: [Loss; 3] = [Loss::Xent, Loss::Mse, Loss::Hinge];
/// A few inputs, two hidden layers, a few classes.
const DIMS: [usize; 4] = [4, 6, 5, 3];
const BATCH: usize = 5;

/// Largest |a − b| over one tensor, relative to the largest |b| of it.
fn tensor_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn gradients_match_the_reference_and_the_fused_engine() {
    let (mut worst_ref, mut worst_fused) = (0f64, 0f64);
    for act in ACTS {
        for loss in LOSSES {
            for l2 in [0.0, 0.01] {
                for seed in [1, 2] {
                    let what = format!("{act} {loss} l2 {l2} seed {seed}");
                    let p = random_problem(&DIMS, act, loss, BATCH, 0.0, seed, KINK_MARGIN)
                        .expect("a problem away from the kinks");
                    let (ref_loss, _, ref_grads) =
                        p.mlp.loss_and_grads(&p.x, &p.labels, loss, l2, None);

                    let g = Graph::new();
                    let mlp = autograd::Mlp::from_reference(&g, &p.mlp);
                    let value = mlp.loss(&p.x, &p.labels, loss, l2);
                    value.backward();
                    let grads = mlp.grads();
                    assert!(
                        (value.data() - ref_loss).abs() <= 1e-12 * ref_loss.abs(),
                        "{what}: loss {} vs {ref_loss}",
                        value.data()
                    );
                    for (t, (a, r)) in grads.tensors().iter().zip(ref_grads.tensors()).enumerate() {
                        let e = tensor_err(a, r);
                        worst_ref = worst_ref.max(e);
                        assert!(e < 1e-10, "{what}: tensor {t} vs reference: {e:e}");
                    }

                    // The fused engine, from the same weights rounded to f32.
                    let mut fast = mlp.to_fast(loss);
                    let mut ws = Workspace::new(&fast, BATCH, Parallelism::Single);
                    for (dst, &src) in ws.x.iter_mut().zip(&p.x) {
                        *dst = src as f32;
                    }
                    for (dst, &y) in ws.labels.iter_mut().zip(&p.labels) {
                        *dst = y as u8;
                    }
                    fast.forward_train(&mut ws, BATCH, None);
                    fast.loss_and_dlogits(&mut ws, BATCH);
                    let mut fg = AlignedBuf::<f32>::zeroed(fast.layout.len);
                    fast.backward(&mut ws, &mut fg, BATCH);
                    for (l, slot) in fast.layout.layers.iter().enumerate() {
                        // The fused engine leaves the L2 term's 2λW to the
                        // optimiser; add it here.
                        let w = fast.weight(l);
                        let dw: Vec<f64> = (fast.layout.weight_rows(&fg, l).iter())
                            .zip(&w)
                            .map(|(&g, &w)| g as f64 + 2.0 * l2 * w as f64)
                            .collect();
                        let db: Vec<f64> = fg[slot.b.clone()].iter().map(|&g| g as f64).collect();
                        let ew = tensor_err(&dw, &grads.weights[l]);
                        let eb = tensor_err(&db, &grads.biases[l]);
                        worst_fused = worst_fused.max(ew).max(eb);
                        assert!(
                            ew < 1e-4 && eb < 1e-4,
                            "{what}: layer {l} vs fused: dW {ew:e}, db {eb:e}"
                        );
                    }
                }
            }
        }
    }
    eprintln!("autograd vs reference: {worst_ref:e}; vs fused f32: {worst_fused:e}");
}

#[test]
fn parameters_round_trip_through_both_layouts() {
    let p = random_problem(&DIMS, Act::Tanh, Loss::Xent, 2, 0.0, 9, 0.0).unwrap();
    let g = Graph::new();
    let mlp = autograd::Mlp::from_reference(&g, &p.mlp);
    assert_eq!(mlp.to_reference(), p.mlp);
    assert_eq!(
        mlp.parameters().len(),
        p.mlp.tensors().iter().map(|t| t.len()).sum::<usize>()
    );
    let fast = mlp.to_fast(Loss::Xent);
    let back = autograd::Mlp::from_fast(&g, &fast);
    assert_eq!(&back.to_fast(Loss::Xent).params[..], &fast.params[..]);
    assert_eq!(back.act(), Act::Tanh);
}

// ----------------------------------------------------------------------------
// Each op against central finite differences.

const EPS: f64 = 1e-5;
/// Relative error allowed (floor 1e-4, as the reference's gradcheck).
const TOL: f64 = 1e-7;

/// Checks `f`'s gradient with respect to each of `xs` against central
/// differences; returns the largest relative error.
fn check(name: &str, xs: &[f64], f: impl for<'g> Fn(&[Value<'g>]) -> Value<'g>) -> f64 {
    let eval = |xs: &[f64]| {
        let g = Graph::new();
        let vs: Vec<Value> = xs.iter().map(|&x| g.value(x)).collect();
        f(&vs).data()
    };
    let g = Graph::new();
    let vs: Vec<Value> = xs.iter().map(|&x| g.value(x)).collect();
    f(&vs).backward();
    let mut worst = 0f64;
    for (i, v) in vs.iter().enumerate() {
        let mut p = xs.to_vec();
        p[i] = xs[i] + EPS;
        let plus = eval(&p);
        p[i] = xs[i] - EPS;
        let minus = eval(&p);
        let numeric = (plus - minus) / (2.0 * EPS);
        let e = relative_error(v.grad(), numeric, 1e-4);
        assert!(
            e < TOL,
            "{name} at {xs:?}, input {i}: autograd {} vs numeric {numeric}",
            v.grad()
        );
        worst = worst.max(e);
    }
    worst
}

#[test]
fn every_op_matches_finite_differences() {
    let pairs = [[0.7, -1.3], [-2.1, 0.4], [1.9, 2.6]];
    let positives = [0.3, 1.0, 2.5];
    let anywhere = [-2.2, -0.6, 0.05, 0.8, 3.1];
    let mut worst = 0f64;
    for xs in pairs {
        worst = worst.max(check("add", &xs, |v| v[0] + v[1]));
        worst = worst.max(check("sub", &xs, |v| v[0] - v[1]));
        worst = worst.max(check("mul", &xs, |v| v[0] * v[1]));
        worst = worst.max(check("div", &xs, |v| v[0] / v[1]));
        worst = worst.max(check("mul self", &xs[..1], |v| v[0] * v[0]));
        worst = worst.max(check("constants", &xs, |v| {
            (2.0 - v[0]) * 3.0 / (1.5 + v[1] * v[1]) + 1.0
        }));
    }
    for x in positives {
        worst = worst.max(check("log", &[x], |v| v[0].log()));
        worst = worst.max(check("pow 0.5", &[x], |v| v[0].pow(0.5)));
        worst = worst.max(check("pow -1.5", &[x], |v| v[0].pow(-1.5)));
    }
    for x in anywhere {
        worst = worst.max(check("neg", &[x], |v| -v[0]));
        worst = worst.max(check("pow 3", &[x], |v| v[0].pow(3.0)));
        worst = worst.max(check("exp", &[x], |v| v[0].exp()));
        worst = worst.max(check("tanh", &[x], |v| v[0].tanh()));
        worst = worst.max(check("sigmoid", &[x], |v| v[0].sigmoid()));
        // The kinked ops only where x ± ε stays on one side of 0
        // (cs231n: a finite difference across a kink measures nothing).
        assert!(x.abs() > 100.0 * EPS);
        worst = worst.max(check("relu", &[x], |v| v[0].relu()));
        worst = worst.max(check("leaky_relu", &[x], |v| v[0].leaky_relu()));
    }
    eprintln!("ops vs finite differences: {worst:e}");
}

#[test]
fn kinks_follow_the_reference_convention() {
    // At exactly 0, relu'(0) = 0 and leaky_relu'(0) = 0.01, as in
    // `reference::act_derivative` (and PyTorch).
    for act in [Act::Relu, Act::LeakyRelu] {
        let g = Graph::new();
        let x = g.value(0.0);
        let y = x.act(act);
        y.backward();
        assert_eq!(y.data(), 0.0);
        assert_eq!(
            x.grad(),
            fastnn::reference::act_derivative(act, 0.0),
            "{act}"
        );
    }
    // A hinge term with argument exactly 0 contributes nothing: logits
    // [0, −1], label 0: 1 − 0 + (−1) = 0.
    let g = Graph::new();
    let z = [g.value(0.0), g.value(-1.0)];
    let l = autograd::hinge(&z, 0);
    l.backward();
    assert_eq!((l.data(), z[0].grad(), z[1].grad()), (0.0, 0.0, 0.0));
}

#[test]
fn losses_match_finite_differences() {
    let logits = [0.3, -1.2, 0.9, 2.0];
    let mut worst = 0f64;
    for loss in LOSSES {
        for label in 0..logits.len() {
            let name = format!("{loss} label {label}");
            worst = worst.max(check(&name, &logits, |v| {
                autograd::sample_loss(v, label, loss)
            }));
        }
    }
    eprintln!("losses vs finite differences: {worst:e}");
}

#[test]
fn cross_entropy_is_stable_for_large_logits() {
    let g = Graph::new();
    let z = [g.value(1000.0), g.value(0.0), g.value(-1000.0)];
    let l = autograd::cross_entropy(&z, 1);
    l.backward();
    assert!((l.data() - 1000.0).abs() < 1e-9, "{}", l.data());
    assert!((z[0].grad() - 1.0).abs() < 1e-12);
    assert!((z[1].grad() + 1.0).abs() < 1e-12);
    assert_eq!(z[2].grad(), 0.0);
}

#[test]
fn a_training_step_keeps_the_parameters_and_drops_the_rest() {
    let p = random_problem(&DIMS, Act::Relu, Loss::Xent, BATCH, 0.0, 4, 0.0).unwrap();
    let g = Graph::new();
    let mlp = autograd::Mlp::from_reference(&g, &p.mlp);
    let params = g.len();
    let mut losses = Vec::new();
    for _ in 0..20 {
        mlp.zero_grad();
        let l = mlp.loss(&p.x, &p.labels, Loss::Xent, 0.0);
        l.backward();
        mlp.sgd_step(0.1);
        losses.push(l.data());
        g.truncate(params);
    }
    assert_eq!(g.len(), params);
    assert!(losses[19] < losses[0], "{losses:?}");
}
