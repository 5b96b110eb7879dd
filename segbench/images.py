"""Images: reading photos, resizing them for a network, and bringing outputs back.

Label maps are only ever resized with nearest-neighbour sampling; class scores
may be resized bilinearly, then the argmax is taken at the target size.
"""

import numpy as np
from PIL import Image

from . import SegbenchError


class ImageError(SegbenchError):
    pass


EXIF_SETTINGS = ("refuse", "apply", "ignore")
ORIENTATION_TAG = 0x0112

# What shows the stored pixels as viewers show them, per EXIF orientation: the table of
# PIL.ImageOps.exif_transpose. Orientation 1, and values outside 2..8 (written by some broken
# cameras), need nothing, as viewers treat them as 1.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # "I": 16-bit PNGs in older Pillows


def _orientation(image, path):
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception as error:  # Pillow raises several kinds on a malformed EXIF block
        raise ImageError(f"{path}: cannot read the EXIF block: {error!r}") from None
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def read_orientation(path):
    """A photo's EXIF orientation (1..8, 1 when it has none) from its header alone; None if it cannot
    be opened, which the step that decodes it reports."""
    try:
        with Image.open(path) as image:
            # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels; a plan-time
            # check cannot afford that, so only one before them counts here (read_image sees both).
            if image.format == "PNG" and "exif" not in image.info:
                return 1
            return _orientation(image, path)
    except Exception:  # any unreadable header: the step that decodes the photo names the fault
        return None


CHOOSE_ORIENTATION = ("set dataset.exif_orientation to 'apply' if the labels were drawn on the photo as "
                      "viewers show it (rotated or mirrored), or to 'ignore' if they match the stored pixels")


def _oriented(image, path, exif_orientation):
    """The image as viewers show it ('apply'), as stored ('ignore'), or an error if they differ ('refuse')."""
    if exif_orientation == "ignore":
        return image
    orientation = _orientation(image, path)
    if orientation == 1:
        return image
    if exif_orientation == "refuse":
        raise ImageError(f"{path}: EXIF orientation {orientation}: viewers show this photo rotated or mirrored, "
                         f"but its stored pixels are not; {CHOOSE_ORIENTATION}")
    return image.transpose(_TRANSPOSE[orientation])


def _sixteen_to_eight(values, path):
    values = values.astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise ImageError(f"{path}: integer image with values outside 0..65535 "
                         f"({values.min()}..{values.max()}) cannot be a photo")
    # round(v * 255 / 65535) in integers; 65535 is odd, so there is never a tie.
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(image, path):
    if image.mode in _SIXTEEN_BIT_MODES:
        # convert("RGB") would clamp every 16-bit value above 255 to white.
        gray = _sixteen_to_eight(np.asarray(image), path)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise ImageError(f"{path}: a floating-point image (mode 'F') cannot be a photo; "
                         f"save photos with 8 or 16 bits per sample")
    return np.asarray(image.convert("RGB")).copy()


def read_image(path, exif_orientation="refuse"):
    """Return a photo as an (H, W, 3) uint8 RGB array; a clear error for a missing or corrupt file.

    `exif_orientation` (the dataset.exif_orientation setting): 'apply' rotates or mirrors the
    photo as its EXIF orientation says, 'ignore' keeps the stored pixels, and 'refuse' raises
    ImageError for a photo whose orientation is not 1. 16-bit grayscale is scaled to 8 bits.
    """
    if exif_orientation not in EXIF_SETTINGS:
        raise ValueError(f"exif_orientation must be one of {EXIF_SETTINGS}, got {exif_orientation!r}")
    try:
        with Image.open(path) as image:
            image.load()  # decodes now, so a truncated or corrupt file fails here
            return _to_rgb(_oriented(image, path, exif_orientation), path)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot decode image: {error}") from None


def _check_size(size_hw):
    height, width = (int(v) for v in size_hw)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size_hw}")
    return height, width


def resize_image(rgb, size_hw):
    """Resize an (H, W, 3) uint8 photo to `size_hw` with bilinear interpolation."""
    height, width = _check_size(size_hw)
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def resize_labels(labels, size_hw):
    """Resize a label map with nearest-neighbour sampling of pixel centres.

    Each output pixel takes the input pixel that contains its centre; a centre on
    an edge goes to the higher index. Never interpolates: every output value is
    one of the input values, whatever the dtype.
    """
    height, width = _check_size(size_hw)
    labels = np.asarray(labels)
    if labels.shape == (height, width):
        return labels
    # Index arithmetic rather than an image library, so that the dtype and the
    # values survive whatever they are (no byte-scaling, no smoothing).
    rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def resize_scores(scores, size_hw):
    """Resize (C, H, W) class scores to `size_hw` bilinearly, channel by channel, as float32."""
    height, width = _check_size(size_hw)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape[1:] == (height, width):
        return scores
    out = np.empty((scores.shape[0], height, width), dtype=np.float32)
    for c, channel in enumerate(scores):
        out[c] = np.asarray(Image.fromarray(channel, mode="F").resize((width, height), Image.BILINEAR))
    return out


def to_network_input(rgb, mean, scale=1.0, channel_order="BGR"):
    """Turn an (H, W, 3) uint8 RGB photo into a (1, 3, H, W) float32 blob.

    `mean` is given in the network's channel order and subtracted before `scale` is applied,
    as Caffe's transformer does.
    """
    if channel_order not in ("BGR", "RGB"):
        raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {channel_order!r}")
    rgb = np.asarray(rgb)
    height, width = rgb.shape[:2]
    mean = np.asarray(mean, dtype=np.float32)
    # One pass per channel straight into the (1, 3, H, W) layout: about ten times faster than
    # converting, flipping, subtracting and transposing whole (H, W, 3) arrays.
    blob = np.empty((1, 3, height, width), dtype=np.float32)
    for c, source in enumerate((2, 1, 0) if channel_order == "BGR" else (0, 1, 2)):
        np.subtract(rgb[:, :, source], mean[c], out=blob[0, c], dtype=np.float32)
    if scale != 1.0:
        blob *= np.float32(scale)
    return blob
