"""The workflow's files: atomic writes (a failed step never leaves a half-written file behind),
JSON, and per-batch array files."""

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_safe(value):
    # JSON has no NaN: an undefined metric is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray) and value.dtype.kind in "iub":  # counts: no NaN to look for
        return value.tolist()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _json_safe(value.item())
    return value


def write_json(path, data, indent=2):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(data), indent=indent, allow_nan=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_batch(path, ids, **fields):
    """Write per-image arrays of a batch of images as one .npz: `ids`, then `<field>_<i>` per image.

    One file per batch rather than per image: Snakemake's own bookkeeping costs grow with the
    files a job reads times the files it writes, and every step runs per batch anyway.
    """
    arrays = {"ids": np.array(list(ids), dtype=str)}
    for name, values in fields.items():
        if len(values) != len(ids):
            raise ValueError(f"{path}: {len(values)} {name} arrays for {len(ids)} images")
        arrays.update({f"{name}_{i}": value for i, value in enumerate(values)})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_batch(paths, ids, *fields):
    """{image id: (field arrays...)} for `ids`, read from the batch files `paths` (see write_batch)."""
    wanted = set(ids)
    found = {}
    for path in paths:
        with np.load(path) as data:
            for i, image_id in enumerate(data["ids"].tolist()):
                if image_id in wanted:
                    found[image_id] = tuple(data[f"{name}_{i}"] for name in fields)
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValueError(f"{', '.join(map(str, paths))}: no entry for {', '.join(missing[:5])}")
    return found
