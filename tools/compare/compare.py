#!/usr/bin/env python3
"""Runs fastnn and its peers back to back on the same workloads and prints one
table. Started by tools/compare/run.sh, which builds and installs the peers.

Training: W1 (50,000 CIFAR-shaped random samples, 3072-1024-512-10) and W2
(Fashion-MNIST, 784-512-256-10), SGD with momentum 0.9, at each batch size and
thread count. fastnn runs first and writes the dataset file; every peer then
trains on that same file (see peer_common.py). Each program reports images/s
as the median of its epochs after a warm-up epoch, and its loss in the first
and last epoch; this script measures each process's peak resident memory.

Mixed precision: the peers fastnn-bf16 (`fastnn bench train --precision
bf16`) and pytorch-bf16 (torch_train.py under torch.autocast) train with bf16
operands, f32 accumulation and f32 master weights. The main table puts fastnn
f32 against the f32 peers; a second one puts fastnn bf16 against fastnn f32,
PyTorch eager and PyTorch bf16 autocast.

GEMM: the shapes of `fastnn bench gemm` (training shapes and squares), fastnn
and matrixmultiply from that command, numpy and PyTorch from gemm_peers.py.
With the bf16 peers, also `fastnn bench gemm --precision bf16` and PyTorch's
matmul on bf16 tensors.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "tools", "compare")
FASTNN = os.path.join(ROOT, "target", "release", "fastnn")
HIDDEN = {"w1": "1024,512", "w2": "512,256"}
PEERS = ["fastnn", "pytorch", "numpy", "candle", "burn", "fastnn-bf16", "pytorch-bf16"]
BF16_PEERS = ("fastnn-bf16", "pytorch-bf16")
TITLES = {
    "fastnn": "fastnn",
    "pytorch": "PyTorch eager",
    "numpy": "numpy (tutorial)",
    "candle": "candle",
    "burn": "burn",
    "fastnn-bf16": "fastnn bf16",
    "pytorch-bf16": "PyTorch bf16 autocast",
}


def run(cmd, env=None, timeout=3600):
    """Runs cmd; returns (exit code, stdout, stderr, peak RSS in bytes)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        try:
            # wait4 gives this child's own resource usage; waiting through
            # Popen would reap it and lose that.
            _, status, usage = os.wait4(p.pid, 0)
        except KeyboardInterrupt:
            p.kill()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024


def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


class Peers:
    """Which peers can run here, and the command line of each."""

    def __init__(self, out_dir, wanted):
        self.out_dir = out_dir
        self.missing = {}
        for peer in wanted:
            why = self.why_missing(peer)
            if why:
                self.missing[peer] = why
        self.available = [p for p in wanted if p not in self.missing]

    def why_missing(self, peer):
        if peer == "fastnn":
            return None if os.path.exists(FASTNN) else "target/release/fastnn not built"
        if peer == "fastnn-bf16":
            if not os.path.exists(FASTNN):
                return "target/release/fastnn not built"
            code = subprocess.run([FASTNN, "bench", "train", "--help"], capture_output=True, text=True)
            return None if "--precision" in code.stdout else "this fastnn has no `bench train --precision`"
        if peer in ("pytorch", "pytorch-bf16", "numpy"):
            module = "numpy" if peer == "numpy" else "torch"
            code = subprocess.run([sys.executable, "-c", f"import {module}, safetensors"], capture_output=True)
            return None if code.returncode == 0 else f"python cannot import {module}"
        marker = os.path.join(self.out_dir, f"{peer}.unavailable")
        if os.path.exists(marker):
            return open(marker).read().strip()
        return None if os.path.exists(self.binary(peer)) else f"{self.binary(peer)} not built"

    def binary(self, peer):
        return os.path.join(self.out_dir, "release", f"compare-{peer}")

    def command(self, peer, workload, data, batch, threads, epochs):
        common = ["--data", data, "--hidden", HIDDEN[workload], "--batch", str(batch), "--threads", str(threads), "--epochs", str(epochs)]
        bf16 = ["--precision", "bf16"] if peer in BF16_PEERS else []
        if peer in ("fastnn", "fastnn-bf16"):
            return [FASTNN, "bench", "train", "--workload", workload, "--batch", str(batch), "--threads", str(threads), "--epochs", str(epochs), "--json"] + bf16
        if peer in ("pytorch", "pytorch-bf16"):
            return [sys.executable, os.path.join(HERE, "torch_train.py")] + common + bf16
        if peer == "numpy":
            return [sys.executable, os.path.join(HERE, "numpy_train.py")] + common
        return [self.binary(peer)] + common


