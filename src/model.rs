//! The multi-layer perceptron: its configuration and the choices a user
//! makes (activation, loss).

/// Slope of the leaky ReLU for negative inputs (PyTorch's default).
pub const LEAKY_SLOPE: f32 = 0.01;

/// Activation of the hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    /// `max(z, 0)`; its derivative at 0 is taken as 0.
    #[default]
    Relu,
    /// `z > 0 ? z : 0.01·z`.
    LeakyRelu,
    /// `tanh(z)`.
    Tanh,
    /// `1 / (1 + e^−z)`.
    Sigmoid,
}

impl std::str::FromStr for Act {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "relu" => Ok(Act::Relu),
            "leaky_relu" => Ok(Act::LeakyRelu),
            "tanh" => Ok(Act::Tanh),
            "sigmoid" => Ok(Act::Sigmoid),
            _ => Err(format!(
                "unknown activation {s:?} (relu, leaky_relu, tanh or sigmoid)"
            )),
        }
    }
}

impl std::fmt::Display for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Act::Relu => "relu",
            Act::LeakyRelu => "leaky_relu",
            Act::Tanh => "tanh",
            Act::Sigmoid => "sigmoid",
        })
    }
}

/// Loss on the logits of the last layer, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Loss {
    /// Softmax + cross-entropy (PyTorch `F.cross_entropy`).
    #[default]
    Xent,
    /// Mean squared error against the one-hot target, averaged over batch
    /// and classes (PyTorch `F.mse_loss(logits, one_hot)`).
    Mse,
    /// Multiclass SVM hinge loss with margin 1, `Σ_{j≠y} max(0, 1 − z_y +
    /// z_j) / C` per sample (PyTorch `F.multi_margin_loss`).
    Hinge,
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xent" => Ok(Loss::Xent),
            "mse" => Ok(Loss::Mse),
            "hinge" => Ok(Loss::Hinge),
            _ => Err(format!("unknown loss {s:?} (xent, mse or hinge)")),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Xent => "xent",
            Loss::Mse => "mse",
            Loss::Hinge => "hinge",
        })
    }
}
