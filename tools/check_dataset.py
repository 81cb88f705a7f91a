#!/usr/bin/env python3
"""Opens fastnn dataset files from Python and checks them independently.

For each fixture archive converted by `fastnn data convert`, the file is read
twice, with `safetensors.numpy.load_file` and with a plain `numpy.memmap` over
the parsed JSON header, and the arrays are compared with the values the
fixture manifest's formulas give, pixel by pixel. The normalisation
statistics are recomputed with numpy from the training split.

    python3 tools/check_dataset.py FIXTURES_DIR DATASET.safetensors KIND [...]

KIND is cifar10, cifar100 or mnist-tiny. Needs numpy and safetensors.
"""
import json
import struct
import sys

import numpy as np
from safetensors.numpy import load_file


def pixels(seed, count):
    n = np.arange(count).reshape(-1, 1, 1, 1)
    c = np.arange(3).reshape(1, -1, 1, 1)
    y = np.arange(32).reshape(1, 1, -1, 1)
    x = np.arange(32).reshape(1, 1, 1, -1)
    return ((seed * 31 + n * 7 + c * 85 + y * 8 + x) & 0xFF).astype(np.uint8).reshape(count, 3072)


def expected(manifest, kind):
    """{tensor name: array} the formulas of the manifest give."""
    if kind == "cifar10":
        out = {}
        for split, batches in [("train", [f"data_batch_{k}" for k in range(1, 6)]), ("test", ["test_batch"])]:
            imgs, labels = [], []
            for b in batches:
                seed, count = manifest["cifar10_seeds"][b], manifest["cifar10_counts"][b]
                n = np.arange(count)
                imgs.append(pixels(seed, count))
                labels.append(((seed * 3 + n * 7 + n // 10) % 10).astype(np.uint8))
            out[f"{split}.images"] = np.concatenate(imgs)
            out[f"{split}.labels"] = np.concatenate(labels)
        return out
    if kind == "cifar100":
        out = {}
        coarse_of_fine = np.array(manifest["coarse_of_fine"], dtype=np.uint8)
        for split in ["train", "test"]:
            seed, count = manifest["cifar100_seeds"][split], manifest["cifar100_counts"][split]
            fine = ((seed * 11 + np.arange(count) * 37) % 100).astype(np.uint8)
            out[f"{split}.images"] = pixels(seed, count)
            out[f"{split}.labels"] = fine
            out[f"{split}.coarse_labels"] = coarse_of_fine[fine]
        return out
    if kind == "mnist-tiny":
        count = manifest["mnist_tiny"]["count"]
        n = np.arange(count).reshape(-1, 1, 1)
        y = np.arange(28).reshape(1, -1, 1)
        x = np.arange(28).reshape(1, 1, -1)
        return {
            "train.images": ((n * 5 + y * 3 + x) & 0xFF).astype(np.uint8).reshape(count, 784),
            "train.labels": ((np.arange(count) * 3) % 10).astype(np.uint8),
        }
    raise SystemExit(f"unknown kind {kind}")


def memmap_arrays(path):
    """The tensors of a safetensors file read with numpy alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    start = 8 + n
    assert start % 64 == 0, f"data section starts at {start}, not 64-byte aligned"
    dtypes = {"U8": np.uint8, "F32": np.float32}
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or name.startswith("__pad."):
            continue
        b, e = t["data_offsets"]
        assert (start + b) % 64 == 0 or e == b, f"{name} not aligned"
        out[name] = np.memmap(path, dtype=dtypes[t["dtype"]], mode="r", offset=start + b, shape=tuple(t["shape"]))
    return out, header["__metadata__"]


def check(fixtures, path, kind):
    manifest = json.load(open(f"{fixtures}/manifest.json"))
    loaded = load_file(path)
    mapped, meta = memmap_arrays(path)
    assert meta["fastnn.format"] == "dataset" and meta["fastnn.version"] == "1", meta
    for name, want in expected(manifest, kind).items():
        for how, arrays in [("safetensors", loaded), ("memmap", mapped)]:
            got = arrays[name]
            assert got.shape == want.shape, f"{how} {name}: shape {got.shape} != {want.shape}"
            assert np.array_equal(got, want), f"{how} {name}: values differ"
    train = loaded["train.images"].astype(np.float64)
    channels = 3 if kind.startswith("cifar") else 1
    assert np.allclose(loaded["stats.feature_mean"], train.mean(0), rtol=1e-5, atol=1e-4)
    assert np.allclose(loaded["stats.feature_std"], train.std(0), rtol=1e-5, atol=1e-4)
    planes = train.reshape(len(train), channels, -1)
    assert np.allclose(loaded["stats.channel_mean"], planes.mean((0, 2)), rtol=1e-5)
    assert np.allclose(loaded["stats.channel_std"], planes.std((0, 2)), rtol=1e-5)
    print(f"ok: {path} ({kind}) matches the fixture formulas, read by safetensors and by numpy.memmap")


def main(argv):
    if len(argv) < 4 or (len(argv) - 2) % 2:
        raise SystemExit(__doc__)
    fixtures = argv[1]
    for path, kind in zip(argv[2::2], argv[3::2]):
        check(fixtures, path, kind)


if __name__ == "__main__":
    main(sys.argv)
