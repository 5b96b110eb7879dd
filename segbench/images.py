"""Images: reading photos, resizing them for a network, and bringing outputs back.

Label maps are only ever resized with nearest-neighbour sampling; class scores
may be resized bilinearly, then the argmax is taken at the target size.
"""

import numpy as np
from PIL import Image

from . import SegbenchError


class ImageError(SegbenchError):
    pass


def read_image(path):
    """Return a photo as an (H, W, 3) uint8 RGB array; a clear error for a missing or corrupt file."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes now, so a truncated or corrupt file fails here
            return np.asarray(image.convert("RGB")).copy()
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
