"""The workflow's files: atomic writes (a failed step never leaves a half-written file behind),
JSON, and per-batch array files."""

import contextlib
import errno
import json
import math
import os
import re
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import SegbenchError

RERUN_ADVICE = ("delete it and run the same command again: Snakemake makes it again, and what is computed "
                "from it, wherever the results need it")


class DamagedFileError(SegbenchError):
    """A file the workflow wrote can no longer be read (cut short, overwritten): the message names it
    and says how to recompute it."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: the file is damaged ({reason}); {RERUN_ADVICE}")
        self.path = str(path)


class DiskFullError(SegbenchError):
    """No space left on the device while writing a file; nothing half-written is left behind."""

    def __init__(self, path):
        super().__init__(disk_full_message(path))
        self.path = None if path is None else str(path)


def is_disk_full(error):
    """Whether `error` is a write refused for lack of space (a full disk, or the user's quota)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path):
    where = f"while writing {path}" if path else "while writing this job's output"
    return (f"the disk is full (no space left on the device) {where}; nothing half-written was kept. "
            f"Free some space, then run the same command again: finished jobs are not redone")


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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(error):
            raise DiskFullError(path) from error
        raise


# atomic_path's temporary files: "." + the file's name + "." + mkstemp's 8 random characters + ".part".
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")


def remove_stale_temp_files(roots, min_age_s=60):
    """Remove the temporary files of atomic_path that a killed job left under `roots` (never taken
    for outputs, but they hold space); return their paths.

    Only files untouched for `min_age_s` seconds go: another Snakemake run in the same directory
    (with other targets, so not locked out) may be writing one right now. Downloads' resumable
    `<file>.part` files do not match the pattern and are kept.
    """
    removed = []
    now = time.time()
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                if not _TEMP_FILE.match(name):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if now - os.lstat(path).st_mtime >= min_age_s:
                        os.unlink(path)
                        removed.append(path)
    return removed


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
    """The data of a JSON file the workflow wrote; DamagedFileError if it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DamagedFileError(path, f"not valid JSON: {error}") from None


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
        try:
            with np.load(path) as data:
                for i, image_id in enumerate(data["ids"].tolist()):
                    if image_id in wanted:
                        found[image_id] = tuple(data[f"{name}_{i}"] for name in fields)
        except FileNotFoundError:
            raise SegbenchError(f"{path}: not found; run the same command again to recompute it") from None
        # A file cut short or overwritten: no zip directory, a member cut short or failing its
        # CRC, an .npy header that does not parse, or an array that is not there.
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as error:
            reason = f"no array {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
            raise DamagedFileError(path, f"not a complete batch file, {reason}") from None
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValueError(f"{', '.join(map(str, paths))}: no entry for {', '.join(missing[:5])}")
    return found
