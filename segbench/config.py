"""Loading and checking a segbench configuration before anything runs."""

import copy
from pathlib import Path

import yaml
from jsonschema import Draft7Validator, validators

from . import SegbenchError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"


class ConfigError(SegbenchError):
    pass


def _with_defaults(validator_class):
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": fill_defaults})


_Validator = _with_defaults(Draft7Validator)


def _where(error):
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(config):
    """Fill in defaults and check `config` (a dict, changed in place) against the schema and itself.

    Raises ConfigError naming every key at fault. Checks only the configuration, not the files.
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_where(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    problems = []
    dataset = config["dataset"]
    needed = ("root",) if dataset["layout"] == "voc" else ("images", "labels")
    problems += [f"dataset.{key} is required with layout {dataset['layout']!r}" for key in needed if key not in dataset]
    if len(dataset["class_names"]) != dataset["num_classes"]:
        problems.append(f"dataset.class_names has {len(dataset['class_names'])} names but "
                        f"dataset.num_classes is {dataset['num_classes']}")
    for name, run in config["runs"].items():
        if run["model"] not in config["models"]:
            problems.append(f"runs.{name}.model: {run['model']!r} is not one of models: "
                            f"{', '.join(config['models'])}")
        problems += _run_problems(name, run, config)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return config


# The precisions each backend can run at all; whether this machine's CPU or GPU can is checked by
# the backend before any job (segbench.backends.check_device).
BACKEND_PRECISIONS = {"caffe": ["fp32"], "opencv": ["fp32"], "onnxruntime": ["fp32", "fp16", "int8"],
                      "openvino": ["fp32", "bf16", "fp16", "int8"], "torch": ["fp32", "tf32", "fp16", "bf16"]}


def _run_problems(name, run, config):
    problems = []
    if run["precision"] not in BACKEND_PRECISIONS[run["backend"]]:
        problems.append(f"runs.{name}.precision: {run['precision']} is not a precision of the {run['backend']} "
                        f"backend ({', '.join(BACKEND_PRECISIONS[run['backend']])}); the onnxruntime and openvino "
                        f"backends run the model's ONNX export at other precisions")
    if run["provider"] is not None and run["backend"] != "onnxruntime":
        problems.append(f"runs.{name}.provider: only onnxruntime runs have an execution provider")
    if run["reference"] is not None and run["reference"] not in config["runs"]:
        problems.append(f"runs.{name}.reference: {run['reference']!r} is not one of runs: {', '.join(config['runs'])}")
    if run["reference"] == name:
        problems.append(f"runs.{name}.reference: a run cannot be its own reference")
    if run["precision"] == "int8" and config["quantization"]["calibration_split"] is None:
        problems.append(f"runs.{name}: precision int8 needs quantization.calibration_split, a split of "
                        f"images that are not scored (e.g. train), to calibrate the quantization on")
    return problems


def canonical(value):
    """`value` with the keys of every dict in sorted order, recursively.

    Snakemake decides whether a job's params changed by comparing their repr, and a dict's repr
    follows its key order: settings given to rules in this form rerun nothing when a config file
    is rewritten with its keys in another order.
    """
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def load(path):
    """Read and validate a YAML configuration file."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return validate(config if config is not None else {})
