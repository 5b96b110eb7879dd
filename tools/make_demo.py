#!/usr/bin/env python3
"""Generate the bundled demo: a synthetic VOC-layout dataset and a tiny Caffe FCN.

    .venv/bin/python tools/make_demo.py [--out resources/demo]

Writes
    <out>/VOC/JPEGImages/demo_NNN.jpg            RGB JPEG images of varied sizes
    <out>/VOC/SegmentationClass/demo_NNN.png     palette PNGs: 0..20 classes, 255 void
    <out>/VOC/ImageSets/Segmentation/demo.txt    all ids, one a line
    <out>/VOC/.../calib_NNN.*, calibration.txt   8 more images, never scored: int8 calibration data
    <out>/fcn-tiny/deploy.prototxt               FCN-style deploy net (Input -> ... -> Crop)
    <out>/fcn-tiny/fcn-tiny.caffemodel           weights set by construction, no training
    <out>/fcn-tiny/README.md

No pretrained VOC model can be downloaded here, so the demo model is built by
hand: the images are painted so that each class has its own colour, and the net
is a nearest-colour classifier written as an FCN. It needs pycaffe (built by
tools/caffe/build.sh) to write the .caffemodel and to score itself at the end.

Preprocessing the net expects (the same recipe as the FCN release, so that the
inference code treats the demo net and real FCN-8s alike):
    image loaded with Pillow as RGB uint8 -> float32 -> channels reversed to BGR
    -> minus MEAN_BGR per channel -> times SCALE -> transposed to 1x3xHxW.
    Input blob 'data' (reshape it to each image's own size before forward),
    output blob 'score' (1x21xHxW); prediction = argmax over the channel axis.

Everything is drawn from one seeded generator, so a re-run writes byte-identical
files (given the same Pillow/libjpeg/zlib and Caffe builds).
"""
import argparse
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

SEED = 20240517
N_IMAGES = 24
# The calibration images of int8 runs: drawn after the demo images from their own generator, so
# that adding them left the demo images as they were, and never among the images scored.
CALIBRATION_SEED = 20261201
N_CALIBRATION = 8
SIZE_RANGE = (96, 240)          # inclusive bounds for both height and width
FIRST_SIZE = (131, 177)         # (H, W): pin one odd, non-square size
JPEG_QUALITY = 90
VOID_RADIUS = 2.0               # pixels this close to a class boundary (either side) -> 255

# FCN's published BGR mean, so the demo net and the real FCN-8s share one recipe.
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
SCALE = 1.0
EXAMPLE_SHAPE = (1, 3, 128, 128)

CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
N_CLASSES = len(CLASS_NAMES)

# Scene parameters. These set how hard the demo is: they were tuned so that the
# hand-built net scores a pixel accuracy of about 0.9, i.e. good enough to look
# right but with errors for the benchmark to measure.
# Pale blue-grey: the class colours below stop at 134 in blue, so brightness
# changes alone do not carry the background onto a class colour.
BG_RGB = np.array([172.0, 188.0, 228.0])
BG_IMAGE_JITTER = 8.0     # per-image shift of the background colour
BG_LOWFREQ = 16.0         # amplitude of slow colour drift across the image
BG_TEXTURE = 22.0         # spatially correlated brightness texture (survives pooling)
BG_TINT = 8.0             # spatially correlated colour texture
OBJ_OFFSET = 13.0         # per-object colour shift: can push an object towards a neighbour class
OBJ_SHADING = 0.16        # per-object brightness gradient, fraction at the rim
OBJ_TEXTURE = 20.0        # correlated texture inside objects...
OBJ_GRAIN = 2.0           # ...and its grain size in px (coarse grain survives pooling)
PIXEL_NOISE = 14.0        # white sensor noise

# Net parameters: 1/4 resolution between pool2 and upscore blurs the class
# boundaries by a few pixels, a little beyond the void band.
POOL_LEVELS = 2
SIGMA = 32.0              # colour spread the classifier assumes
BG_PRIOR = 0.5            # prior of background; the 20 object classes share the rest


def voc_palette():
    """Standard PASCAL VOC colormap: bits of the label index spread over r, g, b."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = voc_palette()
# Each object class is painted in a compressed version of its VOC palette colour:
# the palette spaces colours 64 apart in places (e.g. aeroplane/cat/chair), so a
# few classes are genuinely close and get confused, as in a real benchmark.
CLASS_RGB = np.vstack([BG_RGB, 32.0 + 0.8 * PALETTE[1:N_CLASSES].astype(np.float64)])


# --------------------------------------------------------------------------- data

def smooth_noise(rng, shape, sigma_px, amplitude):
    """Gaussian-filtered noise rescaled to unit std, so `amplitude` is its std."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="reflect")
    return amplitude * n / n.std()