def peer_env(threads):
    env = dict(os.environ)
    # Every library that might start a thread pool gets the same count.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = str(threads)
    return env


def train_runs(args, peers, results):
    # Round after round of every configuration and peer, so that a slow
    # minute of the machine falls on every peer of one round alike.
    for round_ in range(args.rounds):
        if args.rounds > 1:
            print(f" round {round_ + 1} of {args.rounds}")
        for workload in args.workloads:
            for batch in args.batches:
                for threads in args.threads:
                    train_configuration(args, peers, results, round_, (workload, batch, threads))


def train_configuration(args, peers, results, round_, configuration):
    """Every peer once on one workload, batch size and thread count."""
    workload, batch, threads = configuration
    data = None
    for peer in peers.available:
        if peer != "fastnn" and data is None:
            continue  # the dataset file comes from fastnn's run
        cmd = peers.command(peer, workload, data, batch, threads, args.epochs)
        print(f"  {workload} batch {batch:>3} threads {threads}  {peer:<12}", end=" ", flush=True)
        code, out, err, rss = run(cmd, env=peer_env(threads))
        row = {"workload": workload, "batch": batch, "threads": threads, "peer": peer, "round": round_, "peak_rss_bytes": rss}
        if code != 0:
            row["error"] = (err.strip().splitlines() or [f"exit {code}"])[-1]
            print(f"failed: {row['error']}")
        else:
            row.update(last_json_line(out))
            row["peak_rss_bytes"] = rss
            row["peer"] = peer  # torch_train.py says "pytorch" at either precision
            if peer == "fastnn":
                data = row["dataset"]
            print(f"{row['images_per_sec']:>9,.0f} images/s  loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}  peak RSS {rss / 1e6:,.0f} MB")
        results["train"].append(row)
        save(args, results)


def gemm_runs(args, peers, results):
    for threads in args.threads:
        gemm_f32(peers, results, threads)
        # `bench gemm --precision bf16` needs no `bench train --precision`:
        # the bf16 products run whenever fastnn-bf16 was asked for.
        if "fastnn-bf16" in peers.available or "fastnn-bf16" in peers.missing:
            gemm_bf16(peers, results, threads)
        save(args, results)


def shapes_arg(shapes):
    return ",".join(f"{s['m']}x{s['k']}x{s['n']}:{s['trans']}" for s in shapes)


def gemm_peer(peer, threads, shapes, dtype="f32"):
    """gemm_peers.py's row for peer ("numpy", "pytorch" or "pytorch-bf16")."""
    print(f"  gemm, {threads} thread(s): {peer}", flush=True)
    cmd = [sys.executable, os.path.join(HERE, "gemm_peers.py"), "--peer", "numpy" if peer == "numpy" else "torch", "--threads", str(threads), "--shapes", shapes, "--dtype", dtype]
    code, out, err, _ = run(cmd, env=peer_env(threads))
    row = {"threads": threads, "peer": peer}
    if code != 0:
        row["error"] = (err.strip().splitlines() or [f"exit {code}"])[-1]
    else:
        row.update(last_json_line(out))
        row["peer"] = peer  # gemm_peers.py says "torch"
    return row


