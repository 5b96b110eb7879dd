"""Caffe -> ONNX export of segmentation nets, without pycaffe.

FCN-style nets are run on each image at its own size, so the exported graph has symbolic
height and width and every size-dependent quantity (pooling end padding, AVE pooling
divisors, Crop extents, Interp output sizes, Reshape targets) is computed from the
runtime shapes. Each layer reproduces Caffe's own arithmetic, not the nearest ONNX
convention: Caffe's pooling output size and AVE divisor in particular differ from
ONNX's ceil_mode / count_include_pad for some sizes.
"""

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from . import SegbenchError, __version__
from .caffe_model import CaffeModelError, load_net
from .provenance import sha256_file

OPSET = 17
IR_VERSION = 8  # the IR of opset 17 (ONNX 1.12): read by onnxruntime and OpenVINO alike
EXPORTER_VERSION = f"segbench-onnx-export 2 (segbench {__version__})"


class ExportError(SegbenchError):
    """A net that cannot be exported faithfully: the message names the prototxt and layer."""


def _pair(param, name, default, split=True):
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


def _kernel(param):
    if param.HasField("kernel_h") or param.HasField("kernel_w"):
        return int(param.kernel_h), int(param.kernel_w)
    return _pair(param, "kernel_size", None, split=False)


class _Graph:
    """The ONNX graph under construction, plus what Caffe knows statically about each tensor."""

    def __init__(self, dtype, reserved):
        from onnx import helper
        self.helper = helper
        self.dtype = np.dtype(dtype)
        self.nodes, self.initializers = [], []
        self.used = set(reserved)
        self.rank, self.channels = {}, {}
        self._shape_cache, self._const_cache = {}, {}

    def name(self, wanted):
        name, n = wanted, 1
        while name in self.used:
            n += 1
            name = f"{wanted}_{n}"
        self.used.add(name)
        return name

    def node(self, op, inputs, wanted=None, outputs=1, **attrs):
        names = [self.name(wanted or op) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op, inputs, names, name=self.name(f"{names[0]}/{op}"), **attrs))
        return names[0] if outputs == 1 else names

    def const(self, array, wanted="const", float_=True):
        """An initializer; float ones take the export dtype, integer ones (shapes, indices) stay int64."""
        from onnx import numpy_helper
        array = np.asarray(array, dtype=self.dtype if float_ else np.int64)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.name(wanted)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values):
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), "ints", float_=False)

    def dims(self, tensor, start, end=None):
        """Runtime dims [start, end) of a tensor, as an int64 1-D tensor."""
        key = (tensor, start, end)
        if key not in self._shape_cache:
            attrs = {"start": start} if end is None else {"start": start, "end": end}
            self._shape_cache[key] = self.node("Shape", [tensor], f"{tensor}_shape", **attrs)
        return self._shape_cache[key]

    def like(self, out, source, channels="same", rank=None):
        self.rank[out] = self.rank[source] if rank is None else rank
        self.channels[out] = self.channels.get(source) if channels == "same" else channels
        return out


