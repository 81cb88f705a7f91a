#!/usr/bin/env python3
"""PyTorch eager on the CPU, on the workloads of `fastnn bench train`.

W1: 50,000 random CIFAR-shaped samples, MLP 3072-1024-512-10.
W2: Fashion-MNIST from a fastnn dataset file, MLP 784-512-256-10.
Both: batch B, SGD with momentum 0.9, lr 0.01, normalised float32 inputs held
in memory as one tensor, a fresh shuffle per epoch. Prints images/s of every
epoch and the median of the epochs after the first (a warm-up), as
`fastnn bench train` does, plus the loss of the first and last epoch so a
run that learns nothing is visible.

    python3 tools/compare/torch_train.py --workload w2 --data data/cache/fashion-mnist.safetensors \
        --batch 128 --threads 2 --epochs 4
"""
import argparse
import statistics
import time

import numpy as np
import torch
from safetensors.numpy import load_file


def load(workload, path):
    if workload == "w1":
        rng = np.random.default_rng(0x5731)
        x = rng.integers(0, 256, size=(50_000, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=50_000)
    else:
        d = load_file(path)
        x, y = d["train.images"], d["train.labels"].astype(np.int64)
    x = x.astype(np.float32)
    mean, std = x.mean(0), x.std(0)
    scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)
    x = (x - mean) * scale
    return torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=["w1", "w2"], default="w2")
    ap.add_argument("--data", default="data/cache/fashion-mnist.safetensors")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    x, y = load(args.workload, args.data)
    hidden = [1024, 512] if args.workload == "w1" else [512, 256]
    dims = [x.shape[1]] + hidden + [10]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i + 2 < len(dims):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rates, losses = [], []
    n = len(x)
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        start = time.perf_counter()
        total = 0.0
        for i in range(0, n, args.batch):
            idx = perm[i : i + args.batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        rates.append(n / (time.perf_counter() - start))
        losses.append(total / n)
    print(
        f"torch {torch.__version__} eager, {args.workload}, batch {args.batch}, {args.threads} thread(s): "
        f"{statistics.median(rates[1:]):.0f} images/s (epochs: {', '.join(f'{r:.0f}' for r in rates)}); "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )


if __name__ == "__main__":
    main()
