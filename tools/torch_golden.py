#!/usr/bin/env python3
"""Writes tests/golden/mlp_golden.safetensors: a golden state of small MLPs
computed by PyTorch in float64, replayed by tests/reference.rs (llm.c's
train_gpt2.py debug state, read by test_gpt2.c).

    pip install torch safetensors numpy
    python3 tools/torch_golden.py            # writes tests/golden/mlp_golden.safetensors

Every case is a network of three Linear layers: the small cases have dims
[12, 16, 8, 5] on a batch of 10, whose products all take fastnn's no-pack
path; the "_packed" cases have dims [70, 72, 61, 17] on a batch of 37, whose
products all take the packed kernels with their fused epilogues.

Without norm the network is nn.Sequential(Linear, act, Linear, act, Linear),
so the parameters are 0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias.
With a norm ("_batchnorm" and "_layernorm" cases) each hidden Linear is
followed by it, before the activation: nn.Sequential(Linear, norm, act,
Linear, norm, act, Linear), the norms being modules 1 and 4, the last Linear
module 6. With BatchNorm1d the hidden Linear layers have no bias (the batch
mean cancels it), so the parameters are 0.weight, 1.weight (gamma), 1.bias
(beta), 3.weight, 4.weight, 4.bias, 6.weight, 6.bias; with LayerNorm every
Linear keeps its bias. Gamma and beta are drawn uniform in [0.5, 1.5) and
[-0.5, 0.5), and BatchNorm's running mean and variance in [-0.5, 0.5) and
[0.5, 1.5), so that none of them is the identity; eps and momentum are
PyTorch's defaults (1e-5, 0.1).

Tensors, all float64 except the labels and num_batches_tracked (int64), named
"<case>.<what>" (B the batch, D the input size, C the classes):

    <case>.x              (B, D)   inputs
    <case>.labels         (B)      int64 class indices
    <case>.mask.<l>       (B, h_l) inverted-dropout mask of hidden layer l
                                   (values 0 or 1/(1-p)) on the activation's
                                   output, when the case has one
    <case>.init.<param>   initial parameters
    <case>.logits         (B, C)   training mode (BatchNorm on the batch)
    <case>.loss           (1)      loss, including the L2 term
    <case>.grad.<param>   gradient of the loss

and, for the BatchNorm cases, the buffers <buf> of each BatchNorm module <m>
(<m>.running_mean, <m>.running_var: (h_l); <m>.num_batches_tracked: (1),
int64), with the evaluation-mode logits (model.eval(): BatchNorm on the
running statistics, no dropout; also written for the LayerNorm cases):

    <case>.init.<buf>     initial buffers
    <case>.running.<buf>  buffers after the training forward pass above
    <case>.eval_logits    (B, C)   evaluation mode, after that forward pass

and, for the cases in OPTIMISED, per optimiser run <opt> (each one starting
from <case>.init.*, recomputing forward and backward on the same batch, with
the same masks, before each of 3 steps):

    <case>.<opt>.losses   (3)      loss before each step
    <case>.<opt>.<param>  parameters after the 3 steps
    <case>.<opt>.<buf>    buffers after the 3 steps (BatchNorm cases)
    <case>.<opt>.eval_logits (B, C) evaluation mode after the 3 steps
                                   (cases with a norm)

The metadata holds "format" ("fastnn-golden"), "version" ("1"), "torch" (the
version that wrote the file) and "cases", a JSON object: per case its dims,
batch, activation, loss, l2, dropout p, its norm ("batch" or "layer"; absent
without norm) and its optimiser runs with their hyperparameters. Only the
Linear weights enter the L2 term and get weight decay, never the biases nor
the norms' gamma and beta. Weight decay is decoupled (w -= lr*wd*w before the
update).
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

SMALL = dict(dims=[12, 16, 8, 5], batch=10)
PACKED = dict(dims=[70, 72, 61, 17], batch=37)
STEPS = 3
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "mlp_golden.safetensors")

ACTS = {
    "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(0.01),
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}

CASES = {
    "relu_xent": dict(seed=1, activation="relu", loss="xent", l2=0.0, dropout=0.0),
    "tanh_mse": dict(seed=2, activation="tanh", loss="mse", l2=0.0, dropout=0.0),
    "leaky_relu_hinge_l2": dict(seed=3, activation="leaky_relu", loss="hinge", l2=0.01, dropout=0.0),
    "sigmoid_xent_dropout": dict(seed=4, activation="sigmoid", loss="xent", l2=0.0, dropout=0.5),
    "relu_xent_packed": dict(seed=5, activation="relu", loss="xent", l2=0.0, dropout=0.0, **PACKED),
    "tanh_hinge_l2_dropout_packed": dict(seed=6, activation="tanh", loss="hinge", l2=0.01, dropout=0.25, **PACKED),
    "relu_xent_batchnorm": dict(seed=7, activation="relu", loss="xent", l2=0.0, dropout=0.0, norm="batch"),
    "leaky_relu_hinge_l2_batchnorm_dropout": dict(
        seed=8, activation="leaky_relu", loss="hinge", l2=0.01, dropout=0.5, norm="batch"
    ),
    "tanh_mse_layernorm_dropout": dict(seed=9, activation="tanh", loss="mse", l2=0.0, dropout=0.5, norm="layer"),
    "sigmoid_xent_l2_layernorm": dict(seed=10, activation="sigmoid", loss="xent", l2=0.01, dropout=0.0, norm="layer"),
    "relu_xent_batchnorm_packed": dict(
        seed=11, activation="relu", loss="xent", l2=0.0, dropout=0.0, norm="batch", **PACKED
    ),
    # No L2 in a case with optimiser runs: a weight's data gradient and its
    # L2 gradient 2*l2*w can cancel to ~1e-7 (seen: 6.3e-7 from two terms of
    # 2.6e-4), and AdamW's steps, which divide each gradient by its own
    # size, carry the float32 rounding of that difference into the weight
    # at 1e-5 of the tensor's scale. The L2 term is covered by the forward
    # and backward checks of the other cases.
    "tanh_xent_layernorm_dropout_packed": dict(
        seed=12, activation="tanh", loss="xent", l2=0.0, dropout=0.25, norm="layer", **PACKED
    ),
}
for _case in CASES.values():
    for _k, _v in SMALL.items():
        _case.setdefault(_k, _v)

# The cases with optimiser runs.
OPTIMISED = ("relu_xent", "relu_xent_packed", "relu_xent_batchnorm_packed", "tanh_xent_layernorm_dropout_packed")

# Optimiser runs of the OPTIMISED cases.
OPTIMS = {
    "sgd": dict(kind="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0),
    "sgd_nesterov_wd": dict(kind="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adamw": dict(kind="adamw", lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1),
}


NORMS = {
    "batch": lambda o: torch.nn.BatchNorm1d(o, dtype=torch.float64),
    "layer": lambda o: torch.nn.LayerNorm(o, dtype=torch.float64),
}
ACT_TYPES = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.Tanh, torch.nn.Sigmoid)
NORM_TYPES = (torch.nn.BatchNorm1d, torch.nn.LayerNorm)


def build(activation, dims, norm):
    layers = []
    for i in range(len(dims) - 1):
        hidden = i + 2 < len(dims)
        bias = not (hidden and norm == "batch")
        layers.append(torch.nn.Linear(dims[i], dims[i + 1], bias=bias, dtype=torch.float64))
        if hidden:
            if norm != "none":
                layers.append(NORMS[norm](dims[i + 1]))
            layers.append(ACTS[activation]())
    return torch.nn.Sequential(*layers)


def randomise_norms(model):
    """Gamma, beta and the running statistics away from their identity values."""
    with torch.no_grad():
        for module in model:
            if isinstance(module, NORM_TYPES):
                module.weight.copy_(torch.rand_like(module.weight) + 0.5)
                module.bias.copy_(torch.rand_like(module.bias) - 0.5)
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(torch.rand_like(module.running_mean) - 0.5)
                module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)


def linear_weights(model):
    """The Linear layers' weights: the only tensors with L2 and weight decay."""
    return [m.weight for m in model if isinstance(m, torch.nn.Linear)]


