#!/usr/bin/env python3
"""Caffe on a GPU, checked as a user with a GPU box would check a set-up: after `make setup` there
(which builds Caffe with CUDA when it finds an NVIDIA GPU and a CUDA toolkit),

    .venv/bin/python benchmarks/gpu_caffe.py                 # device gpu:0
    .venv/bin/python benchmarks/gpu_caffe.py --device cpu    # the same checks on the CPU (of the script itself)

1. The bundled demo through the real workflow, with a Caffe run on --device beside a Caffe run on
   the CPU: the predictions must agree on at least 99.9% of pixels and every dataset metric must
   differ by less than 1e-3 (exit status 1 otherwise).
2. The FCN-8s layout (benchmarks/fcn8s.py, random weights) at 500x500 on Caffe --device, in its own
   process (benchmarks/worker.py): median and p90 forward time, model load time, peak GPU memory of
   the process (NVML), and the ratio to PyTorch's fp32 figure on an H200 (12.4 ms, shared notes).

Which Caffe ran (CUDA version, cuDNN or not, GPU architectures) is in the report: each FCN-8s
figure belongs to one build. On the project's lent H200, tools/gpu/proof.sh runs this script once per
carried build (with cuDNN, without it, and with cuDNN under NVIDIA_TF32_OVERRIDE=0).

Prints a report, and writes it as JSON with --json.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

TORCH_FP32_H200_MS = 12.4  # FCN-8s layout, 500x500, PyTorch fp32 (TF32 off), median: shared notes, gpu.md
METRICS = ("pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou", "fw_iou",
           "boundary_iou", "mean_bf_score")


def demo_workflow(device, workdir):
    """The demo with Caffe on the CPU and on `device`: pixel agreement and metric differences."""
    shutil.copytree(REPO / "resources" / "demo" / "VOC", workdir / "VOC")
    shutil.copytree(REPO / "resources" / "demo" / "fcn-tiny", workdir / "model")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"]["root"] = "VOC"
    config["models"]["fcn-tiny"].update(prototxt="model/deploy.prototxt", weights="model/fcn-tiny.caffemodel")
    config["runs"] = {"caffe-cpu": {"model": "fcn-tiny", "backend": "caffe", "device": "cpu"},
                      "caffe-device": {"model": "fcn-tiny", "backend": "caffe", "device": device}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # As a module of this interpreter: on the GPU machine snakemake is a carried wheel on PYTHONPATH.
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                          "--cores", "4"], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"the workflow failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    same = total = 0
    for png in sorted((workdir / "results" / "caffe-cpu" / "predictions").glob("*.png")):
        a = np.array(Image.open(png))
        b = np.array(Image.open(workdir / "results" / "caffe-device" / "predictions" / png.name))
        same += int((a == b).sum())
        total += a.size
    cpu, dev = (json.loads((workdir / "results" / r / "summary.json").read_text()) for r in ("caffe-cpu", "caffe-device"))
    return {"agreement": same / total, "images": cpu["images"],
            "metric_differences": {k: abs(cpu[k] - dev[k]) for k in METRICS if cpu[k] is not None},
            "device_provenance": {k: dev["provenance"].get(k) for k in
                                  ("backend", "backend_version", "backend_cpu_only", "backend_build", "device",
                                   "gpu_name", "gpu_memory_peak_mb")},
            "median_forward_ms": {"cpu": cpu["timing"]["median_s"] * 1000, device: dev["timing"]["median_s"] * 1000}}


def fcn8s_passes(backend, prototxt, weights, device, images, warmup, precision="fp32"):
    """FCN-8s at 500x500 on `backend` in its own process (benchmarks/worker.py): median and p90
    forward time (ms), load time, peak GPU memory and RSS, and the backend's provenance."""
    cmd = [sys.executable, str(HERE / "worker.py"), backend, str(prototxt), str(weights), "--images", str(images),
           "--warmup", str(warmup), "--size", "500x500", "--device", device, "--precision", precision,
           "--quiet-share", "1e9"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"FCN-8s on {backend} {device} ({precision}) failed ({result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    times = sorted(out["forward_s"])
    return {"median_ms": statistics.median(times) * 1000, "p90_ms": float(np.percentile(times, 90)) * 1000,
            "load_s": out["load_s"], "passes": len(times),
            "gpu_memory_peak_mb": out["provenance"].get("gpu_memory_peak_mb"), "peak_rss_mb": out["peak_kib"] / 1024,
            "provenance": out["provenance"]}


def fcn8s_forward(device, images, warmup):
    import fcn8s

    # The same values as ensure_model()'s, written without pycaffe: one file for the torch proof and this one.
    prototxt, weights = fcn8s.ensure_model_without_caffe(log=lambda m: print(m, file=sys.stderr))
    result = fcn8s_passes("caffe", prototxt, weights, device, images, warmup)
    return {**result, "vs_torch_fp32_h200": result["median_ms"] / TORCH_FP32_H200_MS}


def save(report, path):
    if path:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu:0")
    parser.add_argument("--images", type=int, default=50, help="timed FCN-8s passes (default 50)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["demo", "fcn8s"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from segbench.backends.caffe_backend import build_info, build_summary, import_caffe

    caffe = import_caffe()
    build = build_summary(build_info(caffe))
    tf32 = os.environ.get("NVIDIA_TF32_OVERRIDE")
    report = {"device": args.device, "caffe": str(Path(caffe.__file__).parent), "build": build,
              "NVIDIA_TF32_OVERRIDE": tf32}
    print(f"Caffe at {report['caffe']}: {build}" + (f"; NVIDIA_TF32_OVERRIDE={tf32}" if tf32 is not None else ""))
    ok = True
    if "demo" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="segbench-gpu-") as tmp:
            demo = report["demo"] = demo_workflow(args.device, Path(tmp))
        ok = demo["agreement"] >= 0.999 and all(d < 1e-3 for d in demo["metric_differences"].values())
        print(f"demo, {demo['images']} images, Caffe on cpu and on {args.device}: {demo['agreement']:.5%} of pixels "
              f"agree; largest metric difference {max(demo['metric_differences'].values()):.2e} -> "
              f"{'ok' if ok else 'NOT ok'}")
        print(f"  {args.device}: {demo['device_provenance']}")
    save(report, args.json)  # after each part, so that a run cut short keeps what it measured
    if "fcn8s" not in args.skip:
        fcn = report["fcn8s"] = fcn8s_forward(args.device, args.images, args.warmup)
        print(f"FCN-8s layout, 500x500, Caffe on {args.device}, {fcn['passes']} passes after {args.warmup} warm-up: "
              f"median {fcn['median_ms']:.2f} ms, p90 {fcn['p90_ms']:.2f} ms, load {fcn['load_s']:.2f} s, "
              f"peak GPU memory {fcn['gpu_memory_peak_mb']} MB, peak RSS {fcn['peak_rss_mb']:.0f} MB; "
              f"{fcn['vs_torch_fp32_h200']:.2f}x PyTorch fp32 on an H200 ({TORCH_FP32_H200_MS} ms)")
    save(report, args.json)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
