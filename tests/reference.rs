//! The reference MLP (`fastnn::reference`) against central finite
//! differences and against a golden state written by PyTorch in float64
//! (`tools/torch_golden.py`, the layout is in its docstring), in the manner
//! of llm.c's `test_gpt2.c`.

use std::collections::HashMap;

use fastnn::model::{Act, Loss, Norm};
use fastnn::reference::{
    compare_with_finite_differences, gradcheck, param_names, random_problem,
    random_problem_with_norm, Criterion, GradcheckInput, Problem, RefMlp, RefOptim, RefOptimizer,
    GRADCHECK_EPS, GRADCHECK_FLOOR, GRADCHECK_TOL, KINK_MARGIN,
};
use safetensors::{Dtype, SafeTensors};

const ACTS: [Act; 4] = [Act::Relu, Act::LeakyRelu, Act::Tanh, Act::Sigmoid];
const LOSSES: [Loss; 3] = [Loss::Xent, Loss::Mse, Loss::Hinge];
const NORMS: [Norm; 2] = [Norm::Batch, Norm::Layer];
const DIMS: [usize; 4] = [5, 7, 4, 3];
const BATCH: usize = 6;

/// Finite-difference step, relative-error floor, tolerance and kink margin:
/// the library's defaults (their doc comments say why these values).
const EPS: f64 = GRADCHECK_EPS;
const FLOOR: f64 = GRADCHECK_FLOOR;
const TOL: f64 = GRADCHECK_TOL;
const MARGIN: f64 = KINK_MARGIN;

fn problem(act: Act, loss: Loss, dropout: f64, seed: u64) -> Problem {
    random_problem(&DIMS, act, loss, BATCH, dropout, seed, MARGIN)
        .expect("a draw away from the kinks")
}

fn norm_problem(norm: Norm, act: Act, loss: Loss, dropout: f64, seed: u64) -> Problem {
    random_problem_with_norm(&DIMS, act, loss, BATCH, dropout, norm, seed, MARGIN)
        .expect("a draw away from the kinks")
}

fn input<'a>(p: &'a Problem, loss: Loss, l2: f64) -> GradcheckInput<'a> {
    GradcheckInput {
        x: &p.x,
        labels: &p.labels,
        loss: loss.into(),
        l2,
        masks: p.masks.as_deref(),
        eps: EPS,
        floor: FLOOR,
    }
}

// ----------------------------------------------------------------------------
// 1. Finite differences.

#[test]
fn gradients_match_finite_differences_for_every_activation_and_loss() {
    let mut worst: f64 = 0.0;
    let mut seed = 0;
    for act in ACTS {
        for loss in LOSSES {
            for l2 in [0.0, 0.01] {
                for dropout in [0.0, 0.5] {
                    seed += 1;
                    let p = problem(act, loss, dropout, seed);
                    let errors = gradcheck(&p.mlp, &input(&p, loss, l2));
                    for (name, err) in &errors {
                        assert!(
                            *err < TOL,
                            "{act} {loss} l2={l2} dropout={dropout}: {name} relative error {err:e}"
                        );
                        worst = worst.max(*err);
                    }
                }
            }
        }
    }
    println!("finite differences: max relative error {worst:e} over {seed} configurations");
}

/// The label-smoothed cross-entropy's gradients against finite
/// differences, for every activation, and the smoothing really changes them.
#[test]
fn label_smoothed_gradients_match_finite_differences() {
    let mut seed = 100;
    for act in ACTS {
        for smoothing in [0.1, 0.45] {
            seed += 1;
            let p = problem(act, Loss::Xent, 0.0, seed);
            let mut inp = input(&p, Loss::Xent, 0.01);
            inp.loss = Criterion {
                loss: Loss::Xent,
                smoothing,
            };
            for (name, err) in gradcheck(&p.mlp, &inp) {
                assert!(
                    err < TOL,
                    "{act} ε={smoothing}: {name} relative error {err:e}"
                );
            }
            let (smoothed, _, g) = p.mlp.loss_and_grads(&p.x, &p.labels, inp.loss, 0.0, None);
            let (plain, _, g0) = p.mlp.loss_and_grads(&p.x, &p.labels, Loss::Xent, 0.0, None);
            assert!(
                smoothed != plain && g.weights[0] != g0.weights[0],
                "{act} ε={smoothing}"
            );
        }
    }
}

