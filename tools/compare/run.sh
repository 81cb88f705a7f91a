#!/bin/sh
# One command for the whole comparison: builds fastnn and the Rust peers
# (candle, burn), installs the Python peers (PyTorch, numpy) from PyPI into a
# virtual environment under target/compare, then runs every workload, batch
# size and thread count back to back and prints the table.
#
#   tools/compare/run.sh                  # everything (once built, about 30 minutes on 2 cores for the f32 peers, more with the bf16 ones)
#   tools/compare/run.sh --quick          # W2 at batch 128 only, and the GEMM shapes
#   tools/compare/run.sh --peers fastnn,pytorch,numpy,candle,burn   # f32 only, without fastnn-bf16 and pytorch-bf16
#   tools/compare/run.sh --help           # the options of compare.py
#
# A peer that cannot be built or installed is reported as such in the table.
# Results: target/compare/results.json and target/compare/results.md.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=target/compare
mkdir -p "$out"
log="$out/setup.log"
: >"$log"

echo "building fastnn (release)..."
cargo build --release --quiet || { echo "fastnn does not build" >&2; exit 1; }

for peer in candle burn; do
    echo "building the $peer peer (first time: several minutes)..."
    if cargo build --release --quiet --manifest-path "tools/compare/$peer/Cargo.toml" \
        --target-dir "$out" >>"$log" 2>&1; then
        rm -f "$out/$peer.unavailable"
    else
        echo "build failed, see $log" >"$out/$peer.unavailable"
    fi
done

# The system's site-packages stay visible, so a machine that already has
# torch does not download it again.
venv="$out/venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$venv" >>"$log" 2>&1 || {
        echo "cannot create a Python virtual environment (python3 -m venv)" >&2
        exit 1
    }
fi
echo "installing the Python peers (numpy, torch) if missing..."
for pkg in numpy safetensors threadpoolctl torch; do
    if "$venv/bin/python" -c "import $pkg" 2>/dev/null; then
        continue
    fi
    "$venv/bin/python" -m pip install --quiet "$pkg" >>"$log" 2>&1 ||
        echo "pip install $pkg failed, see $log" >&2
done

exec "$venv/bin/python" tools/compare/compare.py --out "$out" "$@"