def low_freq_field(rng, h, w, amplitude):
    """A slow drift: a 3x3 grid of random values interpolated over the image."""
    grid = rng.standard_normal((3, 3))
    zoomed = ndimage.zoom(grid, (h / 3, w / 3), order=1, mode="nearest", grid_mode=True)
    return amplitude * zoomed[:h, :w]


def random_shape(rng, h, w):
    """Vertices of an ellipse, a rotated rectangle or a jagged polygon."""
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ry, rx = rng.uniform(0.15, 0.38, size=2) * min(h, w)
    angle = rng.uniform(0, np.pi)
    kind = rng.choice(["ellipse", "rectangle", "polygon"])
    if kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    elif kind == "rectangle":
        pts = np.array([[-rx, -ry], [rx, -ry], [rx, ry], [-rx, ry]])
    else:
        n = rng.integers(5, 9)
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.55, 1.0, n)
        pts = np.stack([rx * rad * np.cos(t), ry * rad * np.sin(t)], 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + [cx, cy]
    return [tuple(p) for p in pts], (cy, cx), max(rx, ry)


def class_stream(rng):
    """Endless shuffled rounds of 1..20, so every class turns up about equally."""
    while True:
        yield from rng.permutation(np.arange(1, N_CLASSES))


def make_image(rng, h, w, classes):
    """One scene: RGB float image and its label map (before the void band)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bg = BG_RGB + rng.normal(0, BG_IMAGE_JITTER, 3)
    # Mostly brightness texture (like gravel or foliage in shade) with a little
    # colour in it: independent per-channel texture would read as confetti.
    grain = smooth_noise(rng, (h, w), 1.5, BG_TEXTURE)
    img = np.empty((h, w, 3))
    for ch in range(3):
        img[..., ch] = (bg[ch] + grain + low_freq_field(rng, h, w, BG_LOWFREQ)
                        + smooth_noise(rng, (h, w), 1.5, BG_TINT))
    labels = np.zeros((h, w), np.uint8)

    # Painter's order: later objects occlude earlier ones, as in real photos.
    for c in classes:
        pts, (cy, cx), radius = random_shape(rng, h, w)
        mask_im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_im).polygon(pts, fill=1)
        mask = np.asarray(mask_im, bool)
        colour = CLASS_RGB[c] + rng.normal(0, OBJ_OFFSET, 3)
        # Directional lighting: brightness falls off along a random direction.
        d = rng.normal(size=2)
        d /= np.linalg.norm(d)
        shade = 1.0 + OBJ_SHADING * ((yy - cy) * d[0] + (xx - cx) * d[1]) / radius
        tex = smooth_noise(rng, (h, w), OBJ_GRAIN, OBJ_TEXTURE)
        obj = colour * shade[..., None] + tex[..., None]
        img[mask] = obj[mask]
        labels[mask] = c

    img += rng.normal(0, PIXEL_NOISE, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def add_void_band(labels, radius):
    """Mark pixels near any class boundary as 255, like VOC's outline band."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:, :] != labels[:-1, :]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    # `edge` already holds the first pixel on each side, hence radius - 1.
    near = ndimage.distance_transform_edt(~edge) <= radius - 1
    out = labels.copy()
    out[near] = 255
    return out


def write_dataset(root, rng, prefix="demo", count=N_IMAGES, split="demo"):
    """Write `count` images and labels of the VOC tree and the split listing them; return the ids."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    palette_bytes = PALETTE.tobytes()
    stream = class_stream(rng)
    ids = []
    for i in range(count):
        if i == 0 and prefix == "demo":
            h, w = FIRST_SIZE
        else:
            h, w = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
        k = int(rng.integers(2, 5))
        classes = []
        while len(classes) < k:  # distinct classes within one image
            c = int(next(stream))
            if c not in classes:
                classes.append(c)
        img, labels = make_image(rng, h, w, classes)
        gt = add_void_band(labels, VOID_RADIUS)

        image_id = f"{prefix}_{i:03d}"
        # Pillow's defaults (no optimize, no EXIF) make the bytes depend on the pixels alone.
        Image.fromarray(img, "RGB").save(
            os.path.join(root, "JPEGImages", image_id + ".jpg"), quality=JPEG_QUALITY)
        png = Image.fromarray(gt, mode="P")
        png.putpalette(palette_bytes)
        png.save(os.path.join(root, "SegmentationClass", image_id + ".png"))
        ids.append(image_id)
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))
    return ids


# --------------------------------------------------------------------------- net

def deploy_prototxt():
    n, c, h, w = EXAMPLE_SHAPE
    up = 2 ** POOL_LEVELS
    pools = "".join(f"""
layer {{ name: "pool{i}" type: "Pooling" bottom: "{'conv1' if i == 1 else f'pool{i - 1}'}" top: "pool{i}"
  pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}""" for i in range(1, POOL_LEVELS + 1))
    # Crop offset: pool cell i covers input pixels [up*i, up*i+up), centred at
    # up*i + (up-1)/2; the bilinear kernel (size 2*up, stride up) puts that cell's
    # peak at output up*i + up - 1/2. The difference, up/2, is the offset.
    return f"""name: "fcn-tiny"
# Demo FCN written by tools/make_demo.py; weights set by construction (see README.md).
# Preprocessing: RGB -> BGR, minus mean {MEAN_BGR}, times {SCALE}; reshape 'data' per image.
layer {{ name: "input" type: "Input" top: "data"
  input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}{pools}
layer {{ name: "score_fr" type: "Convolution" bottom: "pool{POOL_LEVELS}" top: "score_fr"
  convolution_param {{ num_output: {N_CLASSES} kernel_size: 1 }} }}
layer {{ name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore"
  convolution_param {{ num_output: {N_CLASSES} bias_term: false kernel_size: {2 * up} stride: {up} }} }}
layer {{ name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
  crop_param {{ axis: 2 offset: {up // 2} }} }}
"""


def bilinear_kernel(size):
    """FCN's upsample_filt: the 2-D bilinear interpolation kernel."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def set_weights(net):
    # conv1: a [1 2 1]x[1 2 1]/16 blur of each BGR channel, emitted twice with
    # opposite signs. ReLU alone would drop the half of each colour below the
    # mean; the +/- pair survives it and x = relu(x) - relu(-x) recovers it.
    blur = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    w = np.zeros((6, 3, 3, 3), np.float32)
    for ch in range(3):
        w[ch, ch] = blur
        w[ch + 3, ch] = -blur
    net.params["conv1"][0].data[...] = w
    net.params["conv1"][1].data[...] = 0

    # score_fr: log posterior of an isotropic Gaussian around each class colour,
    # up to a per-pixel constant: (mu.x - |mu|^2/2) / sigma^2 + log prior. It is
    # linear in x, so it commutes with the average pooling: the net labels each
    # pooled cell with the nearest class colour. The prior matters: background
    # brightness varies a lot, and without it dark patches of background go to
    # the nearest greyish class (person, car). Colours are in the preprocessed
    # (BGR - mean) * scale space.
    mu = (CLASS_RGB[:, ::-1] - np.array(MEAN_BGR)) * SCALE
    s2 = (SIGMA * SCALE) ** 2
    prior = np.full(N_CLASSES, (1 - BG_PRIOR) / (N_CLASSES - 1))
    prior[0] = BG_PRIOR
    wf = np.concatenate([mu, -mu], axis=1) / s2
    net.params["score_fr"][0].data[...] = wf.reshape(N_CLASSES, 6, 1, 1)
    net.params["score_fr"][1].data[...] = -0.5 * (mu ** 2).sum(1) / s2 + np.log(prior)

    # upscore: FCN's fixed bilinear upsampling, one kernel on the diagonal.
    k = net.params["upscore"][0].data
    k[...] = 0
    kern = bilinear_kernel(k.shape[2])
    for c in range(N_CLASSES):
        k[c, c] = kern


def write_net(net_dir):
    import caffe  # deferred: the dataset half needs no Caffe

    os.makedirs(net_dir, exist_ok=True)
    proto = os.path.join(net_dir, "deploy.prototxt")
    with open(proto, "w") as f:
        f.write(deploy_prototxt())
    net = caffe.Net(proto, caffe.TEST)
    set_weights(net)
    model = os.path.join(net_dir, "fcn-tiny.caffemodel")
    net.save(model)
    with open(os.path.join(net_dir, "README.md"), "w") as f:
        f.write(readme())
    return proto, model


def readme():
    return f"""# fcn-tiny: demo segmentation net

Generated by `tools/make_demo.py` together with the synthetic dataset in `../VOC`;
do not edit by hand, re-run the script. It is not a trained model: its weights are
set by construction so that it labels each pixel with the class whose demo colour
is nearest to the locally averaged image colour. It only makes sense on the demo
images.

## Preprocessing (same recipe as the FCN release)

1. Load the image with Pillow as RGB uint8 and convert to float32.
2. Reverse the channel order to BGR.
3. Subtract the per-channel mean, BGR: `{MEAN_BGR}`.
4. Multiply by scale `{SCALE}`.
5. Transpose to `1x3xHxW`.

Then `net.blobs['data'].reshape(1, 3, H, W); net.reshape();`
`net.blobs['data'].data[...] = x; net.forward()`; the prediction is the argmax
over the channel axis of `net.blobs['score'].data[0]` (21 x H x W, VOC class order).

The `Input` layer's example shape is `{'x'.join(map(str, EXAMPLE_SHAPE))}`; the net works for any
input size (output `score` always has the input's H and W).

## Layers

| layer | type | what it does |
|---|---|---|
| conv1 + relu1 | Convolution 3x3 pad 1, ReLU | blurs each colour channel; keeps +x and -x so ReLU loses nothing |
| pool1..pool{POOL_LEVELS} | Pooling AVE 2x2 stride 2 | averages colour to 1/{2 ** POOL_LEVELS} resolution |
| score_fr | Convolution 1x1 | Gaussian log-likelihood of each class colour (linear in colour) |
| upscore | Deconvolution, bilinear, no bias | upsamples scores x{2 ** POOL_LEVELS}, as FCN's upscore |
| score | Crop axis 2 offset {2 ** POOL_LEVELS // 2} | aligns the upsampled scores with `data` |
"""


# --------------------------------------------------------------------------- check

def preprocess(path):
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    x = (rgb[..., ::-1] - np.array(MEAN_BGR, np.float32)) * SCALE
    return x.transpose(2, 0, 1)[None]


def evaluate(proto, model, root, ids):
    """Run the net the way the benchmark will and score it against the GT."""
    import caffe

    net = caffe.Net(proto, model, caffe.TEST)
    conf = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for image_id in ids:
        x = preprocess(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        net.blobs["data"].reshape(*x.shape)
        net.reshape()
        net.blobs["data"].data[...] = x
        net.forward()
        score = net.blobs["score"].data[0]
        assert score.shape == (N_CLASSES,) + x.shape[2:], (image_id, score.shape)
        pred = score.argmax(0)
        gt = np.array(Image.open(os.path.join(root, "SegmentationClass", image_id + ".png")))
        keep = gt != 255
        conf += np.bincount(N_CLASSES * gt[keep].astype(np.int64) + pred[keep],
                            minlength=N_CLASSES ** 2).reshape(N_CLASSES, N_CLASSES)
    # Odd and tiny sizes must also come back at full size (Crop must never fail).
    for h, w in [(1, 1), (5, 3), (97, 331), (500, 375)]:
        net.blobs["data"].reshape(1, 3, h, w)
        net.reshape()
        net.forward()
        assert net.blobs["score"].data.shape == (1, N_CLASSES, h, w), (h, w)
    return conf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="resources/demo", help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    os.environ.setdefault("GLOG_minloglevel", "2")

    rng = np.random.default_rng(SEED)
    voc_root = os.path.join(args.out, "VOC")
    ids = write_dataset(voc_root, rng)
    write_dataset(voc_root, np.random.default_rng(CALIBRATION_SEED), "calib", N_CALIBRATION, "calibration")
    proto, model = write_net(os.path.join(args.out, "fcn-tiny"))
    conf = evaluate(proto, model, voc_root, ids)

    gt_pixels = conf.sum(1)
    present = gt_pixels > 0
    iou = np.diag(conf) / np.maximum(gt_pixels + conf.sum(0) - np.diag(conf), 1)
    print(f"wrote {len(ids)} images to {voc_root} and the net to {os.path.dirname(proto)}")
    print(f"classes present: {int(present.sum())}/{N_CLASSES}"
          + ("" if present.all() else " (missing: " + ", ".join(
              n for n, p in zip(CLASS_NAMES, present) if not p) + ")"))
    print(f"pixel accuracy (void excluded): {np.trace(conf) / conf.sum():.4f}")
    print(f"mean IoU over present classes:  {iou[present].mean():.4f}")
    print(f"took {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
