"""What each Caffe layer asks for, read and checked once for every engine that rebuilds a net.

The ONNX exporter (segbench.onnx_export) and the PyTorch builder (segbench.torch_model) walk a
parsed net (segbench.caffe_model) layer by layer. Both subclass LayerReader: the methods here
read a layer's parameters and weights with Caffe's own rules and refuse what no engine handles
(with the prototxt, the layer and its type in the message), so the engines only turn the result
into their own operations. A subclass names its error class and engine, says how it holds a blob
(`handle_of`, `rank_of`, `known_channels`) and gives one `layer_<Type>` method per layer type.
"""

import numpy as np

from . import SegbenchError
from .caffe_model import CaffeModelError


def pair(param, name, default, split=True):
    """(h, w) of a 2-D Convolution/Pooling setting: `name` (repeated or single) or name_h/name_w."""
    if split and (param.HasField(f"{name}_h") or param.HasField(f"{name}_w")):
        return int(getattr(param, f"{name}_h")), int(getattr(param, f"{name}_w"))
    field = param.DESCRIPTOR.fields_by_name[name]
    if not field.is_repeated:
        if default is None and not param.HasField(name):
            return None, None
        return int(getattr(param, name)), int(getattr(param, name))
    values = [int(v) for v in getattr(param, name)]
    if not values:
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"{name} has {len(values)} values; only 2-D (N, C, H, W) layers are supported")


def kernel_of(param):
    if param.HasField("kernel_h") or param.HasField("kernel_w"):
        return int(param.kernel_h), int(param.kernel_w)
    return pair(param, "kernel_size", None, split=False)


