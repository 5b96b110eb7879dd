"""Run one backend on the benchmark net in this process and print one JSON line with what it measured.

    python benchmarks/worker.py BACKEND PROTOTXT WEIGHTS --images N --warmup N --size HxW [--device gpu:N] [--caffe-path DIR]
        [--onnx FILE --precision fp32|bf16|fp16|int8]

BACKEND is `caffe`, `opencv`, `onnxruntime` or `openvino` (with --onnx FILE and --precision;
segbench's own backend classes, so the timing is
exactly what the workflow records: `time.perf_counter` around the forward pass).
`--caffe-path DIR` puts DIR first on sys.path, so that `import caffe` finds that
build (the stock one) rather than segbench's. The parent starts one process per
backend, so that the peak memory (VmHWM) is that backend's alone.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def busy_seconds():
    """CPU seconds all processes have used, from /proc/stat (user, nice, system, irq, softirq, steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + (fields[7] if len(fields) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def stub_skimage():
    """Stock pycaffe imports scikit-image at `import caffe` (segbench's patch 0004 defers that); segbench
    does not install it and nothing here calls caffe.io, so empty modules stand in for it."""
    import types
    try:
        import skimage  # noqa: F401
    except ImportError:
        for name in ("skimage", "skimage.io", "skimage.transform"):
            sys.modules[name] = types.ModuleType(name)


def reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["caffe", "opencv", "onnxruntime", "openvino", "torch"])
    parser.add_argument("prototxt")
    parser.add_argument("weights")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", default="500x500")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or gpu:N")
    parser.add_argument("--onnx", default=None, help="the ONNX file (onnxruntime, openvino)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--caffe-path", default=None)
    parser.add_argument("--save-scores", default=None, help="write the first image's scores here (.npy)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="time up to this many passes to get --images undisturbed ones (default 3 x --images)")
    parser.add_argument("--quiet-share", type=float, default=0.02,
                        help="a pass is disturbed if other processes used more than this share of one core")
    args = parser.parse_args()

    if args.caffe_path:
        sys.path.insert(0, args.caffe_path)
        stub_skimage()
    sys.path.insert(0, str(REPO))
    import numpy as np

    from segbench import images
    from segbench.backends import load_backend

    height, width = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(7)
    # Synthetic photos: smooth colour fields plus noise (the speed of a forward pass does not depend on them).
    photos = []
    for _ in range(max(args.images, 1)):
        base = rng.uniform(0, 255, (height // 50 + 2, width // 50 + 2, 3))
        field = np.kron(base, np.ones((50, 50, 1)))[:height, :width]
        photos.append(np.clip(field + rng.normal(0, 20, field.shape), 0, 255).astype(np.uint8))
    mean = [104.00698793, 116.66876762, 122.67891434]
    blobs = [images.to_network_input(p, mean, 1.0, "BGR") for p in photos]

    rss_start = status_kib("VmRSS")
    net = load_backend(args.backend, prototxt=args.prototxt, weights=args.weights, onnx=args.onnx, device=args.device,
                       input_blob="data", output_blob="score", threads=args.threads, precision=args.precision)
    load_hwm = status_kib("VmHWM")
    rss_loaded = status_kib("VmRSS")
    can_reset = reset_peak()
    # As the workflow does: shape the net for the input before the passes (OpenVINO compiles for it).
    reshape_s = net.reshape(blobs[0].shape)
    for _ in range(args.warmup):
        net.forward(blobs[0])
    # Each pass is timed as segbench times it; around it, the CPU time that other processes took
    # (all CPU time on the machine minus this process's) tells whether the pass was disturbed.
    passes = []
    limit = args.max_images or 3 * args.images
    while len([p for p in passes if not p["disturbed"]]) < args.images and len(passes) < limit:
        blob = blobs[len(passes) % len(blobs)]
        busy0, own0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
        scores, seconds = net.forward(blob)
        wall = time.perf_counter() - wall0
        other = max(0.0, (busy_seconds() - busy0) - (time.process_time() - own0))
        passes.append({"forward_s": seconds, "other_cpu_s": other,
                       "disturbed": other > args.quiet_share * wall})
        if len(passes) == 1 and args.save_scores:
            np.save(args.save_scores, scores)
    infer_hwm = status_kib("VmHWM")
    print(json.dumps({
        "backend": args.backend,
        "device": args.device,
        "provenance": {k: v for k, v in net.provenance().items() if k != "device"},
        "load_s": net.load_seconds,
        "reshape_s": reshape_s,
        "precision": args.precision,
        "forward_s": [p["forward_s"] for p in passes if not p["disturbed"]],
        "passes": passes,
        "warmup": args.warmup,
        "size": [height, width],
        "rss_before_load_kib": rss_start,
        "rss_after_load_kib": rss_loaded,
        "peak_during_load_kib": load_hwm,
        "peak_during_inference_kib": infer_hwm if can_reset else None,
        "peak_kib": max(load_hwm, infer_hwm),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cpu_s": time.process_time(),
    }))


if __name__ == "__main__":
    main()
