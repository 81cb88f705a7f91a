"""fastnn: multi-layer perceptrons trained on the CPU, as scikit-learn
estimators.

    from fastnn import MLPClassifier
    clf = MLPClassifier(random_state=1).fit(X_train, y_train)
    clf.score(X_test, y_test)

The engine is the fastnn library (the ``fastnn`` command's): the same
kernels, threads and bit-for-bit determinism for a given ``random_state``.
Model files and dataset files are the command's too: see ``load_model``,
``MLPClassifier.save``, ``open_dataset`` and ``write_dataset``.
"""

from ._classifier import MLPClassifier
from ._files import DatasetFile, load_model, open_dataset, write_dataset

__all__ = ["MLPClassifier", "DatasetFile", "load_model", "open_dataset", "write_dataset"]
__version__ = "0.1.0"
