#!/usr/bin/env python3
"""Builds the seed corpora of the fuzz targets in fuzz/corpus/<target>/.

Seeds come from ../shared/fixtures (pickles, CIFAR tarballs, MNIST IDX and
CSV files) and from files the project writes itself (a dataset file, a model
file and a checkpoint made by the debug binary on a tiny CSV table).

Usage: python3 fuzz/seed.py   (from the repository root, after `cargo build`)
"""
import gzip, io, os, shutil, subprocess, tarfile, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "..", "shared", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")
BIN = os.path.join(ROOT, "target", "debug", "fastnn")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def members(tgz):
    with tarfile.open(os.path.join(FIX, tgz)) as t:
        return {m.name.rsplit("/", 1)[-1]: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def tar_of(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# pickle: the fixture pickles and the meta members of the python tarballs.
for name in os.listdir(FIX):
    if name.endswith(".pkl"):
        put("pickle", name, open(os.path.join(FIX, name), "rb").read())
c10p, c100p = members("cifar-10-python.tar.gz"), members("cifar-100-python.tar.gz")
c10b, c100b = members("cifar-10-binary.tar.gz"), members("cifar-100-binary.tar.gz")
put("pickle", "batches.meta", c10p["batches.meta"])
put("pickle", "meta100", c100p["meta"])

# cifar: selector byte (kind | 4 for a whole tar) + member or tar bytes.
# Kinds as in CifarKind::ALL: 0 c10 python, 1 c10 binary, 2 c100 python, 3 c100 binary.
batch = open(os.path.join(FIX, "tiny_batch_3img.pkl"), "rb").read()
put("cifar", "c10py_batch", b"\x00" + batch)
put("cifar", "c10bin_batch", b"\x01" + c10b["test_batch.bin"][: 2 * 3073])
put("cifar", "c100py_batch", b"\x02" + c100p["test"][:20000])
put("cifar", "c100bin_batch", b"\x03" + c100b["test.bin"][: 2 * 3074])
rec10 = c10b["test_batch.bin"][:3073]
tar10 = {f"cifar-10-batches-bin/data_batch_{k}.bin": rec10 for k in range(1, 6)}
tar10["cifar-10-batches-bin/test_batch.bin"] = rec10
tar10["cifar-10-batches-bin/batches.meta.txt"] = c10b["batches.meta.txt"]
put("cifar", "c10bin_tar", b"\x05" + tar_of(tar10))
rec100 = c100b["test.bin"][:3074]
put("cifar", "c100bin_tar", b"\x07" + tar_of({
    "cifar-100-binary/train.bin": rec100,
    "cifar-100-binary/test.bin": rec100,
    "cifar-100-binary/fine_label_names.txt": c100b["fine_label_names.txt"],
    "cifar-100-binary/coarse_label_names.txt": c100b["coarse_label_names.txt"],
}))
tarpy = {f"cifar-10-batches-py/data_batch_{k}": batch for k in range(1, 6)}
tarpy["cifar-10-batches-py/test_batch"] = batch
tarpy["cifar-10-batches-py/batches.meta"] = c10p["batches.meta"]
put("cifar", "c10py_tar", b"\x04" + tar_of(tarpy))

# idx: the MNIST-tiny files, decompressed, and a small image file.
mn = os.path.join(FIX, "mnist-tiny")
labels = gzip.decompress(open(os.path.join(mn, "train-labels-idx1-ubyte.gz"), "rb").read())
images = gzip.decompress(open(os.path.join(mn, "train-images-idx3-ubyte.gz"), "rb").read())
put("idx", "labels", labels)
put("idx", "images2", images[:4] + (2).to_bytes(4, "big") + images[8:16] + images[16 : 16 + 2 * 784])
put("idx", "tiny3", bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 1, 2, 3, 4]))

# csv: heads of the fixture tables, and small tables of each kind.
for name in ["fashion-mnist_train_tiny.csv", "mnist_train_tiny_noheader.csv"]:
    lines = open(os.path.join(mn, name), "rb").read().split(b"\n")[:4]
    put("csv", name, b"\x00" + b"\n".join(l[:200].rsplit(b",", 1)[0] for l in lines) + b"\n")
put("csv", "named", b"\x02label,a,b\ncat,1.5,2\ndog,-3e2,0.25\n")
put("csv", "plain", b"\x08" + b"1,0.5,0.25\n0,1,2\n2,3,4\n")
put("csv", "quoted", b"\x00" + b'y,"x 1",x2\n"a",1,2\n"b, c",3,4\n')

# tensorfile and checkpoint: files the project writes.
tmp = tempfile.mkdtemp()
table = os.path.join(tmp, "t.csv")
with open(table, "w") as f:
    f.write("".join(f"{i % 3},{i},{i * 0.5},{-i}\n" for i in range(12)))
ds = os.path.join(tmp, "t.safetensors")
subprocess.run([BIN, "data", "convert", table, "-o", ds], check=True, capture_output=True)
run = os.path.join(tmp, "run")
subprocess.run([BIN, "train", "--data", ds, "--hidden", "3", "--epochs", "1", "--batch", "4",
                "--threads", "1", "--validation", "0", "--out", run, "--quiet"], check=True, capture_output=True)
put("tensorfile", "dataset", open(ds, "rb").read())
for name in ["model.safetensors", "checkpoint.safetensors"]:
    data = open(os.path.join(run, name), "rb").read()
    put("tensorfile", name, data)
    put("checkpoint", name, data)
shutil.rmtree(tmp)

# train_config: TOML files.
put("train_config", "full", b"""data = "d.safetensors"
hidden = [512, 256]
activation = "relu"
loss = "xent"
dropout = 0.1
optimizer = "adamw"
lr = 0.001
schedule = "step:5:0.5"
warmup = 100
l2 = 0.0
weight_decay = 0.01
epochs = 12
batch = 128
seed = 7
threads = 2
normalize = "channel"
validation = "0.1"
out = "run"
checkpoint_every = 2
metrics = "m.jsonl"
""")
put("train_config", "sgd", b'optimizer = "sgd"\nmomentum = 0.9\nnesterov = true\nschedule = "cosine"\n')
put("train_config", "empty", b"")
print("seeded", {t: len(os.listdir(os.path.join(OUT, t))) for t in sorted(os.listdir(OUT))})