class LayerReader:
    error = SegbenchError
    engine = "segbench"

    def __init__(self, net, input_blob, output_blob):
        self.net, self.input_blob, self.output_blob = net, input_blob, output_blob

    # What a subclass says about how it holds blobs.
    def handle_of(self, blob):
        """The engine's handle of a Caffe blob's current value, or None while no layer made it."""
        raise NotImplementedError

    def rank_of(self, handle):
        raise NotImplementedError

    def known_channels(self, handle):
        """The blob's channel count where it is known without running the net, else None."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the walk

    def fail(self, layer, what):
        raise self.error(f"{self.net.prototxt}: layer {layer.name!r} (type {layer.type}): {what}")

    def input_shape(self):
        """The (N, C, H, W) example shape of the input blob, checked."""
        net = self.net
        if self.input_blob not in net.inputs:
            raise self.error(f"{net.prototxt}: input blob {self.input_blob!r} is not an input of the net; "
                             f"its inputs are {list(net.inputs)}")
        shape = net.inputs[self.input_blob]
        if len(shape) != 4:
            raise self.error(f"{net.prototxt}: input {self.input_blob!r} has shape {shape}; "
                             f"only (N, C, H, W) inputs are supported")
        return shape

    def handlers(self):
        """{layer type: method}, after refusing every unknown type at once, before any weight is read."""
        handlers = {name[len("layer_"):]: getattr(self, name) for name in dir(self) if name.startswith("layer_")}
        for layer in self.net.layers:
            if layer.type not in handlers:
                self.fail(layer, f"layer type {layer.type!r} is not supported by {self.engine} "
                                 f"(supported: {', '.join(sorted(handlers))})")
        return handlers

    def check_tops(self, layer, made):
        if len(made) != len(layer.tops):
            self.fail(layer, f"needs {len(made)} top blob(s), has {len(layer.tops)}")

    def output_handle(self, blobs):
        """The output blob's handle, checked; `blobs` are the blobs the net made (for the message)."""
        handle = self.handle_of(self.output_blob)
        if handle is None:
            raise self.error(f"{self.net.prototxt}: output blob {self.output_blob!r} is not produced by the net; "
                             f"its blobs are {sorted(blobs)}")
        if self.output_blob == self.input_blob or handle == self.handle_of(self.input_blob):
            raise self.error(f"{self.net.prototxt}: output blob {self.output_blob!r} is the input itself")
        return handle

    # ------------------------------------------------------------------ checks

    def bottoms(self, layer, count=None, minimum=1):
        if count is not None and len(layer.bottoms) != count:
            self.fail(layer, f"needs {count} bottom blob(s), has {len(layer.bottoms)}")
        if len(layer.bottoms) < minimum:
            self.fail(layer, f"needs at least {minimum} bottom blob(s)")
        missing = [b for b in layer.bottoms if self.handle_of(b) is None]
        if missing:
            self.fail(layer, f"bottom blob(s) {missing} are not produced by any earlier layer")
        return [self.handle_of(b) for b in layer.bottoms]

    def blob(self, layer, index, shape):
        return layer.blob(index, shape, self.net.weights or self.net.prototxt)

    def check_blob_count(self, layer, expected):
        if self.net.weights is None:
            self.fail(layer, "has weights, but no caffemodel was given")
        if len(layer.blobs) == 0:
            self.fail(layer, f"has no weights in {self.net.weights} (no layer of that name there)")
        if len(layer.blobs) not in expected:
            raise CaffeModelError(f"{self.net.weights}: layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} "
                                  f"weight blob(s), the layer needs {' or '.join(map(str, expected))}")

    def channels_of(self, layer, handle):
        channels = self.known_channels(handle)
        if channels is None:
            self.fail(layer, "the number of channels of its input is not known statically")
        return channels

    def axis(self, layer, axis, rank):
        if not -rank <= axis < rank:
            self.fail(layer, f"axis {axis} is out of range for a {rank}-D blob")
        return axis % rank

    def four_d(self, layer, handle):
        if self.rank_of(handle) != 4:
            self.fail(layer, "only 4-D (N, C, H, W) inputs are supported")

    # ------------------------------------------------------------------ parameters, per layer type

    def convolution(self, layer, x, transpose):
        """dict of kernel, pad, stride, dilation (each (h, w)), group, out_channels, weight, bias (or None).
        Caffe's Deconvolution weights are (C_in, C_out / group, kh, kw), as ConvTranspose's are."""
        p = layer.param.convolution_param
        try:
            kernel, pad = kernel_of(p), pair(p, "pad", 0)
            stride, dilation = pair(p, "stride", 1), pair(p, "dilation", 1, split=False)
        except ValueError as error:
            self.fail(layer, str(error))
        if kernel[0] is None:
            self.fail(layer, "has no kernel_size")
        if p.axis != 1 or p.width_group != 1 or p.height_group != 1:
            self.fail(layer, "axis other than 1 or width_group/height_group are not supported")
        self.four_d(layer, x)
        group, out_channels = int(p.group), int(p.num_output)
        in_channels = self.channels_of(layer, x)
        if group < 1 or in_channels % group or out_channels % group:
            self.fail(layer, f"group {group} does not divide {in_channels} input and {out_channels} output channels")
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        shape = (in_channels, out_channels // group) if transpose else (out_channels, in_channels // group)
        return {"kernel": kernel, "pad": pad, "stride": stride, "dilation": dilation, "group": group,
                "out_channels": out_channels, "weight": self.blob(layer, 0, shape + kernel),
                "bias": self.blob(layer, 1, (out_channels,)) if p.bias_term else None}

    def inner_product(self, layer, x):
        """(weight as (outputs, inputs), bias or None, outputs)."""
        p = layer.param.inner_product_param
        if self.axis(layer, p.axis, self.rank_of(x)) != 1:
            self.fail(layer, "only axis 1 is supported")
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        outputs = int(p.num_output)
        count = layer.blobs[0].size // max(outputs, 1)
        weight = self.blob(layer, 0, (count, outputs) if p.transpose else (outputs, count))
        bias = self.blob(layer, 1, (outputs,)) if p.bias_term else None
        return (weight.T if p.transpose else weight), bias, outputs

    def pooling(self, layer, x):
        """None for global pooling, else (kernel, stride, pad), each (h, w); pooling_param.pool is
        0 (MAX) or 1 (AVE)."""
        p = layer.param.pooling_param
        if p.pool not in (0, 1):
            self.fail(layer, "only MAX and AVE pooling are supported (not STOCHASTIC)")
        self.four_d(layer, x)
        if p.global_pooling:
            if p.pad or p.pad_h or p.pad_w:
                self.fail(layer, "global pooling with padding is not supported")
            return None
        kernel = kernel_of(p)
        if kernel[0] is None:
            self.fail(layer, "has no kernel_size")
        pad, stride = pair(p, "pad", 0), pair(p, "stride", 1)
        if any(pd >= k for pd, k in zip(pad, kernel)):
            self.fail(layer, "pad must be smaller than the kernel (as Caffe checks)")
        return kernel, stride, pad

    def prelu_slope(self, layer, x):
        """The slope: shape (1,) when shared (Caffe stores it as a 0-axis blob), else (channels,)."""
        self.check_blob_count(layer, [1])
        if layer.param.prelu_param.channel_shared:
            return self.blob(layer, 0, ()).reshape(1)
        return self.blob(layer, 0, (self.channels_of(layer, x),))

    def crop(self, layer, x):
        """(axis, one offset per axis from `axis`). The top takes the second bottom's shape from `axis` on."""
        p = layer.param.crop_param
        rank = self.rank_of(x)
        axis = self.axis(layer, p.axis, rank)
        offsets = [int(o) for o in p.offset]
        if len(offsets) not in (0, 1, rank - axis):
            self.fail(layer, f"has {len(offsets)} offsets; give 1 or one per axis from {axis} ({rank - axis})")
        return axis, [offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0) for i in range(rank - axis)]

    def eltwise(self, layer, count):
        """('prod' | 'sum' | 'max', coefficients: one per bottom, or [] for all 1)."""
        p = layer.param.eltwise_param
        operation = {0: "prod", 1: "sum", 2: "max"}.get(p.operation)
        if operation is None:
            self.fail(layer, f"eltwise operation {p.operation} is not supported")
        coeffs = [float(c) for c in p.coeff]
        if coeffs and operation != "sum":
            self.fail(layer, "coefficients are only allowed with operation SUM (as in Caffe)")
        if coeffs and len(coeffs) != count:
            self.fail(layer, f"has {len(coeffs)} coefficients for {count} bottoms")
        return operation, coeffs

    def concat(self, layer, bottoms):
        """(axis, channels of the top, or None where unknown)."""
        p = layer.param.concat_param
        axis = self.axis(layer, p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim,
                         self.rank_of(bottoms[0]))
        channels = [self.known_channels(b) for b in bottoms]
        return axis, (sum(channels) if None not in channels else None) if axis == 1 else channels[0]

    def batch_norm(self, layer, x):
        """(mean, 1 / std) per channel, float64: Caffe keeps running sums, so the statistics are the
        stored ones over the moving-average factor (0: none)."""
        p = layer.param.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            self.fail(layer, "use_global_stats: false normalises with the statistics of each batch; "
                             "only stored statistics can be computed here")
        self.check_blob_count(layer, [3])
        channels = self.channels_of(layer, x)
        mean, var = self.blob(layer, 0, (channels,)), self.blob(layer, 1, (channels,))
        factor = float(self.blob(layer, 2, (1,))[0])
        scale = 0.0 if factor == 0 else 1.0 / factor
        mean, var = mean.astype(np.float64) * scale, var.astype(np.float64) * scale
        return mean, 1.0 / np.sqrt(var + float(np.float32(p.eps)))

    def scale(self, layer, x):
        """(axis, scale, bias or None), the arrays shaped over the axes from `axis` they cover."""
        p = layer.param.scale_param
        if len(layer.bottoms) != 1:
            self.fail(layer, "only the one-bottom form (learned scale) is supported")
        rank = self.rank_of(x)
        axis = self.axis(layer, p.axis, rank)
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        stored = layer.blobs[0]
        count = rank - axis if p.num_axes == -1 else int(p.num_axes)
        if count == 1 and axis == 1:
            shape = (self.channels_of(layer, x),)
        elif len(stored.shape) == count:
            shape = stored.shape
        else:
            self.fail(layer, f"scale blob shape {list(stored.shape)} does not cover {count} axes from {axis}")
        return axis, self.blob(layer, 0, shape), self.blob(layer, 1, shape) if p.bias_term else None

    def flatten(self, layer, x):
        """(first, last) axes merged into one, and (rank, channels) of the top."""
        p = layer.param.flatten_param
        rank = self.rank_of(x)
        start, end = self.axis(layer, p.axis, rank), self.axis(layer, p.end_axis, rank)
        if end < start:
            self.fail(layer, f"end_axis {p.end_axis} is before axis {p.axis}")
        return start, end, rank - (end - start), self.known_channels(x) if start > 1 else None

    def reshape(self, layer, x):
        """(start, end, dims): axes start..end-1 become `dims` (0 copies the bottom's dimension at the
        same position, -1 takes the rest); and (rank, channels) of the top."""
        p = layer.param.reshape_param
        rank = self.rank_of(x)
        start = p.axis if p.axis >= 0 else rank + p.axis + 1
        end = rank if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= end <= rank:
            self.fail(layer, f"axis {p.axis} / num_axes {p.num_axes} do not fit a {rank}-D blob")
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1:
            self.fail(layer, "at most one dimension may be -1")
        return start, end, dims, start + len(dims) + rank - end, self.known_channels(x) if start >= 2 else None

    def interp(self, layer, bottoms):
        """The output size rule of DeepLab's Interp (interp_output_size_spec)."""
        if len(bottoms) > 2:
            self.fail(layer, "needs 1 or 2 bottoms")
        self.four_d(layer, bottoms[0])
        spec = interp_output_size_spec(layer.param.interp_param, two_bottoms=len(bottoms) == 2)
        if isinstance(spec, str):
            self.fail(layer, spec)
        return spec

    def check_input_layer(self, layer):
        if layer.tops != [self.input_blob]:
            others = [t for t in layer.tops if t != self.input_blob]
            self.fail(layer, f"extra net inputs {others} are not supported (only {self.input_blob!r})")


