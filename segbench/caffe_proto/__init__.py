"""Caffe's protobuf messages, built at run time from the caffe.proto beside this file.

Exporting a model must work without a Caffe build, and protoc / grpcio-tools are not
dependencies, so this module parses the proto2 schema itself (the small subset caffe.proto
uses: packages, messages, nested messages and enums, scalar/enum/message fields with
label, number, default and packed) into a FileDescriptorProto, registers it in a private
DescriptorPool (never the default one, where a real pycaffe's caffe_pb2 may also register
"caffe.proto") and makes the message classes from it.
"""

import functools
import re
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .. import SegbenchError

PROTO_PATH = Path(__file__).with_name("caffe.proto")

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64, "int32": _F.TYPE_INT32, "fixed64": _F.TYPE_FIXED64,
    "fixed32": _F.TYPE_FIXED32, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES, "uint32": _F.TYPE_UINT32, "sfixed32": _F.TYPE_SFIXED32,
    "sfixed64": _F.TYPE_SFIXED64, "sint32": _F.TYPE_SINT32, "sint64": _F.TYPE_SINT64,
}
_LABELS = {"optional": _F.LABEL_OPTIONAL, "required": _F.LABEL_REQUIRED, "repeated": _F.LABEL_REPEATED}
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[A-Za-z_][\w.]*'
                    r'|[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|\S')
_COMMENT = re.compile(r'//[^\n]*|/\*.*?\*/', re.S)


class ProtoSchemaError(SegbenchError):
    """caffe.proto uses something this small parser does not understand."""


class _Tokens:
    def __init__(self, text, path):
        # Comments are blanked (not removed) so that error positions stay right.
        text = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)
        self.items = [(m.group(), text.count("\n", 0, m.start()) + 1) for m in _TOKEN.finditer(text)]
        self.pos = 0
        self.path = path

    def peek(self):
        return self.items[self.pos][0] if self.pos < len(self.items) else None

    def next(self, expected=None):
        if self.pos >= len(self.items):
            raise ProtoSchemaError(f"{self.path}: unexpected end of file")
        token, line = self.items[self.pos]
        if expected is not None and token != expected:
            raise ProtoSchemaError(f"{self.path}:{line}: expected {expected!r}, found {token!r}")
        self.pos += 1
        return token

    def fail(self, what):
        line = self.items[min(self.pos, len(self.items) - 1)][1]
        raise ProtoSchemaError(f"{self.path}:{line}: {what}")


def _unquote(token):
    # Defaults in caffe.proto are plain ASCII; backslash escapes are decoded the C way.
    return token[1:-1].encode("latin-1").decode("unicode_escape")


def _parse_enum(tokens, enum):
    enum.name = tokens.next()
    tokens.next("{")
    while tokens.peek() != "}":
        if tokens.peek() == "option":
            _skip_statement(tokens)
            continue
        value = enum.value.add()
        value.name = tokens.next()
        tokens.next("=")
        value.number = int(tokens.next(), 0)
        if tokens.peek() == "[":
            _skip_brackets(tokens)
        tokens.next(";")
    tokens.next("}")


def _skip_statement(tokens):
    while tokens.next() != ";":
        pass


def _skip_brackets(tokens):
    tokens.next("[")
    while tokens.next() != "]":
        pass


def _parse_message(tokens, message, unresolved, scope):
    message.name = tokens.next()
    scope = f"{scope}.{message.name}"
    tokens.next("{")
    while tokens.peek() != "}":
        word = tokens.peek()
        if word == "message":
            tokens.next()
            _parse_message(tokens, message.nested_type.add(), unresolved, scope)
        elif word == "enum":
            tokens.next()
            _parse_enum(tokens, message.enum_type.add())
        elif word in ("option", "reserved", "extensions"):
            _skip_statement(tokens)
        elif word in _LABELS:
            _parse_field(tokens, message.field.add(), unresolved, scope)
        elif word == ";":
            tokens.next()
        else:
            tokens.fail(f"unsupported statement {word!r} in message {scope[1:]}")
    tokens.next("}")