def forward(model, x, masks):
    """The Sequential, with hidden layer l's activation output multiplied by masks[l]."""
    h, hidden = x, 0
    for module in model:
        h = module(h)
        if isinstance(module, ACT_TYPES) and masks is not None:
            h = h * masks[hidden]
            hidden += 1
    return h


def eval_logits(model, x):
    """The logits in evaluation mode (running statistics, no dropout)."""
    model.eval()
    with torch.no_grad():
        logits = forward(model, x, None)
    model.train()
    return logits


def loss_of(model, x, labels, case, masks):
    logits = forward(model, x, masks)
    if case["loss"] == "xent":
        loss = F.cross_entropy(logits, labels)
    elif case["loss"] == "mse":
        loss = F.mse_loss(logits, F.one_hot(labels, case["dims"][-1]).to(torch.float64))
    elif case["loss"] == "hinge":
        loss = F.multi_margin_loss(logits, labels, p=1, margin=1.0)
    else:
        raise ValueError(case["loss"])
    if case["l2"]:
        loss = loss + case["l2"] * sum((w * w).sum() for w in linear_weights(model))
    return logits, loss


def make_optimizer(model, opt):
    weights = linear_weights(model)
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    if opt["kind"] == "sgd":
        # Decoupled weight decay is applied by hand in run_optimizer.
        return torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"], nesterov=opt["nesterov"])
    return torch.optim.AdamW(
        [dict(params=weights, weight_decay=opt["weight_decay"]), dict(params=others, weight_decay=0.0)],
        lr=opt["lr"],
        betas=(opt["beta1"], opt["beta2"]),
        eps=opt["eps"],
        foreach=False,
    )