/// With BatchNorm and LayerNorm, every tensor (γ and β too) against finite
/// differences, for every activation and loss, with and without dropout
/// and L2.
#[test]
fn norm_gradients_match_finite_differences_for_every_activation_and_loss() {
    let mut worst: f64 = 0.0;
    let mut seed = 200;
    for norm in NORMS {
        for act in ACTS {
            for loss in LOSSES {
                for l2 in [0.0, 0.01] {
                    for dropout in [0.0, 0.5] {
                        seed += 1;
                        let p = norm_problem(norm, act, loss, dropout, seed);
                        let errors = gradcheck(&p.mlp, &input(&p, loss, l2));
                        let names: Vec<&String> = errors.iter().map(|(n, _)| n).collect();
                        assert_eq!(names, p.mlp.param_names().iter().collect::<Vec<_>>());
                        for (name, err) in &errors {
                            assert!(
                                *err < TOL,
                                "{norm} {act} {loss} l2={l2} dropout={dropout}: {name} \
                                 relative error {err:e}"
                            );
                            worst = worst.max(*err);
                        }
                    }
                }
            }
        }
    }
    println!(
        "finite differences with norms: max relative error {worst:e} over {} configurations",
        seed - 200
    );
}

/// The parameters of a network with a norm, named and shaped as PyTorch's
/// `nn.Sequential(Linear, norm, act, …, Linear)`: no hidden bias with
/// BatchNorm, γ and β after each hidden Linear, fresh γ = 1 and β = 0.
#[test]
fn norm_parameters_follow_nn_sequential() {
    let batch = RefMlp::zeros_with_norm(&DIMS, Act::Relu, Norm::Batch);
    assert_eq!(
        batch.param_names(),
        [
            "0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias", "6.weight",
            "6.bias"
        ]
    );
    let lens: Vec<usize> = batch.tensors().iter().map(|t| t.len()).collect();
    assert_eq!(lens, [35, 7, 7, 28, 4, 4, 12, 3]);
    assert_eq!(batch.running_mean, [vec![0.0; 7], vec![0.0; 4]]);
    assert_eq!(batch.running_var, [vec![1.0; 7], vec![1.0; 4]]);
    let layer = RefMlp::zeros_with_norm(&DIMS, Act::Relu, Norm::Layer);
    assert_eq!(
        layer.param_names(),
        [
            "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias",
            "6.weight", "6.bias"
        ]
    );
    assert_eq!(layer.gammas, [vec![1.0; 7], vec![1.0; 4]]);
    assert_eq!(layer.betas, [vec![0.0; 7], vec![0.0; 4]]);
    assert!(layer.running_mean.is_empty() && layer.running_var.is_empty());
    let none = RefMlp::zeros_with_norm(&DIMS, Act::Relu, Norm::None);
    assert_eq!(none, RefMlp::zeros(&DIMS, Act::Relu));
    assert_eq!(none.param_names(), param_names(3));
    // Without norm, random_with_norm draws what random draws.
    let p = problem(Act::Tanh, Loss::Xent, 0.5, 3);
    let q = random_problem_with_norm(
        &DIMS,
        Act::Tanh,
        Loss::Xent,
        BATCH,
        0.5,
        Norm::None,
        3,
        MARGIN,
    );
    assert_eq!(p.mlp, q.unwrap().mlp);
}

