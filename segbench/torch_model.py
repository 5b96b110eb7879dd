"""Caffe nets computed by PyTorch, read without pycaffe (segbench.caffe_model).

`build_module` turns a parsed deploy net into a `CaffeModule`: one small module per Caffe
layer, run in net order on a dict of named blobs, each with Caffe's own arithmetic (the same
rules as segbench.onnx_export, whose parameter parsing and Interp size formula are reused).
Every size that depends on the input (pooling end padding and AVE divisors, Crop extents,
Interp and Reshape outputs) is computed from the tensors at run time, so one module serves
every input size, as FCN-style nets need. The weights are buffers, so `.to(device, dtype)`
and `.to(memory_format=torch.channels_last)` move and convert them all.

Everything that cannot be computed faithfully is refused by `build_module`, before any pass.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import SegbenchError
from .caffe_model import CaffeModelError, load_net
from .onnx_export import _kernel, _pair, interp_output_size, interp_output_size_spec


class TorchModelError(SegbenchError):
    """A net that cannot be computed faithfully in PyTorch: the message names the prototxt and layer."""


def _tensor(array):
    # Shares the parsed array's memory (no copy of a 540 MB model): build() drops the net's own
    # references to its arrays as it goes, so the module ends up their only holder.
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _broadcast(values, rank, axis):
    """A per-axis constant shaped to broadcast against a `rank`-D blob from `axis`."""
    return values.reshape(tuple(values.shape) + (1,) * (rank - axis - values.dim()))


# ---------------------------------------------------------------------------- layers
# Each takes its bottom tensors and returns a tuple of its top tensors.

class _Identity(nn.Module):
    """Dropout (a no-op at test time) and Split: every top is the bottom tensor itself."""

    aliases = True  # may return its bottom, or a view of it

    def __init__(self, tops):
        super().__init__()
        self.tops = tops

    def forward(self, x):
        return (x,) * self.tops


class _Silence(nn.Module):
    def forward(self, *inputs):
        return ()


class _Conv(nn.Module):
    def __init__(self, weight, bias, stride, pad, dilation, groups, transpose):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.pad, self.dilation, self.groups, self.transpose = stride, pad, dilation, groups, transpose

    def forward(self, x):
        if self.transpose:
            # Caffe's Deconvolution output, s (H - 1) + d (k - 1) + 1 - 2p, is conv_transpose2d's
            # without output_padding; its weights are (C_in, C_out / group, kh, kw), as PyTorch's.
            return (F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.pad, 0, self.groups,
                                       self.dilation),)
        return (F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.groups),)


class _InnerProduct(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.register_buffer("weight", weight)  # (num_output, count), transposed already if stored so
        self.register_buffer("bias", bias)

    def forward(self, x):
        return (F.linear(torch.flatten(x, 1), self.weight, self.bias),)


def caffe_pooled_size(size, kernel, stride, pad, ceil_mode):
    """Caffe's pooled size along one axis: ceil (or floor) of (size + 2 pad - kernel) / stride, plus 1,
    less 1 when pad > 0 and the last window would start at or beyond size + pad."""
    span = size + 2 * pad - kernel
    last = -(-span // stride) if ceil_mode else span // stride
    if pad > 0 and last * stride >= size + pad:
        last -= 1
    return last + 1


class _Pool(nn.Module):
    """MAX or AVE pooling with Caffe's output size and AVE divisor.

    PyTorch's own pooling (ceil_mode with padding) computes the same windows and, with
    count_include_pad, the same AVE divisor (the window clipped to [-pad, size + pad)), but
    it drops a last window starting at or beyond size + pad also when pad is 0, and refuses
    pad > kernel / 2. Those inputs go through explicit padding instead, checked per input size.
    """

    def __init__(self, average, kernel, stride, pad, ceil_mode):
        super().__init__()
        self.average, self.kernel, self.stride, self.pad, self.ceil_mode = average, kernel, stride, pad, ceil_mode
        self.native_pad = all(2 * p <= k for p, k in zip(pad, kernel))

    def _torch_size(self, size, k, s, p):
        span = size + 2 * p - k
        out = (-(-span // s) if self.ceil_mode else span // s) + 1
        if self.ceil_mode and (out - 1) * s >= size + p:
            out -= 1
        return out

    def forward(self, x):
        sizes = x.shape[-2:]
        out = [caffe_pooled_size(n, k, s, p, self.ceil_mode)
               for n, k, s, p in zip(sizes, self.kernel, self.stride, self.pad)]
        if self.native_pad and out == [self._torch_size(n, k, s, p)
                                       for n, k, s, p in zip(sizes, self.kernel, self.stride, self.pad)]:
            if self.average:
                return (F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode,
                                     count_include_pad=True),)
            return (F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode),)
        return (self._padded(x, sizes, out),)

    def _padded(self, x, sizes, out):
        # Pad so that the `out` windows fit exactly (left pad, right whatever the last window
        # needs), pool without padding, and cut to `out` where floor mode left extra rows.
        right = [max(0, (o - 1) * s + k - n - p)
                 for o, s, k, n, p in zip(out, self.stride, self.kernel, sizes, self.pad)]
        fill = 0.0 if self.average else float("-inf")
        padded = F.pad(x, (self.pad[1], right[1], self.pad[0], right[0]), value=fill)
        if not self.average:
            return F.max_pool2d(padded, self.kernel, self.stride)[..., :out[0], :out[1]]
        pooled = F.avg_pool2d(padded, self.kernel, self.stride)[..., :out[0], :out[1]]
        # avg_pool2d divided each window by kh * kw; Caffe divides by the window clipped to
        # [-pad, size + pad).
        extents = []
        for o, s, k, n, p in zip(out, self.stride, self.kernel, sizes, self.pad):
            start = torch.arange(o, device=x.device) * s - p
            extents.append((torch.clamp(start + k, max=n + p) - start).to(x.dtype))
        area = extents[0][:, None] * extents[1][None, :]
        return pooled * ((self.kernel[0] * self.kernel[1]) / area)


class _GlobalPool(nn.Module):
    def __init__(self, average):
        super().__init__()
        self.average = average

    def forward(self, x):
        return (x.mean((2, 3), keepdim=True) if self.average else x.amax((2, 3), keepdim=True),)


class _ReLU(nn.Module):
    def __init__(self, slope, inplace):
        super().__init__()
        self.slope, self.inplace = slope, inplace

    def forward(self, x):
        if self.slope:
            return (F.leaky_relu(x, self.slope, inplace=self.inplace),)
        return (F.relu(x, inplace=self.inplace),)


class _PReLU(nn.Module):
    def __init__(self, slope):
        super().__init__()
        self.register_buffer("slope", slope)  # (1,) shared or (C,), as F.prelu takes it

    def forward(self, x):
        return (F.prelu(x, self.slope),)


class _Unary(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return (self.function(x),)


class _Crop(nn.Module):
    aliases = True  # may return its bottom, or a view of it

    def __init__(self, axis, offsets):
        super().__init__()
        self.axis, self.offsets = axis, offsets

    def forward(self, x, like):
        # Caffe: top shape[i] = like's shape[i] for i >= axis, starting at the offsets.
        index = [slice(None)] * self.axis + [slice(o, o + n) for o, n in zip(self.offsets, like.shape[self.axis:])]
        return (x[tuple(index)],)


class _Eltwise(nn.Module):
    def __init__(self, operation, coeffs):
        super().__init__()
        self.operation, self.coeffs = operation, coeffs

    def forward(self, *inputs):
        if self.operation == "max":
            out = inputs[0]
            for x in inputs[1:]:
                out = torch.maximum(out, x)
            return (out,)
        if self.operation == "prod":
            out = inputs[0]
            for x in inputs[1:]:
                out = out * x
            return (out,)
        coeffs = self.coeffs or [1.0] * len(inputs)
        out = inputs[0] if coeffs[0] == 1.0 else inputs[0] * coeffs[0]
        for x, c in zip(inputs[1:], coeffs[1:]):
            out = out + x if c == 1.0 else out + x * c
        return (out,)


class _Concat(nn.Module):
    aliases = True  # may return its bottom, or a view of it

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def forward(self, *inputs):
        return (torch.cat(inputs, self.axis) if len(inputs) > 1 else inputs[0],)


class _Affine(nn.Module):
    """BatchNorm with stored statistics ((x - mean) * inv_std) and Scale (x * scale + bias), per axis."""

    def __init__(self, mean, factor, bias, rank, axis):
        super().__init__()
        self.register_buffer("mean", None if mean is None else _broadcast(mean, rank, axis))
        self.register_buffer("factor", _broadcast(factor, rank, axis))
        self.register_buffer("bias", None if bias is None else _broadcast(bias, rank, axis))

    def forward(self, x):
        if self.mean is not None:
            x = x - self.mean
        x = x * self.factor
        return (x if self.bias is None else x + self.bias,)


class _Power(nn.Module):
    aliases = True  # may return its bottom, or a view of it

    def __init__(self, power, scale, shift):
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x):
        if self.power * self.scale == 0:
            # Caffe: a constant, 1 if power is 0, else shift ** power.
            return (torch.full_like(x, 1.0 if self.power == 0 else self.shift ** self.power),)
        if self.scale != 1.0:
            x = x * self.scale
        if self.shift != 0.0:
            x = x + self.shift
        if self.power != 1.0:
            x = torch.pow(x, self.power)
        return (x,)


class _Softmax(nn.Module):
    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return (F.softmax(x, self.axis),)


class _Flatten(nn.Module):
    aliases = True  # may return its bottom, or a view of it

    def __init__(self, start, end):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x):
        return (torch.flatten(x, self.start, self.end),)


class _Reshape(nn.Module):
    aliases = True  # may return its bottom, or a view of it

    def __init__(self, start, end, dims):
        super().__init__()
        self.start, self.end, self.dims = start, end, dims

    def forward(self, x):
        shape = list(x.shape)
        # 0 copies the bottom's dimension at the same position, as in Caffe; -1 is inferred.
        middle = [shape[self.start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        return (x.reshape(shape[:self.start] + middle + shape[self.end:]),)


class _Interp(nn.Module):
    """DeepLab's Interp: crop by pad_beg/pad_end (<= 0), then bilinear with the corners aligned."""

    def __init__(self, param):
        super().__init__()
        self.param = param  # the InterpParameter: sizes follow the input, through interp_output_size
        self.pad_beg, self.pad_end = int(param.pad_beg), int(param.pad_end)

    def forward(self, x, like=None):
        height, width = x.shape[-2:]
        size = interp_output_size(height, width, self.param, None if like is None else like.shape[-2:])
        if self.pad_beg or self.pad_end:
            x = x[..., -self.pad_beg:height + self.pad_end, -self.pad_beg:width + self.pad_end]
        return (F.interpolate(x, size=[int(s) for s in size], mode="bilinear", align_corners=True),)


