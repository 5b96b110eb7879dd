"""The whole chain through the real Snakemake and the real pycaffe, on a copy of the bundled demo."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from segbench.backends.caffe_backend import import_caffe
from workflow_helpers import (REPO, batch_files, decoded_labels, leftovers, make_workdir, planned_jobs, read_config,
                              snakemake, write_config)

pytestmark = pytest.mark.slow

RUNS = ["fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"]
IDS = [f"demo_{i:03d}" for i in range(12)]  # limit 12, batches of 4, shards of 5
NO_ONNX_JOBS = {"export": 0, "parity": 0, "quantize": 0}  # these runs use no ONNX export


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_output_contract(finished):
    for run in RUNS:
        out = finished / "results" / run
        summary = json.loads((out / "summary.json").read_text())
        assert summary["images"] == 12
        for key in ("pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou", "fw_iou"):
            assert 0 < summary[key] <= 1, key
        assert summary["pixel_accuracy_void_as_error"] < summary["pixel_accuracy"]  # the demo has void pixels
        assert 0.75 <= summary["pixel_accuracy"] <= 0.98
        assert set(summary["per_class"]) == set(read_config(finished)["dataset"]["class_names"])
        assert set(summary["per_class"]["background"]) == {"iou", "accuracy", "boundary_iou", "bf_score", "gt_pixels",
                                                           "pred_pixels"}
        assert set(summary["per_image_means"]) == {"pixel_accuracy", "pixel_accuracy_void_as_error", "mean_iou",
                                                   "boundary_iou", "bf_score"}
        for key in ("boundary_iou", "mean_bf_score"):
            assert 0 < summary[key] <= 1, key
        timing = summary["timing"]
        assert {"images", "warmup", "total_s", "mean_s", "variance_s2", "median_s", "p10_s", "p90_s", "p99_s",
                "min_s", "max_s", "model_load_s"} <= set(timing)
        assert timing["images"] == 12 and timing["warmup"] == 2
        assert timing["min_s"] <= timing["median_s"] <= timing["p90_s"] <= timing["p99_s"] <= timing["max_s"]
        assert timing["model_loads"] == 3  # one load per shard of 5 images
        prov = summary["provenance"]
        backend = read_config(finished)["runs"][run]["backend"]
        assert prov["backend"] == backend and prov["device"] == "cpu"
        assert prov["backend_module"].endswith({"caffe": "caffe", "opencv": "cv2"}[backend])
        assert os.path.isdir(prov["backend_module"])
        if backend == "caffe":  # make setup's CPU build here, as its build-info.json says
            assert prov["backend_cpu_only"] is True
            assert prov["backend_build"] == {"variant": "segbench", "cpu_only": True, "cuda": None, "cudnn": None,
                                             "cuda_arch": None}
        assert prov["threads"] >= 1
        assert len(prov["model"]["weights_sha256"]) == 64 and len(prov["model"]["prototxt_sha256"]) == 64
        for key in ("segbench_version", "python_version", "cpu_model", "hostname", "backend_version",
                    "run_config_sha256"):
            assert prov[key], key
        assert prov["packages"]["numpy"] == np.__version__
        assert read_config(finished)["runs"][run].items() <= prov["run_config"]["run"].items()
        assert prov["segbench_commit"] is None or len(prov["segbench_commit"].split("-")[0]) == 40

        rows = read_csv(out / "per_image.csv")
        assert list(rows[0]) == ["image_id", "height", "width", "valid_pixels", "void_pixels", "pixel_accuracy",
                                 "pixel_accuracy_void_as_error", "mean_iou", "boundary_iou", "bf_score", "forward_s",
                                 "reshape_s"]
        assert [r["image_id"] for r in rows] == IDS
        classes = read_csv(out / "per_class.csv")
        assert list(classes[0]) == ["class_id", "class_name", "iou", "accuracy", "boundary_iou", "bf_score",
                                    "gt_pixels", "pred_pixels"]
        assert len(classes) == 21

        for image_id in IDS:
            prediction = Image.open(out / "predictions" / f"{image_id}.png")
            truth = Image.open(finished / "VOC" / "SegmentationClass" / f"{image_id}.png")
            assert prediction.mode == "P" and prediction.size == truth.size
            assert prediction.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # VOC palette


def test_dataset_metrics_match_an_independent_computation(finished):
    for run in RUNS:
        hist = np.zeros((21, 21), dtype=np.int64)
        void = 0
        for image_id in IDS:
            truth = np.array(Image.open(finished / "VOC" / "SegmentationClass" / f"{image_id}.png"))
            prediction = np.array(Image.open(finished / "results" / run / "predictions" / f"{image_id}.png"))
            valid = truth != 255
            void += int((~valid).sum())
            hist += sk_confusion_matrix(truth[valid], prediction[valid], labels=range(21))
        summary = json.loads((finished / "results" / run / "summary.json").read_text())
        correct = np.trace(hist)
        assert summary["pixel_accuracy"] == pytest.approx(correct / hist.sum(), abs=1e-12)
        assert summary["pixel_accuracy_void_as_error"] == pytest.approx(correct / (hist.sum() + void), abs=1e-12)
        present = (hist.sum(0) + hist.sum(1)) > 0
        iou = np.diag(hist)[present] / (hist.sum(0) + hist.sum(1) - np.diag(hist))[present]
        assert summary["mean_iou"] == pytest.approx(iou.mean(), abs=1e-12)
        per_image = read_csv(finished / "results" / run / "per_image.csv")
        assert sum(int(r["valid_pixels"]) for r in per_image) == hist.sum()
        assert sum(int(r["void_pixels"]) for r in per_image) == void


def test_predictions_equal_pycaffe_run_by_hand(finished):
    """The native-size run's prediction is what pycaffe gives when driven directly as the model's README says."""
    caffe = import_caffe()
    caffe.set_mode_cpu()
    net = caffe.Net(str(finished / "model" / "deploy.prototxt"), caffe.TEST,
                    weights=str(finished / "model" / "fcn-tiny.caffemodel"))
    for image_id in ("demo_000", "demo_007"):
        rgb = np.array(Image.open(finished / "VOC" / "JPEGImages" / f"{image_id}.jpg").convert("RGB"), dtype=np.float32)
        x = (rgb[:, :, ::-1] - np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32))
        net.blobs["data"].reshape(1, 3, *rgb.shape[:2])
        net.reshape()
        net.blobs["data"].data[...] = x.transpose(2, 0, 1)[None]
        expected = net.forward()["score"][0].argmax(0)
        got = np.array(Image.open(finished / "results" / RUNS[0] / "predictions" / f"{image_id}.png"))
        np.testing.assert_array_equal(got, expected)


def test_second_run_does_nothing(copy_of_finished):
    assert sum(planned_jobs(copy_of_finished).values()) == 0
    result = snakemake(copy_of_finished)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_ignore_label_reruns_only_metrics_and_aggregation(copy_of_finished):
    config = read_config(copy_of_finished)
    config["dataset"]["ignore_label"] = 254
    write_config(copy_of_finished, config)
    jobs = planned_jobs(copy_of_finished)
    assert jobs["decode"] == 0 and jobs["resize"] == 0 and jobs["inference"] == 0
    assert jobs["metrics"] == 3 * len(RUNS) and jobs["aggregate"] == len(RUNS) and jobs["compare"] == 1
    assert jobs["plots"] == len(RUNS) + 1


def test_changing_device_or_model_reruns_inference_and_what_follows(copy_of_finished):
    config = read_config(copy_of_finished)
    config["runs"]["fcn-tiny-caffe-cpu"]["device"] = "gpu:0"
    write_config(copy_of_finished, config)
    # The OpenCV run's pixel agreement with the Caffe run is computed again too.
    assert planned_jobs(copy_of_finished) | {"all": 0} == {
        "decode": 0, "resize": 0, "inference": 3, "metrics": 3, "aggregate": 1, "compare": 1, "plots": 2, "all": 0,
        **NO_ONNX_JOBS, "agreement": 1}

    config = read_config(copy_of_finished)
    config["runs"]["fcn-tiny-caffe-cpu"]["device"] = "cpu"
    config["models"]["fcn-tiny-copy"] = dict(config["models"]["fcn-tiny"])
    shutil.copy(copy_of_finished / "model" / "fcn-tiny.caffemodel", copy_of_finished / "model" / "copy.caffemodel")
    config["models"]["fcn-tiny-copy"]["weights"] = "model/copy.caffemodel"
    config["runs"]["fcn-tiny-caffe-cpu-160"]["model"] = "fcn-tiny-copy"
    write_config(copy_of_finished, config)
    assert planned_jobs(copy_of_finished) | {"all": 0} == {
        "decode": 0, "resize": 0, "inference": 3, "metrics": 3, "aggregate": 1, "compare": 1, "plots": 2, "all": 0,
        **NO_ONNX_JOBS, "agreement": 0}
    snakemake(copy_of_finished)
    same = json.loads((copy_of_finished / "results" / "fcn-tiny-caffe-cpu-160" / "summary.json").read_text())
    assert same["provenance"]["model"]["weights"] == "model/copy.caffemodel"


def test_changing_one_ground_truth_reruns_its_decoding_and_metrics_only(copy_of_finished):
    png = copy_of_finished / "VOC" / "SegmentationClass" / "demo_005.png"  # in the second batch of four
    image = Image.open(png)
    labels = np.array(image)
    assert (labels[:10, :10] != 15).all()
    labels[:10, :10] = 15
    changed = Image.fromarray(labels, mode="P")
    changed.putpalette(image.getpalette())
    changed.save(png)
    jobs = planned_jobs(copy_of_finished)
    assert jobs | {"all": 0} == {"decode": 1, "resize": 0, "inference": 0, "metrics": len(RUNS),
                                 "aggregate": len(RUNS), "compare": 1, "plots": len(RUNS) + 1, "all": 0,
                                 **NO_ONNX_JOBS, "agreement": 0}
    batches = batch_files(copy_of_finished / "work" / "labels")
    before = {p: p.stat().st_mtime_ns for p in batches}
    snakemake(copy_of_finished)
    rewritten = [batches[p] for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert rewritten == [["demo_004", "demo_005", "demo_006", "demo_007"]]
    assert np.array_equal(decoded_labels(copy_of_finished, "demo_005"), labels)
    assert not leftovers(copy_of_finished)


def test_caffe_and_opencv_agree(finished):
    caffe_dir, opencv_dir = (finished / "results" / run for run in ("fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu"))
    same = total = 0
    for image_id in IDS:
        a = np.array(Image.open(caffe_dir / "predictions" / f"{image_id}.png"))
        b = np.array(Image.open(opencv_dir / "predictions" / f"{image_id}.png"))
        same += int((a == b).sum())
        total += a.size
    assert same / total >= 0.999
    a, b = (json.loads((d / "summary.json").read_text()) for d in (caffe_dir, opencv_dir))
    for key in ("pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou", "fw_iou"):
        assert abs(a[key] - b[key]) < 1e-3, key
    assert a["provenance"]["backend"] == "caffe" and b["provenance"]["backend"] == "opencv"


def test_comparison_has_one_row_per_run(finished):
    rows = read_csv(finished / "results" / "comparison.csv")
    assert [r["run"] for r in rows] == RUNS
    assert list(rows[0]) == ["run", "model", "backend", "backend_version", "device", "precision", "threads",
                             "images", "pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou",
                             "fw_iou", "boundary_iou", "mean_bf_score", "reference", "pixel_agreement",
                             "mean_iou_diff", "mean_forward_s", "median_forward_s",
                             "p90_forward_s", "model_load_s", "images_per_s", "reshapes", "reshape_mean_s",
                             "training_images",
                             *(f"{key}_without_training_images" for key in (
                                 "pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou",
                                 "fw_iou", "boundary_iou", "mean_bf_score"))]
    for row in rows:
        assert row["training_images"] == "" and row["mean_iou_without_training_images"] == ""  # none named
        summary = json.loads((finished / "results" / row["run"] / "summary.json").read_text())
        assert float(row["mean_iou"]) == pytest.approx(summary["mean_iou"], abs=1e-12)
        assert float(row["images_per_s"]) == pytest.approx(1 / summary["timing"]["mean_s"])
    table = (finished / "results" / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| run | model | backend |") and len(table) == 2 + len(RUNS)


def test_runs_share_decoded_labels_and_inputs_of_the_same_size(finished):
    log = (finished / "work" / "inputs").iterdir()
    assert sorted(p.name for p in log) == ["160x160", "native"]  # two native-size runs share one set
    batches = batch_files(finished / "work" / "labels")
    assert [i for ids in batches.values() for i in ids] == IDS


def test_adding_a_run_computes_only_that_run_and_the_comparison(copy_of_finished):
    config = read_config(copy_of_finished)
    config["runs"]["fcn-tiny-opencv-cpu-160"] = dict(config["runs"]["fcn-tiny-opencv-cpu"], resize=[160, 160])
    write_config(copy_of_finished, config)
    # and its pixel agreement with its reference, the Caffe run at 160x160
    assert planned_jobs(copy_of_finished) | {"all": 0} == {
        "decode": 0, "resize": 0, "inference": 3, "metrics": 3, "aggregate": 1, "compare": 1, "plots": 2, "all": 0,
        **NO_ONNX_JOBS, "agreement": 1}


def reordered(value):
    """The same settings with the keys of every mapping in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    return value


