//! The fast f32 path replays the PyTorch golden state written by
//! `tools/torch_golden.py` (float64 PyTorch): logits, loss, every gradient,
//! and the weights after 3 SGD-momentum, 3 Nesterov + weight-decay and 3
//! AdamW steps, each within 1e-5 (largest difference over a tensor,
//! relative to the tensor's largest value). Every product takes the packed
//! kernels, which read and update the weights in their panels (checked
//! here): the small cases are all edge tiles, the "_packed" cases also have
//! full tiles, through the vector stores and their fused epilogues.

use fastnn::buf::AlignedBuf;
use fastnn::gemm::{Parallelism, Plan};
use fastnn::model::{Act, Loss, Mlp, MlpConfig};
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

/// The network of `case` with the golden initial weights, the batch in its
/// workspace, and the dropout masks (if any) in place.
fn setup(g: &Golden, case: &str, spec: &Value) -> (Mlp, Workspace) {
    let dims: Vec<usize> = serde_json::from_value(spec["dims"].clone()).unwrap();
    let cfg = MlpConfig {
        dims: dims.clone(),
        act: spec["activation"].as_str().unwrap().parse::<Act>().unwrap(),
        loss: spec["loss"].as_str().unwrap().parse::<Loss>().unwrap(),
        dropout: spec["dropout"].as_f64().unwrap() as f32,
        label_smoothing: 0.0,
        norm: Default::default(),
    };
    let batch = spec["batch"].as_u64().unwrap() as usize;
    let mut mlp = Mlp::zeros(cfg);
    for l in 0..mlp.cfg.layers() {
        let slot = mlp.layout.layers[l].clone();
        let f32s = |kind: &str| -> Vec<f32> {
            let v = g.f64s(&format!("{case}.init.{}.{kind}", 2 * l));
            v.iter().map(|&x| x as f32).collect()
        };
        mlp.set_weight(l, &f32s("weight"));
        mlp.params[slot.b].copy_from_slice(&f32s("bias"));
    }
    let mut ws = Workspace::new(&mlp, batch, Parallelism::Single);
    for p in step_products(ws.gemm(), &dims, batch) {
        assert_eq!(p.plan, Plan::Packed { threads: 1 }, "{case}: {p:?}");
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

/// The cases with BatchNorm or LayerNorm (a "norm" key) are replayed by the
/// reference (`tests/reference.rs`); this file replays the plain ones.
fn has_norm(spec: &Value) -> bool {
    spec.get("norm").is_some()
}

#[test]
fn forward_and_backward_match_pytorch() {
    let g = Golden {
        bytes: std::fs::read(GOLDEN).unwrap(),
    };
    let cases = g.cases();
    let mut worst: f64 = 0.0;
    for (case, spec) in cases.as_object().unwrap() {
        if has_norm(spec) {
            continue;
        }
        let (mut mlp, mut ws) = setup(&g, case, spec);
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
            for (fast, kind) in [(&dw[..], "weight"), (&grads[slot.b.clone()], "bias")] {
                let name = format!("{case}.grad.{}.{kind}", 2 * l);
                worst = worst.max(check(&name, fast, &g.f64s(&name)));
            }
        }
    }
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
    for (case, spec) in cases.as_object().unwrap() {
        if has_norm(spec) {
            continue;
        }
        for (name, o) in spec["optimizers"].as_object().unwrap() {
            let (mut mlp, mut ws) = setup(&g, case, spec);
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
                let loss = out.loss_sum / batch as f64;
                worst = worst.max(check(
                    &format!("{case}.{name}.loss[{step}]"),
                    &[loss as f32],
                    &[golden_loss],
                ));
                // The training step's own path: each weight updated inside
                // its gradient product.
                mlp.backward_update(&mut ws, &mut grads, &mut opt, f("lr"), batch);
            }
            for l in 0..mlp.cfg.layers() {
                for (fast, kind) in [(mlp.weight(l), "weight"), (mlp.bias(l).to_vec(), "bias")] {
                    let tensor = format!("{case}.{name}.{}.{kind}", 2 * l);
                    worst = worst.max(check(&tensor, &fast, &g.f64s(&tensor)));
                }
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked, 6,
        "sgd, sgd_nesterov_wd and adamw runs of relu_xent and relu_xent_packed expected"
    );
    assert!(
        worst <= TOL,
        "worst relative difference {worst:e} > {TOL:e}"
    );
}
