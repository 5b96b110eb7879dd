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
from .caffe_layers import LayerReader
from .caffe_model import load_net
from .provenance import sha256_file

OPSET = 17
IR_VERSION = 8  # the IR of opset 17 (ONNX 1.12): read by onnxruntime and OpenVINO alike
EXPORTER_VERSION = f"segbench-onnx-export 2 (segbench {__version__})"


class ExportError(SegbenchError):
    """A net that cannot be exported faithfully: the message names the prototxt and layer."""


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


class _Exporter(LayerReader):
    error = ExportError
    engine = "segbench's ONNX exporter"

    def __init__(self, net, input_blob, output_blob, dtype):
        super().__init__(net, input_blob, output_blob)
        self.g = _Graph(dtype, reserved=[input_blob, output_blob])
        self.tensor = {}  # Caffe blob name -> ONNX tensor holding its current value
        self.layer_outputs = {}

    # ------------------------------------------------------------------ helpers

    def handle_of(self, blob):
        return self.tensor.get(blob)

    def rank_of(self, tensor):
        return self.g.rank[tensor]

    def known_channels(self, tensor):
        return self.g.channels.get(tensor)

    def per_channel(self, values, rank, axis=1):
        """Shape a per-axis constant to broadcast against an N-D tensor at `axis`."""
        values = np.asarray(values, dtype=np.float64)
        return values.reshape(values.shape + (1,) * (rank - axis - values.ndim))

    # ------------------------------------------------------------------ driver

    def run(self):
        g = self.g
        shape = self.input_shape()
        tensor = self.input_blob
        if g.dtype != np.float32:
            tensor = g.node("Cast", [tensor], f"{self.input_blob}_fp16", to=self._onnx_dtype())
        self.tensor[self.input_blob] = tensor
        g.rank[tensor], g.channels[tensor] = 4, shape[1]
        self.input_shape = shape

        handlers = self.handlers()
        for layer in self.net.layers:
            try:
                tops = handlers[layer.type](layer)
            except ValueError as error:
                self.fail(layer, str(error))
            if tops is None:
                continue
            self.check_tops(layer, tops)
            for blob, out in zip(layer.tops, tops):
                self.tensor[blob] = out
            self.layer_outputs[layer.name] = list(tops)

        final = self.output_handle(self.tensor)
        self.output_rank = g.rank[final]
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
        self.check_input_layer(layer)
        return [self.tensor[self.input_blob]]


    def _conv(self, layer, transpose):
        (x,) = self.bottoms(layer, 1)
        c = self.convolution(layer, x, transpose)
        inputs = [x, self.g.const(c["weight"], f"{layer.name}_W")]
        if c["bias"] is not None:
            inputs.append(self.g.const(c["bias"], f"{layer.name}_B"))
        pad = c["pad"]
        out = self.g.node("ConvTranspose" if transpose else "Conv", inputs, layer.tops[0],
                          kernel_shape=list(c["kernel"]), strides=list(c["stride"]), dilations=list(c["dilation"]),
                          pads=[pad[0], pad[1], pad[0], pad[1]], group=c["group"])
        return [self.g.like(out, x, channels=c["out_channels"])]

    def layer_Convolution(self, layer):
        return self._conv(layer, transpose=False)

    def layer_Deconvolution(self, layer):
        return self._conv(layer, transpose=True)

    def layer_InnerProduct(self, layer):
        (x,) = self.bottoms(layer, 1)
        weight, bias, outputs = self.inner_product(layer, x)
        flat = self.g.node("Flatten", [x], f"{layer.tops[0]}_flat", axis=1)
        inputs = [flat, self.g.const(weight, f"{layer.name}_W")]
        if bias is not None:
            inputs.append(self.g.const(bias, f"{layer.name}_B"))
        out = self.g.node("Gemm", inputs, layer.tops[0], transB=1)
        return [self.g.like(out, x, channels=outputs, rank=2)]

    def layer_Pooling(self, layer):
        p = layer.param.pooling_param
        (x,) = self.bottoms(layer, 1)
        g = self.g
        window = self.pooling(layer, x)
        if window is None:
            out = g.node("GlobalMaxPool" if p.pool == 0 else "GlobalAveragePool", [x], layer.tops[0])
            return [g.like(out, x)]
        kernel, stride, pad = window

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
        slope = self.prelu_slope(layer, x)
        if not layer.param.prelu_param.channel_shared:
            slope = self.per_channel(slope, self.rank_of(x))
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
        axis, offsets = self.crop(layer, x)
        rank = self.rank_of(x)
        starts = self.g.ints(offsets)
        ends = self.g.node("Add", [starts, self.g.dims(like, axis, rank)])
        out = self.g.node("Slice", [x, starts, ends, self.g.ints(list(range(axis, rank)))], layer.tops[0])
        return [self.g.like(out, x)]

    def layer_Eltwise(self, layer):
        inputs = self.bottoms(layer, minimum=2)
        g = self.g
        operation, coeffs = self.eltwise(layer, len(inputs))
        op = {"prod": "Mul", "sum": "Add", "max": "Max"}[operation]
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
        axis, channels = self.concat(layer, inputs)
        if len(inputs) == 1:
            return [inputs[0]]
        out = self.g.node("Concat", inputs, layer.tops[0], axis=axis)
        return [self.g.like(out, inputs[0], channels=channels)]

    def layer_BatchNorm(self, layer):
        (x,) = self.bottoms(layer, 1)
        mean, inv_std = self.batch_norm(layer, x)
        rank = self.rank_of(x)
        centred = self.g.node("Sub", [x, self.g.const(self.per_channel(mean, rank), f"{layer.name}_mean")])
        out = self.g.node("Mul", [centred, self.g.const(self.per_channel(inv_std, rank), f"{layer.name}_inv_std")],
                          layer.tops[0])
        return [self.g.like(out, x)]

    def layer_Scale(self, layer):
        x = self.bottoms(layer, minimum=1)[0]
        axis, scale, bias = self.scale(layer, x)
        rank = self.rank_of(x)
        out = self.g.node("Mul", [x, self.g.const(self.per_channel(scale, rank, axis), f"{layer.name}_scale")],
                          None if bias is None else layer.tops[0])
        if bias is not None:
            out = self.g.node("Add", [out, self.g.const(self.per_channel(bias, rank, axis), f"{layer.name}_bias")],
                              layer.tops[0])
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
        start, end, rank, channels = self.flatten(layer, x)
        g = self.g
        before = self.rank_of(x)
        parts = ([g.dims(x, 0, start)] if start else []) + [g.ints([-1])] + \
                ([g.dims(x, end + 1, before)] if end + 1 < before else [])
        shape = g.node("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
        out = g.node("Reshape", [x, shape], layer.tops[0])
        return [g.like(out, x, channels=channels, rank=rank)]

    def layer_Reshape(self, layer):
        (x,) = self.bottoms(layer, 1)
        start, end, dims, rank, channels = self.reshape(layer, x)
        g = self.g
        before = self.rank_of(x)
        parts = [g.dims(x, 0, start)] if start else []
        for i, d in enumerate(dims):
            # 0 copies the bottom's dimension at the same position (start + i), as in Caffe.
            parts.append(g.dims(x, start + i, start + i + 1) if d == 0 else g.ints([d]))
        if end < before:
            parts.append(g.dims(x, end, before))
        shape = g.node("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
        out = g.node("Reshape", [x, shape], layer.tops[0])
        return [g.like(out, x, channels=channels, rank=rank)]

    def layer_Interp(self, layer):
        p = layer.param.interp_param
        inputs = self.bottoms(layer, minimum=1)
        sizes = self.interp(layer, inputs)
        x = inputs[0]
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
