#!/usr/bin/env python3
"""PyTorch round trip of fastnn model files.

(a) fastnn -> PyTorch: loads a fastnn model.safetensors into the equivalent
    nn.Sequential with load_state_dict, runs a split of a dataset file and
    checks the predictions, the accuracy and the logits (within 1e-4) against
    `fastnn eval --json --logits`.
(b) PyTorch -> fastnn: trains a small nn.Sequential on the same dataset,
    saves its state dict with safetensors plus the metadata fastnn reads
    (see src/checkpoint.rs: dims, activation, loss, dropout, norm, classes,
    input_scale, input_shift, fastnn.format, fastnn.version, data_crc32),
    and checks that `fastnn eval` gives the same accuracy and logits.

Usage:
    python3 tools/torch_roundtrip.py --fastnn target/debug/fastnn \
        --data data.safetensors --model run/model.safetensors [--split test]

Needs torch, safetensors and numpy (pip install torch safetensors numpy).
Prints one JSON line with the results; exits 1 when a check fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

LOGIT_TOL = 1e-4
LEAKY_SLOPE = 0.01  # src/model.rs LEAKY_SLOPE


def activation(name):
    return {
        "relu": torch.nn.ReLU(),
        "leaky_relu": torch.nn.LeakyReLU(LEAKY_SLOPE),
        "tanh": torch.nn.Tanh(),
        "sigmoid": torch.nn.Sigmoid(),
    }[name]


def sequential(dims, act, dropout, norm="none"):
    """Linear, [Norm,] act, [Dropout,] ..., Linear: the layout of fastnn's
    names. A Linear before a BatchNorm has no bias (fastnn drops it)."""
    layers = []
    for i in range(len(dims) - 1):
        hidden = i + 2 < len(dims)
        bias = not (hidden and norm == "batch")
        layers.append(torch.nn.Linear(dims[i], dims[i + 1], bias=bias))
        if hidden:
            if norm == "batch":
                layers.append(torch.nn.BatchNorm1d(dims[i + 1]))
            elif norm == "layer":
                layers.append(torch.nn.LayerNorm(dims[i + 1]))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


def load_fastnn_model(path):
    """The README's recipe: rebuild, load_state_dict, read the normalisation."""
    meta = safe_open(path, "pt").metadata()
    model = sequential(
        json.loads(meta["dims"]), meta["activation"], float(meta["dropout"]),
        meta.get("norm", "none"),
    )
    model.load_state_dict(load_file(path))
    model.eval()
    scale = torch.tensor(json.loads(meta["input_scale"]))
    shift = torch.tensor(json.loads(meta["input_shift"]))
    return model, scale, shift, meta


def split_tensors(data, split):
    d = load_numpy(data)
    x = torch.from_numpy(d[f"{split}.images"].astype(np.float32))
    y = torch.from_numpy(d[f"{split}.labels"].astype(np.int64))
    return x.reshape(len(y), -1), y


def fastnn_eval(fastnn, model, data, split, workdir):
    logits_path = os.path.join(workdir, "logits.safetensors")
    out = subprocess.run(
        [fastnn, "eval", "--model", model, "--data", data, "--split", split,
         "--json", "--logits", logits_path],
        check=True, capture_output=True, text=True,
    )
    summary = json.loads(out.stdout)
    logits = torch.from_numpy(load_numpy(logits_path)["logits"])
    return summary, logits


def compare(name, torch_logits, y, summary, fastnn_logits, failures):
    pred_t = torch_logits.argmax(1)
    pred_f = fastnn_logits.argmax(1)
    acc_t = (pred_t == y).double().mean().item()
    diff = (torch_logits - fastnn_logits).abs().max().item()
    same_pred = int((pred_t == pred_f).sum())
    if diff > LOGIT_TOL:
        failures.append(f"{name}: max logit difference {diff:.3g} > {LOGIT_TOL}")
    if same_pred != len(y):
        failures.append(f"{name}: {len(y) - same_pred} predictions differ")
    if abs(acc_t - summary["accuracy"]) > 1e-12:
        failures.append(
            f"{name}: accuracy torch {acc_t} != fastnn {summary['accuracy']}")
    return {
        "samples": len(y),
        "max_logit_diff": diff,
        "same_predictions": same_pred,
        "torch_accuracy": acc_t,
        "fastnn_accuracy": summary["accuracy"],
    }


