"""FCN-8s as released for PASCAL VOC (voc-fcn8s deploy.prototxt), with deterministic random weights.

The layout is that of fcn.berkeleyvision.org's voc-fcn8s: a VGG-16 body whose
conv1_1 pads by 100, fc6/fc7 as 7x7 and 1x1 convolutions with 4096 outputs,
21-class score layers, 2x, 2x and 8x Deconvolution upsampling without bias, fused
with the pool4 and pool3 scores through Crop layers at offsets 5, 9 and 31. The
`Input` layer's example shape is 1x3x500x500; the net is reshaped per image.

No trained weights can be downloaded here, and the speed of a forward pass does
not depend on their values, so the weights are drawn from a seeded generator
(He-scaled normal, so activations keep their magnitude through the ReLUs and no
denormals slow anything down). They are about 538 MB: generated into a cache
directory, never committed, and regenerated only if missing or if the file no
longer matches the sha256 recorded when it was written.
"""

import hashlib
import json
import os
import time
from pathlib import Path

from segbench.provenance import sha256_file

SEED = 20240604
GENERATOR_VERSION = 1  # bump when the weights recipe changes
NUM_CLASSES = 21
EXAMPLE_HW = (500, 500)


def cache_dir():
    root = Path(os.environ.get("SEGBENCH_CACHE", Path.home() / ".cache" / "segbench"))
    return root / "bench"


# --------------------------------------------------------------------------- prototxt

def _conv(name, bottom, num_output, kernel, pad=0, top=None):
    pad_s = f" pad: {pad}" if pad else ""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}"\n'
            f'  convolution_param {{ num_output: {num_output} kernel_size: {kernel}{pad_s} stride: 1 }} }}\n')


def _relu(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def _pool(name, bottom):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f'  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')


def _deconv(name, bottom, kernel, stride):
    return (f'layer {{ name: "{name}" type: "Deconvolution" bottom: "{bottom}" top: "{name}"\n'
            f'  convolution_param {{ num_output: {NUM_CLASSES} bias_term: false kernel_size: {kernel} '
            f'stride: {stride} }} }}\n')


def _crop(name, bottom, like, offset):
    return (f'layer {{ name: "{name}" type: "Crop" bottom: "{bottom}" bottom: "{like}" top: "{name}"\n'
            f'  crop_param {{ axis: 2 offset: {offset} }} }}\n')


def _sum(name, a, b):
    return (f'layer {{ name: "{name}" type: "Eltwise" bottom: "{a}" bottom: "{b}" top: "{name}"\n'
            f'  eltwise_param {{ operation: SUM }} }}\n')


def prototxt():
    """The deploy.prototxt text of voc-fcn8s."""
    h, w = EXAMPLE_HW
    text = ('name: "FCN-8s"\n'
            "# voc-fcn8s layout (fcn.berkeleyvision.org), written by segbench's benchmarks/fcn8s.py\n"
            f'layer {{ name: "input" type: "Input" top: "data"\n'
            f'  input_param {{ shape {{ dim: 1 dim: 3 dim: {h} dim: {w} }} }} }}\n')
    bottom = "data"
    for stage, (convs, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, convs + 1):
            name = f"conv{stage}_{i}"
            text += _conv(name, bottom, width, 3, pad=100 if name == "conv1_1" else 1)
            text += _relu(f"relu{stage}_{i}", name)
            bottom = name
        text += _pool(f"pool{stage}", bottom)
        bottom = f"pool{stage}"
    text += _conv("fc6", "pool5", 4096, 7) + _relu("relu6", "fc6")
    text += 'layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }\n'
    text += _conv("fc7", "fc6", 4096, 1) + _relu("relu7", "fc7")
    text += 'layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }\n'
    text += _conv("score_fr", "fc7", NUM_CLASSES, 1)
    text += _deconv("upscore2", "score_fr", 4, 2)
    text += _conv("score_pool4", "pool4", NUM_CLASSES, 1)
    text += _crop("score_pool4c", "score_pool4", "upscore2", 5)
    text += _sum("fuse_pool4", "upscore2", "score_pool4c")
    text += _deconv("upscore_pool4", "fuse_pool4", 4, 2)
    text += _conv("score_pool3", "pool3", NUM_CLASSES, 1)
    text += _crop("score_pool3c", "score_pool3", "upscore_pool4", 9)
    text += _sum("fuse_pool3", "upscore_pool4", "score_pool3c")
    text += _deconv("upscore8", "fuse_pool3", 16, 8)
    text += _crop("score", "upscore8", "data", 31)
    return text


