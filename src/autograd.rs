//! A scalar reverse-mode autograd engine, and an MLP built from it: the
//! "neural network from scratch" tutorials' own path (Karpathy's
//! micrograd), in safe Rust and `f64`.
//!
//! fastnn's fused engine ([`crate::net`]) and the reference
//! ([`crate::reference`]) both derive gradients by hand. This module derives
//! them automatically, one scalar at a time: it is slow (a 40-byte node per
//! scalar operation, no SIMD, no blocking: 20 to 30 times slower than the
//! fused engine on the tiny network of `examples/micrograd.rs`) but every
//! gradient comes from a handful of local rules, so it is an independent
//! oracle a reader can check by eye.
//!
//! # The engine in three ideas
//!
//! 1. **Every scalar is a node in an arena.** A [`Graph`] owns a `Vec` of
//!    nodes; a [`Value`] is a `Copy` handle (the graph and an index). An
//!    operation (`a * b`, `a.tanh()`) pushes a new node holding its result
//!    and *which op made it from which inputs*. No `Rc`, no cycles: a node
//!    only ever names nodes pushed before it.
//! 2. **The arena is already a topological order.** Because a node is
//!    pushed after its inputs, walking the indices downwards visits every
//!    node after everything that consumes it. micrograd builds that order
//!    with a depth-first search; here it comes for free, and
//!    [`Value::backward`] only skips the nodes the output does not depend
//!    on.
//! 3. **The chain rule, locally, with `+=`.** Walking that order, each node
//!    passes its gradient `g = ∂L/∂node` to its inputs, multiplied by its
//!    local derivative. A value used twice (`a * a`, a weight shared by a
//!    whole batch) receives a contribution from each use, so gradients are
//!    *accumulated*, never assigned, and must be reset between passes
//!    ([`Graph::zero_grad`]).
//!
//! ```
//! use fastnn::autograd::Graph;
//! let g = Graph::new();
//! let (a, b) = (g.value(-4.0), g.value(2.0));
//! let y = (a * b + b.pow(3.0)).tanh();
//! y.backward();
//! // dy/da = (1 − y²)·b
//! assert!((a.grad() - (1.0 - y.data().powi(2)) * 2.0).abs() < 1e-12);
//! ```
//!
//! # Derivatives at the kinks
//!
//! `relu` and `leaky_relu` are not differentiable at 0. As PyTorch and
//! [`crate::reference`] do, we take `relu'(0) = 0` and `leaky_relu'(0) =
//! 0.01`. The hinge loss is built from `relu`, so a hinge term with argument
//! exactly 0 contributes nothing, as in the reference.
//!
//! # Training with a persistent graph
//!
//! The parameters are the first nodes of the graph. A training step builds
//! the loss's expression on top of them, runs `backward`, updates the
//! parameters' data, then [`Graph::truncate`]s the graph back to the
//! parameters, so the next step starts from a small arena again.

use std::cell::RefCell;
use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::model::{self, Act, Loss};
use crate::reference::{RefGrads, RefMlp, LEAKY_SLOPE_F64};

// ----------------------------------------------------------------------------
// The engine.

/// How a node was made: the operation and the indices of its inputs.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// An input, a parameter or a constant: nothing to pass gradients to.
    Leaf,
    Add(usize, usize),
    Sub(usize, usize),
    Mul(usize, usize),
    Div(usize, usize),
    Neg(usize),
    /// `x^k` for a constant exponent `k`.
    Pow(usize, f64),
    Exp(usize),
    Log(usize),
    Tanh(usize),
    Sigmoid(usize),
    Relu(usize),
    LeakyRelu(usize),
}

impl Op {
    /// The inputs of the node (at most two).
    fn inputs(self) -> [Option<usize>; 2] {
        match self {
            Op::Leaf => [None, None],
            Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) => [Some(a), Some(b)],
            Op::Neg(a)
            | Op::Pow(a, _)
            | Op::Exp(a)
            | Op::Log(a)
            | Op::Tanh(a)
            | Op::Sigmoid(a)
            | Op::Relu(a)
            | Op::LeakyRelu(a) => [Some(a), None],
        }
    }
}