/// Evaluation mode: BatchNorm on running statistics equal to the batch's
/// (mean, biased variance) gives the training logits; LayerNorm is the
/// same in both modes; neither drops.
#[test]
fn eval_mode_uses_the_running_statistics() {
    let p = norm_problem(Norm::Batch, Act::Tanh, Loss::Xent, 0.0, 300);
    let mut mlp = p.mlp.clone();
    let train = mlp.forward(&p.x, BATCH, None);
    assert_ne!(mlp.forward_eval(&p.x, BATCH), train);
    // One update from 0 stores 0.1·μ and 0.1·σ²·B/(B−1): scaled back, the
    // running statistics become the batch's.
    for l in 0..DIMS.len() - 2 {
        mlp.running_mean[l].fill(0.0);
        mlp.running_var[l].fill(0.0);
    }
    let mut probe = mlp.clone();
    probe.update_running_stats(&p.x, BATCH, None);
    assert_eq!(probe.batches_tracked, 1);
    let biased = (BATCH - 1) as f64 / BATCH as f64;
    for l in 0..DIMS.len() - 2 {
        mlp.running_mean[l] = probe.running_mean[l].iter().map(|v| v * 10.0).collect();
        mlp.running_var[l] = probe.running_var[l]
            .iter()
            .map(|v| v * 10.0 * biased)
            .collect();
    }
    let eval = mlp.forward_eval(&p.x, BATCH);
    for (a, b) in eval.iter().zip(&train) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    let p = norm_problem(Norm::Layer, Act::Tanh, Loss::Xent, 0.5, 301);
    let masks = p.masks.as_deref();
    assert_eq!(
        p.mlp.forward_eval(&p.x, BATCH),
        p.mlp.forward(&p.x, BATCH, None)
    );
    assert_ne!(
        p.mlp.forward_eval(&p.x, BATCH),
        p.mlp.forward(&p.x, BATCH, masks)
    );
    let mut unchanged = p.mlp.clone();
    unchanged.update_running_stats(&p.x, BATCH, masks);
    assert_eq!(unchanged, p.mlp);
}

#[test]
fn dropout_masks_change_the_gradients() {
    // The masked case must really be masked: a zeroed hidden unit has no
    // gradient on its incoming weights.
    let p = problem(Act::Tanh, Loss::Xent, 0.5, 7);
    let masks = p.masks.as_ref().unwrap();
    let (_, _, g) = p
        .mlp
        .loss_and_grads(&p.x, &p.labels, Loss::Xent, 0.0, Some(masks));
    let (_, _, g_full) = p.mlp.loss_and_grads(&p.x, &p.labels, Loss::Xent, 0.0, None);
    assert_ne!(g, g_full);
    let h1 = DIMS[1];
    for j in 0..h1 {
        if (0..BATCH).all(|n| masks[0][n * h1 + j] == 0.0) {
            assert_eq!(
                g.biases[0][j], 0.0,
                "unit {j} is dropped for the whole batch"
            );
        }
    }
}

#[test]
fn kink_distance_sees_a_relu_at_zero() {
    let mut mlp = RefMlp::zeros(&[1, 1, 1], Act::Relu);
    mlp.weights[0][0] = 1.0;
    assert_eq!(mlp.kink_distance(&[0.0], &[0], Loss::Xent, None), 0.0);
    assert_eq!(mlp.kink_distance(&[0.5], &[0], Loss::Xent, None), 0.5);
    mlp.act = Act::Tanh;
    assert_eq!(
        mlp.kink_distance(&[0.0], &[0], Loss::Xent, None),
        f64::INFINITY
    );
    // Hinge, C = 1: no j ≠ y, so no kink; C = 2 with equal logits: 1 − 0 + 0.
    assert_eq!(
        mlp.kink_distance(&[0.0], &[0], Loss::Hinge, None),
        f64::INFINITY
    );
    let two = RefMlp::zeros(&[1, 1, 2], Act::Tanh);
    assert_eq!(two.kink_distance(&[0.0], &[0], Loss::Hinge, None), 1.0);
}

// ----------------------------------------------------------------------------
// 3. The gradient check itself: order of the report, and it can fail.

