"""Configuration validation (schema defaults, errors naming the key) and the VOC dataset layout."""

import copy

import pytest

from segbench.config import ConfigError, validate
from segbench.dataset import DatasetError, check_files, split_ids

MINIMAL = {
    "dataset": {"root": "data/VOC2012"},
    "models": {"fcn8s": {"prototxt": "m/deploy.prototxt", "weights": "m/fcn8s.caffemodel"}},
    "runs": {"fcn8s-cpu": {"model": "fcn8s"}},
}


def config(**changes):
    """A fresh copy of the minimal config; keyword a__b=value sets cfg["a"]["b"] = value."""
    cfg = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value
    return cfg


def error_of(cfg):
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------------

def test_validate_fills_defaults():
    cfg = validate(config())
    assert cfg["dataset"]["ignore_label"] == 255
    assert cfg["dataset"]["num_classes"] == 21
    assert cfg["dataset"]["split"] == "val"
    assert cfg["dataset"]["limit"] is None
    assert len(cfg["dataset"]["class_names"]) == 21
    assert cfg["dataset"]["class_names"][15] == "person"
    assert cfg["inference"]["warmup"] == 2
    assert cfg["inference"]["shard_size"] == 250
    assert cfg["runs"]["fcn8s-cpu"]["device"] == "cpu"
    assert cfg["runs"]["fcn8s-cpu"]["backend"] == "caffe"
    assert cfg["runs"]["fcn8s-cpu"]["resize"] is None
    model = cfg["models"]["fcn8s"]
    assert model["channel_order"] == "BGR"
    assert model["scale"] == 1.0
    assert model["mean"] == pytest.approx([104.00698793, 116.66876762, 122.67891434])


def test_validate_keeps_given_values():
    cfg = validate(config(dataset__limit=10, inference={"warmup": 0}))
    assert cfg["dataset"]["limit"] == 10
    assert cfg["inference"]["warmup"] == 0
    assert cfg["inference"]["shard_size"] == 250  # still filled in a partly given section


def test_validate_accepts_gpu_device_and_resize():
    cfg = config()
    cfg["runs"]["fcn8s-cpu"].update(device="gpu:1", resize=[500, 500])
    validate(cfg)


# --- errors -------------------------------------------------------------------------------------

def test_unknown_key_is_named():
    assert "lmit" in error_of(config(dataset__lmit=5))


def test_wrong_device_names_key_path():
    cfg = config()
    cfg["runs"]["fcn8s-cpu"]["device"] = "tpu"
    message = error_of(cfg)
    assert "runs.fcn8s-cpu.device" in message
    assert "tpu" in message


def test_limit_zero_names_key_path():
    assert "dataset.limit" in error_of(config(dataset__limit=0))


def test_resize_with_zero_names_key_path():
    cfg = config()
    cfg["runs"]["fcn8s-cpu"]["resize"] = [0, 10]
    assert "runs.fcn8s-cpu.resize" in error_of(cfg)


def test_missing_required_section_is_reported():
    cfg = config()
    del cfg["runs"]
    assert "runs" in error_of(cfg)


def test_run_with_undefined_model_names_the_run():
    cfg = config()
    cfg["runs"]["fcn8s-cpu"]["model"] = "fcn32s"
    message = error_of(cfg)
    assert "runs.fcn8s-cpu.model" in message
    assert "fcn32s" in message


def test_class_names_length_mismatch_raises():
    message = error_of(config(dataset__num_classes=3, dataset__class_names=["background", "cat"]))
    assert "class_names" in message and "3" in message


def test_num_classes_without_class_names_raises():
    # The default names are the 21 VOC classes, which do not fit 3 classes.
    assert "class_names" in error_of(config(dataset__num_classes=3))


# --- dataset layout -----------------------------------------------------------------------------

@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = ["2007_000033", "2007_000042", "2007_000061"]
    for i in ids:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(b"jpg")
        (root / "SegmentationClass" / f"{i}.png").write_bytes(b"png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n\n")
    return root


def test_split_ids_in_file_order(voc_root):
    assert split_ids(voc_root, "val") == ["2007_000033", "2007_000042", "2007_000061"]


def test_split_ids_limit_takes_first_n(voc_root):
    assert split_ids(voc_root, "val", limit=2) == ["2007_000033", "2007_000042"]
    assert split_ids(voc_root, "val", limit=None) == ["2007_000033", "2007_000042", "2007_000061"]


def test_missing_split_file_raises_naming_it(voc_root):
    with pytest.raises(DatasetError) as info:
        split_ids(voc_root, "train")
    assert str(voc_root / "ImageSets" / "Segmentation" / "train.txt") in str(info.value)


def test_missing_root_raises(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        split_ids(tmp_path / "nowhere", "val")


def test_duplicate_ids_raise(voc_root):
    (voc_root / "ImageSets" / "Segmentation" / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match="more than once"):
        split_ids(voc_root, "dup")


def test_check_files_passes_when_all_present(voc_root):
    check_files(voc_root, split_ids(voc_root, "val"), "val")


def test_check_files_names_missing_image_path(voc_root):
    (voc_root / "JPEGImages" / "2007_000042.jpg").unlink()
    with pytest.raises(DatasetError) as info:
        check_files(voc_root, split_ids(voc_root, "val"), "val")
    message = str(info.value)
    assert f"{voc_root}/JPEGImages/2007_000042.jpg" in message
    assert "2007_000033" not in message  # only the missing file is listed
    assert message.startswith("1 file(s)")


def test_check_files_names_missing_label_path(voc_root):
    (voc_root / "SegmentationClass" / "2007_000061.png").unlink()
    with pytest.raises(DatasetError, match="SegmentationClass/2007_000061.png"):
        check_files(voc_root, split_ids(voc_root, "val"), "val")