def gemm_f32(peers, results, threads):
    print(f"  gemm, {threads} thread(s): fastnn and matrixmultiply", flush=True)
    code, out, err, _ = run([FASTNN, "bench", "gemm", "--threads", str(threads), "--json"])
    if code != 0:
        results["gemm"].append({"threads": threads, "peer": "fastnn", "error": err.strip()})
        return
    report = json.loads(out)
    results["gemm"].append({"threads": threads, "peer": "fastnn", **report})
    shapes = shapes_arg(r["shape"] for r in report["results"])
    for peer in ("numpy", "pytorch"):
        if peer in peers.available:
            results["gemm"].append(gemm_peer(peer, threads, shapes))


def gemm_bf16(peers, results, threads):
    print(f"  gemm bf16, {threads} thread(s): fastnn", flush=True)
    code, out, err, _ = run([FASTNN, "bench", "gemm", "--precision", "bf16", "--threads", str(threads), "--json"])
    if code != 0:
        results["gemm"].append({"threads": threads, "peer": "fastnn-bf16", "error": (err.strip().splitlines() or [f"exit {code}"])[-1]})
        return
    report = json.loads(out)
    results["gemm"].append({"threads": threads, "peer": "fastnn-bf16", **report})
    if "pytorch-bf16" in peers.available:
        results["gemm"].append(gemm_peer("pytorch-bf16", threads, shapes_arg(r["shape"] for r in report["rows"]), "bf16"))


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version()}


def save(args, results):
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


def fmt_int(x):
    return f"{x:,.0f}"


def run_peaks(results):
    """One FMA peak per thread count for the whole run: the median of every
    measurement fastnn made during it (each `bench train` and `bench gemm`
    measures its own), so that every table and ratio uses the same figure."""
    found = {}
    for r in results["train"] + results["gemm"]:
        if r.get("peer") == "fastnn" and r.get("peak_gflops"):
            found.setdefault(r["threads"], []).append(r["peak_gflops"])
    return {t: statistics.median(v) for t, v in found.items()}


