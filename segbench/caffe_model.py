"""Caffe nets (prototxt + caffemodel) read without pycaffe.

The layer list is what Caffe itself would build for phase TEST (include/exclude rules
applied); the weights are matched to layers by name, as Caffe's CopyTrainedLayersFrom
does. Layer parameters are taken from the prototxt only: a caffemodel also carries them,
but the prototxt is what defines the deploy net.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from . import SegbenchError
from .caffe_proto import message_class

_V1_ADVICE = ("it is an old V1 Caffe net ('layers' instead of 'layer'); upgrade it with Caffe's "
              "tools upgrade_net_proto_text (prototxt) / upgrade_net_proto_binary (caffemodel) first")
_TEST = 1  # caffe.Phase.TEST


class CaffeModelError(SegbenchError):
    """A prototxt or caffemodel that cannot be read, or whose weights do not fit the net."""


@dataclass
class CaffeLayer:
    name: str
    type: str
    bottoms: list
    tops: list
    param: object  # the caffe.LayerParameter from the prototxt
    blobs: list = field(default_factory=list)  # float32 arrays, in the caffemodel's shapes
    legacy_shapes: list = field(default_factory=list)  # per blob: True if from num/channels/height/width

    def blob(self, index, shape, path):
        """Blob `index` as an array of `shape`, checked as Caffe checks it on loading.

        Legacy blobs only record a 4-D (num, channels, height, width); Caffe accepts them when
        the shape needed, padded with leading 1s to 4 axes, is the same.
        """
        if index >= len(self.blobs):
            raise CaffeModelError(f"{path}: layer {self.name!r} ({self.type}) needs at least {index + 1} "
                                  f"weight blob(s), the caffemodel has {len(self.blobs)}")
        array = self.blobs[index]
        shape = tuple(int(d) for d in shape)
        if array.shape == shape:
            return array
        if self.legacy_shapes[index] and len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == array.shape:
            return array.reshape(shape)
        raise CaffeModelError(f"{path}: layer {self.name!r} ({self.type}): weight blob {index} has shape "
                              f"{list(array.shape)}, the layer needs {list(shape)}")


@dataclass
class CaffeNet:
    prototxt: Path
    weights: Path | None
    name: str
    inputs: dict  # blob name -> shape list, for net-level inputs and Input layers, in order
    layers: list  # CaffeLayer, in net order (TEST phase)


def _state_meets_rule(state_level, state_stages, rule):
    # Caffe's Net::StateMeetsRule, for a net built in phase TEST.
    if rule.HasField("phase") and rule.phase != _TEST:
        return False
    if rule.HasField("min_level") and state_level < rule.min_level:
        return False
    if rule.HasField("max_level") and state_level > rule.max_level:
        return False
    if any(stage not in state_stages for stage in rule.stage):
        return False
    if any(stage in state_stages for stage in rule.not_stage):
        return False
    return True


def _included(layer, level, stages):
    if layer.include:
        return any(_state_meets_rule(level, stages, rule) for rule in layer.include)
    return not any(_state_meets_rule(level, stages, rule) for rule in layer.exclude)


def _read_bytes(path, what):
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CaffeModelError(f"{path}: {what} not found") from None
    except OSError as error:
        raise CaffeModelError(f"{path}: cannot read {what}: {error.strerror or error}") from None


def parse_prototxt(prototxt):
    """The caffe.NetParameter of a prototxt file (V1 nets refused)."""
    raw = _read_bytes(prototxt, "prototxt")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeModelError(f"{prototxt}: not a Caffe prototxt (not UTF-8 text)") from None
    net = message_class("NetParameter")()
    try:
        text_format.Merge(text, net)
    except text_format.ParseError as error:
        # The message starts with "line:column :"; say so, since a bare "12:5" is cryptic.
        raise CaffeModelError(f"{prototxt}: not a valid Caffe prototxt: at line:column {error}") from None
    if len(net.layers):
        raise CaffeModelError(f"{prototxt}: {_V1_ADVICE}")
    return net


def _blob_array(blob):
    if len(blob.double_data):
        data = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        data = np.asarray(blob.data, dtype=np.float32)
    # As Caffe's Blob::FromProto: any of the legacy 4-D fields present means a legacy shape;
    # otherwise `shape`, where no dims at all is a 0-axis (scalar) blob.
    if any(blob.HasField(name) for name in ("num", "channels", "height", "width")):
        return data.reshape((blob.num, blob.channels, blob.height, blob.width)), True
    return data.reshape(tuple(blob.shape.dim)), False


def _read_weights(weights):
    """{layer name: [(array, legacy shape?)]} from a caffemodel."""
    net = message_class("NetParameter")()
    raw = _read_bytes(weights, "caffemodel")
    try:
        net.ParseFromString(raw)
    except Exception as error:  # protobuf raises DecodeError or RuntimeError, depending on the backend
        raise CaffeModelError(f"{weights}: not a Caffe caffemodel (binary NetParameter): {error}") from None
    del raw  # models reach 540 MB: never hold the file and the message at once for longer than needed
    if len(net.layers):
        raise CaffeModelError(f"{weights}: {_V1_ADVICE}")
    found = {}
    for layer in net.layer:
        arrays = []
        for index, blob in enumerate(layer.blobs):
            try:
                arrays.append(_blob_array(blob))
            except ValueError:
                raise CaffeModelError(f"{weights}: layer {layer.name!r}: blob {index} holds "
                                      f"{len(blob.data) or len(blob.double_data)} values, which do not "
                                      f"fit its shape") from None
        found.setdefault(layer.name, arrays)  # Caffe takes the first layer of a name
        layer.ClearField("blobs")  # free each layer's data once copied
    return found


def _input_shape(shape):
    return [int(d) for d in shape.dim]


def load_net(prototxt, weights=None):
    """Read a deploy prototxt (and its caffemodel, if given) into a CaffeNet."""
    prototxt = Path(prototxt)
    net = parse_prototxt(prototxt)
    inputs = {}
    for index, name in enumerate(net.input):
        if index < len(net.input_shape):
            inputs[name] = _input_shape(net.input_shape[index])
        elif len(net.input_dim) >= 4 * (index + 1):
            inputs[name] = [int(d) for d in net.input_dim[4 * index:4 * index + 4]]
        else:
            raise CaffeModelError(f"{prototxt}: net input {name!r} has no input_shape or input_dim")

    level, stages = net.state.level, set(net.state.stage)
    layers = []
    for layer in net.layer:
        if not _included(layer, level, stages):
            continue
        if layer.type == "Input":
            shapes = layer.input_param.shape
            for index, top in enumerate(layer.top):
                if not shapes:
                    raise CaffeModelError(f"{prototxt}: Input layer {layer.name!r} has no input_param shape")
                inputs[top] = _input_shape(shapes[index if len(shapes) > 1 else 0])
        layers.append(CaffeLayer(layer.name, layer.type, list(layer.bottom), list(layer.top), layer))

    if weights is not None:
        weights = Path(weights)
        found = _read_weights(weights)
        for layer in layers:
            blobs = found.get(layer.name, [])
            layer.blobs = [array for array, _ in blobs]
            layer.legacy_shapes = [legacy for _, legacy in blobs]
    return CaffeNet(prototxt, weights, net.name, inputs, layers)
