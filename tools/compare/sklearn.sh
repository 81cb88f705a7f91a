#!/bin/sh
# fastnn.MLPClassifier beside scikit-learn's MLPClassifier and a plain
# PyTorch loop (see sklearn_compare.py): installs the Python package from
# this checkout, scikit-learn and torch from PyPI into a virtual environment
# under target/compare, then prints the table (also written to
# target/compare/sklearn.md and sklearn.json).
#
#   tools/compare/sklearn.sh                       # digits and Fashion-MNIST, 2 threads
#   tools/compare/sklearn.sh --threads 1
#   tools/compare/sklearn.sh --torch-python /path/to/python   # a Python that already has torch
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=target/compare/sklearn-venv
log=target/compare/sklearn-setup.log
mkdir -p target/compare
: >"$log"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >>"$log" 2>&1
fi
echo "installing fastnn (building the wheel), scikit-learn and threadpoolctl..."
"$venv/bin/python" -m pip install --quiet ./python scikit-learn threadpoolctl >>"$log" 2>&1 ||
    { echo "pip install failed, see $log" >&2; exit 1; }
case " $* " in
*" --torch-python "*) ;;
*)
    # torch is a large download: a failure leaves the PyTorch row
    # "unavailable" rather than stopping the comparison.
    "$venv/bin/python" -c "import torch" 2>/dev/null ||
        "$venv/bin/python" -m pip install --quiet torch >>"$log" 2>&1 ||
        echo "pip install torch failed, see $log" >&2
    ;;
esac
exec "$venv/bin/python" tools/compare/sklearn_compare.py "$@"