/// One scalar of the computation.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Its value, computed when the node is made (the forward pass).
    data: f64,
    /// `∂L/∂data`, filled by [`Value::backward`].
    grad: f64,
    op: Op,
}

/// The arena of nodes. Operations take `&Graph` (the nodes sit in a
/// `RefCell`), so handles can be `Copy` and used with `+ − × ÷`.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: RefCell<Vec<Node>>,
}

/// A handle to one scalar of a [`Graph`]. It is `Copy`: using a value twice
/// is just using its index twice.
#[derive(Debug, Clone, Copy)]
pub struct Value<'g> {
    graph: &'g Graph,
    id: usize,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// A new leaf: an input, a parameter or a constant.
    pub fn value(&self, data: f64) -> Value<'_> {
        self.push(data, Op::Leaf)
    }

    fn push(&self, data: f64, op: Op) -> Value<'_> {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            data,
            grad: 0.0,
            op,
        });
        Value {
            graph: self,
            id: nodes.len() - 1,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every node from index `len` on. Handles to those nodes must
    /// not be used afterwards (they would name the nodes pushed next).
    pub fn truncate(&self, len: usize) {
        self.nodes.borrow_mut().truncate(len);
    }

    /// Sets every gradient to 0.
    pub fn zero_grad(&self) {
        for n in self.nodes.borrow_mut().iter_mut() {
            n.grad = 0.0;
        }
    }
}

impl<'g> Value<'g> {
    /// The value.
    pub fn data(self) -> f64 {
        self.graph.nodes.borrow()[self.id].data
    }

    /// `∂L/∂self` after [`Value::backward`] on `L`.
    pub fn grad(self) -> f64 {
        self.graph.nodes.borrow()[self.id].grad
    }

    /// Overwrites the value of a leaf (a parameter update). Nodes already
    /// computed from it keep their old values.
    pub fn set_data(self, data: f64) {
        self.graph.nodes.borrow_mut()[self.id].data = data;
    }

    /// Sets this value's gradient to 0.
    pub fn zero_grad(self) {
        self.graph.nodes.borrow_mut()[self.id].grad = 0.0;
    }

    /// A node computed from this one alone.
    fn unary(self, data: f64, op: Op) -> Value<'g> {
        self.graph.push(data, op)
    }

    /// A node computed from this one and `rhs`.
    fn binary(
        self,
        rhs: Value<'g>,
        op: fn(usize, usize) -> Op,
        f: fn(f64, f64) -> f64,
    ) -> Value<'g> {
        assert!(std::ptr::eq(self.graph, rhs.graph), "values of two graphs");
        let data = f(self.data(), rhs.data());
        self.graph.push(data, op(self.id, rhs.id))
    }

    /// `self^k` for a constant `k`.
    pub fn pow(self, k: f64) -> Value<'g> {
        self.unary(self.data().powf(k), Op::Pow(self.id, k))
    }

    pub fn exp(self) -> Value<'g> {
        self.unary(self.data().exp(), Op::Exp(self.id))
    }

    /// The natural logarithm.
    pub fn log(self) -> Value<'g> {
        self.unary(self.data().ln(), Op::Log(self.id))
    }

    pub fn tanh(self) -> Value<'g> {
        self.unary(self.data().tanh(), Op::Tanh(self.id))
    }

    /// `1 / (1 + e^−x)`.
    pub fn sigmoid(self) -> Value<'g> {
        self.unary(1.0 / (1.0 + (-self.data()).exp()), Op::Sigmoid(self.id))
    }

    /// `max(x, 0)`; its derivative at 0 is 0.
    pub fn relu(self) -> Value<'g> {
        let x = self.data();
        self.unary(if x > 0.0 { x } else { 0.0 }, Op::Relu(self.id))
    }

    /// `x > 0 ? x : 0.01·x`; its derivative at 0 is 0.01.
    pub fn leaky_relu(self) -> Value<'g> {
        let x = self.data();
        let y = if x > 0.0 { x } else { LEAKY_SLOPE_F64 * x };
        self.unary(y, Op::LeakyRelu(self.id))
    }

    /// One of the MLP's hidden activations.
    pub fn act(self, act: Act) -> Value<'g> {
        match act {
            Act::Relu => self.relu(),
            Act::LeakyRelu => self.leaky_relu(),
            Act::Tanh => self.tanh(),
            Act::Sigmoid => self.sigmoid(),
        }
    }

    /// Reverse mode: adds `∂self/∂n` to the gradient of every node `n` that
    /// `self` depends on (`self`'s own gradient is set to 1).
    pub fn backward(self) {
        let mut nodes = self.graph.nodes.borrow_mut();
        // needed[i]: node i is an input of a node we visited, i.e. `self`
        // depends on it. Nodes created after `self` cannot be among them.
        let mut needed = vec![false; self.id + 1];
        needed[self.id] = true;
        nodes[self.id].grad = 1.0; // ∂L/∂L
        for i in (0..=self.id).rev() {
            if !needed[i] {
                continue;
            }
            // Every consumer of node i has a larger index and has been
            // visited: `g` is complete.
            let Node {
                data: out,
                grad: g,
                op,
            } = nodes[i];
            let x = |j: usize| nodes[j].data;
            // The local rule of each op: input.grad += ∂out/∂input · g.
            let (da, db): (f64, f64) = match op {
                Op::Leaf => (0.0, 0.0),
                Op::Add(..) => (g, g),
                Op::Sub(..) => (g, -g),
                Op::Mul(a, b) => (x(b) * g, x(a) * g),
                Op::Div(a, b) => (g / x(b), -g * x(a) / (x(b) * x(b))),
                Op::Neg(_) => (-g, 0.0),
                Op::Pow(a, k) => (k * x(a).powf(k - 1.0) * g, 0.0),
                Op::Exp(_) => (out * g, 0.0),
                Op::Log(a) => (g / x(a), 0.0),
                Op::Tanh(_) => ((1.0 - out * out) * g, 0.0),
                Op::Sigmoid(_) => (out * (1.0 - out) * g, 0.0),
                Op::Relu(a) => (if x(a) > 0.0 { g } else { 0.0 }, 0.0),
                Op::LeakyRelu(a) => (if x(a) > 0.0 { g } else { LEAKY_SLOPE_F64 * g }, 0.0),
            };
            // `+=`, not `=`: in `a * a` both inputs are the same node.
            let [a, b] = op.inputs();
            if let Some(a) = a {
                nodes[a].grad += da;
                needed[a] = true;
            }
            if let Some(b) = b {
                nodes[b].grad += db;
                needed[b] = true;
            }
        }
    }
}

/// `Value ∘ Value`, `Value ∘ f64` and `f64 ∘ Value` for `+ − × ÷`. A
/// constant operand becomes a leaf of the graph.
macro_rules! binary_op {
    ($Trait:ident, $method:ident, $op:path, $f:expr) => {
        impl<'g> $Trait for Value<'g> {
            type Output = Value<'g>;
            fn $method(self, rhs: Value<'g>) -> Value<'g> {
                self.binary(rhs, $op, $f)
            }
        }
        impl<'g> $Trait<f64> for Value<'g> {
            type Output = Value<'g>;
            fn $method(self, rhs: f64) -> Value<'g> {
                self.binary(self.graph.value(rhs), $op, $f)
            }
        }
        impl<'g> $Trait<Value<'g>> for f64 {
            type Output = Value<'g>;
            fn $method(self, rhs: Value<'g>) -> Value<'g> {
                rhs.graph.value(self).binary(rhs, $op, $f)
            }
        }
    };
}

binary_op!(Add, add, Op::Add, |a, b| a + b);
binary_op!(Sub, sub, Op::Sub, |a, b| a - b);
binary_op!(Mul, mul, Op::Mul, |a, b| a * b);
binary_op!(Div, div, Op::Div, |a, b| a / b);

impl<'g> Neg for Value<'g> {
    type Output = Value<'g>;
    fn neg(self) -> Value<'g> {
        self.unary(-self.data(), Op::Neg(self.id))
    }
}

// ----------------------------------------------------------------------------
// Losses on one sample's logits, with the semantics of `crate::model::Loss`.

