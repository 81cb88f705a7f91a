"""The estimator and `fastnn train` on the same samples and settings write
the same model file, byte for byte."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import fastnn

ROOT = Path(__file__).resolve().parents[2]


def fastnn_binary():
    """The command-line program: $FASTNN_BIN (CI sets it, and then it must
    exist), else the checkout's build, else `fastnn` on the PATH."""
    given = os.environ.get("FASTNN_BIN")
    if given:
        assert Path(given).is_file(), f"FASTNN_BIN={given} does not exist"
        return given
    for build in ("release", "debug"):
        candidate = ROOT / "target" / build / "fastnn"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("fastnn")
    if found is None:
        pytest.skip("no fastnn binary: build it (cargo build) or set FASTNN_BIN")
    return found


CASES = {
    "sgd": (
        dict(hidden_layer_sizes=(48, 24), epochs=3, batch_size=64, random_state=5, dropout=0.1),
        ["--hidden", "48,24", "--epochs", "3", "--batch", "64", "--seed", "5", "--dropout", "0.1",
         "--label-smoothing", "0"],
    ),
    "adamw-batchnorm": (
        dict(
            hidden_layer_sizes=(40,),
            optimizer="adamw",
            norm="batch",
            label_smoothing=0.1,
            epochs=2,
            batch_size=50,
            random_state=9,
            activation="tanh",
        ),
        [
            "--hidden", "40", "--optimizer", "adamw", "--norm", "batch",
            "--label-smoothing", "0.1", "--epochs", "2", "--batch", "50", "--seed", "9",
            "--activation", "tanh",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimator_and_cli_write_identical_model_files(case, tmp_path):
    params, flags = CASES[case]
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    data = tmp_path / "digits.safetensors"
    fastnn.write_dataset(data, X, y)
    run = tmp_path / "run"
    cmd = [fastnn_binary(), "train", "--data", str(data), "--out", str(run), "--validation", "0",
           "--threads", "2", "--quiet", *flags]
    subprocess.run(cmd, check=True, capture_output=True)
    clf = fastnn.MLPClassifier(threads=1, **params).fit(X, y)
    mine = tmp_path / "estimator.safetensors"
    clf.save(mine)
    cli = (run / "model.safetensors").read_bytes()
    assert len(cli) > 1000
    assert mine.read_bytes() == cli
    # And the CLI's file loads into an estimator that predicts as this one.
    back = fastnn.load_model(run / "model.safetensors")
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