def medians(train):
    """One row per workload, batch size, thread count and peer: the run with
    the median images/s over the rounds (the lower middle one of an even
    count). A configuration that failed in every round keeps its failed
    row."""
    groups = {}
    for r in train:
        groups.setdefault((r["workload"], r["batch"], r["threads"], r["peer"]), []).append(r)
    out = []
    for rows in groups.values():
        good = sorted((r for r in rows if "error" not in r), key=lambda r: r["images_per_sec"])
        if not good:
            out.append(rows[0])
            continue
        out.append(good[(len(good) - 1) // 2])
    return out


def speedup(train, a, b):
    """a's images/s over b's (each a (workload, batch, threads, peer) key),
    paired by round: (median, lowest, highest) over the rounds that ran
    both, or None."""
    per_round = {}
    for r in train:
        key = (r["workload"], r["batch"], r["threads"], r["peer"])
        if "error" not in r and key in (a, b):
            per_round.setdefault(r.get("round", 0), {})[key] = r["images_per_sec"]
    ratios = sorted(d[a] / d[b] for d in per_round.values() if a in d and b in d)
    return (statistics.median(ratios), ratios[0], ratios[-1]) if ratios else None


def fmt_ratio(ratio):
    median, low, high = ratio
    return f"{median:.2f}×" if low == high else f"{median:.2f}×, {low:.2f}–{high:.2f}"


def markdown(results):
    """The tables of BENCHMARKS.md."""
    lines = []
    runs = results["train"]
    train = medians(runs)
    rounds = 1 + max((r.get("round", 0) for r in runs), default=0)
    peers = [p for p in PEERS if any(r["peer"] == p for r in train)] or PEERS
    missing = results.get("missing", {})
    peaks = run_peaks(results)
    m = results["machine"]
    peak_text = ", ".join(f"{peaks[t]:.0f} GFLOP/s on {t} thread(s)" for t in sorted(peaks))
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores" + (f"; measured FMA peak {peak_text}" if peaks else "") + f". Run {results['date']}.")
    lines.append("")
    if missing:
        for p, why in missing.items():
            lines.append(f"- **{TITLES[p]}: not run** ({why}).")
        lines.append("")
    if train:
        bf16_note = "; the bf16 columns' ratios are in the next table" if any(p in BF16_PEERS for p in peers) else ""
        lines.append(f"Training throughput, images/s (median of the epochs after a warm-up); in brackets fastnn's speed-up over the f32 peer{bf16_note}.")
        lines.append("")
        if rounds > 1:
            lines.append(
                f"Each figure is the median of {rounds} rounds run one after another, every peer once a round; "
                "a speed-up is the median of the rounds' own ratios (each round's runs are minutes apart), "
                "then the lowest and the highest of them."
            )
            lines.append("")
        lines.append("| workload | batch | threads | " + " | ".join(TITLES[p] for p in peers) + " | loss falls |")
        lines.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in peers) + " | --- |")
        keys = sorted({(r["workload"], r["batch"], r["threads"]) for r in train})
        for w, b, t in keys:
            rows = {r["peer"]: r for r in train if (r["workload"], r["batch"], r["threads"]) == (w, b, t)}
            cells, learners = [], []
            for p in peers:
                r = rows.get(p)
                if r is None:
                    cells.append("—")
                elif "error" in r:
                    cells.append("failed")
                else:
                    v = r["images_per_sec"]
                    like = p != "fastnn" and p not in BF16_PEERS
                    ratio = like and speedup(runs, (w, b, t, "fastnn"), (w, b, t, p))
                    cells.append(f"{fmt_int(v)} ({fmt_ratio(ratio)})" if ratio else fmt_int(v))
                    learners.append(r["loss_last"] < r["loss_first"])
            falls = "yes" if learners and all(learners) else "**no**"
            lines.append(f"| {w.upper()} | {b} | {t} | " + " | ".join(cells) + f" | {falls} |")
        lines.append("")
        lines += bf16_table(train, runs, keys)
        scaling = []
        for w in sorted({r["workload"] for r in train}):
            for b in sorted({r["batch"] for r in train}):
                ratio = speedup(runs, (w, b, 2, "fastnn"), (w, b, 1, "fastnn"))
                if ratio:
                    scaling.append(f"{w.upper()} batch {b}: {fmt_ratio(ratio)}")
        if scaling:
            lines.append("fastnn's scaling from 1 to 2 threads: " + ", ".join(scaling) + ".")
            lines.append("")
        lines.append("Peak resident memory of each process, MB (batch 128, most threads run); fastnn's split into anonymous and file-backed pages (the mapped dataset file and the binary) at the end of its last epoch.")
        lines.append("")
        lines.append("| workload | " + " | ".join(TITLES[p] for p in peers) + " | fastnn anonymous | fastnn file-backed |")
        lines.append("| --- | " + " | ".join("---:" for _ in peers) + " | ---: | ---: |")
        for w in sorted({r["workload"] for r in train}):
            rows = [r for r in train if r["workload"] == w and r["batch"] == 128]
            if not rows:
                continue
            t = max(r["threads"] for r in rows)
            by = {r["peer"]: r for r in rows if r["threads"] == t}
            cells = [fmt_int(by[p]["peak_rss_bytes"] / 1e6) if p in by and "error" not in by[p] else "—" for p in peers]
            f = by.get("fastnn", {})
            anon = fmt_int(f["rss_anon_bytes"] / 1e6) if f.get("rss_anon_bytes") else "—"
            file_ = fmt_int(f["rss_file_bytes"] / 1e6) if f.get("rss_file_bytes") else "—"
            lines.append(f"| {w.upper()} | " + " | ".join(cells) + f" | {anon} | {file_} |")
        lines.append("")
        versions = {}
        for r in train:
            if "error" not in r and not r["peer"].startswith("fastnn"):
                versions[r["peer"]] = f"{r['version']}; matrix products: {r['backend']}"
        isa = next((r["isa"] for r in train if r["peer"] == "fastnn" and "isa" in r), "?")
        lines.append(f"- fastnn: its own GEMM, kernel {isa}.")
        if "fastnn-bf16" in peers:
            lines.append(f"- {TITLES['fastnn-bf16']}: `--precision bf16`, bf16 operands, f32 accumulation and f32 master weights.")
        for p in peers:
            if p in versions:
                lines.append(f"- {TITLES[p]}: {versions[p]}.")
        lines.append("")
    gemm = results["gemm"]
    for threads in sorted({g["threads"] for g in gemm}):
        rows = {g["peer"]: g for g in gemm if g["threads"] == threads and "error" not in g}
        lines += gemm_f32_table(rows, threads, peaks) + gemm_bf16_table(rows, threads)
    return "\n".join(lines)