#[test]
fn gradcheck_reports_every_tensor_in_sequential_order() {
    let p = problem(Act::Relu, Loss::Xent, 0.0, 100);
    let errors = gradcheck(&p.mlp, &input(&p, Loss::Xent, 0.0));
    let names: Vec<&str> = errors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    );
    assert_eq!(param_names(3), names);
    for (name, err) in &errors {
        assert!(*err < TOL, "{name}: {err:e}");
    }
}

#[test]
fn gradcheck_detects_a_wrong_element() {
    let p = problem(Act::Sigmoid, Loss::Mse, 0.0, 101);
    let inp = input(&p, Loss::Mse, 0.0);
    let (_, _, mut grads) = p.mlp.loss_and_grads(&p.x, &p.labels, Loss::Mse, 0.0, None);
    // Flip the sign of one element of 2.weight (chosen with a gradient well
    // above the floor, so the flip is a large relative error).
    let k = (0..grads.weights[1].len())
        .max_by(|&a, &b| {
            grads.weights[1][a]
                .abs()
                .total_cmp(&grads.weights[1][b].abs())
        })
        .unwrap();
    assert!(grads.weights[1][k].abs() > FLOOR);
    grads.weights[1][k] = -grads.weights[1][k];
    let errors = compare_with_finite_differences(&p.mlp, &grads, &inp);
    for (name, err) in &errors {
        if name == "2.weight" {
            assert!(
                *err > 1.0,
                "a flipped sign gives a relative error of 2, got {err:e}"
            );
        } else {
            assert!(*err < TOL, "{name}: {err:e}");
        }
    }
}

#[test]
fn gradcheck_detects_a_missing_term() {
    // Gradients computed without the L2 term, checked against the loss
    // with it: every weight tensor must be flagged, no bias.
    let p = problem(Act::Tanh, Loss::Xent, 0.0, 102);
    let (_, _, grads) = p.mlp.loss_and_grads(&p.x, &p.labels, Loss::Xent, 0.0, None);
    let errors = compare_with_finite_differences(&p.mlp, &grads, &input(&p, Loss::Xent, 0.1));
    for (name, err) in &errors {
        if name.ends_with("weight") {
            assert!(*err > 1e-3, "{name}: missing 2λW not seen ({err:e})");
        } else {
            assert!(*err < TOL, "{name}: {err:e}");
        }
    }
}

// ----------------------------------------------------------------------------
// 2. PyTorch golden state.

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/mlp_golden.safetensors"
);
/// Same f64 math on both sides: only rounding differs.
const GOLDEN_TOL: f64 = 1e-10;

struct Golden {
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

/// One case of the golden state, from its metadata.
struct Case {
    name: String,
    dims: Vec<usize>,
    act: Act,
    loss: Loss,
    l2: f64,
    /// `none` when the metadata has no "norm".
    norm: Norm,
    meta: serde_json::Value,
}

impl Golden {
    fn open() -> Golden {
        let bytes = std::fs::read(GOLDEN).unwrap_or_else(|e| {
            panic!("{GOLDEN}: {e}\n---> HINT: run python3 tools/torch_golden.py")
        });
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("a safetensors file");
        let metadata = meta.metadata().clone().expect("golden metadata");
        assert_eq!(metadata["format"], "fastnn-golden");
        assert_eq!(metadata["version"], "1");
        Golden { bytes, metadata }
    }

    fn cases(&self) -> Vec<Case> {
        let cases: serde_json::Value =
            serde_json::from_str(&self.metadata["cases"]).expect("cases is JSON");
        let parse = |v: &serde_json::Value| v.as_str().unwrap().to_string();
        cases
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, meta)| Case {
                name: name.clone(),
                dims: meta["dims"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                act: parse(&meta["activation"]).parse().unwrap(),
                loss: parse(&meta["loss"]).parse().unwrap(),
                l2: meta["l2"].as_f64().unwrap(),
                norm: meta
                    .get("norm")
                    .map_or(Norm::None, |n| parse(n).parse().unwrap()),
                meta: meta.clone(),
            })
            .collect()
    }

