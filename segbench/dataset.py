"""Where a dataset's images and ground-truth labels are.

Two layouts:
- voc: PASCAL VOC, `<root>/JPEGImages/<id>.jpg`, `<root>/SegmentationClass/<id>.png`,
  ids listed in `<root>/ImageSets/Segmentation/<split>.txt`;
- folders: an images folder and a labels folder whose files share stems
  (`<images>/<id>.jpg|.jpeg|.png|.bmp`, `<labels>/<id>.png`), ids listed in an
  optional id file, or else every label's stem.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from . import SegbenchError
from .images import CHOOSE_ORIENTATION, read_orientation

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(SegbenchError):
    pass


@dataclass
class Dataset:
    ids: list
    images: dict  # id -> path of the photo
    labels: dict  # id -> path of the ground-truth PNG


def image_path(root, image_id):
    return f"{root}/JPEGImages/{image_id}.jpg"


def label_path(root, image_id):
    return f"{root}/SegmentationClass/{image_id}.png"


def read_ids(path, what):
    """Ids from a file of one id per line (the first word of each line)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: lists no image ids")
    seen = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]
    if duplicates:
        raise DatasetError(f"{path}: ids listed more than once: {', '.join(duplicates[:8])}")
    bad = [i for i in ids if "/" in i or i.startswith(".")]
    if bad:
        raise DatasetError(f"{path}: ids must be plain file stems: {', '.join(bad[:8])}")
    return ids


def split_ids(root, split, limit=None):
    """The image ids listed in a VOC split file, in order; the first `limit` of them if given."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset root not found (dataset.root)")
    split_file = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    ids = read_ids(split_file, f"split file (dataset.split is {split!r})")
    return ids[:limit] if limit else ids


def _report_missing(missing, where):
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise DatasetError(f"{len(missing)} file(s) listed in {where} are missing: "
                           f"{', '.join(missing[:10])}{more}")


def check_files(root, ids, split):
    """Fail with one message listing every image or label file that the split names but that is missing."""
    _report_missing([p for i in ids for p in (image_path(root, i), label_path(root, i))
                     if not Path(p).is_file()], f"split {split!r}")


def check_orientations(photos):
    """Refuse, in one message, photos that viewers show rotated or mirrored (EXIF orientation 2..8):
    read as stored, they would be scored against labels drawn on what the annotator saw."""
    turned = [(p, o) for p in photos if (o := read_orientation(p)) not in (None, 1)]
    if turned:
        more = f"\n  (and {len(turned) - 10} more)" if len(turned) > 10 else ""
        raise DatasetError(
            f"{len(turned)} photo(s) have an EXIF orientation other than 1: viewers and annotation tools show "
            f"them rotated or mirrored, but their stored pixels are not (dataset.exif_orientation is 'refuse'):\n"
            + "\n".join(f"  {p}: orientation {o}" for p, o in turned[:10]) + more
            + f"\nTo score them, {CHOOSE_ORIENTATION}.")


def _folders(data, check):
    images_dir, labels_dir = Path(data["images"]), Path(data["labels"])
    for name, folder in (("images", images_dir), ("labels", labels_dir)):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {name} folder not found (dataset.{name})")
    # One pass over each folder, rather than a lookup per image.
    label_stems = {e.name[:-4] for e in os.scandir(labels_dir) if e.name.lower().endswith(".png")}
    image_files = {}
    for entry in os.scandir(images_dir):
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in IMAGE_SUFFIXES:
            image_files.setdefault(stem, []).append(entry.name)
    if data["ids"]:
        ids = read_ids(data["ids"], "id list (dataset.ids)")
    else:
        ids = sorted(label_stems)
        if not ids:
            raise DatasetError(f"{labels_dir}: no .png label files")
    ids = ids[:data["limit"]] if data["limit"] else ids
    where = f"id list {data['ids']}" if data["ids"] else f"labels folder {labels_dir}"
    ambiguous = [f"{images_dir}/{{{','.join(sorted(image_files[i]))}}}" for i in ids if len(image_files.get(i, [])) > 1]
    if ambiguous:
        raise DatasetError(f"more than one image for an id: {', '.join(ambiguous[:8])}")
    if check:
        _report_missing([f"{images_dir}/{i}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>" for i in ids
                         if i not in image_files] +
                        [f"{labels_dir}/{i}.png" for i in ids if i not in label_stems], where)
    images = {i: f"{images_dir}/{image_files[i][0]}" if i in image_files else f"{images_dir}/{i}.jpg" for i in ids}
    return Dataset(ids, images, {i: f"{labels_dir}/{i}.png" for i in ids})


def _voc(data, check):
    ids = split_ids(data["root"], data["split"], data["limit"])
    if check:
        check_files(data["root"], ids, data["split"])
    return Dataset(ids, {i: image_path(data["root"], i) for i in ids}, {i: label_path(data["root"], i) for i in ids})


def load(data, check_files_exist=True):
    """The dataset described by the config's `dataset` section; checks that its files exist and,
    unless dataset.exif_orientation says otherwise, that no photo is shown rotated by viewers."""
    found = (_folders if data["layout"] == "folders" else _voc)(data, check_files_exist)
    if check_files_exist and data.get("exif_orientation", "refuse") == "refuse":
        check_orientations([found.images[i] for i in found.ids])
    return found
