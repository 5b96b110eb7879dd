#!/usr/bin/env python3
"""The torch backend on a GPU, checked as a user with a GPU box would check a set-up (after `make torch`
there; on the project's lent GPU machine, tools/gpu/proof.sh brings what it lacks):

    .venv/bin/python benchmarks/gpu_torch.py                  # device gpu:0
    .venv/bin/python benchmarks/gpu_torch.py --device cpu     # the same checks on the CPU (of the script itself)

1. The bundled demo through the real workflow: torch runs on --device at fp32, tf32, fp16 and bf16
   beside a torch fp32 run on the CPU (and a Caffe run on the CPU where pycaffe is installed), each
   compared pixel by pixel with the CPU fp32 run in the comparison table. fp32 and tf32 must agree
   on at least 99.9% of pixels (exit status 1 otherwise). On the CPU only fp32, and bf16 where the
   CPU has it, run.
2. The FCN-8s layout (benchmarks/fcn8s.py, random weights; written without pycaffe where there is
   none) at 500x500 through segbench's torch backend in each precision, each in its own process
   (benchmarks/worker.py): median and p90 forward time, load time, peak GPU memory, and the ratio to
   the PyTorch figures on an H200 in the shared notes (gpu.md).
3. The whole workflow on --throughput-images synthetic 500x375/375x500 photos with FCN-8s at fp16
   (bf16 on a CPU that has it, else fp32): images per second end to end against images per second of
   the forward passes alone, and where the rest of the time goes (the job logs' durations per step).
   Configured as for a GPU box: one inference job (one model load) and batches of images / cores, so
   that decoding, resizing and scoring run on every core while the GPU works.

Prints a report, and writes it as JSON with --json.
"""

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402

# FCN-8s layout, 500x500, PyTorch on an H200, median forward (shared notes, gpu.md); fp16 with
# channels_last, as the torch backend runs fp16 on a GPU.
H200_MS = {"fp32": 12.40, "tf32": 3.51, "bf16": 2.44, "fp16": 1.70}
# As a module of this interpreter: on the GPU machine snakemake is a carried wheel on PYTHONPATH (tools/gpu/proof.sh).
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def precisions_for(device):
    from segbench import cpu

    if device != "cpu":
        return ["fp32", "tf32", "fp16", "bf16"]
    return ["fp32"] + (["bf16"] if "bf16" in cpu.native_precisions() else [])


def caffe_here():
    from segbench.backends.caffe_backend import caffe_available

    return caffe_available()