/// Softmax cross-entropy `log Σ_j e^{z_j} − z_y`, computed as `log Σ_j
/// e^{z_j − m} + m − z_y` with `m = max_j z_j` so that no exponential
/// overflows. `m` is a constant (a leaf): the result does not depend on it,
/// so neither does the gradient.
pub fn cross_entropy<'g>(logits: &[Value<'g>], label: usize) -> Value<'g> {
    let m = logits
        .iter()
        .map(|z| z.data())
        .fold(f64::NEG_INFINITY, f64::max);
    let mut sum = (logits[0] - m).exp();
    for &z in &logits[1..] {
        sum = sum + (z - m).exp();
    }
    sum.log() + m - logits[label]
}

/// Squared error against the one-hot target, averaged over the classes.
pub fn mse<'g>(logits: &[Value<'g>], label: usize) -> Value<'g> {
    let c = logits.len();
    let mut sum = logits[0].graph.value(0.0);
    for (j, &z) in logits.iter().enumerate() {
        let d = z - if j == label { 1.0 } else { 0.0 };
        sum = sum + d * d; // one node used twice: its gradient accumulates
    }
    sum / c as f64
}

/// Multiclass hinge loss with margin 1, `Σ_{j≠y} max(0, 1 − z_y + z_j) / C`
/// (PyTorch's `multi_margin_loss`).
pub fn hinge<'g>(logits: &[Value<'g>], label: usize) -> Value<'g> {
    let c = logits.len();
    let mut sum = logits[0].graph.value(0.0);
    for (j, &z) in logits.iter().enumerate() {
        if j != label {
            sum = sum + (1.0 - logits[label] + z).relu();
        }
    }
    sum / c as f64
}

/// The loss of one sample.
pub fn sample_loss<'g>(logits: &[Value<'g>], label: usize, loss: Loss) -> Value<'g> {
    match loss {
        Loss::Xent => cross_entropy(logits, label),
        Loss::Mse => mse(logits, label),
        Loss::Hinge => hinge(logits, label),
    }
}

// ----------------------------------------------------------------------------
// The MLP: neurons → layers → MLP, as in the tutorial.

/// `b + Σ_k w_k·x_k`.
#[derive(Debug, Clone)]
pub struct Neuron<'g> {
    pub w: Vec<Value<'g>>,
    pub b: Value<'g>,
}

impl<'g> Neuron<'g> {
    pub fn forward(&self, x: &[Value<'g>]) -> Value<'g> {
        assert_eq!(x.len(), self.w.len(), "inputs of a neuron");
        let mut acc = self.b;
        for (&xk, &wk) in x.iter().zip(&self.w) {
            acc = acc + xk * wk;
        }
        acc
    }
}

/// Neurons sharing the same inputs, then an activation (none for the last
/// layer, whose outputs are the logits).
#[derive(Debug, Clone)]
pub struct Layer<'g> {
    pub neurons: Vec<Neuron<'g>>,
    pub act: Option<Act>,
}

impl<'g> Layer<'g> {
    pub fn forward(&self, x: &[Value<'g>]) -> Vec<Value<'g>> {
        self.neurons
            .iter()
            .map(|n| {
                let z = n.forward(x);
                self.act.map_or(z, |a| z.act(a))
            })
            .collect()
    }
}

/// An MLP of scalars. Its parameters are laid out as the reference's:
/// neuron `j` of layer `l` holds row `j` of `W_l` (`[out, in]`, row-major)
/// and `b_l[j]`.
#[derive(Debug, Clone)]
pub struct Mlp<'g> {
    pub graph: &'g Graph,
    /// `[inputs, hidden…, classes]`.
    pub dims: Vec<usize>,
    pub layers: Vec<Layer<'g>>,
}

impl<'g> Mlp<'g> {
    /// A network with these weights (`weights[l]`: `[dims[l+1], dims[l]]`,
    /// row-major) and biases, as new leaves of `graph`.
    pub fn new(
        graph: &'g Graph,
        dims: &[usize],
        act: Act,
        weights: &[Vec<f64>],
        biases: &[Vec<f64>],
    ) -> Mlp<'g> {
        let n = dims.len() - 1;
        assert!(
            weights.len() == n && biases.len() == n,
            "one W and b per layer"
        );
        let layers = (0..n)
            .map(|l| {
                let (fan_in, fan_out) = (dims[l], dims[l + 1]);
                assert_eq!(weights[l].len(), fan_out * fan_in, "W_{l} is [out, in]");
                assert_eq!(biases[l].len(), fan_out, "b_{l} is [out]");
                let neurons = (0..fan_out)
                    .map(|j| Neuron {
                        w: weights[l][j * fan_in..(j + 1) * fan_in]
                            .iter()
                            .map(|&w| graph.value(w))
                            .collect(),
                        b: graph.value(biases[l][j]),
                    })
                    .collect();
                let act = (l + 1 < n).then_some(act);
                Layer { neurons, act }
            })
            .collect();
        Mlp {
            graph,
            dims: dims.to_vec(),
            layers,
        }
    }

