"""The benchmark net's ONNX export and its int8 version, cached beside its Caffe weights.

Made with segbench's own exporter and quantizer (segbench.onnx_export, segbench.quantize), as the
workflow makes them. The int8 model is calibrated on synthetic photos drawn from another seed than
the timed ones.
"""

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CALIBRATION_SEED = 11


def synthetic_photos(n, height, width, seed):
    """Smooth colour fields plus noise, as benchmarks/worker.py draws its photos."""
    import numpy as np

    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(n):
        base = rng.uniform(0, 255, (height // 50 + 2, width // 50 + 2, 3))
        field = np.kron(base, np.ones((50, 50, 1)))[:height, :width]
        photos.append(np.clip(field + rng.normal(0, 20, field.shape), 0, 255).astype(np.uint8))
    return photos


def _fresh(path, source):
    return path.is_file() and path.stat().st_mtime >= Path(source).stat().st_mtime


def ensure_onnx(prototxt, weights, log=print):
    """The fp32 ONNX export of the benchmark net (made once, then cached)."""
    import hashlib

    from segbench.onnx_export import EXPORTER_VERSION, export_onnx

    # One file per exporter version: a new exporter exports again.
    path = Path(weights).with_name(f"fcn8s-random-{hashlib.sha256(EXPORTER_VERSION.encode()).hexdigest()[:8]}.onnx")
    if not _fresh(path, weights):
        start = time.perf_counter()
        export_onnx(prototxt, weights, path)
        log(f"  exported {path} in {time.perf_counter() - start:.1f} s")
    return path


def ensure_int8(onnx_path, size, images=4, method="minmax", log=print):
    """The int8 (QDQ) model, calibrated on `images` synthetic photos of `size` (H, W)."""
    from segbench import images as segbench_images
    from segbench.quantize import quantize_int8

    height, width = size
    path = Path(onnx_path).with_name(f"fcn8s-random-int8-{method}-{images}x{height}x{width}.onnx")
    if not _fresh(path, onnx_path):
        mean = [104.00698793, 116.66876762, 122.67891434]
        blobs = [(f"calibration_{i}", segbench_images.to_network_input(p, mean, 1.0, "BGR"))
                 for i, p in enumerate(synthetic_photos(images, height, width, CALIBRATION_SEED))]
        start = time.perf_counter()
        quantize_int8(onnx_path, path, blobs, method=method)
        log(f"  quantized {path.name} ({method}, {images} calibration photos) in {time.perf_counter() - start:.1f} s")
    return path


def demo_agreement(variants, images=8, log=print):
    """Argmax agreement of each (backend, precision) with fp32 Caffe on the bundled demo model and the
    first `images` demo photos: on the benchmark net's random weights agreement says nothing.

    `variants`: list of (label, backend, precision). Returns {label: agreement}."""
    import tempfile

    import numpy as np

    from segbench import images as segbench_images
    from segbench.backends import load_backend
    from segbench.quantize import quantize_int8

    demo = REPO / "resources" / "demo"
    prototxt, weights = demo / "fcn-tiny" / "deploy.prototxt", demo / "fcn-tiny" / "fcn-tiny.caffemodel"
    mean = [104.00698793, 116.66876762, 122.67891434]
    voc = demo / "VOC"

    def blobs_of(split, n):
        ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
        return [(i, segbench_images.to_network_input(
            segbench_images.read_image(voc / "JPEGImages" / f"{i}.jpg"), mean, 1.0, "BGR")) for i in ids]

    scored, calibration = blobs_of("demo", images), blobs_of("calibration", 8)
    folder = Path(tempfile.mkdtemp(prefix="segbench-agreement-"))
    from segbench.onnx_export import export_onnx

    fp32 = folder / "fp32.onnx"
    export_onnx(prototxt, weights, fp32)
    int8 = folder / "int8.onnx"
    quantize_int8(fp32, int8, calibration)

    def classes(backend, precision):
        onnx = int8 if precision == "int8" else fp32
        net = load_backend(backend, prototxt=str(prototxt), weights=str(weights), onnx=str(onnx),
                           precision=precision, threads=None)
        out = []
        for _, blob in scored:
            net.reshape(blob.shape)
            out.append(np.asarray(net.forward(blob)[0]).argmax(0))
        return out

    reference = classes("caffe", "fp32")
    result = {}
    for label, backend, precision in variants:
        ours = classes(backend, precision)
        result[label] = float(sum((a == b).sum() for a, b in zip(ours, reference)) /
                              sum(a.size for a in reference))
    log(f"  agreement with fp32 Caffe on the demo model ({images} demo photos, int8 calibrated on the 8 "
        f"calibration photos): " + json.dumps({k: round(v, 5) for k, v in result.items()}))
    return result