def interp_output_size_spec(p, two_bottoms=False):
    """How DeepLab's Interp sizes its output, from an InterpParameter (proto2 presence matters).

    ("like",) - the second bottom's H, W; ("fixed", h, w); ("factors", shrink, zoom) applied to
    the cropped input size; or an error message (str).
    """
    if p.pad_beg > 0 or p.pad_end > 0:
        return "pad_beg/pad_end must be <= 0 (only cropping is supported, as in DeepLab)"
    has = p.HasField
    if has("shrink_factor") and not has("zoom_factor"):
        spec = ("factors", int(p.shrink_factor), 1)
    elif has("zoom_factor") and not has("shrink_factor"):
        spec = ("factors", 1, int(p.zoom_factor))
    elif has("height") and has("width"):
        spec = ("fixed", int(p.height), int(p.width))
    elif has("shrink_factor") and has("zoom_factor"):
        spec = ("factors", int(p.shrink_factor), int(p.zoom_factor))
    elif two_bottoms:
        return ("like",)
    else:
        return "gives no output size (height and width, zoom_factor, shrink_factor, or a second bottom)"
    if spec[0] == "factors" and (spec[1] < 1 or spec[2] < 1):
        return "shrink_factor and zoom_factor must be >= 1"
    if spec[0] == "fixed" and (spec[1] < 1 or spec[2] < 1):
        return "height and width must be positive"
    return spec


def interp_output_size(height, width, p, like_hw=None):
    """Interp's output (H, W) for an input of (height, width), as DeepLab's Reshape computes it."""
    spec = interp_output_size_spec(p, two_bottoms=like_hw is not None)
    if isinstance(spec, str):
        raise ValueError(spec)
    if spec[0] == "like":
        return tuple(like_hw)
    if spec[0] == "fixed":
        return spec[1], spec[2]
    out = []
    for size in (height, width):
        size += p.pad_beg + p.pad_end
        size = (size - 1) // spec[1] + 1
        out.append(size + (size - 1) * (spec[2] - 1))
    return tuple(out)
