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
                Epilogue::Act(act) => v = act_f64(act, v, v),
                Epilogue::BiasAct(bias, act) => {
                    v += bias[j] as f64;
                    s += (bias[j] as f64).abs();
                    v = act_f64(act, v, v);
                }
                Epilogue::ActGrad(z, act) => v = act_f64(act, z.at(i, j) as f64, v),
            }
            value[i * n + j] = v;
            scale[i * n + j] = s;
        }
    }
    (value, scale)
}

/// `x > 0 ? v : (0 or slope·v)`.
fn act_f64(act: Activation, x: f64, v: f64) -> f64 {
    match act {
        Activation::Identity => v,
        Activation::Relu => {
            if x > 0.0 {
                v
            } else {
                0.0
            }
        }
        Activation::LeakyRelu(slope) => {
            if x > 0.0 {
                v
            } else {
                slope as f64 * v
            }
        }
    }
}