    fn f64s(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn i64s(&self, name: &str) -> Vec<i64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn labels(&self, name: &str) -> Vec<usize> {
        self.i64s(name).into_iter().map(|v| v as usize).collect()
    }

    fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(name)
            .is_ok()
    }

    /// The network of `case` with the parameters stored under
    /// `<case>.<prefix><param>` and, with BatchNorm, the buffers under
    /// `<case>.<prefix><module>.running_mean` (and so on).
    fn mlp(&self, case: &Case, prefix: &str) -> RefMlp {
        let mut mlp = RefMlp::zeros_with_norm(&case.dims, case.act, case.norm);
        for (t, pname) in mlp.param_names().iter().enumerate() {
            let name = format!("{}.{prefix}{pname}", case.name);
            let v = self.f64s(&name);
            assert_eq!(v.len(), mlp.tensor_mut(t).len(), "{name}");
            *mlp.tensor_mut(t) = v;
        }
        if case.norm == Norm::Batch {
            let stats = self.running_stats(case, prefix);
            (mlp.running_mean, mlp.running_var, mlp.batches_tracked) = stats;
        }
        mlp
    }

    /// BatchNorm's buffers stored under `<case>.<prefix><module>.*`: the
    /// running means and variances of the hidden layers and the batches
    /// tracked.
    fn running_stats(&self, case: &Case, prefix: &str) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, u64) {
        let (mut means, mut vars, mut tracked) = (Vec::new(), Vec::new(), Vec::new());
        for module in bn_modules(case) {
            let base = format!("{}.{prefix}{module}", case.name);
            means.push(self.f64s(&format!("{base}.running_mean")));
            vars.push(self.f64s(&format!("{base}.running_var")));
            tracked.extend(self.i64s(&format!("{base}.num_batches_tracked")));
        }
        assert!(tracked.windows(2).all(|w| w[0] == w[1]), "{tracked:?}");
        (means, vars, tracked[0] as u64)
    }
}

/// Module indices of the BatchNorm layers in the Sequential: `3l + 1`.
fn bn_modules(case: &Case) -> Vec<usize> {
    (0..case.dims.len() - 2).map(|l| 3 * l + 1).collect()
}

/// llm.c's `check_tensor`: prints the first values and the max difference,
/// returns the max difference relative to the largest reference value.
fn check_tensor(label: &str, ours: &[f64], golden: &[f64]) -> f64 {
    assert_eq!(ours.len(), golden.len(), "{label}: length");
    let mut maxdiff: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for (a, b) in ours.iter().zip(golden) {
        maxdiff = maxdiff.max((a - b).abs());
        scale = scale.max(b.abs());
    }
    let rel = if maxdiff == 0.0 { 0.0 } else { maxdiff / scale };
    let ok = if rel <= GOLDEN_TOL { "OK" } else { "NOT OK" };
    let head: Vec<String> = ours
        .iter()
        .zip(golden)
        .take(3)
        .map(|(a, b)| format!("{a:.6e}/{b:.6e}"))
        .collect();
    println!(
        "{label:<56} {ok:<6} maxdiff {maxdiff:.3e} rel {rel:.3e}  {}",
        head.join(" ")
    );
    rel
}

/// Checks `mlp`'s BatchNorm buffers against `<case>.<prefix><module>.*`
/// (nothing for other norms); returns the worst relative difference.
fn check_running_stats(golden: &Golden, case: &Case, prefix: &str, mlp: &RefMlp) -> f64 {
    if case.norm != Norm::Batch {
        return 0.0;
    }
    let (means, vars, tracked) = golden.running_stats(case, prefix);
    assert_eq!(
        mlp.batches_tracked, tracked,
        "{}.{prefix}num_batches_tracked",
        case.name
    );
    let mut worst: f64 = 0.0;
    for (l, module) in bn_modules(case).into_iter().enumerate() {
        let base = format!("{}.{prefix}{module}", case.name);
        worst = worst.max(check_tensor(
            &format!("{base}.running_mean"),
            &mlp.running_mean[l],
            &means[l],
        ));
        worst = worst.max(check_tensor(
            &format!("{base}.running_var"),
            &mlp.running_var[l],
            &vars[l],
        ));
    }
    worst
}