def bf16_table(train, runs, keys):
    """fastnn bf16 against fastnn f32, PyTorch eager and PyTorch bf16
    autocast: `train` one row per peer (`medians`), `runs` every round's."""
    if not any(r["peer"] == "fastnn-bf16" for r in train):
        return []
    against = {"fastnn": "fastnn f32", "pytorch": "PyTorch eager (f32)", "pytorch-bf16": "PyTorch bf16 autocast"}
    lines = [
        "Mixed precision: fastnn bf16's images/s, its speed-up over each of these, and fastnn's loss in the last epoch at each precision.",
        "",
        "| workload | batch | threads | fastnn bf16 | " + " | ".join(f"over {t}" for t in against.values()) + " | fastnn loss, f32 / bf16 |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in against) + " | ---: |",
    ]
    for w, b, t in keys:
        here = [r for r in train if (r["workload"], r["batch"], r["threads"]) == (w, b, t)]
        rows = {r["peer"]: r for r in here if "error" not in r}
        ours = rows.get("fastnn-bf16")
        if ours is None:
            failed = any(r["peer"] == "fastnn-bf16" for r in here)
            cells = ["failed" if failed else "—"] + ["—" for _ in against] + ["—"]
        else:
            ratios = [speedup(runs, (w, b, t, "fastnn-bf16"), (w, b, t, p)) for p in against]
            cells = [fmt_int(ours["images_per_sec"])] + [fmt_ratio(r) if r else "—" for r in ratios]
            f32_loss = f"{rows['fastnn']['loss_last']:.3f}" if "fastnn" in rows else "—"
            cells.append(f"{f32_loss} / {ours['loss_last']:.3f}")
        lines.append(f"| {w.upper()} | {b} | {t} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def gemm_f32_table(rows, threads, peaks):
    lines = []
    ours = rows.get("fastnn")
    if not ours:
        return lines
    peak = peaks.get(threads, ours["peak_gflops"])
    lines.append(f"GEMM, {threads} thread(s), GFLOP/s (median); measured FMA peak {peak:.0f} GFLOP/s (the run's, above).")
    lines.append("")
    others = [p for p in ("numpy", "pytorch") if p in rows]
    lines.append("| shape | fastnn | % of peak | matrixmultiply | " + " | ".join(f"{p} ({rows[p]['blas']})" for p in others) + " |")
    lines.append("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in others) + " |")
    for i, r in enumerate(ours["results"]):
        s = r["shape"]
        cells = [f"{rows[p]['results'][i]['gflops']:.1f}" for p in others]
        pct = 100 * r["fastnn_gflops"] / peak
        panels = " (fastnn: W in panels, as the step keeps it)" if s.get("panels") else ""
        lines.append(f"| {s['m']}×{s['k']}×{s['n']} {s['trans']}{panels} | {r['fastnn_gflops']:.1f} | {pct:.0f} % | {r['matrixmultiply_gflops']:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def gemm_bf16_table(rows, threads):
    """`bench gemm --precision bf16` beside PyTorch's matmul on bf16 tensors."""
    ours = rows.get("fastnn-bf16")
    if not ours:
        return []
    torch = rows.get("pytorch-bf16")
    peak = ours.get("bf16_peak_gflops")
    kernel = ours["rows"][0]["kernel"] if ours["rows"] else "?"
    peak_text = f"measured bf16 peak {peak:.0f} GFLOP/s" if peak else "no bf16 peak (the CPU has no bf16 instruction)"
    lines = [
        f"GEMM bf16, {threads} thread(s), GFLOP/s (median); {peak_text}. fastnn bf16 (kernel {kernel}) multiplies bf16 operands with f32 sums into an f32 C; "
        + "the training shapes run as the step runs them: the weights' bf16 copy packed beforehand (NT, NN), the activations rounded as they are packed, "
        + "a weight gradient (TN) written into the weights' panels; fastnn f32 is its f32 product of the same operands, the weights in panels"
        + ("; PyTorch multiplies bf16 tensors into a bf16 C, converted before the clock starts." if torch else "."),
        "",
    ]
    head = "| shape | fastnn bf16 | % of bf16 peak | fastnn f32 | bf16 / f32 |"
    rule = "| --- | ---: | ---: | ---: | ---: |"
    if torch:
        head += f" PyTorch bf16 ({torch['blas']}) |"
        rule += " ---: |"
    lines += [head, rule]
    theirs = {(r["m"], r["k"], r["n"], r["trans"]): r["gflops"] for r in torch["results"]} if torch else {}
    for r in ours["rows"]:
        s = r["shape"]
        pct = f"{100 * r['bf16_gflops'] / peak:.0f} %" if peak else "—"
        cells = [f"{r['bf16_gflops']:.1f}", pct, f"{r['f32_gflops']:.1f}", f"{r['bf16_gflops'] / r['f32_gflops']:.2f}×"]
        if torch:
            g = theirs.get((s["m"], s["k"], s["n"], s["trans"]))
            cells.append(f"{g:.1f}" if g else "—")
        lines.append(f"| {s['m']}×{s['k']}×{s['n']} {s['trans']} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "compare"))
    ap.add_argument("--workloads", default="w1,w2")
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run, the first a warm-up")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration and peer this many times, round after round; the tables give medians",
    )
    ap.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="fastnn always runs: it writes the dataset files; fastnn-bf16 and pytorch-bf16 train in mixed precision and add the bf16 GEMM runs",
    )
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--quick", action="store_true", help="W2 at batch 128 only, plus the GEMM shapes")
    ap.add_argument("--report", action="store_true", help="only rewrite results.md from the last results.json")
    args = ap.parse_args()
    if args.report:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        for g in results["gemm"]:
            g["peer"] = "pytorch" if g["peer"] == "torch" else g["peer"]
        write_report(args, results)
        return
    if args.quick:
        args.workloads, args.batches = "w2", "128"
    args.workloads = args.workloads.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    wanted = ["fastnn"] + [p for p in args.peers.split(",") if p in PEERS and p != "fastnn"]
    os.makedirs(args.out, exist_ok=True)
    peers = Peers(args.out, wanted)
    if "fastnn" in peers.missing:
        sys.exit(peers.missing["fastnn"])
    for p, why in peers.missing.items():
        print(f"{TITLES[p]}: not run ({why})")
    results = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "missing": peers.missing,
        "train": [],
        "gemm": [],
    }
    if not args.no_train:
        print("training (images/s, median of the epochs after the first):")
        train_runs(args, peers, results)
    if not args.no_gemm:
        print("GEMM:")
        gemm_runs(args, peers, results)
    save(args, results)
    write_report(args, results)


def write_report(args, results):
    md = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print()
    print(md)
    print(f"\n(written to {os.path.join(args.out, 'results.md')} and results.json)")


if __name__ == "__main__":
    main()
