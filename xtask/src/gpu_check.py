#!/usr/bin/env python3
# gpu_check.py: the GPU check of the transfer-learning toolkit (`cargo xtask gpu-check`).
#
# Runs prebuilt stage binaries (extract-features, fine-tune, vgg16-weights) on a machine that may
# have no Rust toolchain and no network, only a PyTorch 2.11.0 venv: it checks that our binaries
# see CUDA, extracts the same images on the GPU and on the CPU and compares the features (TF32 on
# and off, float16 autocast, bfloat16), times extraction and a fine-tune epoch at 150x150 with and
# without cuDNN benchmark, writes gpu-check.json and prints a table last. Without CUDA it says so,
# runs its CPU half and exits 0. Python standard library only (no numpy needed).
#
# The command lines of the binaries come from bundle.json (`commands`, written by xtask from the
# same typed builders the pipeline uses), so no flag of theirs is spelled here: an argument
# `{name}` in them is a value this script fills in.
#
# Usage (the bundle made by `cargo xtask gpu-check --prepare DIR` holds this file, bin/, data/,
# bundle.json):
#   python3 DIR/gpu_check.py --out RESULTS [--torch-lib TORCH/lib] [--cpu-only]
# The torch library folder: --torch-lib, else $TORCH_LIB, else the `torch` package this Python
# can import (located without importing it), else a bounded search of the usual venv places for
# site-packages/torch/lib, else the binaries' built-in RUNPATH.

import argparse
import ast
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from importlib.util import find_spec

HERE = os.path.dirname(os.path.abspath(__file__))

# Relative L2 error ||x - ref|| / ||ref|| allowed against the CPU float32 features, by variant.
# TF32 keeps 10 mantissa bits in the products (float16 autocast also stores activations with
# 10 bits); bfloat16 keeps 7. Float32 without TF32 differs from the CPU only in summation order
# and algorithm (cuDNN may pick Winograd), so its bound is far tighter: a TF32-off run that
# misses it means TF32 was not off.
TOLERANCE = {
    "f32-no-tf32": 5e-4,
    "f32-tf32": 1e-2,
    "autocast": 2e-2,
    "bf16": 5e-2,
}


def log(msg):
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Check:
    """Elapsed time, the soft time budget, the runs' results, and the failures."""

    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()
        self.failures = []
        self.notes = []
        self.extract_rows = []
        self.fine_tune_rows = []
        self.parity = []

    def elapsed(self):
        return time.monotonic() - self.started

    def over_budget(self, what):
        if self.elapsed() > self.args.budget_s:
            note = f"skipped {what}: past the {self.args.budget_s:.0f}s budget"
            log(note)
            self.notes.append(note)
            return True
        return False

    def fail(self, msg):
        log(f"FAILED: {msg}")
        self.failures.append(msg)


# ---------------------------------------------------------------------------------------------
# Environment: where libtorch is, how children find it.


def torch_lib_dir(args):
    """The torch library folder and how it was found (None: use the binaries' RUNPATH)."""
    if args.torch_lib:
        return args.torch_lib, "the --torch-lib option"
    if os.environ.get("TORCH_LIB"):
        return os.environ["TORCH_LIB"], "$TORCH_LIB"
    try:
        spec = find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return os.path.join(list(spec.submodule_search_locations)[0], "lib"), f"the torch package of {sys.executable}"
    found = search_torch_lib()
    if found:
        return found, "a search of the usual venv places (this Python has no torch)"
    return None, "none given, this Python has no torch and none was found: the binaries' built-in RUNPATH"


