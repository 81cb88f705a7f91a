#!/usr/bin/env bash
# Conversion speed against plain decompression, on a CIFAR-sized tarball.
#
# Builds a CIFAR-10 binary tarball of the real size (5 × 10,000 training and
# 10,000 test records of random pixels, 180 MB raw; random bytes compress as
# little as real photos do), then times, alternately, `gzip -dc` of it and
# `fastnn data convert` of it, and prints the medians and their ratio.
#
#     tools/bench_convert.sh [runs]       (default 5 runs each)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
python3 - "$work" <<'PY'
import io, os, random, sys, tarfile
work = sys.argv[1]
rng = random.Random(0)
def batch(n):
    out = bytearray()
    for _ in range(n):
        out.append(rng.randrange(10))
        out += os.urandom(3072)
    return bytes(out)
with tarfile.open(os.path.join(work, "cifar-10-binary.tar.gz"), "w:gz") as tar:
    members = {f"data_batch_{k}.bin": batch(10000) for k in range(1, 6)}
    members["test_batch.bin"] = batch(10000)
    members["batches.meta.txt"] = "\n".join(
        "airplane automobile bird cat deer dog frog horse ship truck".split()).encode() + b"\n\n"
    for name, data in members.items():
        info = tarfile.TarInfo("cifar-10-batches-bin/" + name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
PY
tarball="$work/cifar-10-binary.tar.gz"
ls -l "$tarball"

time_of() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
gz=(); cv=()
for _ in $(seq "$runs"); do
    gz+=("$(time_of sh -c "gzip -dc '$tarball' > /dev/null")")
    cv+=("$(time_of target/release/fastnn data convert "$tarball" -o "$work/out.safetensors" --force)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
g=$(median "${gz[@]}"); c=$(median "${cv[@]}")
printf 'gzip -dc:        median %.3f s of %s runs\n' "$g" "$runs"
printf 'fastnn convert:  median %.3f s of %s runs\n' "$c" "$runs"
printf 'ratio:           %.2f (target <= 1.3)\n' "$(echo "$c / $g" | bc -l)"