    /// The same network as the f64 reference.
    pub fn from_reference(graph: &'g Graph, r: &RefMlp) -> Mlp<'g> {
        assert_eq!(
            r.norm,
            model::Norm::None,
            "the scalar MLP has no norm layers"
        );
        Mlp::new(graph, &r.dims, r.act, &r.weights, &r.biases)
    }

    /// The same network as the fast f32 engine (every f32 is exact in f64).
    pub fn from_fast(graph: &'g Graph, m: &model::Mlp) -> Mlp<'g> {
        let widen = |s: &[f32]| s.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let n = m.cfg.layers();
        let weights: Vec<Vec<f64>> = (0..n).map(|l| widen(&m.weight(l))).collect();
        let biases: Vec<Vec<f64>> = (0..n).map(|l| widen(m.bias(l))).collect();
        Mlp::new(graph, &m.cfg.dims, m.cfg.act, &weights, &biases)
    }

    /// The hidden layers' activation.
    pub fn act(&self) -> Act {
        self.layers[0].act.unwrap_or_default()
    }

    /// `W_l` (`[out, in]`, row-major) and `b_l` of every layer, read through `f`.
    fn tensors(&self, f: impl Fn(Value<'g>) -> f64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let w = self.layers.iter().map(|l| {
            l.neurons
                .iter()
                .flat_map(|n| n.w.iter().map(|&w| f(w)))
                .collect()
        });
        let b = self
            .layers
            .iter()
            .map(|l| l.neurons.iter().map(|n| f(n.b)).collect());
        (w.collect(), b.collect())
    }

    /// The parameters as a reference network.
    pub fn to_reference(&self) -> RefMlp {
        let (weights, biases) = self.tensors(Value::data);
        RefMlp {
            weights,
            biases,
            ..RefMlp::zeros(&self.dims, self.act())
        }
    }

    /// The gradients, shaped as the reference's.
    pub fn grads(&self) -> RefGrads {
        let (weights, biases) = self.tensors(Value::grad);
        RefGrads {
            weights,
            biases,
            gammas: Vec::new(),
            betas: Vec::new(),
        }
    }

    /// The parameters as a fast f32 network (rounded to f32), without dropout.
    pub fn to_fast(&self, loss: Loss) -> model::Mlp {
        let cfg = model::MlpConfig {
            dims: self.dims.clone(),
            act: self.act(),
            loss,
            dropout: 0.0,
            label_smoothing: 0.0,
            norm: Default::default(),
        };
        let mut m = model::Mlp::zeros(cfg);
        let (weights, biases) = self.tensors(Value::data);
        for (l, (slot, (w, b))) in (m.layout.layers.clone().iter())
            .zip(weights.iter().zip(&biases))
            .enumerate()
        {
            let rows: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            m.set_weight(l, &rows);
            for (dst, &src) in m.params[slot.b.clone()].iter_mut().zip(b) {
                *dst = src as f32;
            }
        }
        m
    }

    /// Every parameter, in `param_names` order (`W_0` row by row, `b_0`,
    /// `W_1`, …).
    pub fn parameters(&self) -> Vec<Value<'g>> {
        let mut ps = Vec::new();
        for layer in &self.layers {
            ps.extend(layer.neurons.iter().flat_map(|n| n.w.iter().copied()));
            ps.extend(layer.neurons.iter().map(|n| n.b));
        }
        ps
    }

    /// Sets the parameters' gradients to 0.
    pub fn zero_grad(&self) {
        for p in self.parameters() {
            p.zero_grad();
        }
    }

