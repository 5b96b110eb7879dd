"""The backends share one interface and give the same scores for the same Caffe files."""

import numpy as np
import pytest
from PIL import Image

from segbench.backends import BackendError, check_device, load_backend
from segbench.backends.opencv_backend import cv2_has_cuda, dnn_cuda_targets, import_cv2
from segbench.images import to_network_input
from workflow_helpers import DEMO

MODEL = dict(prototxt=str(DEMO / "fcn-tiny" / "deploy.prototxt"),
             weights=str(DEMO / "fcn-tiny" / "fcn-tiny.caffemodel"))
MEAN = (104.00698793, 116.66876762, 122.67891434)


@pytest.mark.parametrize("image_id", ["demo_000", "demo_013"])
def test_caffe_and_opencv_scores_agree(image_id):
    rgb = np.array(Image.open(DEMO / "VOC" / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    blob = to_network_input(rgb, MEAN)
    results = {}
    for name in ("caffe", "opencv"):
        backend = load_backend(name, **MODEL, threads=1)
        scores, seconds = backend.forward(blob)
        assert scores.shape == (21, *rgb.shape[:2]) and seconds > 0
        prov = backend.provenance()
        assert prov["backend"] == name and prov["device"] == "cpu" and prov["threads"] == 1
        results[name] = scores.copy()  # valid only until the next forward call
    np.testing.assert_allclose(results["opencv"], results["caffe"], rtol=1e-4, atol=1e-3)
    agree = (results["opencv"].argmax(0) == results["caffe"].argmax(0)).mean()
    assert agree >= 0.999


@pytest.mark.skipif(cv2_has_cuda(import_cv2()), reason="this OpenCV has CUDA")
def test_opencv_refuses_a_gpu_it_does_not_have():
    cv2 = import_cv2()
    # What the DNN module offers decides, not whether OpenCV's core has CUDA.
    assert cv2.dnn.DNN_TARGET_CUDA not in dnn_cuda_targets(cv2)
    with pytest.raises(BackendError, match=r"gpu:0 asked for, but the DNN module of OpenCV .* offers no CUDA "
                                           r"target \(cv2.dnn.getAvailableTargets"):
        check_device("opencv", "gpu:0")
    with pytest.raises(BackendError, match="offers no CUDA target"):
        load_backend("opencv", **MODEL, device="gpu:1")


def test_opencv_provenance_names_the_dnn_backend_and_target_in_use():
    prov = load_backend("opencv", **MODEL, threads=1).provenance()
    assert (prov["dnn_backend"], prov["dnn_target"]) == ("DNN_BACKEND_OPENCV", "DNN_TARGET_CPU")
    assert prov["backend_cuda"] is False


def test_unknown_backend_and_bad_device():
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        check_device("onnx", "cpu")
    with pytest.raises(BackendError, match="device must be 'cpu' or 'gpu:N'"):
        check_device("opencv", "cuda")


def test_opencv_reports_a_missing_model_file(tmp_path):
    with pytest.raises(BackendError, match="nowhere.caffemodel: model file not found"):
        load_backend("opencv", prototxt=MODEL["prototxt"], weights=str(tmp_path / "nowhere.caffemodel"))
