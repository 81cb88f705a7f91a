#!/usr/bin/env python3
"""PyTorch eager on the CPU, the way its tutorials train an MLP: nn.Linear and
nn.ReLU in an nn.Sequential, F.cross_entropy, torch.optim.SGD with momentum
0.9, the training set held as one float32 tensor, batches indexed from a
fresh permutation each epoch. Times every whole epoch (shuffle, indexing,
forward, backward, step, and the `loss.item()` read-back) and prints one
JSON line (see peer_common.py).

`--precision bf16` is PyTorch's mixed precision on the CPU, as its autocast
documentation has it: the forward pass and the loss run under
`torch.autocast("cpu", dtype=torch.bfloat16)`, which runs each linear layer
on bf16 operands (the product sums in f32 and returns bf16) and the loss in
f32; backward and the step run outside it, on the f32 master weights. bf16
keeps f32's exponent range, so there is no loss scaling.

    python3 tools/compare/torch_train.py --data ~/.cache/fastnn/fashion-mnist.safetensors \\
        --hidden 512,256 --batch 128 --threads 2 --epochs 4 [--precision bf16]
"""
import contextlib
import math
import re
import time

import torch

from peer_common import load_train, parse_args, report


def backend(precision):
    """What does the matrix products on this build of PyTorch."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    parts = [f"BLAS {blas.group(1) if blas else 'unknown'}"]
    if torch.backends.mkldnn.is_available():
        parts.append("oneDNN")
    parts.append(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if precision == "bf16":
        parts.append(f"oneDNN bf16 {'supported' if bf16_onednn() else 'not supported'} on this CPU")
    return ", ".join(parts)


def bf16_onednn():
    """Whether oneDNN's bf16 products run on this CPU (else PyTorch's own)."""
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def main():
    args = parse_args(__doc__, precisions=("f32", "bf16"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = load_train(args.data)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    dims = [x.shape[1]] + args.hidden + [10]
    layers = []
    for i in range(len(dims) - 1):
        linear = torch.nn.Linear(dims[i], dims[i + 1])
        # fastnn's initialisation (Kaiming normal, zero bias), not PyTorch's
        # default uniform one, so that every peer starts from the same scheme.
        torch.nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / dims[i]))
        torch.nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i + 2 < len(dims):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    # bf16: forward and loss under autocast; f32: the same loop as before.
    if args.precision == "bf16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    rates, losses = [], []
    n = len(x)
    for _ in range(args.epochs):
        start = time.perf_counter()
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, args.batch):
            idx = perm[i : i + args.batch]
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        rates.append(n / (time.perf_counter() - start))
        losses.append(total / n)
    report("pytorch", f"torch {torch.__version__}", backend(args.precision), args, n, rates, losses)


if __name__ == "__main__":
    main()
