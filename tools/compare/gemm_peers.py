#!/usr/bin/env python3
"""The GEMM shapes of `fastnn bench gemm`, timed in numpy (its BLAS, OpenBLAS
in the PyPI wheels) or PyTorch (MKL / oneDNN), with the same storage layouts:
NT is `A @ B.T` with B stored [n, k], TN is `A.T @ B` with A stored [k, m];
the transposes are views, never copies. float32, the result written into a
preallocated C. Prints one JSON line: GFLOP/s (median of timed batches after
a warm-up) per shape.

`--peer torch --dtype bf16` times torch.matmul on bf16 tensors, as autocast
runs a linear layer: A, B and C bf16 (the product sums in f32), the operands
converted before the clock starts. numpy has no bf16.

    python3 tools/compare/gemm_peers.py --peer numpy --threads 1 \\
        --shapes 128x3072x1024:NT,128x1024x3072:NN
"""
import argparse
import json
import statistics
import time

import blas_threads

blas_threads.set_from_argv(1)

import numpy as np  # noqa: E402


def parse_shape(text):
    dims, _, trans = text.partition(":")
    m, k, n = (int(v) for v in dims.split("x"))
    trans = (trans or "NN").upper()
    if trans not in ("NN", "NT", "TN", "TT"):
        raise ValueError(f"bad transposes {trans!r} in {text!r}")
    return m, k, n, trans


def stored_operands(m, k, n, trans, rng):
    """A and B as fastnn stores them: A [k, m] when transposed, B [n, k] when transposed."""
    a = rng.standard_normal((k, m) if trans[0] == "T" else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans[1] == "T" else (k, n), dtype=np.float32)
    return a, b


def median_seconds(call, min_batch_seconds=0.02, samples=15):
    for _ in range(3):
        call()
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    reps = max(1, int(min_batch_seconds / once))
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--peer", choices=["numpy", "torch"], required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", required=True, help="MxKxN:TRANS, comma-separated")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="bf16: torch only")
    args = ap.parse_args()
    if args.dtype == "bf16" and args.peer != "torch":
        ap.error("--dtype bf16: numpy has no bf16, only --peer torch")
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    rng = np.random.default_rng(7)
    if args.peer == "torch":
        import torch

        torch.set_num_threads(args.threads)
        version = f"torch {torch.__version__}"
        blas = "MKL" if torch.backends.mkl.is_available() else "unknown BLAS"
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        if args.dtype == "bf16":
            try:
                onednn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            except (AttributeError, RuntimeError):
                onednn = False
            blas = "oneDNN bf16" if onednn else "no oneDNN bf16 on this CPU"
    else:
        version = f"numpy {np.__version__}"
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name', '?')} {blas.get('version', '?')}"
    results = []
    for m, k, n, trans in shapes:
        a, b = stored_operands(m, k, n, trans, rng)
        if args.peer == "torch":
            a, b = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
            a = a.t() if trans[0] == "T" else a
            b = b.t() if trans[1] == "T" else b
            c = torch.empty((m, n), dtype=dtype)
            secs = median_seconds(lambda: torch.matmul(a, b, out=c))
        else:
            a = a.T if trans[0] == "T" else a
            b = b.T if trans[1] == "T" else b
            c = np.empty((m, n), dtype=np.float32)
            secs = median_seconds(lambda: np.matmul(a, b, out=c))
        results.append({"m": m, "k": k, "n": n, "trans": trans, "gflops": 2.0 * m * k * n / secs / 1e9})
    print(json.dumps({"peer": args.peer, "dtype": args.dtype, "version": version, "blas": blas, "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
