"""fastnn.MLPClassifier: learning, inputs and their errors, determinism,
pickling, scikit-learn's tools, partial_fit, the GIL and Ctrl-C."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

import fastnn
from fastnn import MLPClassifier, _native

SMALL = dict(hidden_layer_sizes=(32,), epochs=8, random_state=3, threads=2)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.25, random_state=0)


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))


def test_the_default_estimator_learns_digits(digits):
    Xtr, Xte, ytr, yte = digits
    clf = MLPClassifier(random_state=1).fit(Xtr, ytr)
    assert clf.score(Xte, yte) > 0.95
    assert clf.n_iter_ == 12 and len(clf.loss_curve_) == 12
    assert clf.loss_curve_[-1] < clf.loss_curve_[0] / 10
    proba = clf.predict_proba(Xte)
    assert proba.shape == (len(Xte), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    log_proba = clf.predict_log_proba(Xte)
    assert np.all(np.isfinite(log_proba))
    np.testing.assert_allclose(np.exp(log_proba), proba, rtol=1e-12)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(Xte))
    assert [w.shape for w in clf.coefs_] == [(64, 512), (512, 256), (256, 10)]
    assert [b.shape for b in clf.intercepts_] == [(512,), (256,), (10,)]


def test_labels_of_any_type_come_back_as_given(digits):
    Xtr, Xte, ytr, yte = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = MLPClassifier(**SMALL).fit(Xtr, names[ytr])
    assert list(clf.classes_) == sorted(names)
    pred = clf.predict(Xte)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert clf.score(Xte, names[yte]) > 0.9
    # Integers that are not 0..k-1, and the same net on them.
    odd = MLPClassifier(**SMALL).fit(Xtr, ytr * 7 - 3)
    assert list(odd.classes_) == list(np.arange(10) * 7 - 3)
    plain = MLPClassifier(**SMALL).fit(Xtr, ytr)
    assert np.array_equal((odd.predict(Xte) + 3) // 7, plain.predict(Xte))


def test_every_input_layout_trains_the_same_network(digits):
    Xtr, Xte, ytr, _ = digits
    ref = MLPClassifier(**SMALL).fit(Xtr, ytr)
    for X in (Xtr.astype(np.float64), np.asfortranarray(Xtr), Xtr.tolist(), Xtr.astype(np.int64)):
        assert same_weights(ref, MLPClassifier(**SMALL).fit(X, ytr))
    # Bytes are read as bytes (the digits are 0..16): the same values, the
    # same statistics, the same network.
    assert same_weights(ref, MLPClassifier(**SMALL).fit(Xtr.astype(np.uint8), ytr))


def test_float32_c_contiguous_input_is_read_in_place(digits, monkeypatch):
    Xtr, _, ytr, _ = digits
    seen = []
    real_fit = _native.fit

    def spy(X, *args):
        seen.append(_native.features_address(X))
        return real_fit(X, *args)

    monkeypatch.setattr(_native, "fit", spy)
    X = np.ascontiguousarray(Xtr, dtype=np.float32)
    MLPClassifier(**SMALL).fit(X, ytr)
    assert seen == [X.ctypes.data]
    # A float64 array is converted, once, to float32.
    MLPClassifier(**SMALL).fit(X.astype(np.float64), ytr)
    assert seen[1] != X.ctypes.data


def test_a_dataframe_gives_feature_names(digits):
    pd = pytest.importorskip("pandas")
    Xtr, Xte, ytr, _ = digits
    cols = [f"pixel{i}" for i in range(Xtr.shape[1])]
    clf = MLPClassifier(**SMALL).fit(pd.DataFrame(Xtr, columns=cols), pd.Series(ytr))
    assert list(clf.feature_names_in_) == cols
    assert clf.n_features_in_ == 64
    plain = MLPClassifier(**SMALL).fit(Xtr, ytr)
    assert np.array_equal(clf.predict(pd.DataFrame(Xte, columns=cols)), plain.predict(Xte))
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(pd.DataFrame(Xte, columns=cols[::-1]))


@pytest.mark.parametrize(
    "X, y, message",
    [
        ([[0.0, np.nan], [1.0, 2.0]], [0, 1], "NaN"),
        ([[0.0, np.inf], [1.0, 2.0]], [0, 1], "infinity"),
        ([0.0, 1.0, 2.0], [0, 1, 0], "Expected 2D array"),
        ([[0.0], [1.0]], [0, 1, 1], "inconsistent numbers of samples"),
        ([[0.0], [1.0], [2.0]], [5, 5, 5], "at least 2 classes; y holds 1 class: np.int64\\(5\\)"),
        ([[0.0], [1.0]], [0.5, 1.5], "Unknown label type"),
        (np.zeros((300, 2)), np.arange(300), "300 classes; fastnn trains at most 256"),
    ],
)
@pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")
def test_bad_input_is_refused_with_a_clear_error(X, y, message):
    with pytest.raises(ValueError, match=message):
        MLPClassifier(**SMALL).fit(X, y)


def test_a_diverging_run_says_what_to_change(digits):
    Xtr, _, ytr, _ = digits
    clf = MLPClassifier(**dict(SMALL, learning_rate=1e9))
    with pytest.raises(RuntimeError, match=r"training diverged: .*try a lower learning_rate$"):
        clf.fit(Xtr * 1e30, ytr)


@pytest.mark.parametrize(
    "param, value, message",
    [
        ("hidden_layer_sizes", (10, 0), "hidden_layer_sizes must be positive integers"),
        ("activation", "swish", "activation must be one of"),
        ("optimizer", "lbfgs", "optimizer must be one of"),
        ("learning_rate", -1.0, "learning_rate must be a positive number"),
        ("dropout", 1.0, "dropout must be in"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("epochs", 2.5, "epochs must be an integer >= 1"),
        ("schedule", "linear", "unknown schedule \"linear\" \\(constant, cosine or step"),
        ("norm", "group", "norm must be one of"),
    ],
)
def test_bad_parameters_are_refused_at_fit(digits, param, value, message):
    Xtr, _, ytr, _ = digits
    clf = MLPClassifier(**SMALL).set_params(**{param: value})
    with pytest.raises(ValueError, match=message):
        clf.fit(Xtr, ytr)


def test_a_fixed_random_state_gives_the_same_bits_on_any_thread_count(digits):
    Xtr, _, ytr, _ = digits
    params = dict(SMALL, dropout=0.1)
    a = MLPClassifier(**dict(params, threads=1)).fit(Xtr, ytr)
    b = MLPClassifier(**dict(params, threads=2)).fit(Xtr, ytr)
    c = MLPClassifier(**dict(params, threads=3)).fit(Xtr, ytr)
    assert same_weights(a, b) and same_weights(a, c)
    assert a.loss_curve_ == b.loss_curve_
    d = MLPClassifier(**dict(params, random_state=4)).fit(Xtr, ytr)
    assert not same_weights(a, d)


def test_pickle_round_trip_keeps_predictions_and_parameters(digits):
    Xtr, Xte, ytr, _ = digits
    clf = MLPClassifier(**SMALL).fit(Xtr, ytr)
    back = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(back.predict_proba(Xte), clf.predict_proba(Xte))
    assert back.get_params() == clf.get_params()
    assert back.loss_curve_ == clf.loss_curve_
    assert same_weights(back, clf)


def test_get_and_set_params_follow_the_conventions():
    clf = MLPClassifier()
    assert clf.get_params()["hidden_layer_sizes"] == (512, 256)
    assert clf.get_params()["learning_rate"] is None
    clf.set_params(epochs=3, learning_rate=0.1)
    assert clf.epochs == 3 and clf.learning_rate == 0.1


def test_pipeline_cross_validation_and_grid_search(digits):
    Xtr, Xte, ytr, yte = digits
    pipe = make_pipeline(MinMaxScaler(), MLPClassifier(**SMALL))
    scores = cross_val_score(pipe, Xtr, ytr, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85
    grid = GridSearchCV(
        MLPClassifier(**SMALL), {"hidden_layer_sizes": [(8,), (64,)], "epochs": [1, 8]}, cv=3
    ).fit(Xtr, ytr)
    assert grid.best_params_ == {"hidden_layer_sizes": (64,), "epochs": 8}
    assert grid.score(Xte, yte) > 0.9


def _saved(clf, tmp_path):
    path = tmp_path / "model.safetensors"
    clf.save(path)
    return path


def test_partial_fit_goes_on_from_where_it_stopped(digits, tmp_path):
    Xtr, Xte, ytr, yte = digits
    params = dict(SMALL, schedule="constant")
    clf = MLPClassifier(**params)
    with pytest.raises(ValueError, match="classes must be given"):
        clf.partial_fit(Xtr, ytr)
    halves = np.array_split(np.arange(len(ytr)), 2)
    for epoch in range(4):
        for h in halves:
            clf.partial_fit(Xtr[h], ytr[h], classes=np.arange(10))
    assert clf.n_iter_ == 8 and len(clf.loss_curve_) == 8
    assert clf.score(Xte, yte) > 0.9
    # The optimiser's state carries over: the same calls from a fresh
    # estimator give the same bits, and a model that restarted its momentum
    # at each call would not.
    again = MLPClassifier(**params)
    for epoch in range(4):
        for h in halves:
            again.partial_fit(Xtr[h], ytr[h], classes=np.arange(10))
    assert same_weights(clf, again)
    # A pickled estimator goes on as the original does.
    back = pickle.loads(pickle.dumps(clf))
    clf.partial_fit(Xtr, ytr)
    back.partial_fit(Xtr, ytr)
    assert same_weights(clf, back)
    # A model loaded from a model file has no optimiser state to go on from.
    loaded = fastnn.load_model(_saved(clf, tmp_path))
    with pytest.raises(ValueError, match="no optimiser state"):
        loaded.partial_fit(Xtr, ytr)
    with pytest.raises(ValueError, match="not in classes"):
        clf.partial_fit(Xtr[:5], np.full(5, 11))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(Xtr[:5, :10], ytr[:5])


def test_partial_fit_once_equals_fit_for_one_constant_epoch(digits):
    Xtr, _, ytr, _ = digits
    fitted = MLPClassifier(**dict(SMALL, epochs=1, schedule="constant")).fit(Xtr, ytr)
    partial = MLPClassifier(**SMALL).partial_fit(Xtr, ytr, classes=np.unique(ytr))
    assert same_weights(fitted, partial)


def test_early_stopping_holds_out_a_stratified_validation_set(digits):
    Xtr, Xte, ytr, yte = digits
    order = np.argsort(ytr, kind="stable")  # sorted labels: the end is all 9s
    clf = MLPClassifier(**dict(SMALL, epochs=30, early_stopping=True, n_iter_no_change=3))
    clf.fit(Xtr[order], ytr[order])
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ > 0.9
    assert clf.score(Xte, yte) > 0.9
    clf.set_params(early_stopping=False).fit(Xtr, ytr)
    assert not hasattr(clf, "validation_scores_")
    assert not hasattr(clf, "best_validation_score_")


def test_verbose_prints_one_line_per_epoch(digits, capsys):
    Xtr, _, ytr, _ = digits
    MLPClassifier(**dict(SMALL, epochs=3, verbose=True)).fit(Xtr, ytr)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]


def test_training_releases_the_gil():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 200)).astype(np.float32)
    y = rng.integers(0, 10, size=20000)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=count)
    clf = MLPClassifier(hidden_layer_sizes=(512,), epochs=6, random_state=0, threads=1)
    t.start()
    start = time.perf_counter()
    clf.fit(X, y)
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    during = [x for x in ticks if start < x < start + elapsed]
    # A thread waiting for the GIL through the whole fit would tick about
    # once; a free one ticks up to 1000 times a second (sleeps of 1 ms),
    # and at least 20 a second on a machine busy with other work.
    assert elapsed > 0.2, elapsed
    assert len(during) > 20 * elapsed, (len(during), elapsed)


CTRL_C = textwrap.dedent(
    """
    import sys, numpy as np
    from fastnn import MLPClassifier
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40000, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=40000)
    def started(epoch, *rest):
        print("epoch", epoch, flush=True)
    clf = MLPClassifier(hidden_layer_sizes=(512,), epochs=1000, random_state=0, threads=1)
    clf._print_epoch = started
    clf.verbose = True
    try:
        clf.fit(X, y)
    except KeyboardInterrupt:
        print("interrupted after", clf.n_iter_, "epochs;", clf.predict(X[:3]).shape, flush=True)
        sys.exit(0)
    print("not interrupted", flush=True)
    sys.exit(1)
    """
)


def test_ctrl_c_stops_training_cleanly_and_keeps_the_model():
    # As from a terminal or a notebook: SIGINT at its default, whatever this
    # process inherited (a shell's background job ignores it, and Python
    # then installs no KeyboardInterrupt handler).
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("epoch 1"), first + proc.stderr.read()
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        stopped = time.perf_counter() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    # It stopped inside the second epoch, after the current step (an epoch
    # of 40,000 samples takes about a second on one thread), and the
    # estimator predicts with the weights reached.
    assert "interrupted after 1 epochs; (3,)" in out, out
    assert stopped < 5.0, stopped


def test_save_and_load_model_round_trip(digits, tmp_path):
    Xtr, Xte, ytr, _ = digits
    clf = MLPClassifier(**dict(SMALL, norm="batch")).fit(Xtr, ytr)
    path = tmp_path / "model.safetensors"
    clf.save(path)
    back = fastnn.load_model(path)
    assert np.array_equal(back.predict_proba(Xte), clf.predict_proba(Xte))
    assert list(back.classes_) == [str(c) for c in clf.classes_]
    assert back.n_features_in_ == 64 and back.hidden_layer_sizes == (32,)
    with pytest.raises(OSError, match="cannot read"):
        fastnn.load_model(tmp_path / "missing.safetensors")


def test_open_dataset_maps_the_file_without_copying(tmp_path, digits):
    Xtr, _, ytr, _ = digits
    path = tmp_path / "digits.safetensors"
    fastnn.write_dataset(path, Xtr, ytr)
    ds = fastnn.open_dataset(path)
    X, y = ds.split("train")
    assert ds.classes == [str(c) for c in range(10)] and ds.sample_shape == [64]
    assert X.dtype == np.float32 and np.array_equal(X, Xtr)
    assert np.array_equal(y, ytr)
    assert isinstance(X.base, np.memmap) or isinstance(X.base.base, np.memmap)
    assert not X.flags.writeable and not X.flags.owndata
    with pytest.raises(KeyError, match="no split 'test'"):
        ds.split("test")
    # A corrupted file is refused before any view is made.
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        fastnn.open_dataset(path)
