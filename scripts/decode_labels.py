import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import decode_labels

run_step(snakemake, lambda sm: decode_labels(
    sm.params.ids, list(sm.input), sm.output[0], sm.config["dataset"]["num_classes"],
    sm.config["dataset"]["ignore_label"]))
