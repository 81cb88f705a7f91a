//! The fast f32 path replays the PyTorch golden state written by
//! `tools/torch_golden.py` (float64 PyTorch): logits, loss, every gradient,
//! and the weights after 3 SGD-momentum, 3 Nesterov + weight-decay and 3
//! AdamW steps; with BatchNorm and LayerNorm also γ, β, the running
//! statistics and the evaluation logits (unfolded and folded); each within
//! 1e-5 (largest difference over a tensor,
//! relative to the tensor's largest value). Every case runs twice, every
//! product on one kernel (checked here), both of which read and update the
//! weights in their panels: the packed nest (the small cases are all edge
//! tiles, the "_packed" cases also have full tiles, through the vector
//! stores and their fused epilogues), then the strip kernel the output
//! layer takes, strip by strip on the wider layers.

use fastnn::buf::AlignedBuf;
use fastnn::gemm::{GemmCtx, Parallelism, Plan, Strategy};
use fastnn::model::{Act, LayerSlots, Loss, Mlp, MlpConfig, Norm};
use fastnn::net::{step_products, Workspace};
use fastnn::optim::{OptimConfig, OptimKind, Optimizer};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/mlp_golden.safetensors"
);
const TOL: f64 = 1e-5;

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn tensor(&self, name: &str) -> (Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (t.dtype(), t.data().to_vec())
    }

    fn f64s(&self, name: &str) -> Vec<f64> {
        let (dtype, data) = self.tensor(name);
        assert_eq!(dtype, Dtype::F64, "{name}");
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn labels(&self, name: &str) -> Vec<u8> {
        let (dtype, data) = self.tensor(name);
        assert_eq!(dtype, Dtype::I64, "{name}");
        data.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u8)
            .collect()
    }

    fn cases(&self) -> Value {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap()
    }
}

