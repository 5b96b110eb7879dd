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
