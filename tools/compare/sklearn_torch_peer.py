#!/usr/bin/env python3
"""The plain PyTorch loop of sklearn_compare.py, run as its own process (so
that it may use another Python environment, the one that has torch).

Reads X_train, y_train, X_test, y_test (.npy, float32 and int64) from DIR,
trains nn.Sequential(Linear, ReLU, …, Linear) with F.cross_entropy and
torch.optim.Adam on batches of a fresh permutation each epoch, standardising
each feature with the training statistics as fastnn does, and prints one
JSON line: {"accuracy", "seconds", "torch"}. The time covers the training
loop only (the tensors are built before the clock starts).

    python3 sklearn_torch_peer.py DIR --hidden 100 --epochs 15 --batch 200 --lr 0.001 --threads 2
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    p.add_argument("--hidden", default="100")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    load = lambda name: np.load(a.dir / f"{name}.npy")  # noqa: E731
    x_train, y_train, x_test, y_test = (load(n) for n in ("X_train", "y_train", "X_test", "y_test"))
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1
    x = torch.from_numpy((x_train - mean) / std)
    y = torch.from_numpy(y_train)
    xt = torch.from_numpy((x_test - mean) / std)
    hidden = [int(h) for h in a.hidden.split(",") if h]
    dims = [x.shape[1]] + hidden + [int(y.max()) + 1]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    start = time.perf_counter()
    for _ in range(a.epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), a.batch):
            idx = perm[i : i + a.batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(xt).argmax(dim=1) == torch.from_numpy(y_test)).double().mean().item()
    print(json.dumps({"accuracy": accuracy, "seconds": seconds, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
