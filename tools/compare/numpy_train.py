#!/usr/bin/env python3
"""An MLP from scratch in numpy, written the way the classic tutorials write
it (cs231n, "neural network from scratch"): one class per layer with
`forward` and `backward`, `x @ W + b`, softmax + cross-entropy by hand, SGD
with momentum. float32 throughout; the matrix products go to the BLAS numpy
was built with. Times every whole epoch and prints one JSON line (see
peer_common.py).

    python3 tools/compare/numpy_train.py --data ~/.cache/fastnn/fashion-mnist.safetensors \\
        --hidden 512,256 --batch 128 --threads 2 --epochs 4
"""
import time

import blas_threads

blas_threads.set_from_argv(2)

import numpy as np  # noqa: E402

from peer_common import load_train, parse_args, report  # noqa: E402


class Linear:
    # The first layer's input is the data: nobody needs its gradient, and
    # fastnn and PyTorch do not compute it, so neither does this peer.
    def __init__(self, fan_in, fan_out, rng, input_grad=True):
        self.W = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.b = np.zeros(fan_out, dtype=np.float32)
        self.vW = np.zeros_like(self.W)
        self.vb = np.zeros_like(self.b)
        self.input_grad = input_grad

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, grad):
        self.dW = self.x.T @ grad
        self.db = grad.sum(axis=0)
        return grad @ self.W.T if self.input_grad else None

    def step(self, lr, momentum):
        self.vW = momentum * self.vW + self.dW
        self.vb = momentum * self.vb + self.db
        self.W -= lr * self.vW
        self.b -= lr * self.vb


class ReLU:
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask


class SoftmaxCrossEntropy:
    def forward(self, logits, labels):
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        self.probs = exp / exp.sum(axis=1, keepdims=True)
        self.labels = labels
        rows = np.arange(len(labels))
        return float(-np.log(self.probs[rows, labels]).mean())

    def backward(self):
        grad = self.probs.copy()
        grad[np.arange(len(self.labels)), self.labels] -= 1.0
        return grad / len(self.labels)


def blas_backend():
    try:
        from threadpoolctl import threadpool_info

        libs = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)" for i in threadpool_info()]
        if libs:
            return ", ".join(libs)
    except ImportError:
        pass
    cfg = np.show_config(mode="dicts")
    blas = cfg.get("Build Dependencies", {}).get("blas", {})
    return f"{blas.get('name', '?')} {blas.get('version', '?')}"


def main():
    args = parse_args(__doc__)
    x, y = load_train(args.data)
    rng = np.random.default_rng(args.seed)
    dims = [x.shape[1]] + args.hidden + [10]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(Linear(dims[i], dims[i + 1], rng, input_grad=i > 0))
        if i + 2 < len(dims):
            layers.append(ReLU())
    criterion = SoftmaxCrossEntropy()
    n = len(x)
    rates, losses = [], []
    for _ in range(args.epochs):
        start = time.perf_counter()
        perm = rng.permutation(n)
        total = 0.0
        for i in range(0, n, args.batch):
            idx = perm[i : i + args.batch]
            out = x[idx]
            for layer in layers:
                out = layer.forward(out)
            total += criterion.forward(out, y[idx]) * len(idx)
            grad = criterion.backward()
            for layer in reversed(layers):
                grad = layer.backward(grad)
            for layer in layers:
                if isinstance(layer, Linear):
                    layer.step(args.lr, 0.9)
        rates.append(n / (time.perf_counter() - start))
        losses.append(total / n)
    report("numpy", f"numpy {np.__version__}", blas_backend(), args, n, rates, losses)


if __name__ == "__main__":
    main()