def test_rewriting_the_config_in_another_key_order_reruns_nothing(copy_of_finished):
    config = read_config(copy_of_finished)
    for rewrite in (lambda c: yaml.safe_dump(c, sort_keys=True), lambda c: yaml.safe_dump(reordered(c), sort_keys=False)):
        (copy_of_finished / "config.yaml").write_text(rewrite(config))
        assert sum(planned_jobs(copy_of_finished).values()) == 0
    # A changed value still reruns what it determines.
    config["models"]["fcn-tiny"]["scale"] = 0.5
    (copy_of_finished / "config.yaml").write_text(yaml.safe_dump(reordered(config), sort_keys=False))
    assert planned_jobs(copy_of_finished)["inference"] == 3 * len(RUNS)


def test_a_config_file_on_the_command_line_replaces_config_yaml(copy_of_finished):
    config = read_config(copy_of_finished)
    config["runs"] = {"only-this-run": dict(config["runs"]["fcn-tiny-opencv-cpu"], resize=[128, 128])}
    (copy_of_finished / "my.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(copy_of_finished, "--configfile", "my.yaml")
    out = result.stdout + result.stderr
    assert "extended by additional config" not in out
    for run in RUNS:  # config.yaml's runs are neither run nor listed
        assert f"infer_{run}_" not in out and f"  {run}  " not in out
    assert "only-this-run" in out
    assert [r["run"] for r in read_csv(copy_of_finished / "results" / "comparison.csv")] == ["only-this-run"]
    # Without --configfile, config.yaml is back and its runs are up to date.
    assert sum(planned_jobs(copy_of_finished).values()) > 0  # the comparison lists its three runs again
    assert planned_jobs(copy_of_finished)["inference"] == 0


def job_spans(workdir):
    """{log file: (start, end)} of every job, from the first and the last line of its log."""
    from datetime import datetime

    spans = {}
    for log in (workdir / "logs").rglob("*.log"):
        lines = [line for line in log.read_text().splitlines() if line[:4].isdigit()]
        stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in (lines[0], lines[-1])]
        assert "started rule" in lines[0] and "done in" in lines[-1], log
        spans[log.relative_to(workdir / "logs")] = tuple(stamps)
    return spans


