"""A dataset given as an images folder and a labels folder: same results, same checks as VOC's layout."""

import json
import shutil

import pytest

from segbench import dataset
from workflow_helpers import make_workdir, read_config, snakemake, write_config

pytestmark = pytest.mark.slow


def folders_workdir(path, ids_file=True):
    """The demo's first five images as photos/ (one as .png) and masks/, with an id list."""
    workdir = make_workdir(path, limit=5, batch_size=5, shard_size=5)
    (workdir / "photos").mkdir()
    (workdir / "masks").mkdir()
    ids = [f"demo_{i:03d}" for i in range(5)]
    for i in ids:
        shutil.copy(workdir / "VOC" / "JPEGImages" / f"{i}.jpg", workdir / "photos" / f"{i}.jpg")
        shutil.copy(workdir / "VOC" / "SegmentationClass" / f"{i}.png", workdir / "masks" / f"{i}.png")
    if ids_file:
        (workdir / "ids.txt").write_text("\n".join(ids) + "\n")
    config = read_config(workdir)
    config["dataset"] = {"layout": "folders", "images": "photos", "labels": "masks",
                         "ids": "ids.txt" if ids_file else None,
                         **{k: config["dataset"][k] for k in ("num_classes", "ignore_label", "class_names")}}
    write_config(workdir, config)
    return workdir


def test_folders_layout_gives_the_same_numbers_as_voc_layout(tmp_path):
    folders = folders_workdir(tmp_path / "folders")
    voc = make_workdir(tmp_path / "voc", limit=5, batch_size=5, shard_size=5)
    snakemake(folders)
    snakemake(voc)
    for summary in voc.glob("results/*/summary.json"):
        a, b = (json.loads(p.read_text()) for p in (summary, folders / summary.relative_to(voc)))
        for key in ("images", "pixel_accuracy", "mean_iou", "fw_iou", "per_class", "per_image_means"):
            assert a[key] == b[key], key


def test_folders_layout_without_id_list_takes_every_label(tmp_path, monkeypatch):
    workdir = folders_workdir(tmp_path / "wd", ids_file=False)
    monkeypatch.chdir(workdir)
    (workdir / "photos" / "demo_004.jpg").rename(workdir / "photos" / "demo_004.png")  # any photo format
    data = dataset.load(read_config(workdir)["dataset"] | {"limit": None}, check_files_exist=False)
    assert data.ids == [f"demo_{i:03d}" for i in range(5)]
    assert data.images["demo_004"] == "photos/demo_004.png"


def test_folders_layout_names_a_missing_photo(tmp_path):
    workdir = folders_workdir(tmp_path / "wd")
    (workdir / "photos" / "demo_002.jpg").unlink()
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    assert "photos/demo_002.<jpg|jpeg|png|bmp>" in result.stderr + result.stdout
    assert not (workdir / "work").exists()