def search_torch_lib(deadline_s=15.0):
    """The first site-packages/torch/lib holding libtorch_cpu.so under the usual places for
    venvs, looked for at most 9 levels deep and for at most `deadline_s` seconds."""
    start = time.monotonic()
    roots = [os.environ.get("VIRTUAL_ENV"), os.path.expanduser("~"), "/opt", "/workspace", "/venv", "/usr/local", "/usr/lib", "/home", "/root"]
    seen = set()
    for root in filter(None, roots):
        root = os.path.realpath(root)
        if root in seen or not os.path.isdir(root):
            continue
        seen.add(root)
        base_depth = root.rstrip("/").count("/")
        for dirpath, dirnames, filenames in os.walk(root):
            if time.monotonic() - start > deadline_s:
                return None
            if dirpath.endswith(os.path.join("site-packages", "torch", "lib")) and "libtorch_cpu.so" in filenames:
                return dirpath
            if dirpath.count("/") - base_depth >= 9:
                dirnames[:] = []
            else:
                dirnames[:] = [d for d in dirnames if not d.startswith(".") or d in (".venv", ".cache")]
    return None


def torch_version(lib):
    """`__version__` from torch/version.py beside the library folder, if readable."""
    try:
        with open(os.path.join(os.path.dirname(lib), "version.py")) as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return None


def child_env(lib):
    """Environment for the binaries. LD_LIBRARY_PATH wins over the RUNPATH baked in at build
    time (a path on the build machine). libtorch_cuda.so is preloaded because our binaries do not
    name it (the linker drops it: no symbol of it is used directly) and CUDA registers with
    libtorch only when it is loaded; its own RPATH finds the CUDA libraries of the wheel."""
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    if lib:
        env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        cuda_lib = os.path.join(lib, "libtorch_cuda.so")
        if os.path.exists(cuda_lib):
            env["LD_PRELOAD"] = cuda_lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    return env


def command(ctx, key, **values):
    """The argv of bundle.json's command `key` (its binary from --bin-dir), each `{name}`
    argument replaced by values[name]."""
    spec = ctx["commands"][key]
    argv = [ctx["bin"][spec["binary"]]]
    for arg in spec["args"]:
        if len(arg) > 2 and arg[0] == "{" and arg[-1] == "}":
            name = arg[1:-1]
            if name not in values:
                raise SystemExit(f"error: bundle.json's command {key} has a slot {arg} this script does not fill (a bundle from another version?)")
            arg = str(values[name])
        argv.append(arg)
    return argv


def run(check, name, argv, env, expect_fail=False):
    """Runs a binary, its output to logs/<name>.log; returns (ok, seconds, output)."""
    logs = os.path.join(check.args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=check.args.run_timeout_s)
        out, code = proc.stdout.decode("utf-8", "replace"), proc.returncode
    except subprocess.TimeoutExpired as err:
        out, code = (err.stdout or b"").decode("utf-8", "replace") + f"\n(killed after {check.args.run_timeout_s}s)", -1
    except OSError as err:
        out, code = f"could not start {argv[0]}: {err}", -1
    seconds = time.monotonic() - start
    with open(os.path.join(logs, f"{name}.log"), "w") as f:
        f.write("$ " + " ".join(argv) + "\n" + out)
    ok = code == 0
    if ok == expect_fail:
        tail = "\n".join(out.strip().splitlines()[-8:])
        log(f"{name}: exit {code} ({'expected failure' if expect_fail else 'expected success'}); log {logs}/{name}.log\n{tail}")
    return ok, seconds, out


# ---------------------------------------------------------------------------------------------
# Data: image folders made from the bundle's few images, repeated to the counts wanted.


def source_files(root, split):
    """{class: [sorted image paths]} of root/split."""
    base = os.path.join(root, split)
    classes = sorted(d for d in os.listdir(base) if not d.startswith(".") and os.path.isdir(os.path.join(base, d)))
    if not classes:
        raise SystemExit(f"error: no class folders in {base}")
    return {c: sorted(os.path.join(base, c, f) for f in os.listdir(os.path.join(base, c)) if not f.startswith(".")) for c in classes}


def make_split(dest, files_by_class, count):
    """dest/<class>/NNNNN-name: `count` images spread evenly over the classes, the source images
    repeated in order (hard links when possible: only the count matters for timing)."""
    classes = sorted(files_by_class)
    for ci, cls in enumerate(classes):
        os.makedirs(os.path.join(dest, cls), exist_ok=True)
        n = count // len(classes) + (1 if ci < count % len(classes) else 0)
        src = files_by_class[cls]
        for i in range(n):
            s = src[i % len(src)]
            d = os.path.join(dest, cls, f"{i:05d}-{os.path.basename(s)}")
            try:
                os.link(s, d)
            except OSError:
                shutil.copyfile(s, d)


# ---------------------------------------------------------------------------------------------
# Features: the .npy files extract-features writes ('<f4', C order), read without numpy.


def read_npy_f32(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not an .npy file")
    if data[6] == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    header = ast.literal_eval(data[start : start + hlen].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        raise ValueError(f"{path}: expected little-endian float32 in C order, got {header}")
    values = array("f")
    values.frombytes(data[start + hlen :])
    if sys.byteorder != "little":
        values.byteswap()
    shape = tuple(header["shape"])
    if len(values) != math.prod(shape):
        raise ValueError(f"{path}: {len(values)} values for shape {shape}")
    return values, shape


def split_features(run_dir, split):
    """Features of a split from an extract-features run folder: features.json names the split
    index (cache/index/<key>.json), which lists the chunk entries holding the rows in order."""
    with open(os.path.join(run_dir, "features.json")) as f:
        record = json.load(f)
    for entry in record["entries"]:
        if entry["split"] == split and entry.get("pass") is None:
            cache = entry.get("cache_dir") or record["cache_dir"]
            with open(os.path.join(cache, "index", entry["key"] + ".json")) as f:
                index = json.load(f)
            values, rows, row_shape = array("f"), 0, ()
            for chunk in index["chunks"]:
                part, shape = read_npy_f32(os.path.join(cache, chunk["key"], "features.npy"))
                values.extend(part)
                rows, row_shape = rows + shape[0], shape[1:]
            return values, (rows,) + row_shape
    raise ValueError(f"{run_dir}/features.json has no entry for split {split}")


def compare(values, reference):
    """Relative L2 error, largest difference over the largest reference value, and the share
    of nonzero reference values (random weights must not give all-zero features)."""
    if len(values) != len(reference):
        raise ValueError(f"{len(values)} values against {len(reference)}")
    diff2 = ref2 = 0.0
    max_diff = max_ref = 0.0
    nonzero = 0
    for x, r in zip(values, reference):
        d = x - r
        diff2 += d * d
        ref2 += r * r
        if abs(d) > max_diff:
            max_diff = abs(d)
        if abs(r) > max_ref:
            max_ref = abs(r)
        nonzero += r != 0.0
    if not math.isfinite(diff2):
        return {"rel_l2": math.inf, "max_abs_rel": math.inf, "nonzero_fraction": nonzero / max(len(reference), 1)}
    return {
        "rel_l2": math.sqrt(diff2 / ref2) if ref2 > 0 else math.inf,
        "max_abs_rel": max_diff / max_ref if max_ref > 0 else math.inf,
        "nonzero_fraction": nonzero / max(len(reference), 1),
    }


# ---------------------------------------------------------------------------------------------
# The stage binaries.


def extract(check, ctx, name, device, precision, splits, batch, tf32=True, benchmark=True, expect_fail=False):
    """One extract-features run into a fresh cache (so it computes); returns its run folder and
    stage summary, or None when it failed."""
    run_dir = os.path.join(ctx["work"], "runs", name)
    cache_dir = os.path.join(ctx["work"], "caches", name)
    # On CUDA the command also sets cuDNN benchmark.
    argv = command(
        ctx, "extract" if device == "cpu" else "extract-gpu",
        data=ctx["data"], splits=",".join(splits), weights=ctx["weights"], out=run_dir, cache_dir=cache_dir,
        size=check.args.size, batch=batch, device=device, precision=precision, benchmark="true" if benchmark else "false",
    )
    env = dict(ctx["env"])
    if device != "cpu":
        if not tf32:
            # NVIDIA's libraries (cuDNN, cuBLAS) honour this: 0 turns TF32 off whatever libtorch
            # asks for; libtorch itself allows TF32 in float32 convolutions by default.
            env["NVIDIA_TF32_OVERRIDE"] = "0"
    ok, seconds, out = run(check, name, argv, env, expect_fail=expect_fail)
    if expect_fail:
        return ok, out
    if not ok:
        check.fail(f"{name}: extract-features failed (logs/{name}.log)")
        return None
    with open(os.path.join(run_dir, "stage.json")) as f:
        summary = json.load(f)["summary"]
    return {"run_dir": run_dir, "cache_dir": cache_dir, "summary": summary, "process_seconds": seconds}


def extract_row(name, device, precision, tf32, benchmark, result, split):
    """A table row from one entry's timing in the stage summary."""
    entry = next(e for e in result["summary"]["entries"] if e["split"] == split and e["pass"] is None)
    seconds = entry["seconds"]
    return {
        "name": name, "device": device, "precision": precision,
        "tf32": None if device == "cpu" else tf32, "cudnn_benchmark": None if device == "cpu" else benchmark,
        "images": entry["images"], "batch_size": result["summary"]["batch_size"],
        "seconds": seconds,
        "images_per_second": entry["images"] / seconds if seconds > 0 else None,
        "steady_images_per_second": entry["steady_images_per_second"],
        "first_batch_seconds": entry["first_batch_seconds"],
        "device_busy_fraction": entry["device_queued_seconds"] / seconds if seconds > 0 else None,
        "device_starved_seconds": entry["device_starved_seconds"],
        "host_wait_seconds": entry["host_wait_seconds"],
        "device_bound_batches": f"{entry['device_bound_batches']}/{entry['batches']}",
        "process_seconds": result["process_seconds"],
    }


def parity(check, name, variant, result, reference, split):
    values, shape = split_features(result["run_dir"], split)
    stats = compare(values, reference)
    tol = TOLERANCE[variant]
    ok = stats["rel_l2"] <= tol and stats["nonzero_fraction"] > 0.01
    row = {"name": name, "variant": variant, "shape": list(shape), "tolerance_rel_l2": tol, "ok": ok, **stats}
    check.parity.append(row)
    log(f"{name}: relative L2 error {stats['rel_l2']:.3g} (tolerance {tol:g}), max |diff|/max |ref| {stats['max_abs_rel']:.3g}")
    if not ok:
        check.fail(f"{name}: features differ from the CPU float32 reference by {stats['rel_l2']:.3g} relative L2 (tolerance {tol:g}; nonzero share {stats['nonzero_fraction']:.3f})")
    return stats


def fine_tune(check, ctx, name, device, data, steps, batch, epochs, variant="fine-tune"):
    """One fine-tune run (no head phase, block5 unfrozen) with bundle.json's command `variant`;
    returns the timing row or None."""
    run_dir = os.path.join(ctx["work"], "runs", name)
    values = dict(data=data, weights=ctx["weights"], out=run_dir, size=check.args.size, epochs=epochs, steps=steps, batch=batch, device=device)
    argv = command(ctx, variant, **values)
    # What the variant adds to the plain command, for the table.
    base = command(ctx, "fine-tune", **values)
    extra = argv[len(base):] if argv[: len(base)] == base else argv[1:]
    ok, seconds, _ = run(check, name, argv, ctx["env"])
    if not ok:
        check.fail(f"{name}: fine-tune failed (logs/{name}.log)")
        return None
    with open(os.path.join(run_dir, "history.csv")) as f:
        history = list(csv.DictReader(f))
    if len(history) != epochs:
        check.fail(f"{name}: history.csv has {len(history)} epochs, expected {epochs}")
        return None
    losses = [float(h["loss"]) for h in history]
    if not all(math.isfinite(x) for x in losses):
        check.fail(f"{name}: non-finite training loss {losses}")
    # The last epoch is the timed one: the first pays for cuDNN autotuning and warm-up.
    timed = float(history[-1]["seconds"])
    try:
        with open(os.path.join(run_dir, "stage.json")) as f:
            breakdowns = json.load(f)["summary"].get("epoch_breakdown") or []
    except (OSError, ValueError, KeyError):
        breakdowns = []
    return {
        "name": name, "device": device, "flags": " ".join(extra) or "(defaults)",
        "epochs": epochs, "steps": steps, "batch_size": batch,
        "epoch_seconds": timed, "first_epoch_seconds": float(history[0]["seconds"]),
        "images_per_second": steps * batch / timed if timed > 0 else None,
        "loss": losses[-1], "process_seconds": seconds,
        # Where the timed epoch went (batch building, forward, backward, optimizer, validation),
        # when this fine-tune records it.
        "breakdown": breakdowns[-1] if breakdowns else None,
    }


# ---------------------------------------------------------------------------------------------
# The two halves.


def cpu_half(check, ctx, parity_split, reference_only):
    """CPU float32 reference features of the parity images; unless `reference_only` (the GPU
    half follows and covers the rest), bfloat16 against them, the autocast refusal and one tiny
    fine-tune epoch. Returns the reference values."""
    args = check.args
    ref = extract(check, ctx, "extract-cpu-f32", "cpu", "f32", [parity_split], args.cpu_batch)
    if ref is None:
        return None
    check.extract_rows.append(extract_row("extract-cpu-f32", "cpu", "f32", None, None, ref, parity_split))
    reference, shape = split_features(ref["run_dir"], parity_split)
    log(f"CPU float32 reference: {shape[0]} images, feature shape {list(shape[1:])}")
    shutil.rmtree(ref["cache_dir"], ignore_errors=True)
    if reference_only:
        return reference
    if not check.over_budget("the CPU bfloat16 run"):
        bf16 = extract(check, ctx, "extract-cpu-bf16", "cpu", "bf16", [parity_split], args.cpu_batch)
        if bf16 is not None:
            check.extract_rows.append(extract_row("extract-cpu-bf16", "cpu", "bf16", None, None, bf16, parity_split))
            stats = parity(check, "extract-cpu-bf16", "bf16", bf16, reference, parity_split)
            if stats["rel_l2"] == 0.0:
                check.fail("extract-cpu-bf16: identical to float32, so it did not run in bfloat16")
    # The autocast switch covers CUDA only: on the CPU the binary must refuse, not mislabel.
    failed, out = extract(check, ctx, "extract-cpu-autocast", "cpu", "autocast", [parity_split], args.cpu_batch, expect_fail=True)
    if failed or "needs a CUDA device" not in out:
        check.fail("extract-features --precision autocast on the CPU did not refuse with 'needs a CUDA device'")
    if not args.skip_fine_tune and not check.over_budget("the CPU fine-tune epoch"):
        row = fine_tune(check, ctx, "fine-tune-cpu-f32", "cpu", ctx["fine_tune_data_cpu"], args.cpu_fine_tune_steps, args.cpu_fine_tune_batch, 1)
        if row:
            check.fine_tune_rows.append(row)
    return reference


def gpu_half(check, ctx, reference, parity_split, bulk_split):
    args = check.args
    # (name, precision, tf32, cudnn benchmark, parity variant), most wanted first: the time
    # budget skips from the end. bf16 runs after the fine-tune epochs (below).
    variants = [
        ("extract-gpu-f32-tf32", "f32", True, True, "f32-tf32"),
        ("extract-gpu-autocast", "autocast", True, True, "autocast"),
        ("extract-gpu-f32-tf32-nobench", "f32", True, False, "f32-tf32"),
        ("extract-gpu-autocast-nobench", "autocast", True, False, "autocast"),
        ("extract-gpu-f32-no-tf32", "f32", False, True, "f32-no-tf32"),
    ]
    extraction(check, ctx, variants, reference, parity_split, bulk_split)
    if not args.skip_fine_tune:
        gpu_fine_tune(check, ctx)
    extraction(check, ctx, [("extract-gpu-bf16", "bf16", True, True, "bf16")], reference, parity_split, bulk_split)


def extraction(check, ctx, variants, reference, parity_split, bulk_split):
    args = check.args
    splits = [parity_split, bulk_split]
    for name, precision, tf32, bench, variant in variants:
        if check.over_budget(name):
            continue
        result = extract(check, ctx, name, args.device, precision, splits, args.gpu_batch, tf32=tf32, benchmark=bench)
        if result is None:
            continue
        check.extract_rows.append(extract_row(name, args.device, precision, tf32, bench, result, bulk_split))
        parity(check, name, variant, result, reference, parity_split)
        shutil.rmtree(result["cache_dir"], ignore_errors=True)


def gpu_fine_tune(check, ctx):
    args = check.args
    # fine-tune sets cuDNN benchmark on CUDA; the bundle has a command for each switch it offers.
    runs = [("fine-tune-gpu-f32", "fine-tune")]
    for variant, note in [("fine-tune-nobench", "no switch for cuDNN benchmark: timed with benchmark on only"),
                          ("fine-tune-autocast", "no autocast switch: timed in float32 (TF32) only")]:
        if variant in ctx["commands"]:
            runs.append(("fine-tune-gpu-" + variant[len("fine-tune-"):], variant))
        else:
            check.notes.append(f"fine-tune has {note}")
    for name, variant in runs:
        if check.over_budget(name):
            continue
        row = fine_tune(check, ctx, name, args.device, ctx["fine_tune_data_gpu"], args.fine_tune_steps, args.fine_tune_batch, 2, variant)
        if row:
            check.fine_tune_rows.append(row)


# ---------------------------------------------------------------------------------------------
# Report.


def fmt(v, spec=".1f"):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(check, headline):
    lines = [headline, ""]
    lines.append(f"{'extraction':<30} {'dev':<6} {'prec':<8} {'tf32':<4} {'bench':<5} {'images':>6} {'img/s':>8} {'steady':>8} {'busy%':>6} {'starved s':>9} {'1st batch s':>11}")
    for r in check.extract_rows:
        busy = None if r["device_busy_fraction"] is None else 100 * r["device_busy_fraction"]
        lines.append(
            f"{r['name']:<30} {r['device']:<6} {r['precision']:<8} {fmt(r['tf32']):<4} {fmt(r['cudnn_benchmark']):<5} {r['images']:>6} "
            f"{fmt(r['images_per_second']):>8} {fmt(r['steady_images_per_second']):>8} {fmt(busy, '.0f'):>6} {fmt(r['device_starved_seconds'], '.2f'):>9} {fmt(r['first_batch_seconds'], '.2f'):>11}"
        )
    if check.parity:
        lines += ["", f"{'parity vs CPU float32':<30} {'rel L2':>9} {'max rel':>9} {'tolerance':>9}  ok"]
        for p in check.parity:
            lines.append(f"{p['name']:<30} {p['rel_l2']:>9.2e} {p['max_abs_rel']:>9.2e} {p['tolerance_rel_l2']:>9.0e}  {'yes' if p['ok'] else 'NO'}")
    if check.fine_tune_rows:
        lines += ["", f"{'fine-tune epoch':<30} {'dev':<6} {'steps x batch':>13} {'epoch s':>8} {'img/s':>8} {'1st epoch s':>11}  flags"]
        for r in check.fine_tune_rows:
            lines.append(
                f"{r['name']:<30} {r['device']:<6} {str(r['steps']) + ' x ' + str(r['batch_size']):>13} {fmt(r['epoch_seconds'], '.2f'):>8} "
                f"{fmt(r['images_per_second']):>8} {fmt(r['first_epoch_seconds'], '.2f'):>11}  {r['flags']}"
            )
    for note in check.notes:
        lines.append(f"note: {note}")
    for failure in check.failures:
        lines.append(f"FAILED: {failure}")
    lines.append(f"total {check.elapsed():.0f}s; {'all checks passed' if not check.failures else f'{len(check.failures)} check(s) failed'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description="GPU check: CUDA seen, GPU-vs-CPU feature parity, extraction and fine-tune timings.")
    p.add_argument("--out", default="gpu-check-results", help="results folder: gpu-check.json, table.txt, logs/")
    p.add_argument("--bin-dir", default=os.path.join(HERE, "bin"), help="folder of extract-features, fine-tune, vgg16-weights")
    p.add_argument("--data", default=os.path.join(HERE, "data"), help="image folders train/ and validation/ (one folder per class) to draw images from")
    p.add_argument("--torch-lib", help="the torch library folder (torch/lib) on this machine")
    p.add_argument("--work", help="scratch folder (default: a temporary folder, removed at the end)")
    p.add_argument("--cpu-only", action="store_true", help="run the CPU half even when CUDA is seen")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--size", type=int, default=150, help="image size (square)")
    p.add_argument("--budget-s", type=float, default=150.0, help="skip runs that would start after this many seconds")
    p.add_argument("--run-timeout-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the random VGG16 weights")
    p.add_argument("--parity-images", type=int, help="images compared GPU vs CPU [64 with CUDA, 12 without]")
    p.add_argument("--gpu-images", type=int, default=8192, help="images of the timed GPU extraction")
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--cpu-batch", type=int, default=16)
    p.add_argument("--fine-tune-steps", type=int, default=100, help="GPU fine-tune steps per epoch (the seed's 100)")
    p.add_argument("--fine-tune-batch", type=int, default=20, help="GPU fine-tune batch (the seed's 20)")
    p.add_argument("--fine-tune-images", type=int, default=2000, help="GPU fine-tune training images")
    p.add_argument("--cpu-fine-tune-steps", type=int, default=2)
    p.add_argument("--cpu-fine-tune-batch", type=int, default=4)
    p.add_argument("--skip-fine-tune", action="store_true")
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    check = Check(args)

    lib, lib_source = torch_lib_dir(args)
    if lib and not os.path.isfile(os.path.join(lib, "libtorch_cpu.so")):
        raise SystemExit(f"error: {lib} (from {lib_source}) has no libtorch_cpu.so: give the torch/lib folder with --torch-lib")
    env = child_env(lib)
    bundle_path = os.path.join(HERE, "bundle.json")
    try:
        with open(bundle_path) as f:
            bundle = json.load(f)
        commands = bundle["commands"]
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"error: {bundle_path} has no command lines ({err!r}): make the bundle with `cargo xtask gpu-check --prepare DIR`")
    bins = {}
    for name in sorted({spec["binary"] for spec in commands.values()}):
        path = os.path.join(args.bin_dir, name)
        if not os.access(path, os.X_OK):
            raise SystemExit(f"error: {path} is missing or not executable (make the bundle with `cargo xtask gpu-check --prepare DIR`)")
        bins[name] = path
    ctx = {"bin": bins, "commands": commands, "env": env}
    log(f"python {platform.python_version()} at {sys.executable}; {os.cpu_count()} CPUs; glibc {'-'.join(platform.libc_ver())}")
    version = torch_version(lib) if lib else None
    log(f"torch library folder: {lib or '(binaries RUNPATH)'} (from {lib_source}), torch {version or 'version unknown'}")
    if version and not version.startswith("2.11.0"):
        log(f"warning: the binaries were built against torch 2.11.0; this is {version}")
    if bundle.get("glibc_required"):
        log(f"the binaries need glibc >= {bundle['glibc_required']}; this machine has {platform.libc_ver()[1] or 'unknown'}")
    log(f"LD_PRELOAD for the binaries: {env.get('LD_PRELOAD', '(none: no libtorch_cuda.so there)')}")
    smi = shutil.which("nvidia-smi")
    gpus = []
    if smi:
        try:
            gpus = [l for l in subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout.splitlines() if l.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    log(f"nvidia-smi: {'; '.join(gpus) if gpus else 'no GPU listed' if smi else 'not installed'}")

    work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    os.makedirs(work, exist_ok=True)
    result = {"host": {"python": sys.executable, "cpus": os.cpu_count(), "glibc": platform.libc_ver()[1], "nvidia_smi": gpus},
              "torch_lib": lib, "torch_lib_source": lib_source, "torch_version": version, "ld_preload": env.get("LD_PRELOAD"), "bundle": bundle,
              "tolerance_rel_l2": TOLERANCE}
    try:
        ok, _, out = run(check, "devices", command(ctx, "devices"), env)
        if not ok:
            raise SystemExit(f"error: the binaries do not start here (see {args.out}/logs/devices.log): {out.strip().splitlines()[-1:]}")
        devices = json.loads(out.strip().splitlines()[-1])
        result["devices"] = devices
        cuda = devices["cuda_available"] and not args.cpu_only
        if devices["cuda_available"]:
            log(f"CUDA seen by our binaries: {devices['cuda_device_count']} device(s), cuDNN {'available' if devices['cudnn_available'] else 'NOT available'}")
        else:
            log("CUDA NOT seen by our binaries: running the CPU half only")
            if gpus:
                check.fail("nvidia-smi lists a GPU but our binaries do not see CUDA (is --torch-lib the CUDA build of torch 2.11.0?)")
        if args.cpu_only and devices["cuda_available"]:
            log("with --cpu-only: running the CPU half only")

        weights = os.path.join(work, "vgg16-random.safetensors")
        ok, _, out = run(check, "weights", command(ctx, "random-weights", seed=args.seed, out=weights), env)
        if not ok:
            raise SystemExit(f"error: could not write random weights (see {args.out}/logs/weights.log)")
        digest = out.strip().splitlines()[-1]
        result["weights"] = {"seed": args.seed, "sha256": digest, "same_as_bundle": bundle.get("weights_sha256") == digest if bundle.get("weights_sha256") else None}
        same = result["weights"]["same_as_bundle"]
        log(f"random VGG16 weights, seed {args.seed}: sha256 {digest}" + ("" if same is None else " (as made when the bundle was built)" if same else " (DIFFERS from the bundle's: another libtorch RNG?)"))

        parity_images = args.parity_images or (64 if cuda else 12)
        train = source_files(args.data, "train")
        validation = source_files(args.data, "validation")
        data = os.path.join(work, "data")
        make_split(os.path.join(data, "parity"), train, parity_images)
        if cuda:
            make_split(os.path.join(data, "bulk"), train, args.gpu_images)
        ft_cpu = os.path.join(work, "fine-tune-cpu")
        make_split(os.path.join(ft_cpu, "train"), train, args.cpu_fine_tune_steps * args.cpu_fine_tune_batch)
        make_split(os.path.join(ft_cpu, "validation"), validation, 4)
        ctx.update({"work": work, "weights": weights, "data": data, "fine_tune_data_cpu": ft_cpu})
        if cuda:
            ft_gpu = os.path.join(work, "fine-tune-gpu")
            make_split(os.path.join(ft_gpu, "train"), train, args.fine_tune_images)
            make_split(os.path.join(ft_gpu, "validation"), validation, 200)
            ctx["fine_tune_data_gpu"] = ft_gpu

        reference = cpu_half(check, ctx, "parity", reference_only=cuda)
        if cuda and reference is not None:
            gpu_half(check, ctx, reference, "parity", "bulk")
        headline = (f"gpu-check: CUDA seen ({'; '.join(gpus) or str(devices['cuda_device_count']) + ' device(s)'}), images {args.size}x{args.size}" if cuda
                    else f"gpu-check: CUDA not seen{' (--cpu-only)' if args.cpu_only and devices['cuda_available'] else ''}: CPU half only, images {args.size}x{args.size}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result.update({"cuda": cuda, "extraction": check.extract_rows, "parity": check.parity, "fine_tune": check.fine_tune_rows,
                   "notes": check.notes, "failures": check.failures, "seconds": check.elapsed(), "ok": not check.failures})
    report = table(check, headline)
    with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(report + "\n")
    print("\n" + report, flush=True)
    log(f"wrote {args.out}/gpu-check.json and table.txt")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
