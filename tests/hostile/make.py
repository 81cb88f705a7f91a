#!/usr/bin/env python3
"""Generates the hostile corpus: one small malformed file (or folder) per
failure class, plus the valid files they are made from (valid/), and
cases.tsv, the table tests/cli_hostile.rs runs and README.md lists.

Usage, from the repository root after `cargo build`:
    python3 tests/hostile/make.py

Inputs: ../shared/fixtures (CIFAR tarballs, pickles, MNIST-tiny) and the
debug binary, which writes the valid dataset, model and checkpoint. The
output is deterministic except for the valid model/checkpoint bytes, which
depend on the binary's training arithmetic only.
"""
import gzip, io, json, os, shutil, struct, subprocess, tarfile, tempfile, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "..", "shared", "fixtures")
BIN = os.path.join(ROOT, "target", "debug", "fastnn")
CASES = []  # (name, command, expected fragment, failure class)


def case(name, command, fragment, what, data=None, files=None):
    path = os.path.join(HERE, name)
    if files is not None:
        os.makedirs(path, exist_ok=True)
        for n, d in files.items():
            with open(os.path.join(path, n), "wb") as f:
                f.write(d)
    else:
        with open(path, "wb") as f:
            f.write(data)
    CASES.append((name, command, fragment, what))


def gz(data):
    # mtime 0 and a fixed level: the same bytes on every run.
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(data)
    return buf.getvalue()


def tar(entries):
    """entries: list of (name, bytes) or (name, TarInfo-tweaker)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members(tgz):
    with tarfile.open(os.path.join(FIX, tgz)) as t:
        return {m.name.rsplit("/", 1)[-1]: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def safetensors_rewrite(data, edit, fix_crc=True):
    """Parses a safetensors file, lets `edit(header_dict)` change the header,
    recomputes data_crc32 and writes it back padded to 64 bytes."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    edit(header)
    if fix_crc:
        header["__metadata__"]["data_crc32"] = "%08x" % (zlib.crc32(body) & 0xFFFFFFFF)
    text = json.dumps(header, separators=(",", ":"))
    while (8 + len(text)) % 64:
        text += " "
    return struct.pack("<Q", len(text)) + text.encode() + body


for name in os.listdir(HERE):
    p = os.path.join(HERE, name)
    if name not in ("make.py", "README.md"):
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

# ---- valid files --------------------------------------------------------
valid = os.path.join(HERE, "valid")
os.makedirs(valid)
table = os.path.join(valid, "table.csv")
with open(table, "w") as f:
    f.write("label,a,b,c\n" + "".join(f"{i % 3},{i},{i * 0.5},{-i}\n" for i in range(12)))
dataset = os.path.join(valid, "dataset.safetensors")
subprocess.run([BIN, "data", "convert", table, "-o", dataset], check=True, capture_output=True)
run = os.path.join(valid, "run")
subprocess.run([BIN, "train", "--data", dataset, "--hidden", "5", "--epochs", "1", "--batch", "4",
                "--threads", "1", "--validation", "0", "--out", run, "--quiet"], check=True, capture_output=True)
for extra in os.listdir(run):
    if extra not in ("model.safetensors", "checkpoint.safetensors"):
        os.remove(os.path.join(run, extra))
DS = open(dataset, "rb").read()
MODEL = open(os.path.join(run, "model.safetensors"), "rb").read()
CKPT = open(os.path.join(run, "checkpoint.safetensors"), "rb").read()

# ---- CIFAR tarballs -------------------------------------------------------
c100b = members("cifar-100-binary.tar.gz")
raw100 = open(os.path.join(FIX, "cifar-100-binary.tar.gz"), "rb").read()
case("cifar-truncated.tar.gz", "convert", "truncated or corrupt tar.gz archive",
     "tar.gz cut in the middle", raw100[: len(raw100) // 2])
bad_crc = bytearray(raw100)
bad_crc[-8] ^= 0xFF  # the gzip trailer's CRC-32
case("cifar-bad-crc.tar.gz", "convert", "truncated or corrupt tar.gz archive",
     "gzip trailer CRC-32 does not match", bytes(bad_crc))
case("cifar-dotdot.tar.gz", "convert", "member path contains '..'", "tar member path with ..",
     gz(tar([("cifar-100-binary/../../train.bin", c100b["train.bin"][:3074], "file")])))
case("cifar-symlink.tar.gz", "convert", "links are not allowed", "tar member that is a symlink",
     gz(tar([("cifar-100-binary/train.bin", "/etc/passwd", "sym")])))
# A member whose tar header claims 10^12 bytes (GNU base-256 size field).
hdr = tarfile.TarInfo("cifar-100-binary/train.bin")
hdr.size = 10**12
hdr.mtime = 0
case("cifar-huge-member.tar.gz", "convert", "the tar header claims 1000000000000 bytes",
     "tar member size of 10^12 bytes, far more than the archive",
     gz(hdr.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024))

# CIFAR-10 python tarballs with one bad pickle as data_batch_1.
c10p = members("cifar-10-python.tar.gz")
batch = open(os.path.join(FIX, "tiny_batch_3img.pkl"), "rb").read()


def py_tarball(bad):
    files = [(f"cifar-10-batches-py/data_batch_{k}", bad if k == 1 else batch, "file") for k in range(1, 6)]
    files += [("cifar-10-batches-py/test_batch", batch, "file"),
              ("cifar-10-batches-py/batches.meta", c10p["batches.meta"], "file")]
    return gz(tar(files))


forbidden = b"\x80\x02cos\nsystem\nU\x02ls\x85R."
case("pickle-forbidden-global.tar.gz", "convert", "forbidden global os.system",
     "pickle calling a global outside the allow-list", py_tarball(forbidden))
case("pickle-protocol5.tar.gz", "convert", "unsupported pickle protocol 5",
     "pickle protocol 5", py_tarball(open(os.path.join(FIX, "py3_proto5_np1.pkl"), "rb").read()))
case("pickle-truncated-binstring.tar.gz", "convert", "truncated: BINSTRING needs 9216 bytes",
     "pickle cut inside the pixels' BINSTRING", py_tarball(batch[:305]))
case("pickle-huge-binbytes8.tar.gz", "convert", "truncated: BINBYTES8 needs 1000000000000 bytes",
     "pickle BINBYTES8 claiming 10^12 bytes", py_tarball(b"\x80\x04\x8e" + struct.pack("<Q", 10**12) + b"xyz."))

# ---- IDX folders ----------------------------------------------------------
mn = os.path.join(FIX, "mnist-tiny")
labels = gzip.decompress(open(os.path.join(mn, "train-labels-idx1-ubyte.gz"), "rb").read())
images = gzip.decompress(open(os.path.join(mn, "train-images-idx3-ubyte.gz"), "rb").read())
case("idx-bad-magic", "convert", "not an IDX file: bad magic", "IDX magic that is not 00 00 08 03",
     files={"train-images-idx3-ubyte": b"\x1f\x00\x08\x03" + images[4:],
            "train-labels-idx1-ubyte": labels})
case("idx-sizes-larger-than-file", "convert", "sizes disagree with the file length",
     "IDX dimensions needing more bytes than the file has",
     files={"train-images-idx3-ubyte": images[: len(images) - 100],
            "train-labels-idx1-ubyte": labels})
case("idx-huge-count", "convert", "need 3136000000016 bytes",
     "IDX header claiming 4·10^9 images (3·10^12 bytes)",
     files={"train-images-idx3-ubyte": images[:4] + struct.pack(">III", 4_000_000_000, 28, 28) + images[16:1000],
            "train-labels-idx1-ubyte": labels})

# ---- CSV tables -------------------------------------------------------------
case("csv-non-numeric.csv", "convert", "\"abc\" is not a number", "CSV cell that is not a number",
     b"label,a,b\n0,1,2\n1,abc,3\n")
case("csv-ragged.csv", "convert", "line 3: 2 columns, expected 3", "CSV row with fewer cells",
     b"label,a,b\n0,1,2\n1,3\n")
case("csv-nan.csv", "convert", "\"NaN\" is not a finite number", "CSV cell NaN",
     b"label,a,b\n0,1,2\n1,NaN,3\n")

# ---- dataset files ------------------------------------------------------------
case("dataset-truncated.safetensors", "info", "truncated", "dataset file cut short",
     DS[: len(DS) - 64])
flip = bytearray(DS)
flip[-5] ^= 0x01
case("dataset-flipped-byte.safetensors", "info", "corrupted: the data checksum",
     "dataset file with one data bit flipped (CRC-32)", bytes(flip))
n = struct.unpack("<Q", DS[:8])[0]
bad_json = bytearray(DS)
bad_json[8] = ord("[")
case("dataset-bad-json.safetensors", "info", "header is not valid JSON",
     "dataset file whose JSON header is malformed", bytes(bad_json))
case("safetensors-header-too-long.safetensors", "info", "header claims 1000000 bytes",
     "safetensors header length larger than the file", struct.pack("<Q", 10**6) + DS[8:200])


def huge_shape(h):
    h["__metadata__"]["shape"] = "4294967296,4294967296,16"
case("dataset-shape-overflow.safetensors", "info", "more features per sample than memory can address",
     "dataset metadata shape whose product overflows", safetensors_rewrite(DS, huge_shape))

# ---- checkpoints and model files ----------------------------------------------
case("checkpoint-truncated", "resume", "truncated", "checkpoint file cut short",
     files={"checkpoint.safetensors": CKPT[: len(CKPT) // 2], "model.safetensors": MODEL})


def transpose_first(h):
    h["0.weight"]["shape"] = h["0.weight"]["shape"][::-1]
case("model-wrong-shape.safetensors", "eval", "tensor 0.weight has shape [3, 5], expected [5, 3]",
     "model file with a transposed weight", safetensors_rewrite(MODEL, transpose_first))


def huge_dims(h):
    h["__metadata__"]["dims"] = "[100000,100000,3]"
    h["__metadata__"]["input_scale"] = "[]"
case("model-huge-dims.safetensors", "eval", "need 10000400003 parameters",
     "model file claiming 10^10 parameters, refused before allocating",
     safetensors_rewrite(MODEL, huge_dims))

def smoothing_word(h):
    h["__metadata__"]["label_smoothing"] = "often"
case("model-bad-label-smoothing.safetensors", "eval", "metadata label_smoothing is not a number",
     "model file whose label smoothing is not a number", safetensors_rewrite(MODEL, smoothing_word))


def smoothed_mse(h):
    h["__metadata__"]["loss"] = "mse"
    h["__metadata__"]["label_smoothing"] = "0.1"
case("model-smoothed-mse.safetensors", "eval", "label smoothing applies to the xent loss only",
     "model file with label smoothing on a loss other than the cross-entropy",
     safetensors_rewrite(MODEL, smoothed_mse))

def unknown_norm(h):
    h["__metadata__"]["norm"] = "group"
case("model-unknown-norm.safetensors", "eval", "unknown normalisation \"group\"",
     "model file naming a normalisation fastnn does not have", safetensors_rewrite(MODEL, unknown_norm))


def norm_without_tensors(h):
    h["__metadata__"]["norm"] = "batch"
case("model-batchnorm-without-tensors.safetensors", "eval", "need 43 parameters (172 bytes)",
     "model file claiming BatchNorm layers whose tensors it lacks",
     safetensors_rewrite(MODEL, norm_without_tensors))

# ---- TOML configs ----------------------------------------------------------------
case("config-unknown-key.toml", "config", "unknown field `learning_rate`", "TOML config with an unknown key",
     b"epochs = 2\nlearning_rate = 0.1\n")
case("config-wrong-type.toml", "config", "invalid type", "TOML config with a value of the wrong type",
     b"epochs = \"two\"\n")

with open(os.path.join(HERE, "cases.tsv"), "w") as f:
    f.write("# file\tcommand\texpected fragment\tfailure class (generated by make.py)\n")
    for c in CASES:
        f.write("\t".join(c) + "\n")
print(len(CASES), "cases")

COMMANDS = {
    "convert": "`fastnn data convert FILE -o OUT`",
    "info": "`fastnn data info FILE`",
    "eval": "`fastnn eval --model FILE --data valid/dataset.safetensors`",
    "resume": "`fastnn train --resume COPY-OF-FOLDER --data valid/dataset.safetensors`",
    "config": "`fastnn train --config FILE --data valid/dataset.safetensors --out OUT`",
}
readme = [
    "# Hostile corpus",
    "",
    "Small malformed inputs, one per failure class, generated by `make.py` (run it from the "
    "repository root after `cargo build`; it reads `../shared/fixtures` and uses the debug binary "
    "to write the valid files in `valid/` that several cases are made from). `cases.tsv` is the "
    "machine-readable form of the table below. `tests/cli_hostile.rs` runs the real binary on each "
    "case and asserts exit code 1, exactly one line on stderr naming the file and containing the "
    "expected fragment, and that nothing was written (no output file, no temporary file, an "
    "unchanged run folder).",
    "",
    "`valid/` holds a valid dataset file (`dataset.safetensors`, converted from `table.csv`) and a "
    "one-epoch run (`run/model.safetensors`, `run/checkpoint.safetensors`); the property-based "
    "mutation tests (`tests/props.rs`) start from them too.",
    "",
    "| File | Failure class | Command | Expected message fragment |",
    "|---|---|---|---|",
]
for name, command, fragment, what in CASES:
    readme.append(f"| `{name}` | {what} | {COMMANDS[command]} | {fragment} |")
with open(os.path.join(HERE, "README.md"), "w") as f:
    f.write("\n".join(readme) + "\n")
