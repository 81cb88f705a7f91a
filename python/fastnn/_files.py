"""The fastnn command's files from Python: model files in, dataset files in
(as numpy views of the mapped file) and out."""

import json
import os
import struct

import numpy as np
from sklearn.utils.validation import check_array, column_or_1d

from . import _native
from ._classifier import MLPClassifier

_DTYPES = {"U8": np.uint8, "F32": np.float32, "I64": np.int64}


def load_model(path):
    """A fitted MLPClassifier from a model file (``model.safetensors`` of
    ``fastnn train``, or one written by ``MLPClassifier.save``).

    ``classes_`` holds the class names the file records (strings)."""
    model = _native.Model.load(os.fspath(path))
    dims = model.dims
    est = MLPClassifier(hidden_layer_sizes=tuple(dims[1:-1]), activation=model.activation)
    est._model = model
    est.classes_ = np.array(model.classes)
    est.n_features_in_ = dims[0]
    est.loss_curve_ = []
    est.n_iter_ = 0
    return est


class DatasetFile:
    """A dataset file of the fastnn command, validated (checksum included)
    and mapped: ``split(name)`` gives ``(X, y)`` as read-only numpy views of
    the file, nothing copied.

    Attributes: ``classes`` (names, in label order), ``sample_shape``,
    ``splits`` (names), ``tensors`` (every tensor by name, as a view)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.classes, self.sample_shape = _native.check_dataset(self.path)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        (header_len,) = struct.unpack("<Q", bytes(self._map[:8]))
        header = json.loads(bytes(self._map[8 : 8 + header_len]))
        header.pop("__metadata__", None)
        data = 8 + header_len
        self.tensors = {}
        for name, t in header.items():
            if name.startswith("__pad"):
                continue
            start, end = t["data_offsets"]
            raw = self._map[data + start : data + end]
            self.tensors[name] = raw.view(_DTYPES[t["dtype"]]).reshape(t["shape"])
        self.splits = sorted({n.split(".")[0] for n in self.tensors if n.endswith(".labels")})

    def split(self, name):
        """``(X, y)`` of the split ``name`` ("train", "test"): X of shape
        (n, features) in the stored units (bytes 0-255 for images), y the
        class indices into ``classes``."""
        if name not in self.splits:
            raise KeyError(f"{self.path} has no split {name!r} (it has: {', '.join(self.splits)})")
        return self.tensors[f"{name}.images"], self.tensors[f"{name}.labels"]

    def __repr__(self):
        return f"DatasetFile({self.path!r}, splits={self.splits}, classes={len(self.classes)})"


def open_dataset(path):
    """Opens a dataset file (see DatasetFile)."""
    return DatasetFile(path)


def write_dataset(path, X, y, overwrite=False):
    """Writes ``X`` and ``y`` as the train split of a dataset file that
    ``fastnn train --data PATH`` trains on. Labels are stored as indices
    into ``sorted(set(y))``, whose names (``str``) become the classes."""
    X = check_array(X, dtype=[np.float32, np.uint8], order="C")
    y = column_or_1d(y)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) > 256:
        raise ValueError(f"y holds {len(classes)} classes; a dataset file holds at most 256")
    if len(y) != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples, y has {len(y)}")
    _native.write_dataset(
        os.fspath(path), X, codes.astype(np.uint8), [str(c) for c in classes], overwrite
    )
