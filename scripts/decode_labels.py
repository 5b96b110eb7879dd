import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import decode_labels

run_step(snakemake, lambda sm: decode_labels(
    list(sm.input), list(sm.output), sm.config["dataset"]["num_classes"], sm.config["dataset"]["ignore_label"]))
