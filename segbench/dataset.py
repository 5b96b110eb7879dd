"""A dataset in PASCAL VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt."""

from pathlib import Path

from . import SegbenchError


class DatasetError(SegbenchError):
    pass


def image_path(root, image_id):
    return f"{root}/JPEGImages/{image_id}.jpg"


def label_path(root, image_id):
    return f"{root}/SegmentationClass/{image_id}.png"


def split_ids(root, split, limit=None):
    """The image ids listed in the split file, in order; the first `limit` of them if given."""
    split_file = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset root not found (dataset.root)")
    if not split_file.is_file():
        raise DatasetError(f"{split_file}: split file not found (dataset.split is {split!r})")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{split_file}: the split lists no image ids")
    seen = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]
    if duplicates:
        raise DatasetError(f"{split_file}: ids listed more than once: {', '.join(duplicates[:8])}")
    bad = [i for i in ids if "/" in i or i.startswith(".")]
    if bad:
        raise DatasetError(f"{split_file}: ids must be plain file stems: {', '.join(bad[:8])}")
    return ids[:limit] if limit else ids


def check_files(root, ids, split):
    """Fail with one message listing every image or label file that the split names but that is missing."""
    missing = [p for i in ids for p in (image_path(root, i), label_path(root, i)) if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise DatasetError(f"{len(missing)} file(s) listed in split {split!r} are missing: "
                           f"{', '.join(missing[:10])}{more}")