fn masks_of(golden: &Golden, name: &str, hidden: usize) -> Option<Vec<Vec<f64>>> {
    golden.has(&format!("{name}.mask.0")).then(|| {
        (0..hidden)
            .map(|l| golden.f64s(&format!("{name}.mask.{l}")))
            .collect()
    })
}

/// A case's batch: inputs, labels and dropout masks.
fn batch_of(golden: &Golden, case: &Case) -> (Vec<f64>, Vec<usize>, Option<Vec<Vec<f64>>>) {
    let name = &case.name;
    let x = golden.f64s(&format!("{name}.x"));
    let labels = golden.labels(&format!("{name}.labels"));
    assert_eq!(labels.len() as u64, case.meta["batch"].as_u64().unwrap());
    let masks = masks_of(golden, name, case.dims.len() - 2);
    assert_eq!(
        masks.is_some(),
        case.meta["dropout"].as_f64().unwrap() > 0.0,
        "{name}: masks"
    );
    (x, labels, masks)
}

#[test]
fn golden_forward_and_backward_match_pytorch() {
    let golden = Golden::open();
    println!("golden state written by torch {}", golden.metadata["torch"]);
    let cases = golden.cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "leaky_relu_hinge_l2",
            "leaky_relu_hinge_l2_batchnorm_dropout",
            "relu_xent",
            "relu_xent_batchnorm",
            "relu_xent_batchnorm_packed",
            "relu_xent_packed",
            "sigmoid_xent_dropout",
            "sigmoid_xent_l2_layernorm",
            "tanh_hinge_l2_dropout_packed",
            "tanh_mse",
            "tanh_mse_layernorm_dropout",
            "tanh_xent_layernorm_dropout_packed",
        ]
    );
    let mut worst: f64 = 0.0;
    for case in &cases {
        let name = &case.name;
        let (x, labels, masks) = batch_of(&golden, case);
        let mlp = golden.mlp(case, "init.");

        let (value, logits, grads) =
            mlp.loss_and_grads(&x, &labels, case.loss, case.l2, masks.as_deref());
        worst = worst.max(check_tensor(
            &format!("{name}.logits"),
            &logits,
            &golden.f64s(&format!("{name}.logits")),
        ));
        worst = worst.max(check_tensor(
            &format!("{name}.loss"),
            &[value],
            &golden.f64s(&format!("{name}.loss")),
        ));
        // The loss alone (no backward) agrees with the loss of the backward pass.
        assert_eq!(
            mlp.loss(&x, &labels, case.loss, case.l2, masks.as_deref()),
            value
        );
        for (t, pname) in mlp.param_names().iter().enumerate() {
            let label = format!("{name}.grad.{pname}");
            worst = worst.max(check_tensor(
                &label,
                grads.tensors()[t],
                &golden.f64s(&label),
            ));
        }
    }
    println!("golden forward/backward: max relative difference {worst:.3e}");
    assert!(
        worst <= GOLDEN_TOL,
        "max relative difference {worst:e} > {GOLDEN_TOL:e}"
    );
}

