"""The inference step with the real backends: what is timed, re-shaping reported apart, and model
outputs that cannot be scored refused with a message that names the model or the image."""

import json

import numpy as np
import pytest
from PIL import Image

from segbench.backends import load_backend
from segbench.backends.caffe_backend import import_caffe
from segbench.files import write_batch
from segbench.images import to_network_input
from segbench.steps import ModelOutputError, run_inference
from workflow_helpers import DEMO

MODEL = dict(prototxt=str(DEMO / "fcn-tiny" / "deploy.prototxt"),
             weights=str(DEMO / "fcn-tiny" / "fcn-tiny.caffemodel"),
             mean=[104.00698793, 116.66876762, 122.67891434], scale=1.0, channel_order="BGR",
             input_blob="data", output_blob="score")


def photo(image_id):
    return np.array(Image.open(DEMO / "VOC" / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))


def alternating_shapes():
    """Four photos whose shapes alternate between H x W and W x H (crops of demo photos)."""
    side, other = 96, 72
    crops = []
    for k, image_id in enumerate(["demo_000", "demo_001", "demo_002", "demo_003"]):
        rgb = photo(image_id)
        h, w = (other, side) if k % 2 == 0 else (side, other)
        crops.append(np.ascontiguousarray(rgb[:h, :w]))
    return crops


def infer(tmp_path, backend, rgbs, warmup, num_classes=21, model=MODEL):
    ids = [f"img_{k}" for k in range(len(rgbs))]
    batch = tmp_path / f"{backend}-inputs.npz"
    write_batch(batch, ids, image=rgbs, source_hw=[np.array(r.shape[:2]) for r in rgbs])
    pngs = [tmp_path / backend / f"{i}.png" for i in ids]
    shard = tmp_path / f"{backend}-shard.json"
    run_inference(ids, [batch], pngs, shard, model, backend, "cpu", warmup, threads=1, num_classes=num_classes)
    return json.loads(shard.read_text())["images"], pngs


@pytest.mark.parametrize("backend", ["caffe", "opencv"])
@pytest.mark.parametrize("warmup", [0, 2])
def test_each_new_shape_is_shaped_before_the_timed_pass(tmp_path, backend, warmup):
    rgbs = alternating_shapes()
    records, pngs = infer(tmp_path, backend, rgbs, warmup)
    assert [r["id"] for r in records] == ["img_0", "img_1", "img_2", "img_3"]  # the shard's order
    assert all(r["forward_s"] > 0 for r in records)
    # Images go in order of shape: (72, 96) x 2, then (96, 72) x 2. The first shape is set during
    # warm-up when there is one; every other new shape is re-shaped, once, for its first image.
    reshaped = [r["id"] for r in records if r["reshape_s"] is not None]
    assert reshaped == (["img_1"] if warmup else ["img_0", "img_1"])
    # The order of the passes changes no prediction: each equals a pass of a fresh net on that image alone.
    for rgb, png in zip(rgbs, pngs):
        net = load_backend(backend, prototxt=MODEL["prototxt"], weights=MODEL["weights"], threads=1)
        scores, _ = net.forward(to_network_input(rgb, MODEL["mean"]))
        np.testing.assert_array_equal(np.array(Image.open(png)), scores.argmax(0))


def test_a_model_with_other_classes_than_the_dataset_is_refused(tmp_path):
    with pytest.raises(ModelOutputError) as error:
        infer(tmp_path, "caffe", alternating_shapes()[:1], warmup=1, num_classes=19)
    message = str(error.value)
    assert MODEL["prototxt"] in message and "'score'" in message
    assert "21 channels" in message and "dataset.num_classes is 19" in message
    with pytest.raises(ModelOutputError, match="21 channels.*num_classes is 22"):  # also without warm-up
        infer(tmp_path, "opencv", alternating_shapes()[:1], warmup=0, num_classes=22)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """The demo model with NaN classifier weights, saved by pycaffe itself."""
    caffe = import_caffe()
    caffe.set_mode_cpu()
    net = caffe.Net(MODEL["prototxt"], caffe.TEST, weights=MODEL["weights"])
    net.params["score_fr"][0].data[0, 0, 0, 0] = np.nan
    weights = tmp_path_factory.mktemp("nan") / "nan.caffemodel"
    net.save(str(weights))
    return dict(MODEL, weights=str(weights))


@pytest.mark.parametrize("backend", ["caffe", "opencv"])
def test_nan_scores_stop_the_run_naming_the_image(tmp_path, nan_model, backend):
    with pytest.raises(ModelOutputError, match=r"img_0: the model .* gave \d+ NaN or infinite score"):
        infer(tmp_path, backend, alternating_shapes()[:2], warmup=0, model=nan_model)
    assert not list((tmp_path / backend).glob("*.png"))  # nothing was written for a broken model
