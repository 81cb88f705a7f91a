"""What the Python peers of the training comparison share: the command line,
the dataset file, the median and the one-line JSON report.

Every peer trains the same MLP (Linear/ReLU, softmax cross-entropy, SGD with
momentum 0.9, weights ~ N(0, 2/fan_in), zero biases) on the same bytes: the
training split of a fastnn dataset file, normalised once with the per-feature
statistics stored in that file and held in memory as one float32 array.
The report names the precision of the products: f32, or bf16 where a peer
offers it (PyTorch under autocast).
"""
import argparse
import json
import statistics
import sys

import numpy as np
from safetensors.numpy import load_file


def parse_args(description, precisions=("f32",)):
    """The shared options; `--precision` too where a peer has more than one."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", required=True, help="a fastnn dataset file (.safetensors)")
    ap.add_argument("--hidden", default="512,256", help="hidden layer sizes, comma-separated")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="epochs, the first a warm-up (at least 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    if len(precisions) > 1:
        ap.add_argument(
            "--precision",
            choices=precisions,
            default=precisions[0],
            help="bf16: bf16 operands, f32 accumulation and f32 master weights",
        )
    args = ap.parse_args()
    args.precision = getattr(args, "precision", precisions[0])
    args.hidden = [int(h) for h in args.hidden.split(",") if h]
    if args.epochs < 2:
        ap.error("--epochs must be at least 2: the first is a warm-up")
    return args


def load_train(path):
    """The training split as (float32 [N, F] normalised, int64 [N] labels)."""
    try:
        d = load_file(path)
    except Exception as e:  # the message of safetensors is enough, once it names the file
        sys.exit(f"{path}: cannot read the dataset file: {e}")
    for name in ("train.images", "train.labels", "stats.feature_mean", "stats.feature_std"):
        if name not in d:
            sys.exit(f"{path}: missing tensor {name}")
    x = d["train.images"]
    x = x.reshape(len(x), -1).astype(np.float32)
    mean, std = d["stats.feature_mean"], d["stats.feature_std"]
    # Constant features (std 0) become 0, as in fastnn's normaliser.
    scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)
    x -= mean
    x *= scale
    return x, d["train.labels"].astype(np.int64)


def median_after_warmup(rates):
    return statistics.median(rates[1:])


def report(peer, version, backend, args, samples, rates, losses):
    print(
        json.dumps(
            {
                "peer": peer,
                "precision": args.precision,
                "version": version,
                "backend": backend,
                "threads": args.threads,
                "batch": args.batch,
                "hidden": args.hidden,
                "samples": samples,
                "epochs_images_per_sec": rates,
                "images_per_sec": median_after_warmup(rates),
                "loss_first": losses[0],
                "loss_last": losses[-1],
            }
        )
    )