# --------------------------------------------------------------------------- FLOPs

def _layers():
    """(name, type, bottoms, top, text) of each layer of prototxt(), in order (it writes one top each)."""
    import re

    for block in re.findall(r"layer \{.*?\n(?:  .*\n)*", prototxt()):
        yield (re.search(r'name: "([^"]+)"', block).group(1), re.search(r'type: "([^"]+)"', block).group(1),
               re.findall(r'bottom: "([^"]+)"', block), re.search(r'top: "([^"]+)"', block).group(1), block)


def layer_shapes(height, width):
    """Walk the net at an input size: [(name, type, FLOPs, output (C, H, W))] for every layer after the input.

    Convention: FLOPs of Convolution and Deconvolution layers are 2 x their multiply-adds (a
    multiply-add is 2 FLOPs); biases are not counted. Other layers are listed with 0: ReLU,
    pooling, Crop and Eltwise move memory and do about one operation per element, less than
    0.1% of the total.
    """
    import re

    shapes = {"data": (3, height, width)}
    rows = []
    for name, kind, bottoms, top, block in _layers():

        def num(key, default=0):
            match = re.search(rf"{key}: (\d+)", block)
            return int(match.group(1)) if match else default

        if kind == "Input":
            continue
        c, h, w = shapes[bottoms[0]]
        flops = 0
        if kind == "Convolution":
            k, pad, out = num("kernel_size"), num("pad"), num("num_output")
            oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            flops, shape = 2 * out * c * k * k * oh * ow, (out, oh, ow)
        elif kind == "Deconvolution":
            k, s, out = num("kernel_size"), num("stride"), num("num_output")
            # Every input pixel scatters a k x k patch into each of `out` channels.
            flops, shape = 2 * c * out * k * k * h * w, (out, (h - 1) * s + k, (w - 1) * s + k)
        elif kind == "Pooling":
            shape = (c, -(-(h - 2) // 2) + 1, -(-(w - 2) // 2) + 1)  # Caffe rounds up
        elif kind == "Crop":
            shape = (c,) + shapes[bottoms[1]][1:]
        elif kind in ("ReLU", "Dropout", "Eltwise"):
            shape = (c, h, w)
        else:
            raise ValueError(f"unknown layer type {kind}")
        shapes[top] = shape
        rows.append((name, kind, flops, shape))
    return rows


def gflops(height, width):
    """GFLOP of one forward pass at height x width (2 x the Convolution and Deconvolution multiply-adds)."""
    return sum(flops for _, _, flops, _ in layer_shapes(height, width)) / 1e9


# --------------------------------------------------------------------------- weights

def _fill(net, seed):
    """He-scaled normal weights (std sqrt(2 / fan_in)) and small biases, in layer order, from one generator."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        weights = blobs[0].data
        fan_in = int(np.prod(weights.shape[1:]))
        if name.startswith("upscore"):
            # Deconvolution weights are (in, out, k, k); each output sums in * (k/stride)^2 terms.
            fan_in = weights.shape[0] * 4
        weights[...] = rng.standard_normal(weights.shape, dtype=np.float32)
        weights *= np.float32(np.sqrt(2.0 / fan_in))
        if len(blobs) > 1:
            blobs[1].data[...] = rng.standard_normal(blobs[1].data.shape, dtype=np.float32) * np.float32(0.01)


def param_shapes():
    """[(layer name, [shape of each weight blob])] of the layers with weights, in net order: what
    pycaffe's net.params holds for this prototxt (Convolution: (out, in, k, k) and (out,);
    Deconvolution without bias: (in, out, k, k))."""
    import re

    channels = {"data": 3}
    shapes = []
    for name, kind, bottoms, top, block in _layers():
        if kind == "Input":
            continue
        c = channels[bottoms[0]]
        if kind in ("Convolution", "Deconvolution"):
            out = int(re.search(r"num_output: (\d+)", block).group(1))
            k = int(re.search(r"kernel_size: (\d+)", block).group(1))
            if kind == "Convolution":
                shapes.append((name, [(out, c, k, k), (out,)]))
            else:
                shapes.append((name, [(c, out, k, k)]))
            c = out
        channels[top] = c
    return shapes


def write_weights_without_caffe(path, seed=SEED):
    """The same weights as ensure_model() generates through pycaffe (the same generator, drawn in the
    same order), written with segbench's own Caffe protobuf classes: for machines without pycaffe
    (a GPU machine that runs the torch backend). The values are equal; the file's bytes are not
    (pycaffe also writes the layers without weights)."""
    import numpy as np

    from segbench.caffe_proto import message_class

    rng = np.random.default_rng(seed)
    net = message_class("NetParameter")()
    net.name = "FCN-8s"
    for name, blob_shapes in param_shapes():
        layer = net.layer.add()
        layer.name = name
        layer.type = "Deconvolution" if name.startswith("upscore") else "Convolution"
        for i, shape in enumerate(blob_shapes):
            if i == 0:
                fan_in = shape[0] * 4 if name.startswith("upscore") else int(np.prod(shape[1:]))
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            else:
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(values.ravel())
    tmp = Path(path).with_suffix(".part")
    tmp.write_bytes(net.SerializeToString())
    os.replace(tmp, path)


def ensure_model_without_caffe(log=print):
    """(prototxt, weights) of the benchmark net written without pycaffe (write_weights_without_caffe),
    cached beside the pycaffe-made one."""
    text = prototxt()
    key = hashlib.sha256(f"{text}\nseed={SEED}\nv={GENERATOR_VERSION}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"fcn8s-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    proto, weights = folder / "deploy.prototxt", folder / "fcn8s-random-nocaffe.caffemodel"
    if not proto.is_file() or proto.read_text() != text:
        proto.write_text(text)
    if not weights.is_file():
        start = time.perf_counter()
        write_weights_without_caffe(weights)
        log(f"wrote {weights} without pycaffe in {time.perf_counter() - start:.1f} s")
    return proto, weights


def ensure_model(caffe=None, log=print):
    """Paths (prototxt, caffemodel) of the benchmark net, generating the weights if needed.

    Returns (prototxt, weights, info) where info records the seed, the sha256 and whether
    the weights were generated now (with the time it took) or found in the cache.
    """
    text = prototxt()
    key = hashlib.sha256(f"{text}\nseed={SEED}\nv={GENERATOR_VERSION}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"fcn8s-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    proto, weights, record = folder / "deploy.prototxt", folder / "fcn8s-random.caffemodel", folder / "weights.json"
    if not proto.is_file() or proto.read_text() != text:
        proto.write_text(text)
    if weights.is_file() and record.is_file():
        start = time.perf_counter()
        recorded = json.loads(record.read_text())
        if recorded.get("size") == weights.stat().st_size and recorded.get("sha256") == sha256_file(weights):
            return proto, weights, {**recorded, "generated": False, "check_s": time.perf_counter() - start}
        log(f"{weights}: does not match {record.name}; generating it again")
    if caffe is None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        import caffe
    start = time.perf_counter()
    net = caffe.Net(str(proto), caffe.TEST)
    _fill(net, SEED)
    tmp = weights.with_suffix(".part")
    net.save(str(tmp))
    del net
    info = {"seed": SEED, "generator_version": GENERATOR_VERSION, "size": tmp.stat().st_size,
            "sha256": sha256_file(tmp)}
    os.replace(tmp, weights)
    record.write_text(json.dumps(info, indent=1) + "\n")
    return proto, weights, {**info, "generated": True, "generate_s": time.perf_counter() - start}
