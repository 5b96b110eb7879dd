"""The torch backend through the real Snakemake on the demo, beside the real Caffe (installed by `make torch`)."""

import csv

import numpy as np
import pytest
from PIL import Image

from segbench import cpu
from workflow_helpers import make_workdir, read_config, snakemake, write_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_torch_runs_agree_with_caffe_and_report_their_precision(tmp_path):
    workdir = make_workdir(tmp_path / "w", runs=["fcn-tiny-caffe-cpu"])
    config = read_config(workdir)
    config["runs"]["fcn-tiny-torch-cpu"] = {"model": "fcn-tiny", "backend": "torch"}
    bf16 = "bf16" in cpu.native_precisions()
    if bf16:
        config["runs"]["fcn-tiny-torch-cpu-bf16"] = {"model": "fcn-tiny", "backend": "torch", "precision": "bf16"}
    write_config(workdir, config)
    snakemake(workdir)
    with open(workdir / "results" / "comparison.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    for run, minimum in [("fcn-tiny-torch-cpu", 0.999)] + ([("fcn-tiny-torch-cpu-bf16", 0.98)] if bf16 else []):
        same = total = 0
        for png in sorted((workdir / "results" / "fcn-tiny-caffe-cpu" / "predictions").glob("*.png")):
            a = np.array(Image.open(png))
            b = np.array(Image.open(workdir / "results" / run / "predictions" / png.name))
            same, total = same + int((a == b).sum()), total + a.size
        assert total and same / total >= minimum, (run, same / total)
        row = rows[run]
        assert row["backend"] == "torch" and row["reference"] == "fcn-tiny-caffe-cpu"
        assert float(row["pixel_agreement"]) == pytest.approx(same / total, abs=1e-12)
        assert row["precision"] == config["runs"][run].get("precision", "fp32")
        assert row["backend_version"] == torch.__version__