def save_for_fastnn(model, path, dims, act, dropout, norm, classes, scale, shift):
    """Writes a state dict as a fastnn model file (format of src/checkpoint.rs).

    data_crc32 is the CRC-32 of the data section (everything after the
    header). The file is written with a placeholder of the same length,
    then the placeholder is replaced: the data, and so its offsets, stay.
    """
    meta = {
        "format": "pt",
        "fastnn.format": "model",
        "fastnn.version": "1",
        "dims": json.dumps(dims),
        "activation": act,
        "loss": "xent",
        "dropout": str(dropout),
        "norm": norm,
        "classes": json.dumps(classes),
        "input_scale": json.dumps([float(v) for v in scale]),
        "input_shift": json.dumps([float(v) for v in shift]),
        "input_units": "the dataset file's stored values; input = x * input_scale + input_shift",
        "data_crc32": "00000000",
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata=meta)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n]
    key = header.find(b'"data_crc32"')
    at = header.find(b'"00000000"', key) + 1
    assert key >= 0 and at > key, "placeholder not found"
    crc = b"%08x" % zlib.crc32(raw[8 + n:])
    raw[8 + at:8 + at + 8] = crc
    with open(path, "wb") as f:
        f.write(raw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fastnn", required=True, help="the fastnn binary")
    ap.add_argument("--data", required=True, help="a fastnn dataset file")
    ap.add_argument("--model", required=True, help="a fastnn model.safetensors")
    ap.add_argument("--split", default="test")
    ap.add_argument("--steps", type=int, default=300,
                    help="training steps of the PyTorch model (part b)")
    args = ap.parse_args()
    torch.manual_seed(0)
    failures = []
    report = {}
    x, y = split_tensors(args.data, args.split)
    with tempfile.TemporaryDirectory() as work:
        # (a) fastnn -> PyTorch.
        model, scale, shift, meta = load_fastnn_model(args.model)
        with torch.no_grad():
            logits = model(x * scale + shift)
        summary, f_logits = fastnn_eval(args.fastnn, args.model, args.data,
                                        args.split, work)
        report["fastnn_to_torch"] = compare("fastnn->torch", logits, y, summary,
                                            f_logits, failures)

        # (b) PyTorch -> fastnn: a differently shaped net trained by PyTorch,
        # with the normalisation of the fastnn model.
        classes = json.loads(meta["classes"])
        dims = [x.shape[1], 24, len(classes)]
        act, dropout, norm = "tanh", 0.1, meta.get("norm", "none")
        net = sequential(dims, act, dropout, norm)
        scale_b = torch.full((x.shape[1],), 1.0 / 255.0)
        shift_b = torch.full((x.shape[1],), -0.5)
        xt, yt = split_tensors(args.data, "train")
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(1)
        net.train()
        for _ in range(args.steps):
            idx = torch.randint(0, len(yt), (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(
                net(xt[idx] * scale_b + shift_b), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        path = os.path.join(work, "torch_model.safetensors")
        save_for_fastnn(net, path, dims, act, dropout, norm, classes, scale_b, shift_b)
        with torch.no_grad():
            logits_b = net(x * scale_b + shift_b)
        summary_b, f_logits_b = fastnn_eval(args.fastnn, path, args.data,
                                            args.split, work)
        report["torch_to_fastnn"] = compare("torch->fastnn", logits_b, y,
                                            summary_b, f_logits_b, failures)
    report["ok"] = not failures
    print(json.dumps(report))
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
