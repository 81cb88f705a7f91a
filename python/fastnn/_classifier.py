"""fastnn.MLPClassifier: scikit-learn's estimator conventions on top of the
native module, which trains and predicts with the fastnn library."""

import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import _native

# The arrays the native module reads in place; anything else is converted
# once, to the first.
_NATIVE_DTYPES = [np.float32, np.uint8]
_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_NORMS = (None, "batch", "layer")
_NORMALIZE = ("feature", "none")
_PRECISIONS = ("f32", "bf16")
# The library stores class indices in one byte.
_MAX_CLASSES = 256


def _default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron classifier trained by fastnn on the CPU.

    Softmax and cross-entropy on top of ``hidden_layer_sizes`` fully
    connected layers, trained with mini-batch SGD (momentum, Nesterov) or
    Adam/AdamW, the same engine and the same results as ``fastnn train``.
    The defaults are ``fastnn train``'s: 512-256 hidden units, ReLU, SGD
    with momentum 0.9 at learning rate 0.05 on a cosine schedule, batches
    of 128, 12 epochs, features standardised with the training statistics;
    but no label smoothing (``fastnn train`` smooths by 0.1 unless told;
    scikit-learn's MLPClassifier has none).

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(512, 256)
    activation : {"relu", "leaky_relu", "tanh", "sigmoid"}, default="relu"
    optimizer : {"sgd", "adam", "adamw"}, default="sgd"
    learning_rate : float or None, default=None
        The base learning rate; None means 0.05 for SGD, 0.001 for Adam.
    momentum : float, default=0.9
        SGD momentum.
    nesterov : bool, default=False
    batch_size : int, default=128
    epochs : int, default=12
    schedule : str, default="cosine"
        "constant", "cosine" (to zero over the run) or "step:EVERY:GAMMA".
    warmup : int, default=0
        Steps of linear learning-rate warm-up.
    l2 : float, default=0.0
        Penalty λ‖W‖² on the weights.
    weight_decay : float or None, default=None
        Decoupled weight decay; None means 0.01 for AdamW, else 0.
    dropout : float, default=0.0
        Dropout probability of the hidden units.
    label_smoothing : float, default=0.0
        Label smoothing ε of the cross-entropy (``fastnn train``'s default
        is 0.1).
    norm : {None, "batch", "layer"}, default=None
        BatchNorm or LayerNorm after each hidden layer.
    normalize : {"feature", "none"}, default="feature"
        Standardise each feature with the training statistics, or not.
    clip_grad_norm : float or None, default=None
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the samples (stratified) and stop
        after ``n_iter_no_change`` epochs without a lower validation loss,
        keeping the weights of the best epoch.
    validation_fraction : float, default=0.1
        Used only with ``early_stopping``.
    n_iter_no_change : int, default=10
        Used only with ``early_stopping``.
    random_state : int, RandomState or None, default=None
        An int is the seed of ``fastnn train --seed``: initialisation,
        shuffling and dropout. A fixed seed gives bit-identical weights on
        any number of threads.
    threads : int or None, default=None
        Threads of training and inference; None means all available cores.
    precision : {"f32", "bf16"}, default="f32"
        Arithmetic of the training products (bf16: mixed precision).
    verbose : bool, default=False
        Print one line per epoch.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when ``X`` had string column names (a pandas DataFrame).
    loss_curve_ : list of float
        The training loss of each epoch.
    n_iter_ : int
        Epochs trained.
    validation_scores_ : list of float
        With ``early_stopping``: the validation accuracy of each epoch.
    best_validation_score_ : float
        With ``early_stopping``: the best of them.
    coefs_ : list of ndarray
        Weight matrices, ``coefs_[i]`` of shape (inputs, outputs) of layer i
        as scikit-learn lays them out (the model file holds PyTorch's
        (outputs, inputs)), after any BatchNorm is folded in.
    intercepts_ : list of ndarray
    """

    def __init__(
        self,
        hidden_layer_sizes=(512, 256),
        activation="relu",
        optimizer="sgd",
        learning_rate=None,
        momentum=0.9,
        nesterov=False,
        batch_size=128,
        epochs=12,
        schedule="cosine",
        warmup=0,
        l2=0.0,
        weight_decay=None,
        dropout=0.0,
        label_smoothing=0.0,
        norm=None,
        normalize="feature",
        clip_grad_norm=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=None,
        threads=None,
        precision="f32",
        verbose=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterov = nesterov
        self.batch_size = batch_size
        self.epochs = epochs
        self.schedule = schedule
        self.warmup = warmup
        self.l2 = l2
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.norm = norm
        self.normalize = normalize
        self.clip_grad_norm = clip_grad_norm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.threads = threads
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------
    # Settings

    def _settings(self, epochs, schedule, validation):
        """The native module's settings (``fastnn train``'s options),
        checked, with the defaults resolved."""
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, numbers.Integral):
            hidden = (hidden,)
        hidden = list(hidden)
        if not all(isinstance(h, numbers.Integral) and h >= 1 for h in hidden):
            raise ValueError(
                f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}"
            )
        _one_of("activation", self.activation, _ACTIVATIONS)
        _one_of("optimizer", self.optimizer, _OPTIMIZERS)
        _one_of("norm", self.norm, _NORMS)
        _one_of("normalize", self.normalize, _NORMALIZE)
        _one_of("precision", self.precision, _PRECISIONS)
        lr = self.learning_rate
        if lr is None:
            lr = 0.05 if self.optimizer == "sgd" else 0.001
        _positive("learning_rate", lr)
        weight_decay = self.weight_decay
        if weight_decay is None:
            weight_decay = 0.01 if self.optimizer == "adamw" else 0.0
        for name in ("momentum", "l2", "weight_decay"):
            value = weight_decay if name == "weight_decay" else getattr(self, name)
            if not (isinstance(value, numbers.Real) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("dropout", "label_smoothing"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("batch_size", "epochs"):
            _positive_int(name, getattr(self, name))
        if not (isinstance(self.warmup, numbers.Integral) and self.warmup >= 0):
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.clip_grad_norm is not None:
            _positive("clip_grad_norm", self.clip_grad_norm)
        threads = _default_threads() if self.threads is None else self.threads
        _positive_int("threads", threads)
        if self.norm == "batch" and self.batch_size < 2:
            raise ValueError("norm='batch' needs batch_size >= 2")
        early_stop = None
        if self.early_stopping:
            _positive_int("n_iter_no_change", self.n_iter_no_change)
            early_stop = int(self.n_iter_no_change)
        return {
            "hidden": [int(h) for h in hidden],
            "activation": self.activation,
            "loss": "xent",
            "dropout": float(self.dropout),
            "label_smoothing": float(self.label_smoothing),
            "norm": self.norm or "none",
            "precision": self.precision,
            "optimizer": self.optimizer,
            "momentum": float(self.momentum),
            "nesterov": bool(self.nesterov),
            "lr": float(lr),
            "schedule": schedule,
            "warmup": int(self.warmup),
            "l2": float(self.l2),
            "weight_decay": float(weight_decay),
            "clip_grad_norm": None if self.clip_grad_norm is None else float(self.clip_grad_norm),
            "early_stop": early_stop,
            "epochs": int(epochs),
            "batch": int(self.batch_size),
            "seed": self._seed(),
            "threads": int(threads),
            "normalize": self.normalize,
            "validation": int(validation),
        }

    def _seed(self):
        # An int is used as it is, so random_state=N trains as `--seed N`.
        if isinstance(self.random_state, numbers.Integral) and self.random_state >= 0:
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _threads(self):
        return _default_threads() if self.threads is None else int(self.threads)

    # ------------------------------------------------------------------
    # Training

    def _check_X_y(self, X, y, reset):
        X, y = validate_data(
            self, X, y, reset=reset, dtype=_NATIVE_DTYPES, order="C", multi_output=False
        )
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return X, y

    def fit(self, X, y):
        """Trains a new network on ``X`` (n_samples, n_features) and the
        labels ``y`` (any type numpy can sort: ints, strings, …).

        A float32 C-contiguous ``X`` is read in place; other arrays are
        converted once. The GIL is released while training; Ctrl-C stops
        after the current step, leaves the estimator fitted with the
        weights reached, and raises KeyboardInterrupt."""
        X, y = self._check_X_y(X, y, reset=True)
        classes, codes = np.unique(y, return_inverse=True)
        _check_class_count(classes)
        validation = 0
        if self.early_stopping:
            X, codes, validation = self._hold_out(X, codes)
        settings = self._settings(self.epochs, self.schedule, validation)
        self.classes_ = classes
        self._train(X, codes, settings, resume=None, append=False)
        return self

    def _hold_out(self, X, codes):
        """Rows reordered so that the last ones are a stratified random
        validation set (the library holds out the end of the data)."""
        f = self.validation_fraction
        if not (isinstance(f, numbers.Real) and 0 < f < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {f!r}")
        idx = np.arange(len(codes))
        try:
            train, val = train_test_split(
                idx, test_size=f, stratify=codes, random_state=self._seed()
            )
        except ValueError:
            # Too few samples of some class to stratify.
            train, val = train_test_split(idx, test_size=f, random_state=self._seed())
        order = np.concatenate([train, val])
        return np.ascontiguousarray(X[order]), codes[order], len(val)

    def _train(self, X, codes, settings, resume, append):
        names = [str(c) for c in self.classes_]
        on_epoch = self._print_epoch if self.verbose else None
        model, losses, val, err = _native.fit(
            X, codes.astype(np.uint8), names, settings, resume, on_epoch
        )
        self._model = model
        self.loss_curve_ = (list(self.loss_curve_) if append else []) + list(losses)
        self.n_iter_ = (self.n_iter_ if append else 0) + len(losses)
        if settings["validation"] > 0:
            self.validation_scores_ = [v for v in val if v is not None]
            if self.validation_scores_:
                self.best_validation_score_ = max(self.validation_scores_)
        elif not append:
            # A refit without early stopping keeps nothing of an earlier one.
            for stale in ("validation_scores_", "best_validation_score_"):
                self.__dict__.pop(stale, None)
        if err is not None:
            raise err

    @staticmethod
    def _print_epoch(epoch, loss, val_loss, val_accuracy, seconds):
        line = f"epoch {epoch}: loss {loss:.4f}"
        if val_accuracy is not None:
            line += f", validation loss {val_loss:.4f}, accuracy {100 * val_accuracy:.2f} %"
        print(f"{line} ({seconds:.2f} s)", flush=True)

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``X``, ``y``, going on from the current weights
        and optimiser state at the constant ``learning_rate``.

        ``classes`` (every label that will ever appear) is required on the
        first call. The normalisation statistics are those of the first
        call's samples."""
        first = not hasattr(self, "_model")
        if first and classes is None:
            raise ValueError("classes must be given on the first call to partial_fit")
        if not first and not self._model.can_train_further:
            raise ValueError(
                "this model has no optimiser state to train further "
                "(it was loaded from a model file): use fit"
            )
        X, y = self._check_X_y(X, y, reset=first)
        if first:
            self.classes_ = np.unique(column_or_1d(classes))
            _check_class_count(self.classes_)
        elif classes is not None and not np.array_equal(
            np.unique(column_or_1d(classes)), self.classes_
        ):
            raise ValueError(
                f"classes {classes!r} differ from those of the first call, {self.classes_!r}"
            )
        codes = np.searchsorted(self.classes_, y)
        codes = np.minimum(codes, len(self.classes_) - 1)
        unknown = self.classes_[codes] != y
        if np.any(unknown):
            raise ValueError(
                f"y holds labels not in classes: {np.unique(y[unknown])!r}"
            )
        settings = self._settings(1, "constant", 0)
        self._train(X, codes, settings, resume=None if first else self._model, append=not first)
        return self

    # ------------------------------------------------------------------
    # Inference

    def _logits(self, X):
        check_is_fitted(self, "_model")
        X = validate_data(self, X, reset=False, dtype=_NATIVE_DTYPES, order="C")
        return self._model.logits(X, self._threads())

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), in ``classes_`` order:
        the softmax of the network's outputs, in float64."""
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X):
        """Logarithms of the class probabilities (a log-softmax, which stays
        finite where a probability underflows)."""
        z = self._logits(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z

    def predict(self, X):
        """The most probable class of each sample."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    # ------------------------------------------------------------------
    # Weights, files, pickling

    @property
    def coefs_(self):
        check_is_fitted(self, "_model")
        return [w.T for w, _ in self._model.weights()]

    @property
    def intercepts_(self):
        check_is_fitted(self, "_model")
        return [b for _, b in self._model.weights()]

    def save(self, path):
        """Writes the model file that ``fastnn eval``/``predict`` and
        PyTorch read (weights under ``nn.Sequential`` names, [out, in])."""
        check_is_fitted(self, "_model")
        self._model.save(os.fspath(path))

    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.pop("_model", None)
        if model is not None:
            # The model file, and what partial_fit needs to go on.
            state["_model_file"] = (model.to_bytes(), model.train_state())
        return state

    def __setstate__(self, state):
        state = dict(state)
        model_file = state.pop("_model_file", None)
        self.__dict__.update(state)
        if model_file is not None:
            self._model = _native.Model.from_bytes(*model_file)


def _one_of(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _positive(name, value):
    if not (isinstance(value, numbers.Real) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _positive_int(name, value):
    if not (isinstance(value, numbers.Integral) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_class_count(classes):
    if len(classes) < 2:
        raise ValueError(
            f"MLPClassifier needs samples of at least 2 classes; y holds 1 class: {classes[0]!r}"
        )
    if len(classes) > _MAX_CLASSES:
        raise ValueError(f"y holds {len(classes)} classes; fastnn trains at most {_MAX_CLASSES}")