    /// The logits of one sample.
    pub fn forward(&self, x: &[Value<'g>]) -> Vec<Value<'g>> {
        let mut h = x.to_vec();
        for layer in &self.layers {
            h = layer.forward(&h);
        }
        h
    }

    /// `λ Σ_l ‖W_l‖²` (weights only, not biases).
    pub fn l2_penalty(&self, l2: f64) -> Value<'g> {
        let mut sum = self.graph.value(0.0);
        for n in self.layers.iter().flat_map(|l| &l.neurons) {
            for &w in &n.w {
                sum = sum + w * w;
            }
        }
        sum * l2
    }

    /// The batch-mean loss plus, when `l2 ≠ 0`, the L2 term. The batch size
    /// is `labels.len()`.
    // x: (B, D), labels: (B)
    pub fn loss(&self, x: &[f64], labels: &[usize], loss: Loss, l2: f64) -> Value<'g> {
        let d = self.dims[0];
        assert_eq!(x.len(), labels.len() * d, "x must be (batch, inputs)");
        let mut total = self.graph.value(0.0);
        for (row, &y) in x.chunks_exact(d).zip(labels) {
            let inputs: Vec<Value> = row.iter().map(|&v| self.graph.value(v)).collect();
            let logits = self.forward(&inputs);
            total = total + sample_loss(&logits, y, loss);
        }
        let mean = total / labels.len() as f64;
        if l2 == 0.0 {
            mean
        } else {
            mean + self.l2_penalty(l2)
        }
    }

    /// One step of plain SGD: `p −= lr·∂L/∂p` for every parameter.
    pub fn sgd_step(&self, lr: f64) {
        for p in self.parameters() {
            p.set_data(p.data() - lr * p.grad());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's documentation counts 40 bytes per node.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_node_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 40);
    }

    /// micrograd's `test_sanity_check`, with the values PyTorch gives.
    #[test]
    fn micrograd_sanity_check() {
        let g = Graph::new();
        let x = g.value(-4.0);
        let z = 2.0 * x + 2.0 + x;
        let q = z.relu() + z * x;
        let h = (z * z).relu();
        let y = h + q + q * x;
        y.backward();
        assert_eq!(y.data(), -20.0);
        assert_eq!(x.grad(), 46.0);
    }

    /// micrograd's `test_more_ops` (its README prints these to 4 decimals).
    #[test]
    fn micrograd_more_ops() {
        let g = Graph::new();
        let a = g.value(-4.0);
        let b = g.value(2.0);
        let mut c = a + b;
        let mut d = a * b + b.pow(3.0);
        c = c + c + 1.0;
        c = c + 1.0 + c + (-a);
        d = d + d * 2.0 + (b + a).relu();
        d = d + 3.0 * d + (b - a).relu();
        let e = c - d;
        let f = e.pow(2.0);
        let mut h = f / 2.0;
        h = h + 10.0 / f;
        h.backward();
        assert!((h.data() - 24.70408163265306).abs() < 1e-12);
        assert!((a.grad() - 138.83381924198252).abs() < 1e-9);
        assert!((b.grad() - 645.5772594752186).abs() < 1e-9);
    }

    #[test]
    fn gradients_accumulate_and_reset() {
        let g = Graph::new();
        let a = g.value(3.0);
        let y = a * a + a; // dy/da = 2a + 1
        y.backward();
        assert_eq!(a.grad(), 7.0);
        g.zero_grad();
        assert_eq!(a.grad(), 0.0);
        let mark = g.len();
        let y = a.exp();
        g.truncate(mark + 1); // keeps `y`
        y.backward();
        assert_eq!(a.grad(), 3f64.exp());
    }

    #[test]
    fn nodes_the_output_does_not_depend_on_get_no_gradient() {
        let g = Graph::new();
        let a = g.value(1.0);
        let b = g.value(2.0);
        let u = a * b;
        u.backward(); // leaves u.grad = 1 behind
        a.zero_grad();
        b.zero_grad();
        let y = a.tanh(); // does not depend on u or b
        y.backward();
        assert_eq!(b.grad(), 0.0, "stale gradient of u passed on to b");
        assert_eq!(a.grad(), 1.0 - 1f64.tanh().powi(2));
    }
}
