//! The test oracle: a naive triple loop in f64, written to be read.

use super::{Activation, Epilogue, MatRef};

/// `epilogue(α·A·B + β·C)` in f64, for an m×k A, k×n B and m×n `c_old`.
///
/// Returns `(value, scale)` row-major m×n: `value` is the exact-ish result,
/// `scale = |α|·Σ_p |a_ip||b_pj| + |β|·|c_ij| + |bias_j|` sizes the rounding
/// error an f32 computation may make (see `tests/gemm.rs` for the bound).
/// With β = 0, `c_old` is not read.
pub fn gemm(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c_old: MatRef<'_>,
    epi: Epilogue<'_>,
) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_eq!(b.rows(), k);
    assert_eq!((c_old.rows(), c_old.cols()), (m, n));
    let mut value = vec![0.0f64; m * n];
    let mut scale = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f64;
            let mut abs = 0.0f64;
            for p in 0..k {
                let prod = a.at(i, p) as f64 * b.at(p, j) as f64;
                sum += prod;
                abs += prod.abs();
            }
            let mut v = alpha as f64 * sum;
            let mut s = (alpha as f64).abs() * abs;
            if beta != 0.0 {
                v += beta as f64 * c_old.at(i, j) as f64;
                s += (beta as f64 * c_old.at(i, j) as f64).abs();
            }
            match epi {
                Epilogue::None => {}
                Epilogue::Bias(bias) => {
                    v += bias[j] as f64;
                    s += (bias[j] as f64).abs();
                }
                Epilogue::Act(act) => v = apply_f64(act, v),
                Epilogue::BiasAct(bias, act) => {
                    v += bias[j] as f64;
                    s += (bias[j] as f64).abs();
                    v = apply_f64(act, v);
                }
                Epilogue::ActGrad(z, act) => v = grad_f64(act, z.at(i, j) as f64, v),
            }
            value[i * n + j] = v;
            scale[i * n + j] = s;
        }
    }
    (value, scale)
}

/// `act(x)` in f64.
fn apply_f64(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        _ => grad_f64(act, x, x),
    }
}

/// `v · act'` from `z` ([`Activation::scale_by_grad`]) in f64.
fn grad_f64(act: Activation, z: f64, v: f64) -> f64 {
    match act {
        Activation::Identity => v,
        Activation::Relu => {
            if z > 0.0 {
                v
            } else {
                0.0
            }
        }
        Activation::LeakyRelu(slope) => {
            if z > 0.0 {
                v
            } else {
                slope as f64 * v
            }
        }
        Activation::Tanh => v * (1.0 - z * z),
        Activation::Sigmoid => v * (z * (1.0 - z)),
    }
}