/// The running statistics after the training forward pass, and the
/// evaluation-mode logits on them, of the cases with a norm.
#[test]
fn golden_running_statistics_and_eval_logits_match_pytorch() {
    let golden = Golden::open();
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for case in golden.cases().iter().filter(|c| c.norm != Norm::None) {
        let name = &case.name;
        let (x, labels, masks) = batch_of(&golden, case);
        let mut mlp = golden.mlp(case, "init.");
        mlp.update_running_stats(&x, labels.len(), masks.as_deref());
        worst = worst.max(check_running_stats(&golden, case, "running.", &mlp));
        let label = format!("{name}.eval_logits");
        worst = worst.max(check_tensor(
            &label,
            &mlp.forward_eval(&x, labels.len()),
            &golden.f64s(&label),
        ));
        if case.norm == Norm::Batch {
            // The running statistics moved, and evaluation uses them.
            assert_ne!(mlp, golden.mlp(case, "init."), "{name}");
            assert_ne!(
                mlp.forward_eval(&x, labels.len()),
                mlp.forward(&x, labels.len(), None),
                "{name}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "three BatchNorm and three LayerNorm cases");
    println!("golden running statistics and eval logits: max relative difference {worst:.3e}");
    assert!(
        worst <= GOLDEN_TOL,
        "max relative difference {worst:e} > {GOLDEN_TOL:e}"
    );
}

#[test]
fn golden_optimizer_steps_match_pytorch() {
    let golden = Golden::open();
    let mut runs = Vec::new();
    let mut worst: f64 = 0.0;
    for case in &golden.cases() {
        let name = &case.name;
        let optims = case.meta["optimizers"].as_object().unwrap();
        if optims.is_empty() {
            continue;
        }
        assert_eq!(optims.len(), 3, "{name}: sgd, sgd_nesterov_wd, adamw");
        let (x, labels, masks) = batch_of(&golden, case);
        for (opt_name, opt) in optims {
            let f = |k: &str| opt[k].as_f64().unwrap();
            let optim = match opt["kind"].as_str().unwrap() {
                "sgd" => RefOptim::Sgd {
                    lr: f("lr"),
                    momentum: f("momentum"),
                    nesterov: opt["nesterov"].as_bool().unwrap(),
                    weight_decay: f("weight_decay"),
                },
                "adamw" => RefOptim::Adam {
                    lr: f("lr"),
                    beta1: f("beta1"),
                    beta2: f("beta2"),
                    eps: f("eps"),
                    weight_decay: f("weight_decay"),
                },
                other => panic!("unknown optimiser {other}"),
            };
            let steps = opt["steps"].as_u64().unwrap() as usize;
            let mut mlp = golden.mlp(case, "init.");
            let mut optimizer = RefOptimizer::new(optim, &mlp);
            let mut losses = Vec::new();
            for _ in 0..steps {
                // PyTorch's training forward pass also folds the batch into
                // the running statistics.
                let (value, _, grads) =
                    mlp.loss_and_grads(&x, &labels, case.loss, case.l2, masks.as_deref());
                mlp.update_running_stats(&x, labels.len(), masks.as_deref());
                losses.push(value);
                optimizer.step(&mut mlp, &grads);
            }
            let label = format!("{name}.{opt_name}.losses");
            worst = worst.max(check_tensor(&label, &losses, &golden.f64s(&label)));
            let expected = golden.mlp(case, &format!("{opt_name}."));
            for (t, pname) in mlp.param_names().iter().enumerate() {
                let label = format!("{name}.{opt_name}.{pname}");
                worst = worst.max(check_tensor(
                    &label,
                    mlp.tensors()[t],
                    expected.tensors()[t],
                ));
            }
            let prefix = format!("{opt_name}.");
            worst = worst.max(check_running_stats(&golden, case, &prefix, &mlp));
            if case.norm != Norm::None {
                let label = format!("{name}.{opt_name}.eval_logits");
                worst = worst.max(check_tensor(
                    &label,
                    &mlp.forward_eval(&x, labels.len()),
                    &golden.f64s(&label),
                ));
            }
            // The steps really moved the weights.
            assert_ne!(mlp, golden.mlp(case, "init."));
            runs.push(format!("{name}.{opt_name}"));
        }
    }
    assert_eq!(
        runs.len(),
        12,
        "three runs of relu_xent, relu_xent_packed, relu_xent_batchnorm_packed and \
         tanh_xent_layernorm_dropout_packed: {runs:?}"
    );
    println!("golden optimiser steps: max relative difference {worst:.3e}");
    assert!(
        worst <= GOLDEN_TOL,
        "max relative difference {worst:e} > {GOLDEN_TOL:e}"
    );
}
