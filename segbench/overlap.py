"""Training-set overlap: which evaluated images a model was trained on.

Scores on training images are inflated (FCN's released models were trained on SBD train, which
holds about 545 of VOC2012 val's 1,449 images), so a model may name its training set
(`models.<name>.trained_on`) and every dataset metric is then also reported without those images.
"""

from pathlib import Path

from .dataset import DatasetError


def training_lists(trained_on):
    """models.<name>.trained_on (null, one id file, or a list of them) as a list of paths."""
    if trained_on is None:
        return []
    return [trained_on] if isinstance(trained_on, str) else list(trained_on)


def read_training_ids(paths):
    """The union of the ids in the files `paths` (one id a line, the first word of each line)."""
    ids = set()
    for path in paths:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise DatasetError(f"{path}: training-set id list not found (models.<name>.trained_on)") from None
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: a training-set id list must be text, one id a line") from None
        ids.update(line.split()[0] for line in text.splitlines() if line.strip())
    return ids


def check_lists(config):
    """Problems with the training-set lists of the models that runs use, as 'models.<name>.trained_on: ...'."""
    used = {run["model"] for run in config["runs"].values()}
    return [f"models.{name}.trained_on: {path}: file not found"
            for name in sorted(used) for path in training_lists(config["models"][name].get("trained_on"))
            if not Path(path).is_file()]