def run_snakemake(workdir, cores):
    start = time.perf_counter()
    result = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", str(cores)],
                            capture_output=True, text=True, cwd=workdir)
    if result.returncode != 0:
        raise SystemExit(f"the workflow failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def demo_workflow(device, workdir, cores):
    shutil.copytree(REPO / "resources" / "demo" / "VOC", workdir / "VOC")
    shutil.copytree(REPO / "resources" / "demo" / "fcn-tiny", workdir / "model")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"]["root"] = "VOC"
    config["models"]["fcn-tiny"].update(prototxt="model/deploy.prototxt", weights="model/fcn-tiny.caffemodel")
    runs = {"torch-cpu-fp32": {"model": "fcn-tiny", "backend": "torch", "device": "cpu"}}
    if caffe_here():
        runs["caffe-cpu"] = {"model": "fcn-tiny", "backend": "caffe", "device": "cpu", "reference": "torch-cpu-fp32"}
    for precision in precisions_for(device):
        name = f"torch-{device.replace(':', '')}-{precision}"
        if name != "torch-cpu-fp32":
            runs[name] = {"model": "fcn-tiny", "backend": "torch", "device": device, "precision": precision,
                          "reference": "torch-cpu-fp32"}
    config["runs"] = runs
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_snakemake(workdir, cores)
    with open(workdir / "results" / "comparison.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    out = {}
    for name, row in rows.items():
        summary = json.loads((workdir / "results" / name / "summary.json").read_text())
        prov = summary["provenance"]
        out[name] = {"precision": row["precision"], "device": row["device"],
                     "pixel_agreement": float(row["pixel_agreement"]) if row["pixel_agreement"] else None,
                     "mean_iou": float(row["mean_iou"]),
                     "mean_iou_diff": float(row["mean_iou_diff"]) if row["mean_iou_diff"] else None,
                     "median_forward_ms": float(row["median_forward_s"]) * 1000,
                     "provenance": {k: prov.get(k) for k in ("backend_version", "dtype", "memory_format", "tf32_flags",
                                                              "cudnn_benchmark", "torch_cuda_version", "cudnn_version",
                                                              "gpu_name", "gpu_memory_peak_mb")}}
    return out


def fcn8s_weights():
    import fcn8s

    # The same values as pycaffe's ensure_model(), and the same file as benchmarks/gpu_caffe.py's.
    return fcn8s.ensure_model_without_caffe(log=lambda m: print(m, file=sys.stderr))


def fcn8s_forward(device, precision, images, warmup):
    from gpu_caffe import fcn8s_passes

    prototxt, weights = fcn8s_weights()
    result = fcn8s_passes("torch", prototxt, weights, device, images, warmup, precision)
    return {**result, "memory_format": result["provenance"].get("memory_format"),
            "vs_h200_notes": result["median_ms"] / H200_MS[precision] if device != "cpu" else None}

STEPS = [("decode_labels_", "decode ground truth"), ("prepare_inputs_", "decode + resize photos"),
         ("infer_", "inference jobs"), ("score_", "per-image metrics"), ("aggregate", "aggregation"),
         ("plot_", "plots"), ("compare", "comparison"), ("agreement", "agreement")]


def step_seconds(workdir):
    """Seconds each step's jobs took, from the "done in" line of each job's log."""
    totals = defaultdict(float)
    for log in (workdir / "logs").rglob("*.log"):
        text = log.read_text(errors="replace")
        rule = re.search(r"started rule (\S+)", text)
        done = re.search(r"done in ([0-9.]+) s", text)
        if rule and done:
            step = next((title for prefix, title in STEPS if rule.group(1).startswith(prefix)), rule.group(1))
            totals[step] += float(done.group(1))
    return dict(totals)


def throughput(device, precision, n_images, workdir, cores, batch_size, shard_size):
    import workflow

    workflow.write_dataset(workdir / "VOC", n_images)
    prototxt, weights = fcn8s_weights()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"].update(root="VOC", split="synth", limit=None)
    config["models"] = {"fcn8s": {"prototxt": str(prototxt), "weights": str(weights)}}
    config["runs"] = {"fcn8s-torch": {"model": "fcn8s", "backend": "torch", "device": device,
                                      "precision": precision}}
    # What a GPU box wants: one inference job (one model load) and decoding/metrics spread over the cores.
    config["batch_size"] = batch_size
    config.setdefault("inference", {})["shard_size"] = shard_size
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    wall = run_snakemake(workdir, cores)
    timing = json.loads((workdir / "results" / "fcn8s-torch" / "summary.json").read_text())["timing"]
    steps = step_seconds(workdir)
    return {"images": n_images, "precision": precision, "batch_size": batch_size, "shard_size": shard_size,
            "wall_s": wall, "forward_s": timing["total_s"],
            "images_per_s_end_to_end": n_images / wall, "images_per_s_forward": n_images / timing["total_s"],
            "forward_ms_per_image": 1000 * timing["total_s"] / n_images,
            "outside_forward_ms_per_image": 1000 * (wall - timing["total_s"]) / n_images,
            "model_loads": timing["model_loads"], "model_load_s": timing["model_load_s"], "step_seconds": steps,
            "inference_jobs_outside_forward_s": steps.get("inference jobs", 0.0) - timing["total_s"]}


def main():
    from gpu_caffe import save

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu:0")
    parser.add_argument("--images", type=int, default=50, help="timed FCN-8s passes per precision (default 50)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--throughput-images", type=int, default=500)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=None,
                        help="throughput run's batch_size (default: images / cores, so that every core decodes and scores)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="throughput run's inference.shard_size (default: all images, one model load)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["demo", "fcn8s", "throughput"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = {"device": args.device, "precisions": precisions_for(args.device)}
    ok = True
    if "demo" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="segbench-gpu-demo-") as tmp:
            demo = report["demo"] = demo_workflow(args.device, Path(tmp), args.cores)
        print(f"demo through the workflow, torch on {args.device} against torch fp32 on the CPU:")
        for name, row in demo.items():
            agreement = row["pixel_agreement"]
            need = 0.999 if row["precision"] in ("fp32", "tf32") and name != "torch-cpu-fp32" else None
            verdict = "" if need is None or agreement is None else (" ok" if agreement >= need else " NOT ok")
            ok &= verdict != " NOT ok"
            print(f"  {name:22} {row['precision']:5} agreement {agreement if agreement is not None else '-'}"
                  f"{verdict}, mean IoU {row['mean_iou']:.4f} (diff {row['mean_iou_diff']}), median forward "
                  f"{row['median_forward_ms']:.2f} ms; {row['provenance']}")
    save(report, args.json)  # after each part, so that a run cut short keeps what it measured
    if "fcn8s" not in args.skip:
        report["fcn8s"] = {}
        print(f"FCN-8s layout, 500x500, torch on {args.device}, {args.images} passes after {args.warmup} warm-up:")
        for precision in precisions_for(args.device):
            fcn = report["fcn8s"][precision] = fcn8s_forward(args.device, precision, args.images, args.warmup)
            versus = (f"; {fcn['vs_h200_notes']:.2f}x the notes' {H200_MS[precision]} ms (target: within 1.15x)"
                      if fcn["vs_h200_notes"] else "")
            print(f"  {precision:5} median {fcn['median_ms']:.2f} ms, p90 {fcn['p90_ms']:.2f} ms, load "
                  f"{fcn['load_s']:.2f} s, peak GPU memory {fcn['gpu_memory_peak_mb']} MB, peak RSS "
                  f"{fcn['peak_rss_mb']:.0f} MB, {fcn['memory_format']}{versus}")
    save(report, args.json)  # after each part, so that a run cut short keeps what it measured
    if "throughput" not in args.skip:
        precision = "fp16" if args.device != "cpu" else ("bf16" if "bf16" in precisions_for("cpu") else "fp32")
        with tempfile.TemporaryDirectory(prefix="segbench-gpu-throughput-") as tmp:
            n = args.throughput_images
            batch = args.batch_size or max(1, -(-n // args.cores))
            t = report["throughput"] = throughput(args.device, precision, n, Path(tmp), args.cores, batch,
                                                  args.shard_size or n)
        print(f"whole workflow, {t['images']} synthetic photos, FCN-8s {precision} on {args.device}, --cores {args.cores}, "
              f"batch_size {t['batch_size']}, shard_size {t['shard_size']}: "
              f"{t['images_per_s_end_to_end']:.1f} images/s end to end, {t['images_per_s_forward']:.1f} images/s of "
              f"forward passes alone ({t['forward_ms_per_image']:.2f} ms per image forward, "
              f"{t['outside_forward_ms_per_image']:.2f} ms per image outside it)")
        print("  job time per step (s, summed over jobs; jobs run in parallel): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(t["step_seconds"].items(), key=lambda kv: -kv[1])))
        print(f"  inference jobs outside the forward passes: {t['inference_jobs_outside_forward_s']:.1f} s "
              f"({t['model_loads']} model loads, {t['model_load_s']:.2f} s each)")
    save(report, args.json)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
