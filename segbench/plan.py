"""Where every file of a workflow run lives, and how images are grouped into jobs.

The Snakefile and the step functions both use these names, so a path is
spelled in one place.
"""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import dataset, overlap
from .backends import BackendError, check_device
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
                check_device(run["backend"], run["device"])
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
                   shards=chunks(ids, config["inference"]["shard_size"]), resize_keys=keys)


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
