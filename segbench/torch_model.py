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
from .caffe_layers import LayerReader, interp_output_size
from .caffe_model import load_net


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


class _Builder(LayerReader):
    """Builds the step modules, tracking what Caffe knows statically of each blob (rank, channels)."""

    error = TorchModelError
    engine = "segbench's PyTorch backend"

    def __init__(self, net, input_blob, output_blob):
        super().__init__(net, input_blob, output_blob)
        self.rank, self.channels = {}, {}

    # A blob's handle is its name: the module passes tensors by blob name.
    def handle_of(self, blob):
        return blob if blob in self.rank else None

    def rank_of(self, blob):
        return self.rank[blob]

    def known_channels(self, blob):
        return self.channels.get(blob)

    # -------------------------------------------------------------- driver

    def build(self):
        net = self.net
        shape = self.input_shape()
        self.rank[self.input_blob], self.channels[self.input_blob] = 4, shape[1]

        handlers = self.handlers()
        steps, wiring, names = [], [], []
        for layer in net.layers:
            try:
                made = handlers[layer.type](layer)
            except ValueError as error:
                self.fail(layer, str(error))
            if made is None:  # the Input layer: its top is the module's input
                continue
            module, tops = made
            self.check_tops(layer, tops)
            for name, (rank, channels) in zip(layer.tops, tops):
                self.rank[name], self.channels[name] = rank, channels
            steps.append(module)
            wiring.append((list(layer.bottoms), list(layer.tops)))
            names.append(layer.name)
            layer.blobs = []  # the module holds the weights now

        self.output_handle(self.rank)
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
        self.check_input_layer(layer)
        return None

    def _conv(self, layer, transpose):
        (x,) = self.bottoms(layer, 1)
        c = self.convolution(layer, x, transpose)
        return (_Conv(_tensor(c["weight"]), None if c["bias"] is None else _tensor(c["bias"]), c["stride"], c["pad"],
                      c["dilation"], c["group"], transpose), [(4, c["out_channels"])])

    def layer_Convolution(self, layer):
        return self._conv(layer, transpose=False)

    def layer_Deconvolution(self, layer):
        return self._conv(layer, transpose=True)

    def layer_InnerProduct(self, layer):
        (x,) = self.bottoms(layer, 1)
        weight, bias, outputs = self.inner_product(layer, x)
        return _InnerProduct(_tensor(weight), None if bias is None else _tensor(bias)), [(2, outputs)]

    def layer_Pooling(self, layer):
        p = layer.param.pooling_param
        (x,) = self.bottoms(layer, 1)
        window = self.pooling(layer, x)
        top = [(4, self.channels.get(x))]
        if window is None:
            return _GlobalPool(p.pool == 1), top
        kernel, stride, pad = window
        return _Pool(p.pool == 1, kernel, stride, pad, bool(p.ceil_mode)), top

    def _same(self, layer, module):
        (x,) = self.bottoms(layer, 1)
        return module, [(self.rank[x], self.channels.get(x))]

    def layer_ReLU(self, layer):
        # In place or not is decided once the whole net is known (_plan_memory).
        return self._same(layer, _ReLU(float(layer.param.relu_param.negative_slope), inplace=False))

    def layer_PReLU(self, layer):
        (x,) = self.bottoms(layer, 1)
        return self._same(layer, _PReLU(_tensor(self.prelu_slope(layer, x))))

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
        axis, offsets = self.crop(layer, x)
        channels = self.channels.get(like) if axis <= 1 else self.channels.get(x)
        return _Crop(axis, offsets), [(self.rank[x], channels)]

    def layer_Eltwise(self, layer):
        bottoms = self.bottoms(layer, minimum=2)
        operation, coeffs = self.eltwise(layer, len(bottoms))
        x = bottoms[0]
        return _Eltwise(operation, coeffs), [(self.rank[x], self.channels.get(x))]

    def layer_Concat(self, layer):
        bottoms = self.bottoms(layer)
        axis, channels = self.concat(layer, bottoms)
        return _Concat(axis), [(self.rank[bottoms[0]], channels)]

    def layer_BatchNorm(self, layer):
        (x,) = self.bottoms(layer, 1)
        mean, inv_std = self.batch_norm(layer, x)
        module = _Affine(_tensor(mean), _tensor(inv_std), None, self.rank[x], 1)
        return self._same(layer, module)

    def layer_Scale(self, layer):
        x = self.bottoms(layer, minimum=1)[0]
        axis, scale, bias = self.scale(layer, x)
        return self._same(layer, _Affine(None, _tensor(scale), None if bias is None else _tensor(bias),
                                         self.rank[x], axis))

    def layer_Power(self, layer):
        p = layer.param.power_param
        return self._same(layer, _Power(float(p.power), float(p.scale), float(p.shift)))

    def layer_Softmax(self, layer):
        (x,) = self.bottoms(layer, 1)
        return self._same(layer, _Softmax(self.axis(layer, layer.param.softmax_param.axis, self.rank[x])))

    def layer_Flatten(self, layer):
        (x,) = self.bottoms(layer, 1)
        start, end, rank, channels = self.flatten(layer, x)
        return _Flatten(start, end), [(rank, channels)]

    def layer_Reshape(self, layer):
        (x,) = self.bottoms(layer, 1)
        start, end, dims, rank, channels = self.reshape(layer, x)
        return _Reshape(start, end, dims), [(rank, channels)]

    def layer_Interp(self, layer):
        bottoms = self.bottoms(layer, minimum=1)
        self.interp(layer, bottoms)
        # With two bottoms, interp_output_size still lets explicit sizes win, as DeepLab does.
        return _Interp(layer.param.interp_param), [(4, self.channels.get(bottoms[0]))]


def build_module(prototxt, weights, input_blob="data", output_blob="score"):
    """The CaffeModule (float32, on the CPU) of a deploy prototxt and its caffemodel.

    Raises TorchModelError (or CaffeModelError for unreadable files and weights that do not
    fit) naming the prototxt and layer, before any pass, for anything it cannot compute as Caffe does.
    """
    net = load_net(prototxt, weights)
    return _Builder(net, input_blob, output_blob).build()
