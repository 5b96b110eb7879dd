import _segbench_path  # noqa: F401  (segbench importable without an install)
from segbench.jobs import run_step
from segbench.steps import prepare_inputs

run_step(snakemake, lambda sm: prepare_inputs(list(sm.input), list(sm.output), sm.params.resize))
