"""Training-set overlap: a model names the images it was trained on, and every dataset metric is also
reported without them, equal to a run on the other images alone."""

import csv
import json

import pytest

from workflow_helpers import make_workdir, planned_jobs, read_config, snakemake, write_config

pytestmark = pytest.mark.slow

RUN = "fcn-tiny-caffe-cpu"
METRICS = ("pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou", "fw_iou", "boundary_iou",
           "mean_bf_score")
IDS = [f"demo_{i:03d}" for i in range(8)]
TRAINED = ["demo_001", "demo_003", "demo_005", "demo_006"]


def one_run_workdir(path):
    workdir = make_workdir(path, limit=8, batch_size=4, shard_size=4)
    config = read_config(workdir)
    config["runs"] = {RUN: config["runs"][RUN]}
    write_config(workdir, config)
    return workdir


def summary(workdir):
    return json.loads((workdir / "results" / RUN / "summary.json").read_text())


def test_metrics_without_training_images_equal_a_run_on_the_other_images(tmp_path):
    workdir = one_run_workdir(tmp_path / "with")
    snakemake(workdir)
    assert summary(workdir)["overlap"] is None  # the model names no training set
    assert (workdir / "results" / RUN / "training_overlap.txt").read_text().startswith("#")

    # Two made-up lists: one id twice, one id that is not in the dataset.
    (workdir / "train-a.txt").write_text("demo_001\ndemo_003 extra words\n\ndemo_005\n2008_000002\n")
    (workdir / "train-b.txt").write_text("demo_003\ndemo_006\n")
    config = read_config(workdir)
    config["models"]["fcn-tiny"]["trained_on"] = ["train-a.txt", "train-b.txt"]
    write_config(workdir, config)
    jobs = planned_jobs(workdir)  # naming the training set changes no prediction
    assert jobs["inference"] == 0 and jobs["metrics"] == 0 and jobs["aggregate"] == 1
    snakemake(workdir)
    overlap = summary(workdir)["overlap"]
    assert overlap["training_ids_listed"] == 5
    assert (overlap["images"], overlap["images_outside"]) == (4, 4)
    assert overlap["ids"] == TRAINED
    assert (workdir / "results" / RUN / "training_overlap.txt").read_text().split() == TRAINED

    # The same model on the four other images alone.
    alone = one_run_workdir(tmp_path / "alone")
    split = alone / "VOC" / "ImageSets" / "Segmentation" / "rest.txt"
    split.write_text("\n".join(i for i in IDS if i not in TRAINED) + "\n")
    config = read_config(alone)
    config["dataset"].update(split="rest", limit=None)
    write_config(alone, config)
    snakemake(alone)
    reference = summary(alone)
    assert reference["images"] == 4
    for key in METRICS:
        assert overlap["metrics_without_training_images"][key] == pytest.approx(reference[key], abs=1e-12), key
    assert summary(workdir)["mean_iou"] != pytest.approx(reference["mean_iou"], abs=1e-6)  # all images differ
    # Side by side in the comparison table.
    with open(workdir / "results" / "comparison.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["training_images"] == "4"
    for key in METRICS:
        assert float(row[key]) == pytest.approx(summary(workdir)[key], abs=1e-12)
        assert float(row[f"{key}_without_training_images"]) == pytest.approx(reference[key], abs=1e-12)


def test_a_missing_training_list_is_refused_at_start(tmp_path):
    workdir = one_run_workdir(tmp_path / "wd")
    config = read_config(workdir)
    config["models"]["fcn-tiny"]["trained_on"] = "nowhere/train.txt"
    write_config(workdir, config)
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    assert "models.fcn-tiny.trained_on: nowhere/train.txt: file not found" in result.stdout + result.stderr
    assert not (workdir / "work").exists()