def run_optimizer(model, x, labels, case, masks, opt):
    optimizer = make_optimizer(model, opt)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        _, loss = loss_of(model, x, labels, case, masks)
        loss.backward()
        losses.append(loss.item())
        if opt["kind"] == "sgd" and opt["weight_decay"]:
            with torch.no_grad():
                for w in linear_weights(model):
                    w.sub_(opt["lr"] * opt["weight_decay"] * w)
        optimizer.step()
    return losses


def main():
    tensors, meta = {}, {}
    for name, case in CASES.items():
        torch.manual_seed(case["seed"])
        dims, batch = case["dims"], case["batch"]
        norm = case.get("norm", "none")
        model = build(case["activation"], dims, norm)
        x = torch.randn(batch, dims[0], dtype=torch.float64)
        labels = torch.randint(0, dims[-1], (batch,), dtype=torch.int64)
        masks = None
        if case["dropout"]:
            p = case["dropout"]
            masks = [(torch.rand(batch, h, dtype=torch.float64) >= p).to(torch.float64) / (1 - p) for h in dims[1:-1]]
        randomise_norms(model)
        init = {n: p.detach().clone() for n, p in model.named_parameters()}
        init_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

        logits, loss = loss_of(model, x, labels, case, masks)
        loss.backward()

        tensors[f"{name}.x"] = x
        tensors[f"{name}.labels"] = labels
        for l, m in enumerate(masks or []):
            tensors[f"{name}.mask.{l}"] = m
        for n, p in init.items():
            tensors[f"{name}.init.{n}"] = p
        tensors[f"{name}.logits"] = logits.detach()
        tensors[f"{name}.loss"] = loss.detach().reshape(1)
        for n, p in model.named_parameters():
            tensors[f"{name}.grad.{n}"] = p.grad.detach().clone()
        for n, b in init_buffers.items():
            tensors[f"{name}.init.{n}"] = b.reshape(-1)
        for n, b in model.named_buffers():
            tensors[f"{name}.running.{n}"] = b.detach().clone().reshape(-1)
        if norm != "none":
            tensors[f"{name}.eval_logits"] = eval_logits(model, x)

        optims = {}
        if name in OPTIMISED:
            for opt_name, opt in OPTIMS.items():
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        p.copy_(init[n])
                    for n, b in model.named_buffers():
                        b.copy_(init_buffers[n])
                losses = run_optimizer(model, x, labels, case, masks, opt)
                tensors[f"{name}.{opt_name}.losses"] = torch.tensor(losses, dtype=torch.float64)
                for n, p in model.named_parameters():
                    tensors[f"{name}.{opt_name}.{n}"] = p.detach().clone()
                for n, b in model.named_buffers():
                    tensors[f"{name}.{opt_name}.{n}"] = b.detach().clone().reshape(-1)
                if norm != "none":
                    tensors[f"{name}.{opt_name}.eval_logits"] = eval_logits(model, x)
                optims[opt_name] = dict(opt, steps=STEPS)
        meta[name] = dict(
            dims=dims,
            batch=batch,
            activation=case["activation"],
            loss=case["loss"],
            l2=case["l2"],
            dropout=case["dropout"],
            optimizers=optims,
        )
        if norm != "none":
            meta[name]["norm"] = norm

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {
        "format": "fastnn-golden",
        "version": "1",
        "torch": torch.__version__,
        "cases": json.dumps(meta, sort_keys=True),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(f"wrote {os.path.normpath(OUT)}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
