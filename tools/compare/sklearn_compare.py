#!/usr/bin/env python3
"""fastnn.MLPClassifier beside scikit-learn's MLPClassifier and a plain
PyTorch loop: test accuracy and training wall time at the same architecture,
optimiser (Adam, learning rate 0.001, batches of 200, no L2) and epochs, on
Fashion-MNIST (the IDX files shipped in data/fashion-mnist) and on
scikit-learn's bundled digits. Started by tools/compare/sklearn.sh, which
installs the package and the peers.

Every peer sees the same pixels scaled to [0, 1] and standardises each
feature with the training statistics (fastnn and the PyTorch loop do it
themselves, scikit-learn is given the standardised array). scikit-learn runs
every epoch (its convergence test is turned off), its BLAS limited to
--threads threads; PyTorch runs with torch.set_num_threads(--threads). Each
time covers fit alone. scikit-learn runs twice: on float32 arrays (as the
others) and on float64 ones (what `X / 255.0` gives, and then it computes
in float64). A last row per dataset is fastnn's default estimator (512-256,
SGD with momentum, cosine schedule, 12 epochs).

    python3 tools/compare/sklearn_compare.py [--threads 2] [--epochs-fashion 20]
        [--torch-python PYTHON] [--out target/compare]
"""
import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from threadpoolctl import threadpool_info, threadpool_limits

import fastnn

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = (100,)
LR, BATCH = 0.001, 200


def idx(path):
    """An IDX file (gzip'd) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist():
    d = ROOT / "data" / "fashion-mnist"
    x_train = idx(d / "train-images-idx3-ubyte.gz").reshape(60000, -1)
    x_test = idx(d / "t10k-images-idx3-ubyte.gz").reshape(10000, -1)
    y_train = idx(d / "train-labels-idx1-ubyte.gz")
    y_test = idx(d / "t10k-labels-idx1-ubyte.gz")
    scale = np.float32(1 / 255)
    return x_train * scale, y_train.astype(np.int64), x_test * scale, y_test.astype(np.int64)


def digits():
    X, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (X / 16).astype(np.float32), y, test_size=0.25, random_state=0
    )
    return x_train, y_train, x_test, y_test


def timed(fit):
    start = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - start


def run_fastnn(data, epochs, threads):
    x_train, y_train, x_test, y_test = data
    clf = fastnn.MLPClassifier(
        hidden_layer_sizes=HIDDEN, optimizer="adam", learning_rate=LR, batch_size=BATCH,
        epochs=epochs, schedule="constant", threads=threads, random_state=1,
    )
    clf, seconds = timed(lambda: clf.fit(x_train, y_train))
    return {"accuracy": clf.score(x_test, y_test), "seconds": seconds}


def run_fastnn_default(data, threads):
    x_train, y_train, x_test, y_test = data
    clf = fastnn.MLPClassifier(threads=threads, random_state=1)
    clf, seconds = timed(lambda: clf.fit(x_train, y_train))
    return {"accuracy": clf.score(x_test, y_test), "seconds": seconds}


def run_sklearn(data, epochs, threads, dtype=np.float32):
    x_train, y_train, x_test, y_test = data
    x_train, x_test = x_train.astype(dtype), x_test.astype(dtype)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1
    clf = SkMLP(
        hidden_layer_sizes=HIDDEN, solver="adam", learning_rate_init=LR, batch_size=BATCH,
        alpha=0.0, max_iter=epochs, n_iter_no_change=epochs + 1, tol=0.0, random_state=1,
    )
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf, seconds = timed(lambda: clf.fit((x_train - mean) / std, y_train))
        accuracy = clf.score((x_test - mean) / std, y_test)
    assert clf.n_iter_ == epochs, clf.n_iter_
    return {"accuracy": accuracy, "seconds": seconds}


def run_torch(data, epochs, threads, python):
    with tempfile.TemporaryDirectory() as tmp:
        for name, a in zip(("X_train", "y_train", "X_test", "y_test"), data):
            np.save(Path(tmp) / f"{name}.npy", a)
        cmd = [
            python, str(Path(__file__).with_name("sklearn_torch_peer.py")), tmp,
            "--hidden", ",".join(map(str, HIDDEN)), "--epochs", str(epochs),
            "--batch", str(BATCH), "--lr", str(LR), "--threads", str(threads),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"unavailable": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs-fashion", type=int, default=20)
    p.add_argument("--epochs-digits", type=int, default=50)
    p.add_argument("--torch-python", default=sys.executable,
                   help="the Python that has torch (default: this one)")
    p.add_argument("--datasets", default="digits,fashion-mnist")
    p.add_argument("--out", type=Path, default=ROOT / "target" / "compare")
    a = p.parse_args()
    loaders = {"digits": (digits, a.epochs_digits), "fashion-mnist": (fashion_mnist, a.epochs_fashion)}
    rows = []
    for name in a.datasets.split(","):
        load, epochs = loaders[name]
        data = load()
        arch = "-".join(map(str, (data[0].shape[1], *HIDDEN, 10)))
        same = f"{arch}, Adam 0.001, batch 200, {epochs} epochs"
        for peer, run in (
            ("fastnn.MLPClassifier", lambda: run_fastnn(data, epochs, a.threads)),
            ("sklearn MLPClassifier", lambda: run_sklearn(data, epochs, a.threads)),
            # What `X / 255.0` gives: scikit-learn then trains in float64.
            ("sklearn MLPClassifier, float64 input",
             lambda: run_sklearn(data, epochs, a.threads, np.float64)),
            ("PyTorch loop", lambda: run_torch(data, epochs, a.threads, a.torch_python)),
            ("fastnn.MLPClassifier() defaults", lambda: run_fastnn_default(data, a.threads)),
        ):
            result = run()
            settings = same if "defaults" not in peer else "512-256, SGD 0.05 cosine, batch 128, 12 epochs"
            rows.append({"dataset": name, "peer": peer, "settings": settings, **result})
            print(json.dumps(rows[-1]), flush=True)
    blas = [f"{i.get('internal_api')} {i.get('architecture', '')} ({i.get('num_threads')} threads)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu_name()}, {a.threads} threads; "
        f"numpy BLAS: {', '.join(blas) or 'none found'}.",
        "",
        "| dataset | peer | settings | test accuracy | fit time | vs scikit-learn |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        sk = next(s for s in rows if s["dataset"] == r["dataset"] and s["peer"] == "sklearn MLPClassifier")
        if "unavailable" in r:
            lines.append(f"| {r['dataset']} | {r['peer']} | {r['settings']} | unavailable: {r['unavailable']} | | |")
            continue
        speed = sk["seconds"] / r["seconds"] if "seconds" in sk else float("nan")
        lines.append(
            f"| {r['dataset']} | {r['peer']} | {r['settings']} | {100 * r['accuracy']:.2f} % "
            f"| {r['seconds']:.2f} s | {speed:.1f}× |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "sklearn.json").write_text(json.dumps(rows, indent=1))
    (a.out / "sklearn.md").write_text(table + "\n")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "an unknown CPU"


if __name__ == "__main__":
    main()