# ---------------------------------------------------------------------------- module

class CaffeModule(nn.Module):
    """A Caffe net run by PyTorch: `forward(x)` takes the input blob and returns the output blob.

    `steps` holds one module per layer; `wiring` the bottom and top blob names of each; and
    `release` the blobs each step was the last reader of (freed then, as the net would hold
    every blob otherwise).
    """

    def __init__(self, steps, wiring, release, input_blob, output_blob, name, layer_names):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.wiring, self.release = wiring, release
        self.input_blob, self.output_blob, self.net_name, self.layer_names = input_blob, output_blob, name, layer_names

    def forward(self, x):
        blobs = {self.input_blob: x}
        for step, (bottoms, tops), done in zip(self.steps, self.wiring, self.release):
            outputs = step(*[blobs[b] for b in bottoms])
            for name in done:
                del blobs[name]
            blobs.update(zip(tops, outputs))
        return blobs[self.output_blob]


class _Builder:
    """Builds the step modules, tracking what Caffe knows statically of each blob (rank, channels)."""

    def __init__(self, net, input_blob, output_blob):
        self.net, self.input_blob, self.output_blob = net, input_blob, output_blob
        self.rank, self.channels = {}, {}

    def fail(self, layer, what):
        raise TorchModelError(f"{self.net.prototxt}: layer {layer.name!r} (type {layer.type}): {what}")

    def blob(self, layer, index, shape):
        return _tensor(layer.blob(index, shape, self.net.weights or self.net.prototxt))

    def check_blob_count(self, layer, expected):
        if self.net.weights is None:
            self.fail(layer, "has weights, but no caffemodel was given")
        if len(layer.blobs) == 0:
            self.fail(layer, f"has no weights in {self.net.weights} (no layer of that name there)")
        if len(layer.blobs) not in expected:
            raise CaffeModelError(f"{self.net.weights}: layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} "
                                  f"weight blob(s), the layer needs {' or '.join(map(str, expected))}")

    def channels_of(self, layer, blob):
        channels = self.channels.get(blob)
        if channels is None:
            self.fail(layer, "the number of channels of its input is not known statically")
        return channels

    def axis(self, layer, axis, rank):
        if not -rank <= axis < rank:
            self.fail(layer, f"axis {axis} is out of range for a {rank}-D blob")
        return axis % rank

    def bottoms(self, layer, count=None, minimum=1):
        if count is not None and len(layer.bottoms) != count:
            self.fail(layer, f"needs {count} bottom blob(s), has {len(layer.bottoms)}")
        if len(layer.bottoms) < minimum:
            self.fail(layer, f"needs at least {minimum} bottom blob(s)")
        missing = [b for b in layer.bottoms if b not in self.rank]
        if missing:
            self.fail(layer, f"bottom blob(s) {missing} are not produced by any earlier layer")
        return layer.bottoms

    # -------------------------------------------------------------- driver

    def build(self):
        net = self.net
        if self.input_blob not in net.inputs:
            raise TorchModelError(f"{net.prototxt}: input blob {self.input_blob!r} is not an input of the net; "
                                  f"its inputs are {list(net.inputs)}")
        shape = net.inputs[self.input_blob]
        if len(shape) != 4:
            raise TorchModelError(f"{net.prototxt}: input {self.input_blob!r} has shape {shape}; "
                                  f"only (N, C, H, W) inputs are supported")
        self.rank[self.input_blob], self.channels[self.input_blob] = 4, shape[1]

        handlers = {name[len("layer_"):]: getattr(self, name) for name in dir(self) if name.startswith("layer_")}
        for layer in net.layers:  # every unknown type at once, before any weight is converted
            if layer.type not in handlers:
                self.fail(layer, f"layer type {layer.type!r} is not supported by segbench's PyTorch backend "
                                 f"(supported: {', '.join(sorted(handlers))})")
        steps, wiring, names = [], [], []
        for layer in net.layers:
            try:
                made = handlers[layer.type](layer)
            except ValueError as error:
                self.fail(layer, str(error))
            if made is None:  # the Input layer: its top is the module's input
                continue
            module, tops = made
            if len(tops) != len(layer.tops):
                self.fail(layer, f"needs {len(tops)} top blob(s), has {len(layer.tops)}")
            for name, (rank, channels) in zip(layer.tops, tops):
                self.rank[name], self.channels[name] = rank, channels
            steps.append(module)
            wiring.append((list(layer.bottoms), list(layer.tops)))
            names.append(layer.name)
            layer.blobs = []  # the module holds the weights now

        if self.output_blob not in self.rank:
            raise TorchModelError(f"{net.prototxt}: output blob {self.output_blob!r} is not produced by the net; "
                                  f"its blobs are {sorted(self.rank)}")
        if self.output_blob == self.input_blob:
            raise TorchModelError(f"{net.prototxt}: output blob {self.output_blob!r} is the input itself")
        release = self._plan_memory(steps, wiring)
        return CaffeModule(steps, wiring, release, self.input_blob, self.output_blob, net.name, names)

    def _plan_memory(self, steps, wiring):
        """Which blobs each step reads for the last time, and in-place ReLUs where that is safe.

        Caffe's in-place layers (top == bottom) overwrite the blob; here a ReLU does so only when
        no other blob name that is still to be read may share its memory (Dropout and Split pass
        their bottom on as is; Crop, Reshape and Flatten may return views), and never on the
        caller's input tensor. Out of place is always correct, in place saves an allocation.
        """
        # Simulate the blob dict with value ids (one per binding of a name); `storage` says which
        # values may share memory (a step with `aliases` may return its bottom or a view of it).
        bound = {self.input_blob: 0}
        storage = {0: "input"}
        reads = {}  # value id -> index of its last reader
        history = []
        next_value = 1
        for index, (bottoms, tops) in enumerate(wiring):
            values = [bound[b] for b in bottoms]
            for value in values:
                reads[value] = index
            history.append((dict(bound), values))
            aliases = getattr(steps[index], "aliases", False)
            for top in tops:
                storage[next_value] = storage[values[0]] if aliases else next_value
                bound[top] = next_value
                next_value += 1
        final = bound[self.output_blob]

        release = []
        for index, ((before, values), (bottoms, tops)) in enumerate(zip(history, wiring)):
            step = steps[index]
            if isinstance(step, _ReLU) and tops == bottoms:
                value = values[0]
                shared = [v for name, v in before.items() if name != bottoms[0] and storage[v] == storage[value]
                          and (reads.get(v, -1) > index or v == final)]
                step.inplace = storage[value] != "input" and not shared
            # A name rebound by this step's tops drops its old value by itself.
            release.append(sorted({name for name, v in zip(bottoms, values)
                                   if reads[v] == index and v != final and name not in tops}))
        return release

    # -------------------------------------------------------------- layers
    # Each returns (module, [(rank, channels) of each top]), or None for a layer that runs nothing.

    def layer_Input(self, layer):
        if layer.tops != [self.input_blob]:
            others = [t for t in layer.tops if t != self.input_blob]
            self.fail(layer, f"extra net inputs {others} are not supported (only {self.input_blob!r})")
        return None

    def _conv(self, layer, transpose):
        p = layer.param.convolution_param
        (x,) = self.bottoms(layer, 1)
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
        if self.rank[x] != 4:
            self.fail(layer, "only 4-D (N, C, H, W) inputs are supported")
        group, out_channels = int(p.group), int(p.num_output)
        in_channels = self.channels_of(layer, x)
        if group < 1 or in_channels % group or out_channels % group:
            self.fail(layer, f"group {group} does not divide {in_channels} input and {out_channels} output channels")
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        if transpose:
            weight = self.blob(layer, 0, (in_channels, out_channels // group) + kernel)
        else:
            weight = self.blob(layer, 0, (out_channels, in_channels // group) + kernel)
        bias = self.blob(layer, 1, (out_channels,)) if p.bias_term else None
        return _Conv(weight, bias, stride, pad, dilation, group, transpose), [(4, out_channels)]

    def layer_Convolution(self, layer):
        return self._conv(layer, transpose=False)

    def layer_Deconvolution(self, layer):
        return self._conv(layer, transpose=True)

    def layer_InnerProduct(self, layer):
        p = layer.param.inner_product_param
        (x,) = self.bottoms(layer, 1)
        if self.axis(layer, p.axis, self.rank[x]) != 1:
            self.fail(layer, "only axis 1 is supported")
        self.check_blob_count(layer, [2] if p.bias_term else [1])
        count = layer.blobs[0].size // max(int(p.num_output), 1)
        weight = self.blob(layer, 0, (count, p.num_output) if p.transpose else (p.num_output, count))
        if p.transpose:
            weight = weight.t().contiguous()
        bias = self.blob(layer, 1, (p.num_output,)) if p.bias_term else None
        return _InnerProduct(weight, bias), [(2, int(p.num_output))]

    def layer_Pooling(self, layer):
        p = layer.param.pooling_param
        (x,) = self.bottoms(layer, 1)
        if p.pool not in (0, 1):
            self.fail(layer, "only MAX and AVE pooling are supported (not STOCHASTIC)")
        if self.rank[x] != 4:
            self.fail(layer, "only 4-D (N, C, H, W) inputs are supported")
        top = [(4, self.channels.get(x))]
        if p.global_pooling:
            if p.pad or p.pad_h or p.pad_w:
                self.fail(layer, "global pooling with padding is not supported")
            return _GlobalPool(p.pool == 1), top
        kernel = _kernel(p)
        if kernel[0] is None:
            self.fail(layer, "has no kernel_size")
        pad = _pair(p, "pad", 0)
        stride = _pair(p, "stride", 1)
        if any(pd >= k for pd, k in zip(pad, kernel)):
            self.fail(layer, "pad must be smaller than the kernel (as Caffe checks)")
        return _Pool(p.pool == 1, kernel, stride, pad, bool(p.ceil_mode)), top

    def _same(self, layer, module):
        (x,) = self.bottoms(layer, 1)
        return module, [(self.rank[x], self.channels.get(x))]

    def layer_ReLU(self, layer):
        # In place or not is decided once the whole net is known (_plan_memory).
        return self._same(layer, _ReLU(float(layer.param.relu_param.negative_slope), inplace=False))

    def layer_PReLU(self, layer):
        (x,) = self.bottoms(layer, 1)
        self.check_blob_count(layer, [1])
        if layer.param.prelu_param.channel_shared:
            slope = self.blob(layer, 0, ()).reshape(1)  # Caffe stores the shared slope as a 0-axis blob
        else:
            slope = self.blob(layer, 0, (self.channels_of(layer, x),))
        return self._same(layer, _PReLU(slope))

    def layer_Sigmoid(self, layer):
        return self._same(layer, _Unary(torch.sigmoid))

    def layer_TanH(self, layer):
        return self._same(layer, _Unary(torch.tanh))

    def layer_Dropout(self, layer):
        return self._same(layer, _Identity(1))

    def layer_Split(self, layer):
        (x,) = self.bottoms(layer, 1)
        return _Identity(len(layer.tops)), [(self.rank[x], self.channels.get(x))] * len(layer.tops)

    def layer_Silence(self, layer):
        self.bottoms(layer)
        return _Silence(), []

    def layer_Crop(self, layer):
        x, like = self.bottoms(layer, 2)
        p = layer.param.crop_param
        rank = self.rank[x]
        axis = self.axis(layer, p.axis, rank)
        offsets = [int(o) for o in p.offset]
        if len(offsets) not in (0, 1, rank - axis):
            self.fail(layer, f"has {len(offsets)} offsets; give 1 or one per axis from {axis} ({rank - axis})")
        offsets = [offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0) for i in range(rank - axis)]
        channels = self.channels.get(like) if axis <= 1 else self.channels.get(x)
        return _Crop(axis, offsets), [(rank, channels)]

    def layer_Eltwise(self, layer):
        bottoms = self.bottoms(layer, minimum=2)
        p = layer.param.eltwise_param
        operation = {0: "prod", 1: "sum", 2: "max"}.get(p.operation)
        if operation is None:
            self.fail(layer, f"eltwise operation {p.operation} is not supported")
        coeffs = [float(c) for c in p.coeff]
        if coeffs and operation != "sum":
            self.fail(layer, "coefficients are only allowed with operation SUM (as in Caffe)")
        if coeffs and len(coeffs) != len(bottoms):
            self.fail(layer, f"has {len(coeffs)} coefficients for {len(bottoms)} bottoms")
        x = bottoms[0]
        return _Eltwise(operation, coeffs), [(self.rank[x], self.channels.get(x))]

    def layer_Concat(self, layer):
        bottoms = self.bottoms(layer)
        p = layer.param.concat_param
        rank = self.rank[bottoms[0]]
        axis = self.axis(layer, p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, rank)
        channels = [self.channels.get(b) for b in bottoms]
        merged = (sum(channels) if None not in channels else None) if axis == 1 else channels[0]
        return _Concat(axis), [(rank, merged)]

    def layer_BatchNorm(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            self.fail(layer, "use_global_stats: false normalises with the statistics of each batch; "
                             "only stored statistics can be computed here")
        self.check_blob_count(layer, [3])
        channels = self.channels_of(layer, x)
        mean = self.blob(layer, 0, (channels,)).double()
        var = self.blob(layer, 1, (channels,)).double()
        factor = float(self.blob(layer, 2, (1,))[0])
        # Caffe keeps running sums: the statistics are the stored ones over the moving-average factor.
        scale = 0.0 if factor == 0 else 1.0 / factor
        inv_std = 1.0 / torch.sqrt(var * scale + float(torch.tensor(p.eps, dtype=torch.float32)))
        module = _Affine((mean * scale).float(), inv_std.float(), None, self.rank[x], 1)
        return self._same(layer, module)

    def layer_Scale(self, layer):
        p = layer.param.scale_param
        if len(layer.bottoms) != 1:
            self.fail(layer, "only the one-bottom form (learned scale) is supported")
        (x,) = self.bottoms(layer, 1)
        rank = self.rank[x]
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
        bias = self.blob(layer, 1, shape) if p.bias_term else None
        return self._same(layer, _Affine(None, self.blob(layer, 0, shape), bias, rank, axis))

    def layer_Power(self, layer):
        p = layer.param.power_param
        return self._same(layer, _Power(float(p.power), float(p.scale), float(p.shift)))

    def layer_Softmax(self, layer):
        (x,) = self.bottoms(layer, 1)
        return self._same(layer, _Softmax(self.axis(layer, layer.param.softmax_param.axis, self.rank[x])))

    def layer_Flatten(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.flatten_param
        rank = self.rank[x]
        start, end = self.axis(layer, p.axis, rank), self.axis(layer, p.end_axis, rank)
        if end < start:
            self.fail(layer, f"end_axis {p.end_axis} is before axis {p.axis}")
        channels = self.channels.get(x) if start > 1 else None
        return _Flatten(start, end), [(rank - (end - start), channels)]

    def layer_Reshape(self, layer):
        (x,) = self.bottoms(layer, 1)
        p = layer.param.reshape_param
        rank = self.rank[x]
        start = p.axis if p.axis >= 0 else rank + p.axis + 1
        end = rank if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= end <= rank:
            self.fail(layer, f"axis {p.axis} / num_axes {p.num_axes} do not fit a {rank}-D blob")
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1:
            self.fail(layer, "at most one dimension may be -1")
        channels = self.channels.get(x) if start >= 2 else None
        return _Reshape(start, end, dims), [(start + len(dims) + rank - end, channels)]

    def layer_Interp(self, layer):
        p = layer.param.interp_param
        bottoms = self.bottoms(layer, minimum=1)
        if len(bottoms) > 2:
            self.fail(layer, "needs 1 or 2 bottoms")
        if self.rank[bottoms[0]] != 4:
            self.fail(layer, "only 4-D (N, C, H, W) inputs are supported")
        spec = interp_output_size_spec(p, two_bottoms=len(bottoms) == 2)
        if isinstance(spec, str):
            self.fail(layer, spec)
        # With two bottoms, interp_output_size still lets explicit sizes win, as DeepLab does.
        return _Interp(p), [(4, self.channels.get(bottoms[0]))]


def build_module(prototxt, weights, input_blob="data", output_blob="score"):
    """The CaffeModule (float32, on the CPU) of a deploy prototxt and its caffemodel.

    Raises TorchModelError (or CaffeModelError for unreadable files and weights that do not
    fit) naming the prototxt and layer, before any pass, for anything it cannot compute as Caffe does.
    """
    net = load_net(prototxt, weights)
    return _Builder(net, input_blob, output_blob).build()
