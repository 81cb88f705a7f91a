"""The BLAS behind numpy reads its thread count once, when numpy is first
imported, so a script must set it from its `--threads` argument before
that import: `blas_threads.set_from_argv(default)`, then `import numpy`."""
import os
import sys


def set_from_argv(default):
    threads = str(default)
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            threads = argv[i + 1]
        elif a.startswith("--threads="):
            threads = a.split("=", 1)[1]
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads
