#!/usr/bin/env python3
"""segbench's speed benchmark: FCN-8s on every backend, the workflow's overhead, and planning at scale.

    .venv/bin/python benchmarks/bench.py                  # everything, about 12 minutes (plus builds on first use)
    .venv/bin/python benchmarks/bench.py --only backends  # or: --only workflow

1. FCN-8s (the voc-fcn8s layout, deterministic random weights: benchmarks/fcn8s.py) on synthetic
   500x500 images through segbench's Caffe build, stock Caffe (the same sdist with only the build
   and >512 MiB patches: `tools/caffe/build.sh PYTHON --variant stock`, built on first use) and
   OpenCV's DNN module, and the net's ONNX export (segbench's exporter) on ONNX Runtime and OpenVINO in
   fp32, int8 and (where the CPU has them natively) bf16 and fp16; the reduced-precision target
   depends on the CPU's flags (2.0x the fp32 sgemm floor with AVX-512 VNNI/BF16, 1.4x with AVX2 only).
   Each backend runs in its own process (benchmarks/worker.py), so that peak
   memory is that backend's, and the processes take turns over --rounds rounds, so that all
   backends see the same conditions. Forward passes are timed as the workflow times them.
2. The workflow on --workflow-images synthetic images with the bundled tiny model: the wall time of
   `snakemake --cores 2` minus the forward time it reports.
3. `snakemake --dry-run` on 1,449 and 10,000 ids, for a one-run configuration (the shape of
   config/voc2012-fcn8s.yaml) and for the demo's three runs.

Timings mean something only on a quiet machine. Each forward pass checks the CPU time that other
processes took while it ran (from /proc/stat); a pass in which they took more than 2% of a core
is left out (up to 3x as many passes are tried), and the output says how many were. Slowdowns that
come from outside the machine (other tenants of a virtual machine's host) cannot be seen that way.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import fcn8s  # noqa: E402
import machine  # noqa: E402

PYTHON = Path(sys.executable)
BACKENDS = {  # label -> (segbench backend, Caffe build variant or None, precision)
    "caffe-stock": ("caffe", "stock", "fp32"),
    "caffe-segbench": ("caffe", "segbench", "fp32"),
    "opencv": ("opencv", None, "fp32"),
    # The net's ONNX export (segbench's exporter) on the runtimes users move to.
    "onnxruntime": ("onnxruntime", None, "fp32"),
    "openvino": ("openvino", None, "fp32"),
    "onnxruntime-int8": ("onnxruntime", None, "int8"),
    "openvino-int8": ("openvino", None, "int8"),
    "openvino-bf16": ("openvino", None, "bf16"),
    "openvino-fp16": ("openvino", None, "fp16"),
    # The net built in PyTorch from the Caffe files (`make torch`; left out where torch is not installed).
    "torch": ("torch", None, "fp32"),
    "torch-bf16": ("torch", None, "bf16"),
}
ONE_RUN = ["fcn-tiny-caffe-cpu"]
DEMO_RUNS = ["fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"]


def caffe_build(variant):
    """The python/ folder of the cached Caffe build of `variant`, building it if it is missing."""
    run = subprocess.run(["bash", str(REPO / "tools" / "caffe" / "build.sh"), str(PYTHON), "--variant", variant],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"building Caffe ({variant}) failed:\n{run.stdout}\n{run.stderr}")
    return Path(run.stdout.strip().splitlines()[-1].split(": ", 1)[1]) / "python"


def percentile(values, q):
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def run_worker(label, caffe_path, prototxt, weights, args, scores_path, onnx=None):
    backend, _, precision = BACKENDS[label]
    cmd = [str(PYTHON), str(HERE / "worker.py"), backend, str(prototxt), str(weights),
           "--images", str(args.images), "--warmup", str(args.warmup), "--size", args.size,
           "--save-scores", str(scores_path), "--precision", precision]
    if caffe_path:
        cmd += ["--caffe-path", str(caffe_path)]
    if onnx:
        cmd += ["--onnx", str(onnx)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLOG_minloglevel": "2"})
    if result.returncode != 0:
        raise SystemExit(f"{label} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_scores(reference, other):
    import numpy as np

    a, b = np.load(reference), np.load(other)
    return {"max_abs_diff": float(np.abs(a - b).max()), "score_range": float(np.abs(a).max()),
            "identical": bool(np.array_equal(a, b)),
            "argmax_agreement": float((a.argmax(0) == b.argmax(0)).mean())}


def describe_machine(report):
    mach = machine.describe()
    report["machine"] = mach
    print(f"machine: {mach['cpu']} (vendor {mach['vendor']}, family {mach['family']:x}h, model "
          f"{mach['model_number']:x}h), {mach['cores']} cores, {mach['logical_cpus']} logical CPUs, {mach['vector']}")
    print(f"  fp32 FLOPs per cycle per core: {mach['flops_per_cycle']} ({mach['flops_per_cycle_why']})")
    if mach["measured_ghz"]:
        print(f"  clock: {mach['nominal_ghz']:.2f} GHz nominal (/proc/cpuinfo; a guest sees the TSC rate), "
              f"{mach['measured_ghz']:.2f} GHz measured (dependent adds, one per cycle, all cores busy)")
        print(f"  fp32 peak = {mach['cores']} cores x {mach['measured_ghz']:.2f} GHz x {mach['flops_per_cycle']} "
              f"= {mach['peak_gflops']:.0f} GFLOP/s ({mach['nominal_peak_gflops']:.0f} at the nominal clock); "
              f"measured FMA throughput {mach['measured_fma_gflops']:.0f} GFLOP/s")
    else:
        print(f"  fp32 peak = {mach['cores']} cores x {mach['nominal_ghz']:.2f} GHz (nominal; no C compiler to "
              f"measure it) x {mach['flops_per_cycle']} = {mach['peak_gflops']:.0f} GFLOP/s")
    return mach


def bench_backends(args, report):
    prototxt, weights, info = fcn8s.ensure_model()
    report["model"] = {"prototxt": str(prototxt), "weights": str(weights), **info}
    height, width = (int(v) for v in args.size.split("x"))
    gflop = fcn8s.gflops(height, width)
    report["gflop_per_image"] = gflop
    print(f"\nFCN-8s (voc-fcn8s layout, random weights, seed {info['seed']}): {weights}")
    print(f"  {info['size'] / 1e6:.0f} MB, sha256 {info['sha256'][:16]}..., "
          + (f"generated in {info['generate_s']:.1f} s" if info["generated"] else
             f"cached (sha256 checked in {info['check_s']:.1f} s)"))
    print(f"  work per {height}x{width} image: {gflop:.1f} GFLOP = 2 x the multiply-adds of its Convolution and "
          f"Deconvolution layers (biases, ReLU, pooling, Crop, Eltwise not counted)")
    mach = report["machine"]

    builds = {label: caffe_build(variant) for label, (_, variant, _) in BACKENDS.items()
              if variant and label in args.backends}
    labels, onnx_files = reduced_precision_plan(args, mach, (height, width), prototxt, weights, report)
    tmp = Path(tempfile.mkdtemp(prefix="segbench-bench-"))
    runs = {label: [] for label in labels}
    sgemm_checks = []
    for round_ in range(args.rounds):
        for label in labels:
            sgemm_checks.append(machine.sgemm_gflops())
            print(f"  round {round_ + 1}/{args.rounds}: {label} ...", flush=True)
            runs[label].append(run_worker(label, builds.get(label), prototxt, weights, args,
                                          tmp / f"{label}.npy", onnx_files.get(label)))
    sgemm_checks.append(machine.sgemm_gflops())
    sgemm = statistics.median(c["median_gflops"] for c in sgemm_checks)
    floor_s = gflop / sgemm
    peak = mach["peak_gflops"]
    report["sgemm"] = {"gflops": sgemm, "library": sgemm_checks[0]["library"], "n": sgemm_checks[0]["n"],
                       "checks": [c["median_gflops"] for c in sgemm_checks], "floor_s": floor_s}
    print(f"\nnumpy sgemm ({sgemm_checks[0]['library']}; {sgemm_checks[0]['n']}^3, median of "
          f"{len(sgemm_checks)} checks taken between the backends' processes): {sgemm:.0f} GFLOP/s "
          f"= {sgemm / peak:.0%} of peak")
    print(f"  sgemm floor for one image: {gflop:.1f} GFLOP / {sgemm:.0f} GFLOP/s = {floor_s:.3f} s")

    rows = []
    for label, processes in runs.items():
        times = [t for p in processes for t in p["forward_s"]]
        passes = [q for p in processes for q in p["passes"]]
        if not times:
            print(f"{label}: every pass was disturbed by other processes; no timing")
            continue
        median = statistics.median(times)
        rows.append({
            "backend": label, "precision": BACKENDS[label][2], "passes": len(times), "disturbed": sum(q["disturbed"] for q in passes),
            "median_s": median, "p90_s": percentile(times, 0.9), "min_s": min(times), "max_s": max(times),
            "process_medians_s": [statistics.median(p["forward_s"]) for p in processes if p["forward_s"]],
            "load_s": statistics.median(p["load_s"] for p in processes),
            "peak_mb": max(p["peak_kib"] for p in processes) / 1024,
            "peak_load_mb": max(p["peak_during_load_kib"] for p in processes) / 1024,
            "peak_inference_mb": max(p["peak_during_inference_kib"] or 0 for p in processes) / 1024,
            "gflops": gflop / median, "of_peak": gflop / median / peak, "vs_floor": median / floor_s,
            "threads": processes[0]["provenance"].get("threads"),
            "module": processes[0]["provenance"].get("backend_module"),
        })
    stock = next((r for r in rows if r["backend"] == "caffe-stock"), None)
    for row in rows:
        row["speedup_vs_stock"] = stock["median_s"] / row["median_s"] if stock else None
        if stock and row is not stock:
            row["vs_stock_scores"] = compare_scores(tmp / "caffe-stock.npy", tmp / f"{row['backend']}.npy")
        row["speedup_vs_floor"] = floor_s / row["median_s"]
    report["backends"] = rows

    print(f"\nFCN-8s, {height}x{width}: {args.rounds} rounds x ({args.warmup} warm-up + {args.images} timed passes), "
          f"one process per backend and round")
    agreement = report.get("demo_agreement", {})
    head = (f"{'backend':17} {'prec.':5} {'median s':>8} {'p90 s':>6} {'load s':>6} {'peak MB':>7} {'GFLOP/s':>7} "
            f"{'of peak':>7} {'x floor':>7} {'vs stock':>8} {'demo agr.':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = f"{r['speedup_vs_stock']:.2f}x" if r["speedup_vs_stock"] else "-"
        agree = f"{agreement[r['backend']]:.4f}" if r["backend"] in agreement else "-"
        print(f"{r['backend']:17} {r['precision']:5} {r['median_s']:8.3f} {r['p90_s']:6.3f} {r['load_s']:6.2f} "
              f"{r['peak_mb']:7.0f} {r['gflops']:7.0f} {r['of_peak']:7.0%} {r['vs_floor']:7.2f} {speed:>8} {agree:>9}")
    print("  median, p90: forward time per image; peak MB: the process's peak resident memory (VmHWM);\n"
          "  GFLOP/s = work / median (the fp32 work, whatever the precision); of peak: of the fp32 peak above;\n"
          "  x floor: median / sgemm floor; demo agr.: argmax agreement with fp32 Caffe on the demo model")
    for r in rows:
        print(f"  {r['backend']}: {r['passes']} passes counted ({r['disturbed']} disturbed, left out), "
              f"min {r['min_s']:.3f} s, max {r['max_s']:.3f} s, process medians "
              f"{', '.join(f'{m:.2f}' for m in r['process_medians_s'])} s; peak {r['peak_load_mb']:.0f} MB while "
              f"loading, {r['peak_inference_mb']:.0f} MB during the passes; {r['threads']} threads")
        if "vs_stock_scores" in r:
            c = r["vs_stock_scores"]
            same = "bit-identical to" if c["identical"] else f"max |difference| {c['max_abs_diff']:.2g} from"
            print(f"    scores {same} stock Caffe's (scores up to {c['score_range']:.3g}); "
                  f"argmax agrees on {c['argmax_agreement']:.4%} of pixels")
    return rows


def reduced_precision_plan(args, mach, size, prototxt, weights, report):
    """Which of args.backends run here, with the ONNX file each needs. A reduced precision that this
    CPU has no instructions for is not run (OpenVINO would refuse or emulate it) and never called native."""
    sys.path.insert(0, str(REPO))
    from segbench import cpu

    native = cpu.native_precisions()
    flags = cpu.cpu_flags()
    vnni_or_bf16 = bool({"avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"} & flags)
    case = ("AVX-512 VNNI or BF16: the fastest reduced precision must be at least 2.0x faster than the fp32 sgemm floor"
            if vnni_or_bf16 else "AVX2 only: the fastest reduced precision (int8 through vpmaddubsw) must be at least "
            "1.4x faster than the fp32 sgemm floor")
    report["cpu_case"] = {"vnni_or_bf16": vnni_or_bf16, "native": native, "target_speedup": 2.0 if vnni_or_bf16 else 1.4}
    print(f"\nreduced precisions: {case}")
    print("  native on this CPU: " + ", ".join(f"{p} ({how})" for p, how in native.items()) if native else
          "  native on this CPU: none")
    import importlib.util

    labels = []
    for label in args.backends:
        precision = BACKENDS[label][2]
        if precision in ("bf16", "fp16") and precision not in native:
            print(f"  {label}: not run, {precision} is not native on this CPU")
            continue
        if BACKENDS[label][0] == "torch" and importlib.util.find_spec("torch") is None:
            print(f"  {label}: not run, torch is not installed (make torch)")
            continue
        labels.append(label)
    onnx_files = {}
    if any(BACKENDS[label][0] in ("onnxruntime", "openvino") for label in labels):
        import onnx_models

        fp32 = onnx_models.ensure_onnx(prototxt, weights)
        int8 = (onnx_models.ensure_int8(fp32, size) if any(BACKENDS[label][2] == "int8" for label in labels)
                else None)
        for label in labels:
            if BACKENDS[label][0] in ("onnxruntime", "openvino"):
                onnx_files[label] = int8 if BACKENDS[label][2] == "int8" else fp32
        variants = [(label, BACKENDS[label][0], BACKENDS[label][2]) for label in labels
                    if BACKENDS[label][0] != "caffe"]
        report["demo_agreement"] = onnx_models.demo_agreement(variants)
    return labels, onnx_files


def bench_workflow(args, report):
    import workflow

    tmp = Path(tempfile.mkdtemp(prefix="segbench-wf-"))
    extra = shlex.split(args.snakemake_args)
    print(f"\nworkflow overhead: {args.workflow_images} synthetic photos (500x375 and 375x500) with fcn-tiny, "
          f"one run, `snakemake --cores 2{' ' + args.snakemake_args if extra else ''}`, "
          f"the schema's default batch_size and shard_size")
    result = workflow.overhead(args.workflow_images, ONE_RUN, tmp, extra=extra)
    report["workflow"] = result
    print(f"  {result['jobs']} jobs (batch_size {result['batch_size']}, shard_size {result['shard_size']}); "
          f"wall {result['wall_s']:.1f} s - forward passes {result['forward_s']:.1f} s "
          f"(summary.json timing.total_s) = {result['overhead_s']:.1f} s "
          f"= {result['overhead_ms_per_image']:.1f} ms per image")
    dry = []
    for runs, what in ((ONE_RUN, "one run (as config/voc2012-fcn8s.yaml)"), (DEMO_RUNS, "the demo's three runs")):
        for n in args.dry_run_ids:
            d = workflow.dry_run(n, runs, tmp, extra=extra)
            d["what"] = what
            dry.append(d)
            print(f"  dry run, {n:5d} ids, {what}: {d['jobs']} jobs planned in {d['wall_s']:.1f} s")
    report["dry_runs"] = dry
    if not args.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def targets(report):
    check = lambda ok: "met" if ok else "NOT met"
    print("\ntargets:")
    rows = {r["backend"]: r for r in report.get("backends", [])}
    if rows:
        fastest = min((r for r in rows.values() if r["precision"] == "fp32"), key=lambda r: r["median_s"])
        print(f"  fastest fp32 backend ({fastest['backend']}) within 1.10x of the sgemm floor: "
              f"{fastest['vs_floor']:.2f}x -> {check(fastest['vs_floor'] <= 1.10)}")
        reduced = [r for r in rows.values() if r["precision"] != "fp32"]
        if reduced:
            best = min(reduced, key=lambda r: r["median_s"])
            need = report["cpu_case"]["target_speedup"]
            agree = report.get("demo_agreement", {}).get(best["backend"])
            print(f"  fastest reduced precision ({best['backend']}, native on this CPU) at least {need}x faster than "
                  f"the fp32 sgemm floor: {best['speedup_vs_floor']:.2f}x -> {check(best['speedup_vs_floor'] >= need)}"
                  + (f"; agreement with fp32 Caffe on the demo model {agree:.4f}" if agree is not None else ""))
        if fastest.get("speedup_vs_stock"):
            print(f"  fastest backend at least 1.5x faster than stock Caffe: {fastest['speedup_vs_stock']:.2f}x -> "
                  f"{check(fastest['speedup_vs_stock'] >= 1.5)}")
        own = rows.get("caffe-segbench")
        if own and own.get("speedup_vs_stock"):
            print(f"  segbench's Caffe at least 1.25x faster than stock Caffe: {own['speedup_vs_stock']:.2f}x -> "
                  f"{check(own['speedup_vs_stock'] >= 1.25)}")
        size = report["args"]["size"]
        peaks = [f"{label} {r['peak_mb']:.0f} MB" for label, r in rows.items()]
        print(f"  peak memory of the inference process, one {size} image at a time (reported): {', '.join(peaks)}")
    wf = report.get("workflow")
    if wf:
        print(f"  workflow overhead at most 25 ms per image: {wf['overhead_ms_per_image']:.1f} ms -> "
              f"{check(wf['overhead_ms_per_image'] <= 25)}")
    for d in report.get("dry_runs", []):
        limit = 5 if d["images"] <= 1449 else 30
        print(f"  dry run over {d['images']} ids, {d['what']}, at most {limit} s: {d['wall_s']:.1f} s -> "
              f"{check(d['wall_s'] <= limit)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["backends", "workflow"], default=None)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS),
                        help="default: all; a bf16/fp16 row runs only where the CPU has that precision natively")
    parser.add_argument("--rounds", type=int, default=2, help="processes per backend, taking turns (default 2)")
    parser.add_argument("--images", type=int, default=5, help="timed passes per process (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first, per process (default 2)")
    parser.add_argument("--size", default="500x500", help="image size HxW (default 500x500)")
    parser.add_argument("--workflow-images", type=int, default=500)
    parser.add_argument("--dry-run-ids", type=lambda v: [int(x) for x in v.split(",")], default=[1449, 10000],
                        help="split sizes for the dry runs (default 1449,10000)")
    parser.add_argument("--snakemake-args", default="", help="extra arguments for the workflow's snakemake runs")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the workflow's temporary folders")
    args = parser.parse_args()

    print(f"segbench benchmark, {time.strftime('%Y-%m-%d %H:%M')}; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at start\n")
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args)}
    describe_machine(report)
    if args.only in (None, "backends"):
        bench_backends(args, report)
    if args.only in (None, "workflow"):
        bench_workflow(args, report)
    targets(report)
    print(f"\nload average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