def test_no_other_job_runs_beside_an_inference_job(tmp_path):
    workdir = make_workdir(tmp_path / "wd", limit=8, batch_size=2, shard_size=4)
    config = read_config(workdir)
    for run in config["runs"].values():
        run["threads"] = 1  # one core each: without exclusivity, 4 cores leave room for 3 more jobs
    write_config(workdir, config)
    snakemake(workdir, "--cores", "4")
    spans = job_spans(workdir)
    inference = {log: span for log, span in spans.items() if log.parts[1:2] == ("inference",)}
    assert len(inference) == 2 * len(RUNS) and len(spans) > 3 * len(inference)
    for log, (start, end) in inference.items():
        beside = [other for other, (s, e) in spans.items() if other != log and s < end and e > start]
        assert not beside, f"{log} ran beside {beside}"
    summary = json.loads((workdir / "results" / RUNS[0] / "summary.json").read_text())
    assert summary["provenance"]["threads"] == 1


def test_the_readmes_voc2012_command_runs_only_the_voc2012_runs(tmp_path):
    """`snakemake --configfile config/voc2012-fcn8s.yaml` (make voc2012) in a checkout whose config.yaml
    holds the demo's runs: with the downloads in place (the demo's files standing in for them),
    only FCN-8s is scored, and on VOC's split only."""
    from segbench.download import UNPACKED_MARKER

    workdir = make_workdir(tmp_path / "wd")
    ids = IDS[:4]
    for name in ("downloads/VOCtrainval_11-May-2012.tar", "downloads/seg11valid.txt", "downloads/benchmark.tgz"):
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(b"stand-in")
    sbd = workdir / "data" / "SBD"
    sbd.mkdir(parents=True)
    (sbd / "train.txt").write_text("2008_000002\ndemo_002\n")  # SBD train's ids, standing in
    (sbd / UNPACKED_MARKER).write_text("")
    voc = workdir / "data" / "VOC2012"
    shutil.copytree(workdir / "VOC", voc)
    (voc / "ImageSets" / "Segmentation" / "seg11valid.txt").write_text("\n".join(ids) + "\n")
    (voc / UNPACKED_MARKER).write_text("")  # written after its archive, as the unpack rule does
    (workdir / "models" / "voc-fcn8s").mkdir(parents=True)
    shutil.copy(workdir / "model" / "deploy.prototxt", workdir / "models" / "voc-fcn8s" / "deploy.prototxt")
    shutil.copy(workdir / "model" / "fcn-tiny.caffemodel",
                workdir / "models" / "voc-fcn8s" / "fcn8s-heavy-pascal.caffemodel")
    configfile = str(REPO / "config" / "voc2012-fcn8s.yaml")
    out = snakemake(workdir, "--configfile", configfile).stdout
    assert "fcn-tiny" not in out
    assert sorted(p.name for p in (workdir / "results").iterdir() if p.is_dir()) == ["fcn8s-caffe-cpu", "plots"]
    summary = json.loads((workdir / "results" / "fcn8s-caffe-cpu" / "summary.json").read_text())
    assert summary["images"] == len(ids)
    assert summary["overlap"]["ids"] == ["demo_002"]  # the model's training set, named by the config
    assert [r["run"] for r in read_csv(workdir / "results" / "comparison.csv")] == ["fcn8s-caffe-cpu"]
