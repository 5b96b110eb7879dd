#!/usr/bin/env python3
"""What a new input shape costs on each backend, and what each backend's forward time includes.

    .venv/bin/python benchmarks/reshape.py [--images 8] [--threads N]

FCN-8s (the voc-fcn8s layout with random weights, benchmarks/fcn8s.py) on synthetic photos whose
shape alternates between 375x500 and 500x375 (H x W), as VOC's landscape and portrait photos do,
through segbench's Caffe and OpenCV backends, one backend after the other in this process. At
each new shape it does what the inference step does (segbench/steps.py run_inference): reshape(),
a first pass, then the timed pass on the shaped net, and reports per backend:

- the first pass at a new shape: what segbench timed before, each backend's forward() on an
  input of a new shape. Caffe re-shapes its net before its timer starts, while OpenCV, given an
  input of a new shape, re-allocates its whole net inside the timed forward();
- forward_s now: the pass on a net already shaped for the image;
- reshape_s now: reshape() plus the first pass, minus the pass on the shaped net.

Each backend first runs two passes at each shape untimed, so that the figures see a net whose
buffers have reached their size (Caffe grows a buffer only when a shape needs more than it holds).

Prints one table (medians, in seconds) and writes the figures as JSON with --json.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import fcn8s  # noqa: E402
import numpy as np  # noqa: E402

from segbench.backends import load_backend  # noqa: E402
from segbench.images import to_network_input  # noqa: E402

MEAN = [104.00698793, 116.66876762, 122.67891434]
SHAPES = [(375, 500), (500, 375)]


def photos(count, rng):
    out = []
    for k in range(count):
        height, width = SHAPES[k % 2]
        out.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return out


def measure(backend, prototxt, weights, blobs, threads):
    """At each new shape: reshape(), the first pass (timed), then a pass on the shaped net (timed).

    The first pass is what segbench's forward_s was before: each backend's forward() at a new
    shape. The second is forward_s now. Both passes of a shape run back to back, so that a slow
    spell of the machine touches both columns alike.
    """
    net = load_backend(backend, prototxt=str(prototxt), weights=str(weights), threads=threads)
    # Warm-up at both shapes: Caffe allocates when a blob outgrows what it had, once, so the
    # figures compare steady states rather than whichever shape came first.
    for blob in blobs[:4]:
        net.forward(blob)
    first, shaped, reshape = [], [], []
    for blob in blobs[4:]:
        setup = net.reshape(blob.shape)
        first.append(net.forward(blob)[1])
        shaped.append(net.forward(blob)[1])
        reshape.append(setup + first[-1] - shaped[-1])
    return {"load_s": net.load_seconds, "first_pass_s": first, "forward_s": shaped, "reshape_s": reshape,
            "provenance": net.provenance()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="shape changes measured per backend")
    parser.add_argument("--threads", type=int, default=None, help="backend threads (default: all cores)")
    parser.add_argument("--json", default=None, help="write every measurement here")
    args = parser.parse_args()
    prototxt, weights, _ = fcn8s.ensure_model(log=lambda m: print(m, file=sys.stderr))
    rng = np.random.default_rng(3)
    blobs = [to_network_input(p, MEAN) for p in photos(args.images + 4, rng)]
    results = {name: measure(name, prototxt, weights, blobs, args.threads) for name in ("caffe", "opencv")}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"FCN-8s layout, {args.images} passes per column, shapes alternating 375x500 / 500x375 (HxW); "
          f"{cpu}, {os.cpu_count()} cores; medians in seconds")
    header = ["backend", "forward() at a new shape (forward_s before)", "forward_s now (shaped net)",
              "reshape_s now", "share of the old figure that was re-shaping"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in results.items():
        old, now, reshape = (statistics.median(r[key]) for key in ("first_pass_s", "forward_s", "reshape_s"))
        print(f"| {name} | {old:.3f} | {now:.3f} | {reshape:.3f} | {(old - now) / old:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