class _Exporter:
    def __init__(self, net, input_blob, output_blob, dtype):
        self.net = net
        self.path = net.weights or net.prototxt
        self.input_blob, self.output_blob = input_blob, output_blob
        self.g = _Graph(dtype, reserved=[input_blob, output_blob])
        self.tensor = {}  # Caffe blob name -> ONNX tensor holding its current value
        self.layer_outputs = {}

    # ------------------------------------------------------------------ helpers

    def fail(self, layer, what):
        raise ExportError(f"{self.net.prototxt}: layer {layer.name!r} (type {layer.type}): {what}")

    def bottoms(self, layer, count=None, minimum=1):
        if count is not None and len(layer.bottoms) != count:
            self.fail(layer, f"needs {count} bottom blob(s), has {len(layer.bottoms)}")
        if len(layer.bottoms) < minimum:
            self.fail(layer, f"needs at least {minimum} bottom blob(s)")
        missing = [b for b in layer.bottoms if b not in self.tensor]
        if missing:
            self.fail(layer, f"bottom blob(s) {missing} are not produced by any earlier layer")
        return [self.tensor[b] for b in layer.bottoms]

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

    def channels_of(self, layer, tensor):
        channels = self.g.channels.get(tensor)
        if channels is None:
            self.fail(layer, "the number of channels of its input is not known statically")
        return channels

    def rank_of(self, tensor):
        return self.g.rank[tensor]

    def axis(self, layer, axis, rank):
        if not -rank <= axis < rank:
            self.fail(layer, f"axis {axis} is out of range for a {rank}-D blob")
        return axis % rank

    def per_channel(self, values, rank, axis=1):
        """Shape a per-axis constant to broadcast against an N-D tensor at `axis`."""
        values = np.asarray(values, dtype=np.float64)
        return values.reshape(values.shape + (1,) * (rank - axis - values.ndim))

    # ------------------------------------------------------------------ driver

    def run(self):
        g = self.g
        if self.input_blob not in self.net.inputs:
            raise ExportError(f"{self.net.prototxt}: input blob {self.input_blob!r} is not an input of the net; "
                              f"its inputs are {list(self.net.inputs)}")
        shape = self.net.inputs[self.input_blob]
        if len(shape) != 4:
            raise ExportError(f"{self.net.prototxt}: input {self.input_blob!r} has shape {shape}; "
                              f"only (N, C, H, W) inputs are supported")
        tensor = self.input_blob
        if g.dtype != np.float32:
            tensor = g.node("Cast", [tensor], f"{self.input_blob}_fp16", to=self._onnx_dtype())
        self.tensor[self.input_blob] = tensor
        g.rank[tensor], g.channels[tensor] = 4, shape[1]
        self.input_shape = shape

        handlers = {name[len("layer_"):]: getattr(self, name) for name in dir(self) if name.startswith("layer_")}
        produced = set()
        for layer in self.net.layers:
            if layer.type not in handlers:
                self.fail(layer, f"layer type {layer.type!r} is not supported by segbench's ONNX exporter "
                                 f"(supported: {', '.join(sorted(handlers))})")
        for layer in self.net.layers:
            try:
                tops = handlers[layer.type](layer)
            except ValueError as error:
                self.fail(layer, str(error))
            if tops is None:
                continue
            if len(tops) != len(layer.tops):
                self.fail(layer, f"needs {len(tops)} top blob(s), has {len(layer.tops)}")
            for blob, out in zip(layer.tops, tops):
                self.tensor[blob] = out
                produced.add(blob)
            self.layer_outputs[layer.name] = list(tops)

        if self.output_blob not in self.tensor:
            raise ExportError(f"{self.net.prototxt}: output blob {self.output_blob!r} is not produced by the net; "
                              f"its blobs are {sorted(self.tensor)}")
        final = self.tensor[self.output_blob]
        self.output_rank = g.rank[final]
        if final == self.input_blob:
            raise ExportError(f"{self.net.prototxt}: output blob {self.output_blob!r} is the input itself")
        if g.dtype != np.float32:
            from onnx import TensorProto
            g.nodes.append(g.helper.make_node("Cast", [final], [self.output_blob], name=g.name("output/Cast"),
                                              to=TensorProto.FLOAT))
        else:
            self._rename(final, self.output_blob)
        return self._model()

    def _onnx_dtype(self):
        from onnx import TensorProto
        return TensorProto.FLOAT16 if self.g.dtype == np.float16 else TensorProto.FLOAT

    def _rename(self, old, new):
        for node in self.g.nodes:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
        for name, outs in self.layer_outputs.items():
            self.layer_outputs[name] = [new if n == old else n for n in outs]

    def _model(self):
        from onnx import TensorProto, helper
        g = self.g
        n = self.input_shape[0]
        graph = helper.make_graph(
            g.nodes, self.net.name or "caffe_net",
            [helper.make_tensor_value_info(self.input_blob, TensorProto.FLOAT, [n, self.input_shape[1], "height", "width"])],
            [helper.make_tensor_value_info(self.output_blob, TensorProto.FLOAT, [None] * self.output_rank)],
            initializer=g.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="segbench", producer_version=__version__)
        model.ir_version = IR_VERSION
        return model

    # ------------------------------------------------------------------ layers
    # Each returns the ONNX tensor names of the layer's tops (None: the layer defines no tensor).

    def layer_Input(self, layer):
        if layer.tops != [self.input_blob]:
            others = [t for t in layer.tops if t != self.input_blob]
            self.fail(layer, f"extra net inputs {others} are not supported (only {self.input_blob!r})")
        return [self.tensor[self.input_blob]]

    def _conv_geometry(self, layer, p):
        try:
            kernel = _kernel(p)
            pad = _pair(p, "pad", 0)
            stride = _pair(p, "stride", 1)
            dilation = _pair(p, "dilation", 1, split=False)
        except ValueError as error:
            self.fail(layer, str(error))
        if kernel[0] is None:
            self.fail(layer, "has no kernel_size")
        if p.axis != 1 or p.width_group != 1 or p.height_group != 1:
            self.fail(layer, "axis other than 1 or width_group/height_group are not supported")
        return kernel, pad, stride, dilation

    def _conv(self, layer, transpose):
        p = layer.param.convolution_param
        (x,) = self.bottoms(layer, 1)
        kernel, pad, stride, dilation = self._conv_geometry(layer, p)
        group, out_channels = int(p.group), int(p.num_output)
        in_channels = self.channels_of(layer, x)
        if group < 1 or in_channels % group or out_channels % group:
            self.fail(layer, f"group {group} does not divide {in_channels} input and {out_channels} output channels")
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        if transpose:  # Caffe's Deconvolution weights are (C_in, C_out / group, kh, kw), as ConvTranspose's
            weight = self.blob(layer, 0, (in_channels, out_channels // group) + kernel)
        else:
            weight = self.blob(layer, 0, (out_channels, in_channels // group) + kernel)
        inputs = [x, self.g.const(weight, f"{layer.name}_W")]
        if p.bias_term:
            inputs.append(self.g.const(self.blob(layer, 1, (out_channels,)), f"{layer.name}_B"))
        out = self.g.node("ConvTranspose" if transpose else "Conv", inputs, layer.tops[0],
                          kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
                          pads=[pad[0], pad[1], pad[0], pad[1]], group=group)
        return [self.g.like(out, x, channels=out_channels)]

    def layer_Convolution(self, layer):
        return self._conv(layer, transpose=False)

    def layer_Deconvolution(self, layer):
        return self._conv(layer, transpose=True)

    def layer_InnerProduct(self, layer):
        p = layer.param.inner_product_param
        (x,) = self.bottoms(layer, 1)
        if self.axis(layer, p.axis, self.rank_of(x)) != 1:
            self.fail(layer, "only axis 1 is supported")
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        weight = layer.blobs[0]
        count = weight.size // max(int(p.num_output), 1)
        weight = self.blob(layer, 0, (count, p.num_output) if p.transpose else (p.num_output, count))
        flat = self.g.node("Flatten", [x], f"{layer.tops[0]}_flat", axis=1)
        inputs = [flat, self.g.const(weight, f"{layer.name}_W")]
        if p.bias_term:
            inputs.append(self.g.const(self.blob(layer, 1, (p.num_output,)), f"{layer.name}_B"))
        out = self.g.node("Gemm", inputs, layer.tops[0], transB=0 if p.transpose else 1)
        return [self.g.like(out, x, channels=int(p.num_output), rank=2)]

    def layer_Pooling(self, layer):
        p = layer.param.pooling_param
        (x,) = self.bottoms(layer, 1)
        g = self.g
        if p.pool not in (0, 1):
            self.fail(layer, "only MAX and AVE pooling are supported (not STOCHASTIC)")
        if self.rank_of(x) != 4:
            self.fail(layer, "only 4-D (N, C, H, W) inputs are supported")
        if p.global_pooling:
            if p.pad or p.pad_h or p.pad_w:
                self.fail(layer, "global pooling with padding is not supported")
            out = g.node("GlobalMaxPool" if p.pool == 0 else "GlobalAveragePool", [x], layer.tops[0])
            return [g.like(out, x)]
        kernel = _kernel(p)
        if kernel[0] is None:
            self.fail(layer, "has no kernel_size")
        pad = _pair(p, "pad", 0)
        stride = _pair(p, "stride", 1)
        if any(pd >= k for pd, k in zip(pad, kernel)):
            self.fail(layer, "pad must be smaller than the kernel (as Caffe checks)")

        # Caffe's output size, per spatial axis, from the runtime size H:
        #   O = ceil((H + 2p - k) / s) + 1   (floor if ceil_mode is false)
        #   O -= 1 if p > 0 and (O - 1) * s >= H + p   (the last window must start inside the image)
        size = g.dims(x, 2, 4)
        k, s, pd = g.ints(kernel), g.ints(stride), g.ints(pad)
        span = g.node("Sub", [g.node("Add", [size, g.node("Mul", [pd, g.ints([2])])]), k])
        if p.ceil_mode:  # ceil(a / s) = floor((a + s - 1) / s); a >= 0 for any valid input
            span = g.node("Add", [span, g.node("Sub", [s, g.ints([1])])])
        last = g.node("Div", [span, s])  # O - 1, before the edge rule
        starts_at_edge = g.node("GreaterOrEqual", [g.node("Mul", [last, s]), g.node("Add", [size, pd])])
        overhang = g.node("And", [starts_at_edge, g.node("Greater", [pd, g.ints([0])])])
        last = g.node("Sub", [last, g.node("Cast", [overhang], to=7)])  # 7: INT64
        # Pad explicitly so that the O windows fit exactly: left p, right (O-1)s + k - H - p, at
        # least 0. The unpadded extent is never larger than that, so the pooled output is then O.
        right = g.node("Max", [g.node("Sub", [g.node("Add", [g.node("Mul", [last, s]), k]),
                                              g.node("Add", [size, pd])]), g.ints([0, 0])])
        pads = g.node("Concat", [g.ints([0, 0]), pd, g.ints([0, 0]), right], axis=0)
        if p.pool == 0:
            # MAX: repeat the edge rows and columns. Every window holds at least one real row and
            # column, and with them the edge value it would repeat, so no maximum changes; unlike
            # padding with -inf, every tensor stays finite for int8 calibration's histograms.
            padded = g.node("Pad", [x, pads], f"{layer.tops[0]}_padded", mode="edge")
        else:
            fill = g.const(np.array(0.0), "pool_fill")
            padded = g.node("Pad", [x, pads, fill], f"{layer.tops[0]}_padded", mode="constant")
        pooled = g.node("MaxPool" if p.pool == 0 else "AveragePool", [padded], f"{layer.tops[0]}_pool",
                        kernel_shape=list(kernel), strides=list(stride))
        # The right pad exceeds what the O windows need only where it was clamped at 0 (floor
        # mode): cut the output to exactly O rows and columns.
        count = g.node("Add", [last, g.ints([1, 1])])
        if p.pool == 0:
            out = g.node("Slice", [pooled, g.ints([0, 0]), count, g.ints([2, 3])], layer.tops[0])
            return [g.like(out, x)]
        pooled = g.node("Slice", [pooled, g.ints([0, 0]), count, g.ints([2, 3])], f"{layer.tops[0]}_cut")
        # AVE: AveragePool divided every window by kh * kw; Caffe divides by the window clipped
        # to [-p, H + p): rescale by kh * kw / clipped area, computed per output row and column.
        extents = []
        for axis in (0, 1):
            index = g.const(np.array(axis, dtype=np.int64), "axis", float_=False)
            rows = g.node("Range", [g.const(np.array(0, dtype=np.int64), "zero", float_=False),
                                    g.node("Gather", [count, index], axis=0),
                                    g.const(np.array(1, dtype=np.int64), "one", float_=False)])
            start = g.node("Sub", [g.node("Mul", [rows, g.ints([stride[axis]])]), g.ints([pad[axis]])])
            limit = g.node("Add", [g.node("Gather", [size, index], axis=0), g.ints([pad[axis]])])
            end = g.node("Min", [g.node("Add", [start, g.ints([kernel[axis]])]), limit])
            extents.append(g.node("Cast", [g.node("Sub", [end, start])], to=self._onnx_dtype()))
        area = g.node("Mul", [g.node("Unsqueeze", [extents[0], g.ints([1])]),
                              g.node("Unsqueeze", [extents[1], g.ints([0])])])
        factor = g.node("Div", [g.const(np.array(kernel[0] * kernel[1], dtype=np.float64), "pool_area"), area])
        out = g.node("Mul", [pooled, factor], layer.tops[0])
        return [g.like(out, x)]

    def layer_ReLU(self, layer):
        (x,) = self.bottoms(layer, 1)
        slope = float(layer.param.relu_param.negative_slope)
        if slope:
            out = self.g.node("LeakyRelu", [x], layer.tops[0], alpha=slope)
        else:
            out = self.g.node("Relu", [x], layer.tops[0])
        return [self.g.like(out, x)]

    def layer_PReLU(self, layer):
        (x,) = self.bottoms(layer, 1)
        self.check_blob_count(layer, [1])
        if layer.param.prelu_param.channel_shared:
            slope = self.blob(layer, 0, ())  # Caffe stores the shared slope as a 0-axis blob
        else:
            slope = self.per_channel(self.blob(layer, 0, (self.channels_of(layer, x),)), self.rank_of(x))
        out = self.g.node("PRelu", [x, self.g.const(slope, f"{layer.name}_slope")], layer.tops[0])
        return [self.g.like(out, x)]

    def _unary(self, layer, op):
        (x,) = self.bottoms(layer, 1)
        return [self.g.like(self.g.node(op, [x], layer.tops[0]), x)]

    def layer_Sigmoid(self, layer):
        return self._unary(layer, "Sigmoid")

    def layer_TanH(self, layer):
        return self._unary(layer, "Tanh")

    def layer_Dropout(self, layer):
        # Identity at test time (Caffe scales at training time): the top is the bottom's tensor.
        (x,) = self.bottoms(layer, 1)
        return [x]

    def layer_Crop(self, layer):
        x, like = self.bottoms(layer, 2)
        p = layer.param.crop_param
        rank = self.rank_of(x)
        axis = self.axis(layer, p.axis, rank)
        offsets = [int(o) for o in p.offset]
        if len(offsets) not in (0, 1, rank - axis):
            self.fail(layer, f"has {len(offsets)} offsets; give 1 or one per axis from {axis} ({rank - axis})")
        offsets = [offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0) for i in range(rank - axis)]
        # Caffe: top shape[i] = bottom[1] shape[i] for i >= axis, starting at the offsets.
        starts = self.g.ints(offsets)
        ends = self.g.node("Add", [starts, self.g.dims(like, axis, rank)])
        out = self.g.node("Slice", [x, starts, ends, self.g.ints(list(range(axis, rank)))], layer.tops[0])
        return [self.g.like(out, x)]

    def layer_Eltwise(self, layer):
        inputs = self.bottoms(layer, minimum=2)
        p = layer.param.eltwise_param
        g = self.g
        op = {0: "Mul", 1: "Add", 2: "Max"}.get(p.operation)  # PROD, SUM, MAX
        if op is None:
            self.fail(layer, f"eltwise operation {p.operation} is not supported")
        coeffs = [float(c) for c in p.coeff]
        if coeffs and op != "Add":
            self.fail(layer, "coefficients are only allowed with operation SUM (as in Caffe)")
        if coeffs and len(coeffs) != len(inputs):
            self.fail(layer, f"has {len(coeffs)} coefficients for {len(inputs)} bottoms")
        if coeffs and any(c != 1.0 for c in coeffs):
            inputs = [x if c == 1.0 else g.node("Mul", [x, g.const(np.array(c), "coeff")]) for x, c in zip(inputs, coeffs)]
        if op == "Max":
            out = g.node("Max", inputs, layer.tops[0])
        else:
            out = inputs[0]
            for index, x in enumerate(inputs[1:], start=2):
                out = g.node(op, [out, x], layer.tops[0] if index == len(inputs) else None)
        return [g.like(out, self.tensor[layer.bottoms[0]])]

    def layer_Concat(self, layer):
        inputs = self.bottoms(layer)
        p = layer.param.concat_param
        rank = self.rank_of(inputs[0])
        axis = self.axis(layer, p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, rank)
        if len(inputs) == 1:
            return [inputs[0]]
        out = self.g.node("Concat", inputs, layer.tops[0], axis=axis)
        channels = [self.g.channels.get(x) for x in inputs]
        merged = (sum(channels) if None not in channels else None) if axis == 1 else channels[0]
        return [self.g.like(out, inputs[0], channels=merged)]

    def layer_BatchNorm(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            self.fail(layer, "use_global_stats: false normalises with the statistics of each batch; "
                             "only stored statistics can be exported")
        self.check_blob_count(layer, [3])
        channels = self.channels_of(layer, x)
        mean, var = self.blob(layer, 0, (channels,)), self.blob(layer, 1, (channels,))
        factor = float(self.blob(layer, 2, (1,))[0])
        scale = 0.0 if factor == 0 else 1.0 / factor
        mean, var = mean.astype(np.float64) * scale, var.astype(np.float64) * scale
        inv_std = 1.0 / np.sqrt(var + float(np.float32(p.eps)))
        rank = self.rank_of(x)
        centred = self.g.node("Sub", [x, self.g.const(self.per_channel(mean, rank), f"{layer.name}_mean")])
        out = self.g.node("Mul", [centred, self.g.const(self.per_channel(inv_std, rank), f"{layer.name}_inv_std")],
                          layer.tops[0])
        return [self.g.like(out, x)]

    def layer_Scale(self, layer):
        p = layer.param.scale_param
        if len(layer.bottoms) != 1:
            self.fail(layer, "only the one-bottom form (learned scale) is supported")
        (x,) = self.bottoms(layer, 1)
        rank = self.rank_of(x)
        axis = self.axis(layer, p.axis, rank)
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        stored = layer.blobs[0]
        count = rank - axis if p.num_axes == -1 else int(p.num_axes)
        if count == 1 and axis == 1:
            shape = (self.channels_of(layer, x),)
        else:
            shape = stored.shape if len(stored.shape) == count else None
            if shape is None:
                self.fail(layer, f"scale blob shape {list(stored.shape)} does not cover {count} axes from {axis}")
        scale = self.per_channel(self.blob(layer, 0, shape), rank, axis)
        out = self.g.node("Mul", [x, self.g.const(scale, f"{layer.name}_scale")],
                          None if p.bias_term else layer.tops[0])
        if p.bias_term:
            bias = self.per_channel(self.blob(layer, 1, shape), rank, axis)
            out = self.g.node("Add", [out, self.g.const(bias, f"{layer.name}_bias")], layer.tops[0])
        return [self.g.like(out, x)]

    def layer_Power(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.power_param
        power, scale, shift = float(p.power), float(p.scale), float(p.shift)
        g = self.g
        if power * scale == 0:
            # Caffe: the output is a constant, 1 if power is 0, else shift ** power.
            value = 1.0 if power == 0 else shift ** power
            out = g.node("Add", [g.node("Mul", [x, g.const(np.array(0.0), "zero_f")]), g.const(np.array(value))],
                         layer.tops[0])
            return [g.like(out, x)]
        steps = [(op, value, name) for op, value, name, needed in (
            ("Mul", scale, "power_scale", scale != 1.0), ("Add", shift, "power_shift", shift != 0.0),
            ("Pow", power, "power_exp", power != 1.0)) if needed]
        if not steps:
            return [g.like(g.node("Identity", [x], layer.tops[0]), x)]
        out = x
        for index, (op, value, name) in enumerate(steps, start=1):
            out = g.node(op, [out, g.const(np.array(value), name)], layer.tops[0] if index == len(steps) else None)
        return [g.like(out, x)]

    def layer_Softmax(self, layer):
        (x,) = self.bottoms(layer, 1)
        axis = self.axis(layer, layer.param.softmax_param.axis, self.rank_of(x))
        return [self.g.like(self.g.node("Softmax", [x], layer.tops[0], axis=axis), x)]

    def layer_Flatten(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.flatten_param
        rank = self.rank_of(x)
        start, end = self.axis(layer, p.axis, rank), self.axis(layer, p.end_axis, rank)
        if end < start:
            self.fail(layer, f"end_axis {p.end_axis} is before axis {p.axis}")
        g = self.g
        parts = ([g.dims(x, 0, start)] if start else []) + [g.ints([-1])] + \
                ([g.dims(x, end + 1, rank)] if end + 1 < rank else [])
        shape = g.node("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
        out = g.node("Reshape", [x, shape], layer.tops[0])
        channels = g.channels.get(x) if start > 1 else None
        return [g.like(out, x, channels=channels, rank=rank - (end - start))]

    def layer_Reshape(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.reshape_param
        rank = self.rank_of(x)
        start = p.axis if p.axis >= 0 else rank + p.axis + 1
        end = rank if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= end <= rank:
            self.fail(layer, f"axis {p.axis} / num_axes {p.num_axes} do not fit a {rank}-D blob")
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1:
            self.fail(layer, "at most one dimension may be -1")
        g = self.g
        parts = [g.dims(x, 0, start)] if start else []
        for i, d in enumerate(dims):
            # 0 copies the bottom's dimension at the same position (start + i), as in Caffe.
            parts.append(g.dims(x, start + i, start + i + 1) if d == 0 else g.ints([d]))
        if end < rank:
            parts.append(g.dims(x, end, rank))
        shape = g.node("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
        out = g.node("Reshape", [x, shape], layer.tops[0])
        new_rank = start + len(dims) + rank - end
        channels = g.channels.get(x) if start >= 2 else None  # only needed to check later weights
        return [g.like(out, x, channels=channels, rank=new_rank)]

    def layer_Interp(self, layer):
        p = layer.param.interp_param
        inputs = self.bottoms(layer, minimum=1)
        if len(inputs) > 2:
            self.fail(layer, "needs 1 or 2 bottoms")
        x = inputs[0]
        if self.rank_of(x) != 4:
            self.fail(layer, "only 4-D (N, C, H, W) inputs are supported")
        sizes = interp_output_size_spec(p, two_bottoms=len(inputs) == 2)
        if isinstance(sizes, str):
            self.fail(layer, sizes)
        g = self.g
        size = g.dims(x, 2, 4)
        pad_beg, pad_end = int(p.pad_beg), int(p.pad_end)
        if pad_beg or pad_end:
            # DeepLab's Interp reads the window of size H + pad_beg + pad_end starting at
            # -pad_beg on both axes, and resizes only that.
            eff = g.node("Add", [size, g.ints([pad_beg + pad_end])])
            x = g.node("Slice", [x, g.ints([-pad_beg, -pad_beg]), g.node("Add", [eff, g.ints([-pad_beg])]),
                                 g.ints([2, 3])], f"{layer.tops[0]}_crop")
            size = eff
        kind = sizes[0]
        if kind == "like":
            out_hw = g.dims(inputs[1], 2, 4)
        elif kind == "fixed":
            out_hw = g.ints([sizes[1], sizes[2]])
        else:
            _, shrink, zoom = sizes
            out_hw = size
            if shrink != 1:  # (eff - 1) / shrink + 1, integer division of non-negative values
                out_hw = g.node("Add", [g.node("Div", [g.node("Sub", [out_hw, g.ints([1])]), g.ints([shrink])]),
                                        g.ints([1])])
            if zoom != 1:  # out + (out - 1) * (zoom - 1)
                out_hw = g.node("Add", [out_hw, g.node("Mul", [g.node("Sub", [out_hw, g.ints([1])]),
                                                               g.ints([zoom - 1])])])
        full = g.node("Concat", [g.dims(x, 0, 2), out_hw], axis=0)
        out = g.node("Resize", [x, "", "", full], layer.tops[0], mode="linear",
                     coordinate_transformation_mode="align_corners")
        return [g.like(out, inputs[0])]

    def layer_Split(self, layer):
        (x,) = self.bottoms(layer, 1)
        return [x] * len(layer.tops)

    def layer_Silence(self, layer):
        self.bottoms(layer)
        return None


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


def build_model(prototxt, weights, input_blob="data", output_blob="score", dtype="float32"):
    """The onnx.ModelProto of a Caffe net, and the layer map (no file written)."""
    if dtype not in ("float32", "float16"):
        raise ExportError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    net = load_net(prototxt, weights)
    exporter = _Exporter(net, input_blob, output_blob, dtype)
    model = exporter.run()
    for layer in net.layers:  # the initializers hold copies now; keep one copy of the weights
        layer.blobs = []
    return model, exporter.layer_outputs, net


def export_onnx(prototxt, weights, output_path, input_blob="data", output_blob="score", dtype="float32"):
    """Export a Caffe net to an ONNX file; returns a summary dict.

    The graph input `input_blob` is (N, C, height, width) float32 with symbolic height and width;
    the output `output_blob` is float32 whatever `dtype` the weights are stored in.
    """
    import onnx

    prototxt, output_path = Path(prototxt), Path(output_path)
    model, layer_outputs, net = build_model(prototxt, weights, input_blob, output_blob, dtype)
    metadata = {
        "source_prototxt": str(prototxt),
        "source_prototxt_sha256": sha256_file(prototxt),
        "source_weights": str(weights) if weights is not None else "",
        "source_weights_sha256": sha256_file(weights) if weights is not None else "",
        "segbench_exporter": EXPORTER_VERSION,
        "segbench_dtype": dtype,
        "segbench_layer_outputs": json.dumps(layer_outputs),
    }
    onnx.helper.set_model_props(model, metadata)
    ops = Counter(node.op_type for node in model.graph.node)
    nodes, ir_version = len(model.graph.node), model.ir_version

    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".tmp", dir=output_path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model.SerializeToString())
        del model  # the checker reads the file: one copy of a 540 MB model less in memory
        try:
            onnx.checker.check_model(temporary)
        except onnx.checker.ValidationError as error:
            raise ExportError(f"{prototxt}: the exported ONNX graph does not pass onnx.checker: {error}") from None
        os.replace(temporary, output_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return {
        "path": str(output_path),
        "layers": len(net.layers),
        "exported_layers": len(layer_outputs),
        "ops": dict(sorted(ops.items())),
        "nodes": nodes,
        "opset": OPSET,
        "ir_version": ir_version,
        "input": input_blob,
        "output": output_blob,
        "dtype": dtype,
    }