def _parse_field(tokens, field, unresolved, scope):
    field.label = _LABELS[tokens.next()]
    type_name = tokens.next()
    if type_name == "group":
        tokens.fail("proto2 groups are not supported")
    field.name = tokens.next()
    tokens.next("=")
    field.number = int(tokens.next(), 0)
    if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
    else:
        unresolved.append((field, type_name, scope))
    if tokens.peek() == "[":
        tokens.next("[")
        while True:
            option = tokens.next()
            tokens.next("=")
            value = tokens.next()
            if value in ("-", "+"):  # "- inf" and the like
                value += tokens.next()
            if option == "default":
                field.default_value = _default_text(type_name, value)
            elif option == "packed":
                field.options.packed = value == "true"
            if tokens.next() == "]":
                break
    tokens.next(";")


def _default_text(type_name, value):
    """FieldDescriptorProto.default_value is text in a canonical form per type."""
    if value[0] in "\"'":
        return _unquote(value)
    if type_name in ("float", "double"):
        return repr(float(value))
    if type_name in _SCALARS and type_name not in ("bool", "string", "bytes"):
        return str(int(value, 0))
    return value  # bool literals and enum value names


def _resolve(file_proto, unresolved):
    kinds = {}

    def collect(prefix, messages, enums):
        for enum in enums:
            kinds[f"{prefix}.{enum.name}"] = _F.TYPE_ENUM
        for message in messages:
            name = f"{prefix}.{message.name}"
            kinds[name] = _F.TYPE_MESSAGE
            collect(name, message.nested_type, message.enum_type)

    package = f".{file_proto.package}" if file_proto.package else ""
    collect(package, file_proto.message_type, file_proto.enum_type)
    for field, type_name, scope in unresolved:
        # Protobuf scoping: look the name up from the innermost enclosing scope outwards.
        parts = scope.split(".")
        for depth in range(len(parts), 0, -1):
            candidate = ".".join(parts[:depth] + [type_name])
            if candidate in kinds:
                break
        else:
            candidate = "." + type_name.lstrip(".")
            if candidate not in kinds:
                raise ProtoSchemaError(f"{PROTO_PATH}: field {scope[1:]}.{field.name} has unknown type {type_name}")
        field.type = kinds[candidate]
        field.type_name = candidate


def parse_proto(text, path="<proto>", name="caffe.proto"):
    """Parse proto2 schema text into a FileDescriptorProto."""
    tokens = _Tokens(text, path)
    file_proto = descriptor_pb2.FileDescriptorProto(name=name, syntax="proto2")
    unresolved = []
    while tokens.peek() is not None:
        word = tokens.next()
        if word == "syntax":
            tokens.next("=")
            if _unquote(tokens.next()) != "proto2":
                tokens.fail("only proto2 schemas are supported")
            tokens.next(";")
        elif word == "package":
            file_proto.package = tokens.next()
            tokens.next(";")
        elif word == "option":
            _skip_statement(tokens)
        elif word == "message":
            _parse_message(tokens, file_proto.message_type.add(), unresolved,
                           f".{file_proto.package}" if file_proto.package else "")
        elif word == "enum":
            _parse_enum(tokens, file_proto.enum_type.add())
        elif word == ";":
            continue
        else:
            tokens.pos -= 1
            tokens.fail(f"unsupported top-level statement {word!r}")
    _resolve(file_proto, unresolved)
    return file_proto


@functools.lru_cache(maxsize=None)
def _classes():
    file_proto = parse_proto(PROTO_PATH.read_text(), PROTO_PATH, name="segbench/caffe.proto")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return pool


def message_class(name):
    """The message class of caffe.<name> (e.g. "NetParameter"), built once per process."""
    pool = _classes()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
