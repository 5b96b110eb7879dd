"""The demo's ONNX runs through the real Snakemake: export, parity with the real Caffe, int8
calibration, the ONNX Runtime and OpenVINO backends, and the comparison table's agreement columns."""

import csv
import hashlib
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from segbench import cpu
from workflow_helpers import make_workdir, planned_rules, read_config, snakemake, snakemake_command, write_config

pytestmark = pytest.mark.slow

ONNX_FP32 = ["fcn-tiny-onnxruntime-cpu", "fcn-tiny-openvino-cpu"]
INT8 = ["fcn-tiny-onnxruntime-cpu-int8", "fcn-tiny-openvino-cpu-int8"]
CAFFE = "fcn-tiny-caffe-cpu"
HAS_BF16 = "bf16" in cpu.native_precisions()


def read_csv(path):
    with open(path, newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def onnx_done(tmp_path_factory):
    """The demo's config (every run) on 12 images, plus an OpenVINO bf16 run where the CPU has bf16."""
    workdir = make_workdir(tmp_path_factory.mktemp("onnx") / "done", runs=None)
    config = read_config(workdir)
    if HAS_BF16:
        config["runs"]["fcn-tiny-openvino-cpu-bf16"] = {"model": "fcn-tiny", "backend": "openvino", "precision": "bf16"}
    write_config(workdir, config)
    snakemake(workdir)
    return workdir


def predictions(workdir, run):
    folder = workdir / "results" / run / "predictions"
    return {p.stem: np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def agreement(workdir, run, reference):
    ours, theirs = predictions(workdir, run), predictions(workdir, reference)
    assert sorted(ours) == sorted(theirs) and len(ours) == 12
    same = sum(int((ours[i] == theirs[i]).sum()) for i in ours)
    return same / sum(ours[i].size for i in ours)


def test_parity_report_of_the_export(onnx_done):
    report = json.loads((onnx_done / "results" / "models" / "fcn-tiny" / "parity.json").read_text())
    assert report["passed"] and report["argmax_agreement"] >= 0.999
    assert len(report["images"]) == 8  # onnx.parity_images
    assert report["max_abs_diff"] < 1e-2
    assert (onnx_done / "work" / "models" / "fcn-tiny" / "fp32.onnx").is_file()
    assert (onnx_done / "work" / "models" / "fcn-tiny" / "int8-native.onnx").is_file()


def test_onnx_runs_agree_with_caffe(onnx_done):
    table = read_csv(onnx_done / "results" / "comparison.csv")
    caffe_miou = json.loads((onnx_done / "results" / CAFFE / "summary.json").read_text())["mean_iou"]
    runs = ONNX_FP32 + INT8 + (["fcn-tiny-openvino-cpu-bf16"] if HAS_BF16 else [])
    for run in runs:
        expected = agreement(onnx_done, run, CAFFE)  # from the PNGs, independently of the workflow
        row = table[run]
        assert row["reference"] == CAFFE
        assert float(row["pixel_agreement"]) == pytest.approx(expected, abs=1e-9)
        assert expected >= (0.999 if run in ONNX_FP32 else 0.98), (run, expected)
        summary = json.loads((onnx_done / "results" / run / "summary.json").read_text())
        assert float(row["mean_iou_diff"]) == pytest.approx(summary["mean_iou"] - caffe_miou, abs=1e-9)
        assert row["precision"] == read_config(onnx_done)["runs"][run].get("precision", "fp32")
        prov = summary["provenance"]
        assert prov["backend"] == read_config(onnx_done)["runs"][run]["backend"]
        assert prov["precision"] == row["precision"]
        assert prov["onnx_sha256"] == hashlib.sha256((onnx_done / prov["onnx"]).read_bytes()).hexdigest()
    # the reference run itself and the 160x160 run (no fp32 run at its resize but itself) have none
    assert table[CAFFE]["reference"] == "" and table["fcn-tiny-caffe-cpu-160"]["reference"] == ""
    assert table["fcn-tiny-opencv-cpu"]["reference"] == CAFFE


def test_precisions_are_what_ran(onnx_done):
    for run in INT8:
        prov = json.loads((onnx_done / "results" / run / "summary.json").read_text())["provenance"]
        assert prov["onnx"].endswith("int8-native.onnx")
    if HAS_BF16:
        prov = json.loads((onnx_done / "results" / "fcn-tiny-openvino-cpu-bf16" / "summary.json").read_text())["provenance"]
        assert "bf16" in str(prov["inference_precision"]).lower()


def test_changes_rerun_only_what_they_touch(onnx_done, tmp_path):
    import shutil

    workdir = shutil.copytree(onnx_done, tmp_path / "copy", symlinks=True)
    assert planned_rules(workdir) == {}
    config = read_config(workdir)
    config["quantization"]["method"] = "percentile"
    write_config(workdir, config)
    planned = planned_rules(workdir)
    assert planned["quantize_int8"] == 1
    assert "export_onnx" not in planned and "parity" not in planned
    assert not any(rule.startswith("infer_") and "int8" not in rule for rule in planned)
    assert {rule for rule in planned if rule.startswith("infer_")} == {f"infer_{run}_{s:04d}" for run in INT8
                                                                      for s in range(3)}
    # The parity check's settings redo the check, not the runs that waited for it.
    config["quantization"]["method"] = "minmax"
    config["onnx"]["parity_images"] = 4
    write_config(workdir, config)
    assert planned_rules(workdir) == {"parity": 1, "all": 1}


def test_calibrating_on_scored_images_is_refused(tmp_path):
    workdir = make_workdir(tmp_path / "w", runs=["fcn-tiny-caffe-cpu", "fcn-tiny-onnxruntime-cpu-int8"])
    config = read_config(workdir)
    config["quantization"]["calibration_split"] = "demo"
    write_config(workdir, config)
    result = snakemake(workdir, "--dry-run", check=False)
    assert result.returncode != 0
    assert "quantization.calibration_split 'demo'" in result.stderr + result.stdout
    assert "also scored" in result.stderr + result.stdout


def test_int8_without_a_calibration_split_is_refused(tmp_path):
    workdir = make_workdir(tmp_path / "w", runs=["fcn-tiny-onnxruntime-cpu-int8"])
    config = read_config(workdir)
    config["quantization"]["calibration_split"] = None
    write_config(workdir, config)
    result = snakemake(workdir, "--dry-run", check=False)
    assert result.returncode != 0
    assert "precision int8 needs quantization.calibration_split" in result.stderr + result.stdout


def test_precision_a_backend_cannot_run_is_refused(tmp_path):
    workdir = make_workdir(tmp_path / "w", runs=["fcn-tiny-caffe-cpu"])
    config = read_config(workdir)
    config["runs"]["fcn-tiny-caffe-cpu"]["precision"] = "bf16"
    write_config(workdir, config)
    result = snakemake(workdir, "--dry-run", check=False)
    assert result.returncode != 0
    assert "runs.fcn-tiny-caffe-cpu.precision: bf16 is not a precision of the caffe backend" in result.stderr + result.stdout


def test_fp16_on_a_cpu_without_it_is_refused_before_any_job(tmp_path):
    if "fp16" in cpu.native_precisions():
        pytest.skip("this CPU has native fp16")
    workdir = make_workdir(tmp_path / "w", runs=["fcn-tiny-openvino-cpu"])
    config = read_config(workdir)
    config["runs"]["fcn-tiny-openvino-cpu"]["precision"] = "fp16"
    write_config(workdir, config)
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    assert "runs.fcn-tiny-openvino-cpu:" in result.stderr + result.stdout
    assert not (workdir / "work").exists() or not list((workdir / "work").rglob("*.onnx"))


def test_parity_failure_stops_the_onnx_runs(tmp_path):
    """An export that does not compute what Caffe computes (here: one weight of the first convolution
    changed in the ONNX file) stops the workflow at the parity check, naming the layer."""
    import onnx
    from onnx import numpy_helper

    workdir = make_workdir(tmp_path / "w", runs=["fcn-tiny-caffe-cpu", "fcn-tiny-onnxruntime-cpu"])
    snakemake(workdir, "work/models/fcn-tiny/fp32.onnx")
    path = workdir / "work" / "models" / "fcn-tiny" / "fp32.onnx"
    model = onnx.load(path)
    layers = json.loads({p.key: p.value for p in model.metadata_props}["segbench_layer_outputs"])
    conv = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    array = numpy_helper.to_array(conv).copy()
    array *= -3.0
    conv.CopyFrom(numpy_helper.from_array(array, conv.name))
    onnx.save(model, path)
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "does not reproduce Caffe" in output and "conv1" in output and "conv1" in layers
    failed = json.loads((workdir / "results" / "models" / "fcn-tiny" / "parity.failed.json").read_text())
    assert not failed["passed"] and failed["first_diverging_layer"] == "conv1"
    assert not (workdir / "results" / "models" / "fcn-tiny" / "parity.json").exists()
    assert not (workdir / "results" / "fcn-tiny-onnxruntime-cpu" / "predictions").exists()


BLOCK_CAFFE = '''import sys


class _NoCaffe:
    """Stands in for a machine without a Caffe build: `import caffe` fails."""

    def find_spec(self, name, path=None, target=None):
        if name == "caffe" or name.startswith("caffe."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, _NoCaffe())
'''


def test_onnx_runs_without_pycaffe(tmp_path):
    """A user with a Caffe model and no Caffe build: the workflow exports, runs and scores the ONNX
    runs (no parity check: it needs Caffe), and refuses to plan when the check is required."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_CAFFE)
    env = {**os.environ, "PYTHONPATH": str(block), "SEGBENCH_CACHE": str(tmp_path / "no-cache")}
    workdir = make_workdir(tmp_path / "w", limit=4, runs=["fcn-tiny-onnxruntime-cpu", "fcn-tiny-openvino-cpu-int8"])
    result = subprocess.run([*snakemake_command(workdir)], capture_output=True, text=True, env=env, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "work" / "models" / "fcn-tiny" / "fp32.onnx").is_file()
    assert not (workdir / "results" / "models").exists()  # no parity report without Caffe
    table = read_csv(workdir / "results" / "comparison.csv")
    assert set(table) == {"fcn-tiny-onnxruntime-cpu", "fcn-tiny-openvino-cpu-int8"}
    assert table["fcn-tiny-openvino-cpu-int8"]["reference"] == "fcn-tiny-onnxruntime-cpu"
    assert float(table["fcn-tiny-openvino-cpu-int8"]["pixel_agreement"]) >= 0.98
    config = read_config(workdir)
    config["onnx"]["parity"] = "required"
    write_config(workdir, config)
    refused = subprocess.run([*snakemake_command(workdir), "--dry-run"], capture_output=True, text=True, env=env,
                             cwd=workdir)
    assert refused.returncode != 0
    assert "onnx.parity is required, but pycaffe cannot be imported" in refused.stdout + refused.stderr