/// Max |fast − golden| over a tensor relative to max |golden|, printed as
/// llm.c's `check_tensor` does.
fn check(what: &str, fast: &[f32], golden: &[f64]) -> f64 {
    assert_eq!(fast.len(), golden.len(), "{what}: length");
    let scale = golden.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    let diff = fast
        .iter()
        .zip(golden)
        .map(|(&a, b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    let rel = diff / scale;
    println!(
        "{what:<40} max diff {diff:.3e}  relative {rel:.3e}  {}",
        if rel <= TOL { "OK" } else { "NOT OK" }
    );
    rel
}

/// The kernels every product of a case runs on, in turn, and the plan
/// that makes them take.
const KERNELS: [(Strategy, Plan); 2] = [
    (Strategy::Packed, Plan::Packed { threads: 1 }),
    (Strategy::Narrow, Plan::Narrow { threads: 1 }),
];

/// Each case once per kernel.
fn every_case_on_every_kernel(cases: &Value) -> Vec<(&String, &Value, (Strategy, Plan))> {
    let cases = cases.as_object().unwrap();
    KERNELS
        .iter()
        .flat_map(|&kernel| cases.iter().map(move |(case, spec)| (case, spec, kernel)))
        .collect()
}

/// The network of `case` with the golden initial weights, the batch in its
/// workspace, and the dropout masks (if any) in place; every product on
/// the kernel of `strategy`, which takes `plan`.
fn setup(
    g: &Golden,
    case: &str,
    spec: &Value,
    (strategy, plan): (Strategy, Plan),
) -> (Mlp, Workspace) {
    println!("{case}, every product on the {strategy:?} kernel:");
    let dims: Vec<usize> = serde_json::from_value(spec["dims"].clone()).unwrap();
    let cfg = MlpConfig {
        dims: dims.clone(),
        act: spec["activation"].as_str().unwrap().parse::<Act>().unwrap(),
        loss: spec["loss"].as_str().unwrap().parse::<Loss>().unwrap(),
        dropout: spec["dropout"].as_f64().unwrap() as f32,
        label_smoothing: 0.0,
        norm: norm_of(spec),
    };
    let batch = spec["batch"].as_u64().unwrap() as usize;
    let mut mlp = Mlp::zeros(cfg);
    for l in 0..mlp.cfg.layers() {
        let slot = mlp.layout.layers[l].clone();
        let f32s = |name: &str| -> Vec<f32> {
            let v = g.f64s(&format!("{case}.init.{name}"));
            v.iter().map(|&x| x as f32).collect()
        };
        let idx = module(&mlp, l);
        mlp.set_weight(l, &f32s(&format!("{idx}.weight")));
        if !slot.b.is_empty() {
            mlp.params[slot.b.clone()].copy_from_slice(&f32s(&format!("{idx}.bias")));
        }
        for (name, range) in norm_tensors(&slot) {
            mlp.params[range].copy_from_slice(&f32s(&format!("{}.{name}", idx + 1)));
        }
    }
    let gemm = GemmCtx::new(Parallelism::Single).with_strategy(strategy);
    let mut ws = Workspace::with_gemm(&mlp, batch, gemm);
    for p in step_products(ws.gemm(), &dims, batch) {
        assert_eq!(p.plan, plan, "{case}: {p:?}");
    }
    for (dst, &x) in ws.x.iter_mut().zip(&g.f64s(&format!("{case}.x"))) {
        *dst = x as f32;
    }
    ws.labels[..batch].copy_from_slice(&g.labels(&format!("{case}.labels")));
    for l in 0..mlp.cfg.layers() - 1 {
        if let Some(mask) = ws.dropout_mask_mut(l) {
            for (dst, &m) in mask.iter_mut().zip(&g.f64s(&format!("{case}.mask.{l}"))) {
                *dst = m as f32;
            }
        }
    }
    (mlp, ws)
}

fn forward(mlp: &mut Mlp, ws: &mut Workspace, batch: usize) {
    if mlp.cfg.dropout > 0.0 {
        mlp.forward_with_fixed_masks(ws, batch);
    } else {
        mlp.forward_train(ws, batch, None);
    }
}

/// The case's normalisation (a "norm" key; none without one).
fn norm_of(spec: &Value) -> Norm {
    spec.get("norm")
        .map_or(Norm::None, |n| n.as_str().unwrap().parse().unwrap())
}

/// The golden `nn.Sequential` module of linear layer `l`: `Linear, [Norm,]
/// act` per hidden layer (the masks stand in for dropout modules).
fn module(mlp: &Mlp, l: usize) -> usize {
    l * if mlp.cfg.norm == Norm::None { 2 } else { 3 }
}

/// Layer `l`'s normalisation tensors, with their PyTorch names (none
/// without one).
fn norm_tensors(slot: &LayerSlots) -> Vec<(&'static str, std::ops::Range<usize>)> {
    slot.norm.iter().flat_map(|n| n.tensors()).collect()
}

/// The logits in evaluation mode, unfolded and with BatchNorm folded into
/// the Linear before it, each against `golden` (BatchNorm on the running
/// statistics); the worst of the two.
fn check_eval(what: &str, mlp: &Mlp, ws: &mut Workspace, batch: usize, golden: &[f64]) -> f64 {
    let classes = mlp.cfg.classes();
    mlp.forward(ws, batch);
    let unfolded = check(
        &format!("{what} eval"),
        &ws.logits()[..batch * classes],
        golden,
    );
    let folded = match mlp.fold_batch_norm() {
        Some(f) => {
            f.forward(ws, batch);
            check(
                &format!("{what} eval folded"),
                &ws.logits()[..batch * classes],
                golden,
            )
        }
        None => 0.0,
    };
    unfolded.max(folded)
}

#[test]
fn forward_and_backward_match_pytorch() {
    let g = Golden {
        bytes: std::fs::read(GOLDEN).unwrap(),
    };
    let cases = g.cases();
    let mut worst: f64 = 0.0;
    let mut checked_norms = 0;
    for (case, spec, kernel) in every_case_on_every_kernel(&cases) {
        let (mut mlp, mut ws) = setup(&g, case, spec, kernel);
        let batch = spec["batch"].as_u64().unwrap() as usize;
        let l2 = spec["l2"].as_f64().unwrap();
        forward(&mut mlp, &mut ws, batch);
        let out = mlp.loss_and_dlogits(&mut ws, batch);
        let mut grads = AlignedBuf::<f32>::zeroed(mlp.layout.len);
        mlp.backward(&mut ws, &mut grads, batch);
        let classes = mlp.cfg.classes();
        worst = worst.max(check(
            &format!("{case}.logits"),
            &ws.logits()[..batch * classes],
            &g.f64s(&format!("{case}.logits")),
        ));
        // The golden loss includes the L2 term; the fast path adds it in the
        // optimiser, so it is added here from the weights.
        let loss = out.loss_sum / batch as f64 + l2 * mlp.weight_norm_sq();
        worst = worst.max(check(
            &format!("{case}.loss"),
            &[loss as f32],
            &g.f64s(&format!("{case}.loss")),
        ));
        for (l, slot) in mlp.layout.layers.iter().enumerate() {
            // The coupled L2 gradient 2λW, applied by the optimiser.
            let mut dw = mlp.layout.weight_rows(&grads, l);
            dw.iter_mut()
                .zip(&mlp.weight(l))
                .for_each(|(g, &w)| *g += 2.0 * l2 as f32 * w);
            let idx = module(&mlp, l);
            let mut tensors = vec![(dw, format!("{idx}.weight"))];
            if !slot.b.is_empty() {
                tensors.push((grads[slot.b.clone()].to_vec(), format!("{idx}.bias")));
            }
            for (name, range) in norm_tensors(slot).into_iter().take(2) {
                tensors.push((grads[range].to_vec(), format!("{}.{name}", idx + 1)));
            }
            for (fast, name) in tensors {
                let name = format!("{case}.grad.{name}");
                worst = worst.max(check(&name, &fast, &g.f64s(&name)));
            }
            // The running statistics the training pass updated.
            for (name, range) in norm_tensors(slot).into_iter().skip(2) {
                let name = format!("{case}.running.{}.{name}", idx + 1);
                worst = worst.max(check(&name, &mlp.params[range], &g.f64s(&name)));
            }
        }
        if mlp.cfg.norm != Norm::None {
            let golden = g.f64s(&format!("{case}.eval_logits"));
            worst = worst.max(check_eval(case, &mlp, &mut ws, batch, &golden));
            checked_norms += 1;
        }
    }
    assert_eq!(
        checked_norms, 12,
        "the BatchNorm and LayerNorm cases, on each kernel"
    );
    assert!(
        worst <= TOL,
        "worst relative difference {worst:e} > {TOL:e}"
    );
}

#[test]
fn optimiser_steps_match_pytorch() {
    let g = Golden {
        bytes: std::fs::read(GOLDEN).unwrap(),
    };
    let cases = g.cases();
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for (case, spec, kernel) in every_case_on_every_kernel(&cases) {
        for (name, o) in spec["optimizers"].as_object().unwrap() {
            let (mut mlp, mut ws) = setup(&g, case, spec, kernel);
            let batch = spec["batch"].as_u64().unwrap() as usize;
            let f = |k: &str| o[k].as_f64().unwrap() as f32;
            let kind = match o["kind"].as_str().unwrap() {
                "sgd" => OptimKind::Sgd {
                    momentum: f("momentum"),
                    nesterov: o["nesterov"].as_bool().unwrap(),
                },
                "adamw" => OptimKind::Adam {
                    beta1: f("beta1"),
                    beta2: f("beta2"),
                    eps: f("eps"),
                },
                other => panic!("unknown optimiser {other}"),
            };
            let cfg = OptimConfig {
                kind,
                l2: spec["l2"].as_f64().unwrap() as f32,
                weight_decay: f("weight_decay"),
            };
            let mut opt = Optimizer::new(cfg, &mlp.layout);
            let mut grads = AlignedBuf::<f32>::zeroed(mlp.layout.len);
            let losses = g.f64s(&format!("{case}.{name}.losses"));
            let steps = o["steps"].as_u64().unwrap() as usize;
            for (step, &golden_loss) in losses.iter().enumerate().take(steps) {
                forward(&mut mlp, &mut ws, batch);
                let out = mlp.loss_and_dlogits(&mut ws, batch);
                // The golden loss includes the L2 term (see above).
                let loss = out.loss_sum / batch as f64 + cfg.l2 as f64 * mlp.weight_norm_sq();
                worst = worst.max(check(
                    &format!("{case}.{name}.loss[{step}]"),
                    &[loss as f32],
                    &[golden_loss],
                ));
                // The training step's own path: each weight updated inside
                // its gradient product.
                mlp.backward_update(&mut ws, &mut grads, &mut opt, f("lr"), batch, None);
            }
            for (l, slot) in mlp.layout.layers.iter().enumerate() {
                let idx = module(&mlp, l);
                let mut tensors = vec![(mlp.weight(l), format!("{idx}.weight"))];
                if !slot.b.is_empty() {
                    tensors.push((mlp.bias(l).to_vec(), format!("{idx}.bias")));
                }
                for (kind, range) in norm_tensors(slot) {
                    tensors.push((mlp.params[range].to_vec(), format!("{}.{kind}", idx + 1)));
                }
                for (fast, tensor) in tensors {
                    let tensor = format!("{case}.{name}.{tensor}");
                    worst = worst.max(check(&tensor, &fast, &g.f64s(&tensor)));
                }
            }
            if mlp.cfg.norm != Norm::None {
                let golden = g.f64s(&format!("{case}.{name}.eval_logits"));
                let what = format!("{case}.{name}");
                worst = worst.max(check_eval(&what, &mlp, &mut ws, batch, &golden));
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked, 24,
        "sgd, sgd_nesterov_wd and adamw runs of relu_xent, relu_xent_packed and the two packed normalised cases, on each kernel"
    );
    assert!(
        worst <= TOL,
        "worst relative difference {worst:e} > {TOL:e}"
    );
}
