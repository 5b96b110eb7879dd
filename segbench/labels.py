"""Ground-truth label maps: reading palette PNGs as class indices, and writing them.

A VOC label PNG stores class indices in a palette image (PIL mode "P"). The
indices are the labels; the RGB rendering is only how a viewer shows them.
"""

import numpy as np
from PIL import Image

from . import SegbenchError
from .files import atomic_path

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


class LabelError(SegbenchError):
    pass


def voc_palette():
    """The 256-entry VOC colour map (index 255, void, is (224, 224, 192)), as a (256, 3) uint8 array."""
    return _VOC_PALETTE.copy()


def _make_voc_palette():
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


_VOC_PALETTE = _make_voc_palette()
_VOC_PALETTE_BYTES = _VOC_PALETTE.tobytes()


def _describe_values(values, counts, limit=8):
    shown = ", ".join(f"{v} ({c} px)" for v, c in list(zip(values, counts))[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return shown + more


def _rgb_to_indices(rgb, path):
    """Map a colour rendering of a label map back to indices through the VOC palette."""
    palette = voc_palette().astype(np.int64)
    packed_palette = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    rgb = rgb.astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    lookup = {int(c): i for i, c in enumerate(packed_palette)}
    unknown = [c for c in colours if int(c) not in lookup]
    if unknown:
        counts = [int((packed == c).sum()) for c in unknown]
        shown = [f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown]
        raise LabelError(
            f"{path}: RGB label image has {len(unknown)} colour(s) that are not in the VOC palette: "
            f"{_describe_values(shown, counts)}; save labels as a palette (mode 'P') or grayscale "
            f"PNG of class indices")
    indices = np.array([lookup[int(c)] for c in colours], dtype=np.uint8)
    return indices[inverse].reshape(packed.shape)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header(path):
    """(bit depth, colour type) from a PNG's IHDR chunk, which must come first; None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)  # signature, IHDR length and type, width, height, bit depth, colour type
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _stored_gray_values(values, path):
    """Pillow stretches 2- and 4-bit grayscale PNG samples to 0..255 (x85, x17): a stored 1 would
    read as class 85 or 17, and a stored 3 or 15 as void; labels need the stored values."""
    header = _png_header(path)
    if header is None or header[1] != 0 or header[0] not in (2, 4):
        return values
    return values // (255 // (2 ** header[0] - 1))


def read_label_png(path):
    """Return the class indices of a label image as a (H, W) uint8 array.

    Palette ("P") images give their indices, grayscale images are taken as
    indices, and RGB images are mapped back through the VOC palette.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                # np.asarray on a "P" image gives the indices, not the colours.
                return np.asarray(image, dtype=np.uint8).copy()
            if mode == "1":
                # convert("L") would turn 1 into 255, the void label.
                return np.asarray(image).astype(np.uint8)
            if mode == "L":
                return _stored_gray_values(np.asarray(image, dtype=np.uint8).copy(), path)
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(image).astype(np.int64)
                if values.min() < 0 or values.max() > 255:
                    bad = np.unique(values[(values < 0) | (values > 255)])
                    raise LabelError(f"{path}: label values outside 0..255: {bad[:8].tolist()}")
                return values.astype(np.uint8)
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(image.convert("RGB"))
            else:
                raise LabelError(f"{path}: unsupported label image mode {mode!r} "
                                 f"(expected a palette, grayscale or RGB PNG)")
    except FileNotFoundError:
        raise LabelError(f"{path}: ground-truth label file not found") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, LabelError):
            raise
        # Cut short (a crash, a full disk, a copy that stopped) or not an image at all.
        raise LabelError(f"{path}: cannot read label image, the file is damaged or not an image ({error}); "
                         f"if the workflow wrote it (a prediction), delete it and run the same command "
                         f"again to recompute it, else replace it with a good copy") from None
    return _rgb_to_indices(rgb, path)


def check_label_values(labels, num_classes, ignore_label, path):
    """Raise LabelError naming `path` if a label is neither a class (0..num_classes-1) nor the ignore label."""
    values, counts = np.unique(labels, return_counts=True)
    bad = (values >= num_classes) & (values != ignore_label)
    if bad.any():
        raise LabelError(
            f"{path}: label values outside 0..{num_classes - 1} that are not the ignore label "
            f"{ignore_label}: {_describe_values(values[bad].tolist(), counts[bad].tolist())}")


def write_label_png(path, labels):
    """Write class indices as a palette PNG with the VOC palette (atomically)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path}: a label map must be 2-D with values 0..255")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(_VOC_PALETTE_BYTES)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
