"""The layout of the released FCN-8s deploy prototxt (Input 1x3x500x500 reshaped per image, Crop
layers with offsets, Deconvolution without bias) through both backends, with generated weights,
on images of several sizes: every prediction has its ground truth's size."""

import sys

import numpy as np
import pytest
from PIL import Image

from segbench.labels import voc_palette
from workflow_helpers import REPO, make_workdir, read_config, snakemake, write_config

sys.path.insert(0, str(REPO / "benchmarks"))
import fcn8s  # noqa: E402

pytestmark = pytest.mark.slow

SIZES = [(64, 96), (131, 177), (200, 150)]  # (H, W), none a multiple of 32


def test_fcn8s_layout_runs_through_both_backends_at_any_size(tmp_path):
    prototxt, weights, _ = fcn8s.ensure_model()
    text = prototxt.read_text()
    assert "dim: 500" in text and "offset: 31" in text and "bias_term: false" in text
    workdir = make_workdir(tmp_path / "wd")
    voc = workdir / "VOC"
    rng = np.random.default_rng(0)
    ids = []
    for n, (h, w) in enumerate(SIZES):
        image_id = f"size_{n}"
        ids.append(image_id)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        labels = Image.fromarray(rng.integers(0, 21, (h, w), dtype=np.uint8), mode="P")
        labels.putpalette(voc_palette().tobytes())
        labels.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation" / "sizes.txt").write_text("\n".join(ids) + "\n")
    config = read_config(workdir)
    config["dataset"].update(split="sizes", limit=None)
    config["models"] = {"fcn8s": {"prototxt": str(prototxt), "weights": str(weights)}}
    config["runs"] = {"fcn8s-caffe": {"model": "fcn8s", "backend": "caffe"},
                      "fcn8s-opencv": {"model": "fcn8s", "backend": "opencv"}}
    config["inference"]["warmup"] = 0
    write_config(workdir, config)
    snakemake(workdir)
    predictions = {}
    for run in ("fcn8s-caffe", "fcn8s-opencv"):
        for image_id, (h, w) in zip(ids, SIZES):
            with Image.open(workdir / "results" / run / "predictions" / f"{image_id}.png") as image:
                assert (image.height, image.width) == (h, w)
                predictions[run, image_id] = np.asarray(image)
    agree = np.mean([(predictions["fcn8s-caffe", i] == predictions["fcn8s-opencv", i]).mean() for i in ids])
    assert agree >= 0.99


def test_weights_written_without_caffe_have_pycaffes_shapes_and_values(tmp_path):
    """The writer for machines without pycaffe draws the same values as pycaffe's; here on a
    narrower copy of the layout (the real one is 538 MB), with pycaffe as the reference."""
    from segbench.backends.caffe_backend import import_caffe
    from segbench.caffe_model import load_net

    caffe = import_caffe()
    narrow = fcn8s.prototxt().replace("num_output: 4096", "num_output: 16").replace("num_output: 512", "num_output: 8")
    original = fcn8s.prototxt
    fcn8s.prototxt = lambda: narrow
    try:
        proto = tmp_path / "deploy.prototxt"
        proto.write_text(narrow)
        net = caffe.Net(str(proto), caffe.TEST)
        assert [(name, [tuple(b.data.shape) for b in blobs]) for name, blobs in net.params.items()] == \
            [(name, [tuple(s) for s in shapes]) for name, shapes in fcn8s.param_shapes()]
        fcn8s._fill(net, 5)
        net.save(str(tmp_path / "pycaffe.caffemodel"))
        fcn8s.write_weights_without_caffe(tmp_path / "own.caffemodel", seed=5)
    finally:
        fcn8s.prototxt = original
    ours = {layer.name: layer.blobs for layer in load_net(proto, tmp_path / "own.caffemodel").layers if layer.blobs}
    theirs = {layer.name: layer.blobs for layer in load_net(proto, tmp_path / "pycaffe.caffemodel").layers if layer.blobs}
    assert ours.keys() == theirs.keys() and len(ours) == 21
    for name in ours:
        assert all(np.array_equal(a, b) for a, b in zip(ours[name], theirs[name], strict=True)), name
