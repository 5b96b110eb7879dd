"""Where every file of a workflow run lives, and how images are grouped into jobs.

The Snakefile and the step functions both use these names, so a path is
spelled in one place.
"""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import dataset, overlap
from .backends import ONNX_BACKENDS, BackendError, check_device
from .config import ConfigError

WORK = "work"
RESULTS = "results"


def resize_key(resize):
    """Name of a resize setting: runs with the same setting share their network inputs."""
    return "native" if resize is None else f"{resize[0]}x{resize[1]}"


# Intermediate arrays are kept per batch of images (segbench.files.write_batch); predictions,
# which users look at, per image.
def label_batch(batch):
    return f"{WORK}/labels/batch-{batch:04d}.npz"


def input_batch(key, batch):
    return f"{WORK}/inputs/{key}/batch-{batch:04d}.npz"


def prediction_png(run, image_id):
    return f"{RESULTS}/{run}/predictions/{image_id}.png"


def missing_predictions(runs, ids):
    """The prediction PNGs of `runs` x `ids` that are not there (one directory listing per run)."""
    missing = []
    for run in runs:
        folder = Path(prediction_png(run, "x")).parent
        present = {entry.name for entry in os.scandir(folder)} if folder.is_dir() else set()
        missing += [prediction_png(run, i) for i in ids if f"{i}.png" not in present]
    return missing


def shard_json(run, shard):
    return f"{WORK}/runs/{run}/inference/shard-{shard:04d}.json"


def metrics_json(run, batch):
    return f"{WORK}/runs/{run}/metrics/batch-{batch:04d}.json"


# The ONNX export of a model and its variants: "fp32", "fp16" (for GPU providers), "int8-<resize key>"
# (quantized with calibration inputs of that resize setting).
def onnx_model(model, variant):
    return f"{WORK}/models/{model}/{variant}.onnx"


def calibration_batch(key):
    return f"{WORK}/calibration/{key}.npz"


def parity_json(model):
    return f"{RESULTS}/models/{model}/parity.json"


def agreement_json(run):
    return f"{RESULTS}/{run}/agreement.json"


def onnx_variant(run):
    """Which ONNX file of its model a run of an ONNX backend runs."""
    if run["precision"] == "int8":
        return f"int8-{resize_key(run['resize'])}"
    # OpenVINO lowers the precision of the fp32 file itself (its inference precision hint).
    if run["precision"] == "fp16" and run["backend"] == "onnxruntime":
        return "fp16"
    return "fp32"


def onnx_runs(config):
    """The runs that run an ONNX export, in config order."""
    return [name for name, run in config["runs"].items() if run["backend"] in ONNX_BACKENDS]


def parity_models(config):
    """The models whose ONNX export is checked against Caffe: those that ONNX runs use, when pycaffe
    can be imported here (onnx.parity: auto) or always (required); none with onnx.parity: off."""
    setting = config["onnx"]["parity"]
    if setting == "off":
        return []
    models = list(dict.fromkeys(config["runs"][name]["model"] for name in onnx_runs(config)))
    if not models:
        return []
    from .backends.caffe_backend import caffe_available

    if caffe_available():
        return models
    if setting == "required":
        raise ConfigError("onnx.parity is required, but pycaffe cannot be imported here to run the models in "
                          "Caffe; run 'make setup' (which builds it), or set onnx.parity: auto to run the ONNX "
                          "exports unchecked")
    return []


def parity_resize(config, model):
    """The resize of the parity check's inputs: that of the model's first ONNX run."""
    return next(config["runs"][name]["resize"] for name in onnx_runs(config) if config["runs"][name]["model"] == model)


def reference_runs(config):
    """run -> the run its predictions are compared with pixel by pixel (None for none).

    runs.<run>.reference when given; else the model's fp32 Caffe run at the same resize (the original
    model as it was made), else its first fp32 run at the same resize. A run is never its own reference."""
    runs = config["runs"]
    references = {}
    for name, run in runs.items():
        if run["reference"] is not None:
            references[name] = run["reference"]
            continue
        candidates = [other for other, spec in runs.items()
                      if spec["model"] == run["model"] and spec["resize"] == run["resize"] and spec["precision"] == "fp32"]
        caffe = [other for other in candidates if runs[other]["backend"] == "caffe"]
        choice = (caffe or candidates or [None])[0]
        references[name] = choice if choice != name else None
    return references


def chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


@dataclass
class Plan:
    ids: list
    images: dict  # id -> photo path
    labels: dict  # id -> ground-truth PNG path
    batches: list  # image ids per job of the cheap per-image steps
    shards: list  # image ids per inference job
    resize_keys: dict  # resize key -> [H, W] or None, for the resize settings that runs use
    calibration: dict = None  # resize key -> (ids, photo paths) of the int8 runs' calibration images

    def batches_of(self, ids):
        """Indices of the batches that hold `ids` (an inference shard reads these batches' inputs)."""
        return sorted({self.batch_index[i] for i in ids})

    @cached_property
    def batch_index(self):
        return {i: b for b, ids in enumerate(self.batches) for i in ids}

    @staticmethod
    def check_devices(config):
        """Refuse a run whose backend cannot use its device (a GPU on a CPU-only build)."""
        for name, run in config["runs"].items():
            try:
                check_device(run["backend"], run["device"], run["precision"], run["provider"])
            except BackendError as error:
                raise ConfigError(f"runs.{name}: {error}") from None

    @classmethod
    def from_config(cls, config, check_files=True):
        """Read the split and check that every file the runs need exists."""
        data = dataset.load(config["dataset"], check_files_exist=check_files)
        ids = data.ids
        if check_files:
            used_models = {run["model"] for run in config["runs"].values()}
            missing = [f"models.{name}.{key}: {config['models'][name][key]}"
                       for name in sorted(used_models) for key in ("prototxt", "weights")
                       if not Path(config["models"][name][key]).is_file()]
            missing += overlap.check_lists(config)
            if missing:
                raise ConfigError("model file(s) not found:\n" + "\n".join(f"  {m}" for m in missing))
        keys = {resize_key(run["resize"]): run["resize"] for run in config["runs"].values()}
        return cls(ids=ids, images=data.images, labels=data.labels, batches=chunks(ids, config["batch_size"]),
                   shards=chunks(ids, config["inference"]["shard_size"]), resize_keys=keys,
                   calibration=calibration_images(config, ids, check_files))


def calibration_images(config, evaluated_ids, check_files=True):
    """resize key -> (ids, photo paths) of the calibration images of the int8 runs with that resize.

    Refuses calibration images that are also scored: quantization ranges fitted to the very images
    the model is scored on make the int8 run look better than it is on images it has not seen."""
    int8 = [run for run in config["runs"].values() if run["precision"] == "int8"]
    if not int8:
        return {}
    settings = config["quantization"]
    spec = dict(config["dataset"], limit=settings["calibration_images"])
    if spec["layout"] == "voc":
        spec["split"] = settings["calibration_split"]
    else:
        spec["ids"] = settings["calibration_split"]
    data = dataset.load(spec, check_files_exist=check_files)
    scored = sorted(set(data.ids) & set(evaluated_ids))
    if scored:
        raise ConfigError(f"quantization.calibration_split {settings['calibration_split']!r}: {len(scored)} of its "
                          f"first {settings['calibration_images']} images are also scored (e.g. {', '.join(scored[:5])}); "
                          f"calibrate on images that are not evaluated (e.g. the train split), or int8 accuracy "
                          f"is measured on the images its ranges were fitted to")
    paths = [data.images[i] for i in data.ids]
    return {resize_key(run["resize"]): (data.ids, paths) for run in int8}


def fetch_targets(config):
    """What `snakemake fetch` makes: the unpacked archives, and the downloads that they or the runs' models need."""
    from .download import UNPACKED_MARKER

    downloads = config["downloads"]
    needed = []
    for spec in config["unpack"].values():
        needed += [spec["archive"], *spec["add"].values()]
    for run in config["runs"].values():
        model = config["models"][run["model"]]
        needed += [model["prototxt"], model["weights"], *overlap.training_lists(model.get("trained_on"))]
    targets = [f"{dest}/{UNPACKED_MARKER}" for dest in config["unpack"]]
    return targets + sorted({path for path in needed if path in downloads})


def fetch_pending(config):
    """True when some file that `fetch` makes is missing, so that the benchmark cannot be planned yet."""
    return any(not Path(path).exists() for path in fetch_targets(config))
