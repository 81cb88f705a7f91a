//! `fastnn gradcheck`: the reference network's analytic gradients against
//! central finite differences, on a random network and batch.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Args;
use fastnn::model::{Act, Loss, Norm};
use fastnn::reference::{
    gradcheck, random_problem_with_norm, Criterion, GradcheckInput, GRADCHECK_EPS, GRADCHECK_FLOOR,
    GRADCHECK_TOL, KINK_MARGIN,
};

/// Check the reference (f64) gradients against central finite differences.
///
/// Draws a random network and batch from --seed (redrawn until no ReLU
/// pre-activation or hinge margin is within 1e-3 of its kink), computes the
/// analytic gradient of the loss and, for every parameter, (L(w+ε) −
/// L(w−ε)) / 2ε. Prints the maximum relative error |a − n| / max(|a|, |n|,
/// 1e-4) per parameter tensor (PyTorch nn.Sequential names: 0.weight,
/// 0.bias, 2.weight, …; with --norm the normalisations' weight and bias)
/// and fails if any exceeds 1e-6.
///
/// Example: fastnn gradcheck --hidden 32,16 --activation tanh --loss hinge --l2 0.01 --dropout 0.5
#[derive(Args, Debug)]
pub struct GradcheckArgs {
    /// Hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,8")]
    pub hidden: Vec<usize>,
    /// Activation of the hidden layers: relu, leaky_relu, tanh or sigmoid.
    #[arg(long, default_value = "relu", value_parser = parse_act)]
    pub activation: Act,
    /// Loss: xent, mse or hinge.
    #[arg(long, default_value = "xent", value_parser = parse_loss)]
    pub loss: Loss,
    /// Samples in the batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Input features.
    #[arg(long, default_value_t = 10)]
    pub inputs: usize,
    /// Classes (outputs of the last layer).
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
    /// L2 coefficient λ: the loss gains λ·Σ‖W‖² over the weights.
    #[arg(long, default_value_t = 0.0)]
    pub l2: f64,
    /// Dropout probability of the hidden layers (a fixed random mask).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Normalisation after each hidden Linear: none, batch or layer.
    #[arg(long, default_value = "none")]
    pub norm: Norm,
    /// Label smoothing ε of the cross-entropy (xent only).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Seed of the random network, batch and masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Finite-difference step ε.
    #[arg(long, default_value_t = GRADCHECK_EPS)]
    pub eps: f64,
}

fn parse_act(s: &str) -> Result<Act, String> {
    s.parse()
}

fn parse_loss(s: &str) -> Result<Loss, String> {
    s.parse()
}

pub fn run(args: GradcheckArgs) -> anyhow::Result<()> {
    if args.inputs == 0 || args.batch == 0 || args.hidden.contains(&0) {
        bail!("--inputs, --batch and every --hidden width must be at least 1");
    }
    if args.classes < 2 {
        bail!("--classes must be at least 2");
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout must be in [0, 1)");
    }
    if args.eps.is_nan() || args.eps <= 0.0 {
        bail!("--eps must be positive");
    }
    super::check_label_smoothing(args.label_smoothing, args.loss)?;
    let mut dims = vec![args.inputs];
    dims.extend(&args.hidden);
    dims.push(args.classes);

    if args.norm == Norm::Batch && args.batch < 2 {
        bail!("BatchNorm needs at least 2 samples (--batch)");
    }
    let p = random_problem_with_norm(
        &dims,
        args.activation,
        args.loss,
        args.batch,
        args.dropout,
        args.norm,
        args.seed,
        KINK_MARGIN,
    )
    .with_context(|| {
        format!(
            "1000 draws all came within {KINK_MARGIN:e} of a kink; try a smaller network or batch"
        )
    })?;
    let input = GradcheckInput {
        x: &p.x,
        labels: &p.labels,
        loss: Criterion {
            loss: args.loss,
            smoothing: args.label_smoothing,
        },
        l2: args.l2,
        masks: p.masks.as_deref(),
        eps: args.eps,
        floor: GRADCHECK_FLOOR,
    };

    let dims_str: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "gradcheck: dims {}, {} + {}, norm {}, label smoothing {}, batch {}, l2 {}, dropout {}, seed {}, eps {:e}",
        dims_str.join("-"),
        args.activation,
        args.loss,
        args.norm,
        args.label_smoothing,
        args.batch,
        args.l2,
        args.dropout,
        args.seed,
        args.eps
    )?;
    let errors = gradcheck(&p.mlp, &input);
    let mut worst: f64 = 0.0;
    for (name, err) in &errors {
        let ok = if *err <= GRADCHECK_TOL { "ok" } else { "FAIL" };
        writeln!(out, "{name:<12} max relative error {err:.3e}  {ok}")?;
        worst = worst.max(*err);
    }
    if worst > GRADCHECK_TOL {
        bail!("max relative error {worst:.3e} exceeds {GRADCHECK_TOL:e}");
    }
    writeln!(
        out,
        "ok: max relative error {worst:.3e} <= {GRADCHECK_TOL:e}"
    )?;
    Ok(())
}
